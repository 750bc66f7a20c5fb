//! Load runs against an in-memory fake load manager on a real ROUTER socket.

use super::report::NO_REPLY;
use super::*;
use biblioteca_protocol::{parse_entrada, CodigoError, Entrada, Operacion, Respuesta};
use biblioteca_runtime::net::{self, Envelope};
use serde_json::Value;
use std::collections::HashMap;
use std::thread;
use std::time::Duration;

/// Serves loans from memory until idle for a second; returns the number of
/// incoherent requests it saw (returns/renewals of books not held).
fn fake_library(endpoint: &'static str) -> thread::JoinHandle<u64> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let h = thread::spawn(move || {
        let ctx = zmq::Context::new();
        let s = net::socket(&ctx, zmq::ROUTER).unwrap();
        s.set_linger(0).unwrap();
        net::bind(&s, endpoint).unwrap();
        ready_tx.send(()).unwrap();
        let mut loans: HashMap<(String, String), u8> = HashMap::new();
        let mut incoherent = 0;
        while net::readable(&s, Duration::from_secs(1)).unwrap() {
            let env = Envelope::split(s.recv_multipart(0).unwrap()).unwrap();
            let Entrada::Operacion(p) = parse_entrada(env.single_body().unwrap()).unwrap() else {
                panic!("not an operation")
            };
            let key = (p.isbn.clone(), p.usuario.clone());
            let op = p.operacion.as_str();
            let r = match p.operacion {
                Operacion::Prestamo if loans.contains_key(&key) => {
                    Respuesta::error(op, CodigoError::PrestamoActivo, "held")
                }
                Operacion::Prestamo => {
                    loans.insert(key, 0);
                    Respuesta::ok(op, "ok", Value::Null)
                }
                Operacion::Devolucion => match loans.remove(&key) {
                    Some(_) => Respuesta::ok(op, "ok", Value::Null),
                    None => {
                        incoherent += 1;
                        Respuesta::error(op, CodigoError::PrestamoNoEncontrado, "no")
                    }
                },
                Operacion::Renovacion => match loans.get_mut(&key) {
                    Some(n) if *n >= 2 => {
                        Respuesta::error(op, CodigoError::LimiteRenovaciones, "limit")
                    }
                    Some(n) => {
                        *n += 1;
                        Respuesta::ok(op, "ok", Value::Null)
                    }
                    None => {
                        incoherent += 1;
                        Respuesta::error(op, CodigoError::PrestamoNoEncontrado, "no")
                    }
                },
                Operacion::Consulta => Respuesta::ok(op, "ok", Value::Null),
            };
            env.reply(&s, &r.with_id(p.id).to_bytes()).unwrap();
        }
        incoherent
    });
    ready_rx.recv().unwrap();
    h
}

fn opts(endpoint: &str) -> LoadOptions {
    LoadOptions {
        client: ClientConfig {
            endpoints: vec![endpoint.into()],
            timeout: Duration::from_millis(2000),
            retries: 2,
            curve: None,
        },
        clients: 3,
        duration: None,
        requests: None,
        think: None,
        rate: None,
        mix: Mix::default(),
        catalogue: spec::catalogue(Some(20)),
        users: 3,
        prefix: fresh_prefix(),
        seed: 1,
    }
}

#[test]
fn closed_loop_sends_exactly_the_requested_count_coherently() {
    let ep = "tcp://127.0.0.1:27461";
    let server = fake_library(ep);
    let mut o = opts(ep);
    o.requests = Some(300);
    let stop = Arc::new(AtomicBool::new(false));
    let r = run(&o, &zmq::Context::new(), &stop, |_| {}).unwrap();
    assert_eq!(r.total.requests, 300);
    assert_eq!(r.clients, 3);
    let ops: Vec<&str> = r.operations.iter().map(|f| f.operacion.as_str()).collect();
    assert_eq!(ops, ["devolucion", "prestamo", "renovacion"]);
    assert!(r
        .operations
        .iter()
        .all(|f| !f.failures_by_code.contains_key("PrestamoNoEncontrado")));
    assert!(r.total.p50_ms > 0.0 && r.total.max_ms >= r.total.p99_ms);
    assert_eq!(server.join().unwrap(), 0, "incoherent requests");
}

#[test]
fn more_clients_than_one_context_has_sockets() {
    let ep = "tcp://127.0.0.1:27465";
    let server = fake_library(ep);
    let mut o = opts(ep);
    o.clients = PER_CONTEXT + 200;
    o.users = 1;
    o.requests = Some(3000);
    let stop = Arc::new(AtomicBool::new(false));
    let r = run(&o, &zmq::Context::new(), &stop, |_| {}).unwrap();
    assert_eq!(r.total.requests, 3000);
    // Every request answered: the only failures are third renewals.
    let codes = &r.total.failures_by_code;
    assert!(codes.keys().all(|c| c == "LimiteRenovaciones"), "{codes:?}");
    assert_eq!(server.join().unwrap(), 0, "incoherent requests");
}

#[test]
fn open_loop_keeps_the_rate_and_stops_on_time() {
    let ep = "tcp://127.0.0.1:27462";
    let server = fake_library(ep);
    let mut o = opts(ep);
    o.clients = 2;
    o.rate = Some(100.0);
    o.duration = Some(Duration::from_millis(1500));
    let stop = Arc::new(AtomicBool::new(false));
    let mut progress = 0;
    let started = Instant::now();
    let r = run(&o, &zmq::Context::new(), &stop, |_| progress += 1).unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        (130..=152).contains(&r.total.requests),
        "{}",
        r.total.requests
    );
    assert!(progress >= 1);
    assert!(!r.series.is_empty());
    server.join().unwrap();
}

#[test]
fn stop_flag_and_think_time_end_a_run_early() {
    let ep = "tcp://127.0.0.1:27463";
    let server = fake_library(ep);
    let mut o = opts(ep);
    o.duration = Some(Duration::from_secs(60));
    o.think = Some(spec::think("10ms..20ms").unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = {
        let stop = stop.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(600));
            stop.store(true, Ordering::SeqCst);
        })
    };
    let started = Instant::now();
    let r = run(&o, &zmq::Context::new(), &stop, |_| {}).unwrap();
    stopper.join().unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    // 3 clients at ~15 ms per cycle for ~0.6 s.
    assert!(
        (30..=200).contains(&r.total.requests),
        "{}",
        r.total.requests
    );
    server.join().unwrap();
}

#[test]
fn unreachable_manager_counts_unknown_outcomes_and_bad_options_are_rejected() {
    let mut o = opts("tcp://127.0.0.1:27464");
    o.client.timeout = Duration::from_millis(100);
    o.client.retries = 1;
    o.clients = 1;
    o.requests = Some(2);
    let stop = Arc::new(AtomicBool::new(false));
    let r = run(&o, &zmq::Context::new(), &stop, |_| {}).unwrap();
    assert_eq!(r.total.failures_by_code[NO_REPLY], 2);
    let mut bad = opts("tcp://127.0.0.1:27464");
    assert!(run(&bad, &zmq::Context::new(), &stop, |_| {}).is_err());
    bad.requests = Some(1);
    bad.rate = Some(1.0);
    bad.think = spec::think("1s").ok();
    assert!(matches!(bad.validate(), Err(LoadError::Options(_))));
    assert!(experiment_table(&[r]).contains("CLIENTS"));
}
