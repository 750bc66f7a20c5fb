//! The guide (`e2e-guide.md`), parts 2 to 4, with its own SQL queries.

use std::time::Duration;

use serde_json::json;

use crate::common::{assert_err, assert_ok, assert_on_standby, field, sql, World, ISBNS};

const LIBRO: &str = "978-0134685991";
const USUARIO: &str = "usuario_test_1";

fn ejemplares(w: &World, isbn: &str) -> i64 {
    let row = sql(
        w.primary(),
        &format!("SELECT isbn, ejemplares FROM libros WHERE isbn='{isbn}';"),
    );
    let (got, n) = row.split_once('|').unwrap_or_else(|| panic!("row {row:?}"));
    assert_eq!(got, isbn);
    n.parse().unwrap()
}

/// `usuario|renovaciones|fecha_devolucion` of the guide's loan.
fn renovacion_row(w: &World) -> (i64, String) {
    let row = sql(
        w.primary(),
        &format!(
            "SELECT usuario, renovaciones, fecha_devolucion FROM prestamos WHERE isbn='{LIBRO}';"
        ),
    );
    let parts: Vec<&str> = row.split('|').collect();
    assert_eq!(parts.len(), 3, "one loan of {LIBRO} expected: {row:?}");
    assert_eq!(parts[0], USUARIO);
    (parts[1].parse().unwrap(), parts[2].to_string())
}

pub fn parts_2_to_4(w: &mut World) {
    let p = w.primary();
    // 2.2: the four books of the catalogue.
    let libros = sql(p, "SELECT isbn, ejemplares FROM libros;");
    for isbn in ISBNS {
        assert!(libros.contains(isbn), "{isbn} missing from {libros}");
    }
    let inicial = ejemplares(w, LIBRO);
    assert!(inicial > 0);

    // 2.3: consulta answers with the book.
    let r = w.op("consulta", LIBRO, "test_user");
    assert_ok(&r, "2.3 consulta");
    assert_eq!(field(&r, "operacion"), &json!("consulta"));
    assert_eq!(r["datos"]["isbn"], json!(LIBRO), "{r}");
    assert_eq!(r["datos"]["ejemplares_disponibles"], json!(inicial), "{r}");

    // 2.4: the loan, ACTIVO, one copy fewer.
    let r = w.op("prestamo", LIBRO, USUARIO);
    assert_ok(&r, "2.4 prestamo");
    assert!(r["id"].is_string(), "writes carry an id: {r}");
    let fila = sql(
        p,
        &format!("SELECT * FROM prestamos WHERE usuario='{USUARIO}';"),
    );
    assert_eq!(fila.lines().count(), 1, "{fila}");
    assert!(fila.contains("|ACTIVO|"), "{fila}");
    assert_eq!(ejemplares(w, LIBRO), inicial - 1);

    // 2.5: the same row on the standby within 3 seconds.
    let consulta = format!("SELECT * FROM prestamos WHERE usuario='{USUARIO}';");
    assert_on_standby(w, &consulta, &fila, Duration::from_secs(3));

    // 2.6 - 2.8: renewals 1, 2, then LimiteRenovaciones.
    let (n, fecha0) = renovacion_row(w);
    assert_eq!(n, 0);
    let mut fechas = vec![fecha0];
    for esperado in 1..=2 {
        let r = w.op("renovacion", LIBRO, USUARIO);
        assert_ok(&r, &format!("renewal {esperado}"));
        assert_eq!(r["datos"]["renovaciones"], json!(esperado), "{r}");
        let (n, fecha) = renovacion_row(w);
        assert_eq!(n, esperado);
        fechas.push(fecha);
    }
    for pair in fechas.windows(2) {
        let dias = sql(
            p,
            &format!("SELECT DATE '{}' - DATE '{}'", pair[1], pair[0]),
        );
        assert_eq!(dias, "7", "a renewal adds 7 days: {fechas:?}");
    }
    let r = w.op("renovacion", LIBRO, USUARIO);
    assert_err(&r, "LimiteRenovaciones", "2.8 third renewal");
    let (n, fecha) = renovacion_row(w);
    assert_eq!(n, 2, "renovaciones stays 2");
    assert_eq!(
        &fecha,
        fechas.last().unwrap(),
        "date unchanged by a refused renewal"
    );

    // 2.9: the return.
    let r = w.op("devolucion", LIBRO, USUARIO);
    assert_ok(&r, "2.9 devolucion");
    assert_eq!(
        sql(
            p,
            &format!("SELECT usuario, estado FROM prestamos WHERE isbn='{LIBRO}';")
        ),
        format!("{USUARIO}|DEVUELTO")
    );
    assert_eq!(ejemplares(w, LIBRO), inicial);

    // 3.2: the standby streams (synchronously), read as `app` like the guide.
    let rep = sql(
        p,
        "SELECT application_name, state, sync_state FROM pg_stat_replication;",
    );
    assert_eq!(rep, "standby|streaming|sync");
    // 3.3: replay lag under 3 s right after a write.
    let lag = sql(
        w.standby(),
        "SELECT EXTRACT(EPOCH FROM (NOW() - pg_last_xact_replay_timestamp())) AS replication_lag;",
    );
    let lag: f64 = lag.parse().unwrap_or_else(|_| panic!("lag {lag:?}"));
    assert!(lag < 3.0, "replication lag {lag} s");

    // 4.1 - 4.3: ten loans, on the primary and then on the standby.
    for i in 0..10 {
        let r = w.op(
            "prestamo",
            ISBNS[i % ISBNS.len()],
            &format!("usuario_carga_{i}"),
        );
        assert_ok(&r, &format!("bulk loan {i}"));
    }
    let loans_query = "SELECT COUNT(*) FROM prestamos WHERE usuario LIKE 'usuario_carga_%';";
    assert_eq!(sql(p, loans_query), "10");
    assert_on_standby(w, loans_query, "10", Duration::from_secs(5));
}

/// The business refusals besides the guide's `LimiteRenovaciones`; none changes anything.
pub fn business_errors(w: &mut World) {
    let isbn = ISBNS[2];
    let unknown = "978-0000000000";
    let before = ejemplares(w, isbn);
    for (op, book, code, what) in [
        (
            "consulta",
            unknown,
            "LibroNoEncontrado",
            "consulta of an unknown book",
        ),
        (
            "prestamo",
            unknown,
            "LibroNoEncontrado",
            "loan of an unknown book",
        ),
        (
            "devolucion",
            isbn,
            "PrestamoNoEncontrado",
            "return without a loan",
        ),
        (
            "renovacion",
            isbn,
            "PrestamoNoEncontrado",
            "renewal without a loan",
        ),
    ] {
        assert_err(&w.op(op, book, "negocio_1"), code, what);
    }
    assert_ok(&w.op("prestamo", isbn, "negocio_1"), "loan");
    assert_err(
        &w.op("prestamo", isbn, "negocio_1"),
        "PrestamoActivo",
        "second loan of the same book",
    );
    assert_eq!(ejemplares(w, isbn), before - 1);
    assert_ok(&w.op("devolucion", isbn, "negocio_1"), "return");
    assert_err(
        &w.op("devolucion", isbn, "negocio_1"),
        "PrestamoNoEncontrado",
        "second return",
    );
    assert_eq!(ejemplares(w, isbn), before);
    assert_eq!(
        sql(
            w.primary(),
            "SELECT count(*) FROM prestamos WHERE usuario = 'negocio_1'"
        ),
        "1"
    );
}
