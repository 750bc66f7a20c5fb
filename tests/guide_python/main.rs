//! The guide's own Python clients (`tests/seed/test_cliente.py`,
//! `test_masivo.py`, verbatim copies of the seed), run UNMODIFIED with
//! Debian's python3 and pyzmq against the whole system. They hardcode
//! `localhost:5555`, so this suite runs the services on the default ports
//! 5555/5556/5557/5570 (PostgreSQL ports are still picked free).

// A harness-less test is not compiled with cfg(test): allow what tests may do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use biblioteca_protocol::Operacion;
use biblioteca_stack::StackPorts;
use common::{assert_on_standby, run_suite, sql, World, WorldSpec, ISBNS};
use serde_json::{json, Value};

const PYTHON: &str = "/usr/bin/python3";
const LIBRO: &str = "978-0134685991";
const USUARIO: &str = "usuario_test_1";

fn seed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/seed")
}

/// Runs a seed script with a time limit; returns its stdout.
fn python(script: &str, args: &[&str]) -> String {
    let mut child = Command::new(PYTHON)
        .arg(seed_dir().join(script))
        .args(args)
        .env("PYTHONIOENCODING", "utf-8")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {PYTHON} (install python3-zmq): {e}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{script} {args:?} still running after 60 s (no reply?)");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        status.success(),
        "{script} {args:?}: {status}\n{out}\n{err}"
    );
    out
}

/// `test_cliente.py OP ISBN [USUARIO]`; returns the reply it printed.
fn cliente(args: &[&str]) -> Value {
    let out = python("test_cliente.py", args);
    assert!(out.contains("Cliente ZMQ conectado"), "{out}");
    let (_, reply) = out
        .split_once("📥 Respuesta: ")
        .unwrap_or_else(|| panic!("no reply printed:\n{out}"));
    serde_json::from_str(reply.trim()).unwrap_or_else(|e| panic!("{e}: {reply}"))
}

fn ejemplares(w: &World) -> i64 {
    let row = sql(
        w.primary(),
        &format!("SELECT isbn, ejemplares FROM libros WHERE isbn='{LIBRO}';"),
    );
    row.split_once('|').unwrap().1.parse().unwrap()
}

fn seeds_are_verbatim(_: &mut World) {
    // CI lays shared/ beside the repository; when it is there, the copies
    // must not have drifted from it.
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/seed");
    for f in ["test_cliente.py", "test_masivo.py"] {
        let ours = std::fs::read(seed_dir().join(f)).unwrap();
        match std::fs::read(shared.join(f)) {
            Ok(theirs) => assert_eq!(ours, theirs, "tests/seed/{f} differs from the seed"),
            Err(_) => eprintln!("({} not found: nothing to compare)", shared.display()),
        }
    }
}

fn guide_part_2(w: &mut World) {
    let p = w.primary();
    let inicial = ejemplares(w);
    let r = cliente(&["consulta", LIBRO]);
    assert_eq!(r["exito"], json!(true), "{r}");
    assert_eq!(r["datos"]["ejemplares_disponibles"], json!(inicial), "{r}");

    let r = cliente(&["prestamo", LIBRO, USUARIO]);
    assert_eq!(r["exito"], json!(true), "{r}");
    let fila = sql(
        p,
        &format!("SELECT * FROM prestamos WHERE usuario='{USUARIO}';"),
    );
    assert!(fila.contains("|ACTIVO|"), "{fila}");
    assert_eq!(ejemplares(w), inicial - 1);
    let q = format!("SELECT * FROM prestamos WHERE usuario='{USUARIO}';");
    assert_on_standby(w, &q, &fila, Duration::from_secs(3));

    let renov = |w: &World| {
        sql(
            w.primary(),
            &format!("SELECT usuario, renovaciones FROM prestamos WHERE isbn='{LIBRO}';"),
        )
    };
    for n in 1..=2 {
        let r = cliente(&["renovacion", LIBRO, USUARIO]);
        assert_eq!(r["exito"], json!(true), "{r}");
        assert_eq!(renov(w), format!("{USUARIO}|{n}"));
    }
    let r = cliente(&["renovacion", LIBRO, USUARIO]);
    assert_eq!(r["exito"], json!(false), "{r}");
    assert_eq!(r["error"], json!("LimiteRenovaciones"), "{r}");
    assert_eq!(renov(w), format!("{USUARIO}|2"));

    let r = cliente(&["devolucion", LIBRO, USUARIO]);
    assert_eq!(r["exito"], json!(true), "{r}");
    assert_eq!(
        sql(
            p,
            &format!("SELECT usuario, estado FROM prestamos WHERE isbn='{LIBRO}';")
        ),
        format!("{USUARIO}|DEVUELTO")
    );
    assert_eq!(ejemplares(w), inicial);

    // Without a usuario the script sends "test_user"; a bad ISBN is refused with a reason.
    let r = cliente(&["prestamo", "no-es-un-isbn"]);
    assert_eq!(r["error"], json!("PeticionInvalida"), "{r}");
    assert!(r["mensaje"].as_str().is_some_and(|m| !m.is_empty()), "{r}");
}

fn guide_part_4(w: &mut World) {
    let out = python("test_masivo.py", &[]);
    for i in 0..10 {
        assert!(
            out.contains(&format!(
                "Préstamo {}: {} para usuario_carga_{i}",
                i + 1,
                ISBNS[i % 4]
            )),
            "{out}"
        );
    }
    assert_eq!(out.matches("  → ").count(), 10, "{out}");
    let cuenta = "SELECT COUNT(*) FROM prestamos WHERE usuario LIKE 'usuario_carga_%';";
    assert_eq!(sql(w.primary(), cuenta), "10", "{out}");
    assert_eq!(
        sql(
            w.primary(),
            "SELECT COUNT(*) FROM prestamos WHERE usuario LIKE 'usuario_carga_%' AND estado = 'ACTIVO';"
        ),
        "10"
    );
    assert_on_standby(w, cuenta, "10", Duration::from_secs(5));
}

fn main() {
    run_suite(
        "guide_python",
        || {
            World::start(WorldSpec {
                tag: "guide-python",
                ports: Some(StackPorts::default()),
                actors: Operacion::WRITES.to_vec(),
                deadline: Duration::from_millis(5000),
            })
        },
        &[
            ("seeds_are_verbatim", seeds_are_verbatim),
            ("test_cliente_part_2", guide_part_2),
            ("test_masivo_part_4", guide_part_4),
        ],
    )
}
