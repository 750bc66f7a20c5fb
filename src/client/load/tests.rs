//! Load runs against an in-memory fake load manager on a real ROUTER socket.

use super::informe::SIN_RESPUESTA;
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

fn opts(endpoint: &str) -> Opciones {
    Opciones {
        cliente: ClientConfig {
            endpoints: vec![endpoint.into()],
            timeout: Duration::from_millis(2000),
            retries: 2,
            curve: None,
        },
        clientes: 3,
        duracion: None,
        peticiones: None,
        espera: None,
        tasa: None,
        mezcla: Mezcla::default(),
        catalogo: spec::catalogo(Some(20)),
        usuarios: 3,
        prefijo: prefijo_nuevo(),
        semilla: 1,
    }
}

#[test]
fn closed_loop_sends_exactly_the_requested_count_coherently() {
    let ep = "tcp://127.0.0.1:27461";
    let server = fake_library(ep);
    let mut o = opts(ep);
    o.peticiones = Some(300);
    let parar = Arc::new(AtomicBool::new(false));
    let r = ejecutar(&o, &zmq::Context::new(), &parar, |_| {}).unwrap();
    assert_eq!(r.total.peticiones, 300);
    assert_eq!(r.clientes, 3);
    let ops: Vec<&str> = r.operaciones.iter().map(|f| f.operacion.as_str()).collect();
    assert_eq!(ops, ["devolucion", "prestamo", "renovacion"]);
    assert!(r
        .operaciones
        .iter()
        .all(|f| !f.fallos_por_codigo.contains_key("PrestamoNoEncontrado")));
    assert!(r.total.p50_ms > 0.0 && r.total.max_ms >= r.total.p99_ms);
    assert_eq!(server.join().unwrap(), 0, "incoherent requests");
}

#[test]
fn more_clients_than_one_context_has_sockets() {
    let ep = "tcp://127.0.0.1:27465";
    let server = fake_library(ep);
    let mut o = opts(ep);
    o.clientes = POR_CONTEXTO + 200;
    o.usuarios = 1;
    o.peticiones = Some(3000);
    let parar = Arc::new(AtomicBool::new(false));
    let r = ejecutar(&o, &zmq::Context::new(), &parar, |_| {}).unwrap();
    assert_eq!(r.total.peticiones, 3000);
    // Every request answered: the only failures are third renewals.
    let codes = &r.total.fallos_por_codigo;
    assert!(codes.keys().all(|c| c == "LimiteRenovaciones"), "{codes:?}");
    assert_eq!(server.join().unwrap(), 0, "incoherent requests");
}

#[test]
fn open_loop_keeps_the_rate_and_stops_on_time() {
    let ep = "tcp://127.0.0.1:27462";
    let server = fake_library(ep);
    let mut o = opts(ep);
    o.clientes = 2;
    o.tasa = Some(100.0);
    o.duracion = Some(Duration::from_millis(1500));
    let parar = Arc::new(AtomicBool::new(false));
    let mut avances = 0;
    let started = Instant::now();
    let r = ejecutar(&o, &zmq::Context::new(), &parar, |_| avances += 1).unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        (130..=152).contains(&r.total.peticiones),
        "{}",
        r.total.peticiones
    );
    assert!(avances >= 1);
    assert!(!r.serie.is_empty());
    server.join().unwrap();
}

#[test]
fn stop_flag_and_think_time_end_a_run_early() {
    let ep = "tcp://127.0.0.1:27463";
    let server = fake_library(ep);
    let mut o = opts(ep);
    o.duracion = Some(Duration::from_secs(60));
    o.espera = Some(spec::espera("10ms..20ms").unwrap());
    let parar = Arc::new(AtomicBool::new(false));
    let stopper = {
        let parar = parar.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(600));
            parar.store(true, Ordering::SeqCst);
        })
    };
    let started = Instant::now();
    let r = ejecutar(&o, &zmq::Context::new(), &parar, |_| {}).unwrap();
    stopper.join().unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    // 3 clients at ~15 ms per cycle for ~0.6 s.
    assert!(
        (30..=200).contains(&r.total.peticiones),
        "{}",
        r.total.peticiones
    );
    server.join().unwrap();
}

#[test]
fn unreachable_manager_counts_unknown_outcomes_and_bad_options_are_rejected() {
    let mut o = opts("tcp://127.0.0.1:27464");
    o.cliente.timeout = Duration::from_millis(100);
    o.cliente.retries = 1;
    o.clientes = 1;
    o.peticiones = Some(2);
    let parar = Arc::new(AtomicBool::new(false));
    let r = ejecutar(&o, &zmq::Context::new(), &parar, |_| {}).unwrap();
    assert_eq!(r.total.fallos_por_codigo[SIN_RESPUESTA], 2);
    let mut bad = opts("tcp://127.0.0.1:27464");
    assert!(ejecutar(&bad, &zmq::Context::new(), &parar, |_| {}).is_err());
    bad.peticiones = Some(1);
    bad.tasa = Some(1.0);
    bad.espera = spec::espera("1s").ok();
    assert!(matches!(bad.validate(), Err(LoadError::Opciones(_))));
    assert!(tabla_experimento(&[r]).contains("CLIENTS"));
}
