//! Signals that interrupt blocking ZeroMQ calls (EINTR) are "try again":
//! storms of SIGHUP (a reload each), SIGWINCH and SIGCHLD under load fail no
//! request and stop no service.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

use crate::common::{field, request, sql, World};

const CLIENTS: usize = 4;
const STORM: Duration = Duration::from_secs(8);

/// One client: loans and returns of one book until `stop`, every reply
/// checked; returns (loans, requests).
fn client(
    endpoint: String,
    usuario: String,
    isbn: &'static str,
    stop: Arc<AtomicBool>,
) -> (u64, u64) {
    let ctx = zmq::Context::new();
    let (mut loans, mut requests) = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        for operacion in ["prestamo", "devolucion"] {
            let id = format!("{usuario}-{requests}");
            let body = json!({"operacion": operacion, "isbn": isbn, "usuario": usuario, "id": id});
            let reply = request(
                &ctx,
                &endpoint,
                body.to_string().as_bytes(),
                Duration::from_secs(10),
            )
            .unwrap_or_else(|| panic!("no reply to {body} during the signal storm"));
            assert_eq!(
                field(&reply, "exito"),
                &json!(true),
                "{body} during the storm: {reply}"
            );
            requests += 1;
            if operacion == "prestamo" {
                loans += 1;
            }
        }
    }
    (loans, requests)
}

pub fn signal_storms_change_nothing(w: &mut World) {
    let books = crate::common::ISBNS;
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (endpoint, stop) = (w.frontend(), Arc::clone(&stop));
            let usuario = format!("storm-{i}");
            let isbn = books[i % books.len()];
            std::thread::spawn(move || (usuario.clone(), client(endpoint, usuario, isbn, stop)))
        })
        .collect();
    let pids: Vec<Pid> = w
        .stack
        .services()
        .filter_map(|s| s.pid())
        .map(|p| Pid::from_raw(p as i32))
        .collect();
    assert_eq!(
        pids.len(),
        2 + w.stack.actors.len(),
        "every service has a pid"
    );
    let started = Instant::now();
    let mut sent = 0u64;
    let mut n = 0u64;
    while started.elapsed() < STORM {
        for &pid in &pids {
            for sig in [Signal::SIGWINCH, Signal::SIGCHLD] {
                kill(pid, sig).unwrap();
                sent += 1;
            }
            // A reload every 100 ms per service: a storm, not a stream.
            if n.is_multiple_of(5) {
                kill(pid, Signal::SIGHUP).unwrap();
                sent += 1;
            }
        }
        n += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let mut total_requests = 0;
    for c in clients {
        let (usuario, (loans, requests)) = c.join().expect("a client failed during the storm");
        total_requests += requests;
        let rows = sql(
            w.primary(),
            &format!("SELECT count(*), count(*) FILTER (WHERE estado = 'ACTIVO') FROM prestamos WHERE usuario = '{usuario}'"),
        );
        assert_eq!(
            rows,
            format!("{loans}|0"),
            "{usuario}'s loans in the database"
        );
    }
    eprintln!("{sent} signals while {total_requests} requests were answered, none failed");
    assert!(
        total_requests > 0,
        "no request went through during the storm"
    );
    for s in w.stack.services() {
        let pid = s.pid().unwrap_or_default();
        assert!(
            kill(Pid::from_raw(pid as i32), None).is_ok(),
            "{} died in the signal storm:\n{}",
            s.name(),
            s.log_tail(30)
        );
    }
}
