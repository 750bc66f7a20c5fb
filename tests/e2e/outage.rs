//! sd-notify (readiness, reload, watchdog, stop), and the loan actors going away: clients hear
//! `ServicioNoDisponible` (nothing is applied), and the same request re-sent
//! under the same id once they are back is applied exactly once.

use std::time::{Duration, Instant};

use biblioteca_protocol::Operacion;
use biblioteca_runtime::sched::{self, Scheduling};
use serde_json::json;

use biblioteca_stack::launch::Service;

use crate::common::{assert_err, assert_ok, sql, World};

fn has_line(m: &str, want: impl Fn(&str) -> bool) -> bool {
    m.lines().any(want)
}

pub fn sd_notify_ready(w: &mut World) {
    for s in w.stack.services() {
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

/// Every thread of every service except its main one (which only waits for
/// signals) runs under SCHED_BATCH, the `scheduling` default: the storage
/// workers, the socket threads and libzmq's I/O threads.
pub fn services_batch_scheduled(w: &mut World) {
    for s in w.stack.services() {
        let pid = s.pid().unwrap();
        let mut policies = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
            let tid: i32 = task.unwrap().file_name().to_string_lossy().parse().unwrap();
            if tid != pid as i32 {
                policies.push(sched::of_thread(tid));
            }
        }
        assert!(policies.len() >= 2, "{}: {policies:?}", s.name());
        assert!(
            policies.iter().all(|&p| p == Some(Scheduling::Batch)),
            "{}: thread policies {policies:?}",
            s.name()
        );
    }
}

/// SIGHUP to the storage manager: `RELOADING=1` with `MONOTONIC_USEC`, then
/// `READY=1` again, and it keeps serving.
pub fn sd_notify_reload(w: &mut World) {
    let since = w.stack.storage.messages().len();
    w.stack.storage.sighup().unwrap();
    let reloading = w
        .stack
        .storage
        .wait_message(since, Duration::from_secs(10), |m| {
            has_line(m, |l| l == "RELOADING=1")
        })
        .unwrap_or_else(|| {
            panic!(
                "no RELOADING=1 after SIGHUP: {:?}",
                w.stack.storage.messages()
            )
        });
    assert!(
        has_line(&reloading, |l| l
            .strip_prefix("MONOTONIC_USEC=")
            .is_some_and(|v| v.parse::<u64>().is_ok_and(|n| n > 0))),
        "RELOADING=1 without MONOTONIC_USEC: {reloading:?}"
    );
    let msgs = w.stack.storage.messages();
    let at = msgs[since..]
        .iter()
        .position(|m| has_line(m, |l| l == "RELOADING=1"))
        .map(|i| i + since)
        .unwrap();
    assert!(
        w.stack
            .storage
            .wait_message(at + 1, Duration::from_secs(10), |m| has_line(m, |l| l
                == "READY=1"))
            .is_some(),
        "no READY=1 after RELOADING=1: {:?}",
        w.stack.storage.messages()
    );
    assert_ok(
        &w.op("consulta", "978-0134685991", "usuario_recarga"),
        "consulta after a reload",
    );
}

/// With `WATCHDOG_USEC` set (as systemd does for `WatchdogSec=`) a service
/// sends `WATCHDOG=1` keep-alives; on SIGTERM it says `STOPPING=1`.
pub fn sd_notify_watchdog_and_stop(w: &mut World) {
    let mut spec = w.stack.spec().actor_spec(Operacion::Prestamo, 9).unwrap();
    spec.env.push(("WATCHDOG_USEC".into(), "300000".into()));
    let mut actor = Service::start(spec).unwrap();
    let pings = |a: &Service| {
        a.messages()
            .iter()
            .filter(|m| has_line(m, |l| l == "WATCHDOG=1"))
            .count()
    };
    let start = Instant::now();
    while pings(&actor) < 3 && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        pings(&actor) >= 3,
        "fewer than 3 WATCHDOG=1 in 5 s with WATCHDOG_USEC=300000: {:?}",
        actor.messages()
    );
    let before = actor.messages().len();
    actor.stop().unwrap();
    assert!(
        actor
            .wait_message(before, Duration::from_secs(2), |m| has_line(m, |l| l
                == "STOPPING=1"))
            .is_some(),
        "no STOPPING=1 on SIGTERM: {:?}",
        actor.messages()
    );
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
