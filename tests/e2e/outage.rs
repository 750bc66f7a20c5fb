//! Readiness via sd-notify, and the loan actors going away: clients hear
//! `ServicioNoDisponible` (nothing is applied), and the same request re-sent
//! under the same id once they are back is applied exactly once.

use std::time::{Duration, Instant};

use biblioteca::protocol::Operacion;
use serde_json::json;

use crate::common::{assert_err, assert_ok, sql, World};

pub fn sd_notify_ready(w: &mut World) {
    let mut services = vec![&w.stack.storage, &w.stack.carga];
    services.extend(w.stack.actors.iter().map(|(_, a)| a));
    for s in services {
        let msgs = s.messages();
        assert!(
            msgs.iter().any(|m| m.lines().any(|l| l == "READY=1")),
            "{} sent no READY=1: {msgs:?}",
            s.name()
        );
        assert!(
            msgs.iter()
                .any(|m| m.lines().any(|l| l.starts_with("STATUS="))),
            "{} sent no STATUS=: {msgs:?}",
            s.name()
        );
    }
}

fn loans_of(w: &World, usuario: &str) -> String {
    sql(
        w.primary(),
        &format!("SELECT count(*) FROM prestamos WHERE usuario = '{usuario}'"),
    )
}

pub fn actor_down_then_retry(w: &mut World) {
    let isbn = "978-1491950357";
    let (usuario, id) = ("usuario_caido", "e2e-caido-1");
    for (op, a) in w.stack.actors.iter_mut() {
        if *op == Operacion::Prestamo {
            a.stop().unwrap();
        }
    }
    let stopped = Instant::now();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let t = Instant::now();
        let r = w.op_id("prestamo", isbn, usuario, id);
        assert_err(&r, "ServicioNoDisponible", "loan with no loan actor");
        assert_eq!(r["id"], json!(id), "{r}");
        assert!(
            t.elapsed() < Duration::from_secs(8),
            "took {:?}",
            t.elapsed()
        );
        // Once the actors' silence is noticed (actor_timeout_ms, 3 s; 4 s since the stop), the
        // answer comes at once.
        let settle = Duration::from_millis(4000).saturating_sub(stopped.elapsed());
        std::thread::sleep(settle);
        let t = Instant::now();
        let r = w.op_id("prestamo", isbn, usuario, id);
        assert_err(&r, "ServicioNoDisponible", "loan with no loan actor, later");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "known-dead actors should be reported at once, took {:?}",
            t.elapsed()
        );
        // Other operations are unaffected.
        assert_ok(&w.op("consulta", isbn, "u"), "consulta during the outage");
        assert_eq!(loans_of(w, usuario), "0", "nothing applied while down");
    }));
    for (op, a) in w.stack.actors.iter_mut() {
        if *op == Operacion::Prestamo {
            a.restart()
                .unwrap_or_else(|e| panic!("restart loan actor: {e}"));
        }
    }
    if let Err(e) = outcome {
        std::panic::resume_unwind(e);
    }
    // The client retries under the same id until the actor is back.
    let deadline = Instant::now() + Duration::from_secs(20);
    let first_ok = loop {
        let r = w.op_id("prestamo", isbn, usuario, id);
        if r["exito"] == json!(true) {
            break r;
        }
        assert_err(
            &r,
            "ServicioNoDisponible",
            "retry while the actor comes back",
        );
        assert!(Instant::now() < deadline, "actor not back after 20 s: {r}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(first_ok["id"], json!(id));
    assert_eq!(loans_of(w, usuario), "1");
    let again = w.op_id("prestamo", isbn, usuario, id);
    assert_eq!(
        again, first_ok,
        "the retry after success gets the stored reply"
    );
    assert_eq!(loans_of(w, usuario), "1", "applied exactly once");
}
