//! The reference scenario (`e2e-guide.md`, parts 2-4 here, 5-7 in
//! [`super::failover`]) run against a live
//! demo, one narrated line per step with what was observed.
//!
//! Requests go through the real client path (load manager, actors, storage
//! manager); every expectation is checked with the guide's own SQL on the
//! primary and the standby. A step that does not hold is counted, and the
//! demo exits non-zero when any did.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::Demo;
use biblioteca_client::Client;
use biblioteca_cluster::Node;
use biblioteca_protocol::config::ClientConfig;
use biblioteca_protocol::{CodigoError, Operacion, Peticion, Respuesta};
use biblioteca_runtime::security::ClientCurve;

/// The guide's catalogue.
pub const GUIDE_ISBNS: [&str; 4] = [
    "978-0134685991",
    "978-0135957059",
    "978-0596007126",
    "978-1491950357",
];

/// How many checks ran and how many did not hold.
#[derive(Debug, Default, Clone, Copy)]
pub struct Report {
    pub total: usize,
    pub failed: usize,
}

/// Prints one line per check and keeps the score.
#[derive(Debug, Default)]
pub struct Narrator {
    report: Report,
}

impl Narrator {
    pub fn section(&self, title: &str) {
        println!("\n== {title}");
    }

    /// Records one expectation and prints it with what was observed.
    pub fn check(&mut self, step: &str, what: &str, ok: bool, observed: impl AsRef<str>) -> bool {
        self.report.total += 1;
        if !ok {
            self.report.failed += 1;
        }
        let mark = if ok { "ok  " } else { "FAIL" };
        println!("[{step:>4}] {mark} {what}: {}", observed.as_ref());
        ok
    }

    pub fn report(&self) -> Report {
        self.report
    }
}

/// Sends requests through the load manager.
pub struct Requester {
    client: Option<Client>,
    error: String,
}

impl Requester {
    pub fn new(endpoint: &str) -> Requester {
        Requester::with_curve(endpoint, None)
    }

    /// A requester with the client's CURVE keys (a `--seguro` demo).
    pub fn with_curve(endpoint: &str, curve: Option<ClientCurve>) -> Requester {
        let config = ClientConfig {
            endpoints: vec![endpoint.to_string()],
            timeout: Duration::from_secs(8),
            retries: 2,
            curve,
        };
        match Client::new(config) {
            Ok(c) => Requester {
                client: Some(c),
                error: String::new(),
            },
            Err(e) => Requester {
                client: None,
                error: e.to_string(),
            },
        }
    }

    /// The reply, or a synthetic failure describing why there is none.
    pub fn send(&mut self, operacion: Operacion, isbn: &str, usuario: &str) -> Respuesta {
        let p = Peticion {
            operacion,
            isbn: isbn.to_string(),
            usuario: usuario.to_string(),
            id: None,
        };
        let result = match self.client.as_mut() {
            Some(c) => c.request(&p).map_err(|e| e.to_string()),
            None => Err(self.error.clone()),
        };
        result.unwrap_or_else(|e| {
            Respuesta::error(
                operacion.as_str(),
                CodigoError::ServicioNoDisponible,
                format!("no reply: {e}"),
            )
        })
    }
}

/// One-line summary of a reply.
pub fn describe(r: &Respuesta) -> String {
    match (&r.error, r.exito) {
        (_, true) => {
            let datos = biblioteca_client::render::datos(&r.datos);
            if datos.is_empty() {
                format!("exito: true, {}", r.mensaje)
            } else {
                format!("exito: true, {datos}")
            }
        }
        (Some(code), false) => format!("exito: false, {code}: {}", r.mensaje),
        (None, false) => format!("exito: false, {}", r.mensaje),
    }
}

fn sql(node: &Node, query: &str) -> String {
    node.sql(query).unwrap_or_else(|e| format!("<error: {e}>"))
}

fn int(node: &Node, query: &str) -> Option<i64> {
    node.sql(query).ok().and_then(|s| s.trim().parse().ok())
}

