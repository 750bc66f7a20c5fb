//! The load generator (`biblioteca-solicitante carga`, the real binary)
//! against the real stack: its report must agree with what the database
//! holds afterwards, and its CSV files and chart must be written.

use std::process::Command;

use biblioteca_stack::launch::find_binary;
use serde_json::Value;

use crate::common::{sql, World};

const LIBROS: u64 = 20;

/// Successful requests of one operation in the report.
fn exitos(report: &Value, op: &str) -> i64 {
    let fila = report["operaciones"]
        .as_array()
        .and_then(|ops| ops.iter().find(|o| o["operacion"] == op))
        .unwrap_or_else(|| panic!("no {op} row in {report}"));
    fila["peticiones"].as_i64().unwrap() - fila["fallos"].as_i64().unwrap()
}

pub fn load_generator_agrees_with_the_database(w: &mut World) {
    biblioteca_storage::seed(&w.stack.spec().storage_config(), LIBROS, 1000).unwrap();
    let out_dir = w.dir.join("carga");
    std::fs::create_dir_all(&out_dir).unwrap();
    let bin = find_binary("biblioteca-solicitante", None).unwrap();
    let out = Command::new(bin)
        .args(["--json", "carga", "--endpoint", &w.frontend()])
        .args(["--clientes", "4", "--usuarios", "2", "--semilla", "7"])
        // Long enough for a per-second history of a few rows.
        .args(["--duracion", "3s"])
        .args(["--libros", &LIBROS.to_string()])
        .args(["--mezcla", "prestamo=40,devolucion=40,renovacion=20"])
        .arg("--csv")
        .arg(out_dir.join("run"))
        .arg("--grafico")
        .arg(out_dir.join("run.png"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "carga failed: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not one JSON report ({e}): {stderr}"));

    let total = &report["total"];
    let peticiones = total["peticiones"].as_u64().unwrap();
    let por_operacion: u64 = report["operaciones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["peticiones"].as_u64().unwrap())
        .sum();
    assert!(peticiones > 100 && peticiones == por_operacion, "{report}");
    assert!(total["rps"].as_f64().unwrap() > 0.0, "{report}");
    // Coherent sequences: loans of books the user does not hold, returns and
    // renewals of books it holds. The only business refusal left is a third
    // renewal of the same loan.
    let codes = total["fallos_por_codigo"].as_object().unwrap();
    assert!(
        codes.keys().all(|c| c == "LimiteRenovaciones"),
        "unexpected failures: {codes:?}"
    );

    // What the clients were told is what the database holds.
    let (prestamos, devoluciones, renovaciones) = (
        exitos(&report, "prestamo"),
        exitos(&report, "devolucion"),
        exitos(&report, "renovacion"),
    );
    assert!(
        prestamos > 0 && devoluciones > 0 && renovaciones > 0,
        "{report}"
    );
    let fila = sql(
        w.primary(),
        "SELECT count(*), count(*) FILTER (WHERE estado = 'DEVUELTO'), \
         coalesce(sum(renovaciones), 0) FROM prestamos WHERE usuario LIKE 'carga-%'",
    );
    assert_eq!(
        fila,
        format!("{prestamos}|{devoluciones}|{renovaciones}"),
        "loans|returned|renewals in the database vs successes in the report {report}"
    );
    let en_estante = sql(
        w.primary(),
        &format!(
            "SELECT sum(ejemplares) FROM libros WHERE isbn IN ({})",
            (1..=LIBROS)
                .map(|n| format!("'{}'", biblioteca_protocol::catalogue::isbn(n)))
                .collect::<Vec<_>>()
                .join(",")
        ),
    );
    let activos = prestamos - devoluciones;
    assert_eq!(en_estante, (LIBROS as i64 * 1000 - activos).to_string());

    // Locust-style CSV files and a PNG chart.
    let stats = std::fs::read_to_string(out_dir.join("run_stats.csv")).unwrap();
    let mut lines = stats.lines();
    assert!(
        lines.next().unwrap().starts_with("Type,Name,Request Count"),
        "{stats}"
    );
    assert!(
        stats.contains(&format!(",Aggregated,{peticiones},")),
        "{stats}"
    );
    let history = std::fs::read_to_string(out_dir.join("run_stats_history.csv")).unwrap();
    // The header, then rows for each of at least two seconds.
    assert!(history.lines().count() >= 3, "{history}");
    let png = std::fs::read(out_dir.join("run.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000);
}
