//! A panic in any service thread ends the process with a non-zero status and
//! a log line naming the thread; restarted, the service serves again and
//! every loan acknowledged before the panic is still there.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use biblioteca_stack::launch::Service;

use crate::common::{assert_ok, eventually, field, sql, World};

pub use biblioteca_fault::FAULT_FILE_ENV;

const BOOK: &str = "978-0134685991";

fn fault_file() -> PathBuf {
    PathBuf::from(std::env::var_os(FAULT_FILE_ENV).expect("the suite sets the fault file"))
}

/// Which service of the world.
#[derive(Clone, Copy, Debug)]
enum Which {
    Storage,
    LoadManager,
    /// Every actor's working thread is called `actor`: whichever actor
    /// looks at the fault file first takes the fault.
    AnyActor,
}

/// The service `which` once it has exited, with its exit status; `None`
/// while every candidate still runs.
fn exited(w: &mut World, which: Which) -> Option<(&mut Service, std::process::ExitStatus)> {
    let candidates: Vec<&mut Service> = match which {
        Which::Storage => vec![&mut w.stack.storage],
        Which::LoadManager => vec![&mut w.stack.carga],
        Which::AnyActor => w.stack.actors.iter_mut().map(|(_, s)| s).collect(),
    };
    candidates
        .into_iter()
        .find_map(|s| s.try_wait().map(|status| (s, status)))
}

/// A loan and its return through the whole pipeline, retried while a
/// restarted service reconnects; returns the loan's reply.
fn loan_and_return(w: &World, usuario: &str) -> serde_json::Value {
    let id = format!("live-{usuario}");
    let mut reply = serde_json::Value::Null;
    let served = eventually(Duration::from_secs(20), || {
        // The same id each time: a retry is applied once.
        reply = w.op_id("prestamo", BOOK, usuario, &id);
        field(&reply, "exito") == &serde_json::json!(true)
    });
    assert!(
        served,
        "no loan for {usuario} after the restart: {reply}\n{}",
        w.log_tails(20)
    );
    assert_ok(
        &w.op("devolucion", BOOK, usuario),
        "return after the restart",
    );
    reply
}

pub fn a_panicking_thread_ends_its_service(w: &mut World) {
    let cases = [
        (Which::Storage, "front-end"),
        (Which::Storage, "storage-worker-0"),
        (Which::Storage, "storage-monitor"),
        (Which::LoadManager, "broker"),
        (Which::AnyActor, "actor"),
        (Which::AnyActor, "actor"),
    ];
    for (n, (which, thread)) in cases.into_iter().enumerate() {
        // Acknowledged before the fault: must survive it.
        let before = format!("before-panic-{n}");
        assert_ok(&w.op("prestamo", BOOK, &before), "loan before the fault");

        let file = fault_file();
        std::fs::write(&file, thread).unwrap();
        let started = Instant::now();
        while exited(w, which).is_none() && started.elapsed() < Duration::from_secs(15) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let tails = w.log_tails(30);
        let (svc, status) = exited(w, which).unwrap_or_else(|| {
            panic!(
                "{which:?} still running 15 s after its {thread} thread was told to panic \
                 (binaries built without the fault-injection feature?)\n{tails}"
            )
        });
        assert!(!file.exists(), "the {thread} thread did not take the fault");
        assert!(
            !status.success(),
            "{which:?} exited with {status} after a panic in {thread}"
        );
        let log = svc.log_tail(60);
        assert!(
            log.contains(&format!("thread {thread} panicked")),
            "{which:?}'s log does not name the {thread} thread:\n{log}"
        );
        eprintln!(
            "{which:?}: {thread} panicked, exited with {status} after {:.1} s",
            started.elapsed().as_secs_f64()
        );

        // The supervisor's part (systemd's Restart=on-failure in production).
        svc.restart()
            .unwrap_or_else(|e| panic!("restarting {which:?}: {e}"));
        let usuario = format!("after-panic-{n}");
        let reply = loan_and_return(w, &usuario);
        assert_ok(&reply, "loan after the restart");

        // Nothing acknowledged was lost, and the retried loan was applied once.
        let active = sql(
            w.primary(),
            &format!(
                "SELECT count(*) FROM prestamos WHERE usuario = '{before}' AND estado = 'ACTIVO'"
            ),
        );
        assert_eq!(
            active, "1",
            "the loan acknowledged before the panic in {thread}"
        );
        let after = sql(
            w.primary(),
            &format!("SELECT count(*) FROM prestamos WHERE usuario = '{usuario}'"),
        );
        assert_eq!(
            after, "1",
            "the loan retried after the restart, applied once"
        );
        assert_ok(
            &w.op("devolucion", BOOK, &before),
            "return of the earlier loan",
        );
    }
}