/// Polls `query` on `node` until it returns `want` or `timeout` passes.
fn eventually(node: &Node, query: &str, want: &str, timeout: Duration) -> (bool, String, Duration) {
    let start = Instant::now();
    loop {
        let got = sql(node, query);
        if got == want || start.elapsed() >= timeout {
            return (got == want, got, start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stock_query(isbn: &str) -> String {
    format!("SELECT ejemplares FROM libros WHERE isbn='{isbn}'")
}

/// Runs parts 2-7 and returns the score.
pub fn run(demo: &Demo) -> Report {
    let mut n = Narrator::default();
    let primary = demo.cluster.primary();
    let standby = demo.cluster.standby();
    let curve = demo.stack.spec().client_curve();
    let endpoint = demo.stack.ports().frontend_endpoint();
    let mut req = Requester::with_curve(&endpoint, curve.clone());
    part2(&mut n, &mut req, primary, standby);
    part3(&mut n, primary, standby, demo.config.asynchronous);
    part4(&mut n, (&endpoint, curve), primary, standby);
    super::failover::run(&mut n, demo);
    let r = n.report();
    println!(
        "\nScenario: {} of {} checks held.",
        r.total - r.failed,
        r.total
    );
    r
}

fn part2(n: &mut Narrator, req: &mut Requester, primary: &Node, standby: &Node) {
    n.section("Part 2: loans, renewals and returns through the messaging system");
    let isbn = GUIDE_ISBNS[0];
    let user = "usuario_test_1";
    let list = format!(
        "SELECT count(*) FROM libros WHERE isbn IN ('{}')",
        GUIDE_ISBNS.join("','")
    );
    let books = sql(primary, &list);
    n.check(
        "2.2",
        "the guide's 4 books are in `libros`",
        books == "4",
        format!("{books} of 4 found"),
    );

    let r = req.send(Operacion::Consulta, isbn, "");
    let titled = r.datos.get("titulo").and_then(Value::as_str).is_some();
    n.check(
        "2.3",
        &format!("consulta {isbn} answers with the title"),
        r.exito && titled,
        describe(&r),
    );

    let before = int(primary, &stock_query(isbn));
    let r = req.send(Operacion::Prestamo, isbn, user);
    n.check(
        "2.4",
        &format!("prestamo {isbn} for {user}"),
        r.exito,
        describe(&r),
    );
    let loan = format!("SELECT estado FROM prestamos WHERE usuario='{user}' AND isbn='{isbn}' ORDER BY id DESC LIMIT 1");
    let estado = sql(primary, &loan);
    n.check(
        "2.4",
        "the loan is ACTIVO on the primary",
        estado == "ACTIVO",
        format!("estado = {estado}"),
    );
    let after = int(primary, &stock_query(isbn));
    let decremented = matches!((before, after), (Some(b), Some(a)) if a == b - 1);
    n.check(
        "2.4",
        "ejemplares decremented by 1",
        decremented,
        format!("{before:?} -> {after:?}"),
    );

    let (ok, got, took) = eventually(standby, &loan, "ACTIVO", Duration::from_secs(3));
    n.check(
        "2.5",
        "the loan is on the standby within 3 s",
        ok,
        format!("estado = {got:?} after {} ms", took.as_millis()),
    );

    let renewals = format!("SELECT renovaciones FROM prestamos WHERE usuario='{user}' AND isbn='{isbn}' AND estado='ACTIVO'");
    for (step, count) in [("2.6", "1"), ("2.7", "2")] {
        let r = req.send(Operacion::Renovacion, isbn, user);
        n.check(step, "renovacion", r.exito, describe(&r));
        let got = sql(primary, &renewals);
        n.check(
            step,
            &format!("renovaciones is {count}"),
            got == count,
            format!("renovaciones = {got}"),
        );
    }
    let r = req.send(Operacion::Renovacion, isbn, user);
    let limited = !r.exito && r.error == Some(CodigoError::LimiteRenovaciones);
    n.check(
        "2.8",
        "a third renovacion is refused with LimiteRenovaciones",
        limited,
        describe(&r),
    );
    let got = sql(primary, &renewals);
    n.check(
        "2.8",
        "renovaciones stays 2",
        got == "2",
        format!("renovaciones = {got}"),
    );

    let r = req.send(Operacion::Devolucion, isbn, user);
    n.check("2.9", "devolucion", r.exito, describe(&r));
    let estado = sql(primary, &loan);
    n.check(
        "2.9",
        "the loan is DEVUELTO",
        estado == "DEVUELTO",
        format!("estado = {estado}"),
    );
    let restored = int(primary, &stock_query(isbn));
    n.check(
        "2.9",
        "ejemplares restored",
        restored == before,
        format!("{before:?} -> {restored:?}"),
    );
}

fn part3(n: &mut Narrator, primary: &Node, standby: &Node, asynchronous: bool) {
    n.section("Part 3: replication health");
    let rep = sql(
        primary,
        "SELECT application_name || ' ' || state || ' ' || sync_state FROM pg_stat_replication",
    );
    let want = if asynchronous {
        "standby streaming async"
    } else {
        "standby streaming sync"
    };
    n.check(
        "3.2",
        "the standby streams from the primary",
        rep == want,
        format!("pg_stat_replication: {rep}"),
    );
    let lag = sql(
        standby,
        "SELECT COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0)::numeric(10,3)",
    );
    let small = lag.parse::<f64>().map(|l| l < 3.0).unwrap_or(false);
    n.check(
        "3.3",
        "replication lag under 3 s",
        small,
        format!("{lag} s"),
    );
}

fn part4(
    n: &mut Narrator,
    (endpoint, curve): (&str, Option<ClientCurve>),
    primary: &Node,
    standby: &Node,
) {
    n.section("Part 4: ten loans from ten short-lived clients (test_masivo.py)");
    let mut ok = 0;
    for i in 0..10 {
        // Like the guide's script: a fresh socket per loan.
        let mut req = Requester::with_curve(endpoint, curve.clone());
        let isbn = GUIDE_ISBNS[i % GUIDE_ISBNS.len()];
        let r = req.send(Operacion::Prestamo, isbn, &format!("usuario_carga_{i}"));
        if r.exito {
            ok += 1;
        } else {
            println!("        usuario_carga_{i}: {}", describe(&r));
        }
    }
    n.check(
        "4.1",
        "10 loans acknowledged",
        ok == 10,
        format!("{ok} of 10 exito"),
    );
    let count = "SELECT COUNT(*) FROM prestamos WHERE usuario LIKE 'usuario_carga_%'";
    let got = sql(primary, count);
    n.check(
        "4.2",
        "10 loans on the primary",
        got == "10",
        format!("count = {got}"),
    );
    let (same, got, took) = eventually(standby, count, "10", Duration::from_secs(5));
    n.check(
        "4.3",
        "the same 10 loans on the standby",
        same,
        format!("count = {got} after {} ms", took.as_millis()),
    );
}
