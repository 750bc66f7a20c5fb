//! The load manager and actors over real ZeroMQ sockets, with a fake storage
//! manager (a ROUTER that answers every request with a `Respuesta` carrying
//! its id). Each test uses its own ports in 21000-21999.

// Helpers outside #[test] functions fail loudly too: this is test code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use biblioteca_protocol::config::{ActorConfig, LoadManagerConfig};
use biblioteca_protocol::{Informe, Operacion};
use biblioteca_runtime::shutdown::Shutdown;
use serde_json::{json, Value};

fn ep(port: u16) -> String {
    format!("tcp://127.0.0.1:{port}")
}

/// How the fake storage manager behaves.
#[derive(Clone, Copy)]
enum Storage {
    Answer { delay_ms: u64 },
    Swallow,
}

struct Harness {
    base: u16,
    sd: Shutdown,
    threads: Vec<JoinHandle<()>>,
    /// Storage calls per request id.
    calls: Arc<Mutex<HashMap<String, usize>>>,
}

impl Harness {
    fn new(base: u16) -> Harness {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_string()))
            .try_init();
        Harness {
            base,
            sd: Shutdown::new(),
            threads: Vec::new(),
            calls: Arc::default(),
        }
    }

    fn frontend(&self) -> String {
        ep(self.base)
    }

    fn load_manager(&mut self, tweak: impl FnOnce(&mut LoadManagerConfig)) {
        self.load_manager_until(self.sd.clone(), tweak);
    }

    /// A load manager that stops on its own `sd` (or with the harness).
    fn load_manager_until(&mut self, sd: Shutdown, tweak: impl FnOnce(&mut LoadManagerConfig)) {
        let mut cfg = LoadManagerConfig {
            frontend: ep(self.base),
            publisher: ep(self.base + 1),
            backchannel: ep(self.base + 2),
            storage: ep(self.base + 3),
            deadline: Duration::from_millis(3000),
            republish_after: Duration::from_millis(200),
            actor_timeout: Duration::from_millis(600),
            max_in_flight: 100,
            curve: None,
            ..LoadManagerConfig::default()
        };
        tweak(&mut cfg);
        let all = self.sd.clone();
        self.threads.push(std::thread::spawn(move || {
            let own = sd.clone();
            let watcher = std::thread::spawn(move || {
                while !all.is_triggered() && !own.is_triggered() {
                    std::thread::sleep(Duration::from_millis(20));
                }
                own.trigger();
            });
            biblioteca_load_manager::run(cfg, sd).unwrap();
            watcher.join().unwrap();
        }));
    }

    fn actor(&mut self, op: Operacion) {
        self.actor_with_timeout(op, Duration::from_millis(1000));
    }

    /// An actor for `op` that waits `storage_timeout` for the storage manager.
    fn actor_with_timeout(&mut self, op: Operacion, storage_timeout: Duration) {
        let cfg = ActorConfig {
            operacion: op,
            subscribe: ep(self.base + 1),
            report: ep(self.base + 2),
            storage: ep(self.base + 3),
            storage_timeout,
            max_in_flight: 16,
            heartbeat_interval: Duration::from_millis(100),
            curve: None,
            ..ActorConfig::default()
        };
        let sd = self.sd.clone();
        self.threads.push(std::thread::spawn(move || {
            biblioteca_actor::run(cfg, sd).unwrap();
        }));
    }

    fn storage(&mut self, mode: Storage) {
        let endpoint = ep(self.base + 3);
        self.threads.push(fake_storage(
            &endpoint,
            mode,
            self.sd.clone(),
            self.calls.clone(),
        ));
    }

    fn calls(&self, id: &str) -> usize {
        self.calls.lock().unwrap().get(id).copied().unwrap_or(0)
    }

    /// Polls status until `op` has a live actor.
    fn wait_for_actor(&self, op: &str) {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            let s = req(&self.frontend(), &json!({"operacion": "status"}));
            if s["datos"]["actores"][op]["vivos"].as_u64() == Some(1) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no live {op} actor");
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.sd.trigger();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A ROUTER on `endpoint` answering `["", request]` with `["", reply]`.
fn fake_storage(
    endpoint: &str,
    mode: Storage,
    sd: Shutdown,
    calls: Arc<Mutex<HashMap<String, usize>>>,
) -> JoinHandle<()> {
    let ctx = zmq::Context::new();
    let router = ctx.socket(zmq::ROUTER).unwrap();
    router.set_linger(0).unwrap();
    router.bind(endpoint).unwrap();
    std::thread::spawn(move || {
        let _ctx = ctx;
        let mut queue: Vec<(Instant, Vec<Vec<u8>>)> = Vec::new();
        while !sd.is_triggered() {
            if router.poll(zmq::POLLIN, 10).unwrap() > 0 {
                let frames = router.recv_multipart(0).unwrap();
                // One request, or several after the "lote" mark (each
                // answered on its own: the actor takes both forms).
                let delim = frames.iter().position(Vec::is_empty).unwrap();
                let (route, mut bodies) = frames.split_at(delim + 1);
                if bodies.len() > 1 && bodies[0] == b"lote" {
                    bodies = &bodies[1..];
                }
                for body in bodies {
                    let req: Value = serde_json::from_slice(body).unwrap();
                    let id = req["id"].as_str().unwrap_or_default().to_string();
                    *calls.lock().unwrap().entry(id.clone()).or_default() += 1;
                    if let Storage::Answer { delay_ms } = mode {
                        let reply = json!({
                            "exito": true,
                            "operacion": req["operacion"],
                            "mensaje": "fake storage: done",
                            "datos": {"isbn": req["isbn"], "usuario": req["usuario"]},
                            "id": id,
                        });
                        let mut out = route.to_vec();
                        out.push(reply.to_string().into_bytes());
                        queue.push((Instant::now() + Duration::from_millis(delay_ms), out));
                    }
                }
            }
            let now = Instant::now();
            let (due, later): (Vec<_>, Vec<_>) = queue.drain(..).partition(|(t, _)| *t <= now);
            queue = later;
            for (_, out) in due {
                router.send_multipart(out, 0).unwrap();
            }
        }
    })
}

fn req_socket(endpoint: &str) -> (zmq::Context, zmq::Socket) {
    let ctx = zmq::Context::new();
    let s = ctx.socket(zmq::REQ).unwrap();
    s.set_linger(0).unwrap();
    s.set_rcvtimeo(6000).unwrap();
    s.connect(endpoint).unwrap();
    (ctx, s)
}

/// One request on a fresh REQ socket, as the guide's Python client does.
fn req(endpoint: &str, body: &Value) -> Value {
    req_raw(endpoint, body.to_string().as_bytes())
}

fn req_raw(endpoint: &str, body: &[u8]) -> Value {
    let (_ctx, s) = req_socket(endpoint);
    s.send(body, 0).unwrap();
    let reply = s.recv_bytes(0).expect("reply within 6 s");
    serde_json::from_slice(&reply).unwrap()
}

fn prestamo(usuario: &str, id: Option<&str>) -> Value {
    let mut v = json!({"operacion": "prestamo", "isbn": "978-0134685991", "usuario": usuario});
    if let Some(id) = id {
        v["id"] = json!(id);
    }
    v
}

#[test]
fn request_flows_client_to_actor_to_storage_and_back() {
    let mut h = Harness::new(21000);
    h.storage(Storage::Answer { delay_ms: 0 });
    h.load_manager(|_| {});
    // Straight away, before the actor even exists: the request waits for it
    // (start-up grace) and is re-published until the late subscriber gets it.
    let early = {
        let endpoint = h.frontend();
        std::thread::spawn(move || req(&endpoint, &prestamo("temprano", None)))
    };
    std::thread::sleep(Duration::from_millis(150));
    h.actor(Operacion::Prestamo);
    let r = early.join().unwrap();
    assert_eq!(r["exito"], true, "{r}");
    let id = r["id"].as_str().unwrap();
    assert!(id.starts_with("c-") && id.len() == 18, "{r}");
    assert_eq!(h.calls(id), 1);

    let r = req(&h.frontend(), &prestamo("u1", Some("cliente-1")));
    assert_eq!(r["exito"], true, "{r}");
    assert_eq!(r["id"], "cliente-1");
    assert_eq!(r["datos"]["usuario"], "u1");

    // consulta goes to storage directly; the client's id (or none) comes back.
    let r = req(
        &h.frontend(),
        &json!({"operacion": "consulta", "isbn": "978-0134685991", "id": "mia"}),
    );
    assert_eq!(r["exito"], true, "{r}");
    assert_eq!(r["id"], "mia");
    let r = req(
        &h.frontend(),
        &json!({"operacion": "consulta", "isbn": "978-0134685991"}),
    );
    assert_eq!(r["exito"], true, "{r}");
    assert!(r.get("id").is_none(), "{r}");

    h.wait_for_actor("prestamo");
    let s = req(&h.frontend(), &json!({"operacion": "status"}));
    assert_eq!(s["exito"], true);
    assert_eq!(s["datos"]["servicio"], "carga");
    assert_eq!(s["datos"]["en_curso"], 0);
    assert!(s["datos"]["atendidas"].as_u64().unwrap() >= 4, "{s}");
    assert_eq!(s["datos"]["actores"]["devolucion"]["vivos"], 0);
}

#[test]
fn the_same_id_twice_is_one_storage_call() {
    let mut h = Harness::new(21010);
    h.storage(Storage::Answer { delay_ms: 500 });
    h.load_manager(|_| {});
    h.actor(Operacion::Prestamo);
    h.wait_for_actor("prestamo");
    let body = prestamo("dup", Some("dup-1"));
    let clients: Vec<_> = (0..2)
        .map(|i| {
            let endpoint = h.frontend();
            let body = body.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100 * i));
                req(&endpoint, &body)
            })
        })
        .collect();
    for c in clients {
        let r = c.join().unwrap();
        assert_eq!(r["exito"], true, "{r}");
        assert_eq!(r["id"], "dup-1");
    }
    // 500 ms at storage spans two re-publications; the actor sent it once.
    assert_eq!(h.calls("dup-1"), 1);
    // The same id reused for another request while in flight is refused.
    let slow = {
        let endpoint = h.frontend();
        std::thread::spawn(move || req(&endpoint, &prestamo("a", Some("dup-2"))))
    };
    std::thread::sleep(Duration::from_millis(100));
    let r = req(&h.frontend(), &prestamo("b", Some("dup-2")));
    assert_eq!(r["error"], "PeticionInvalida", "{r}");
    assert_eq!(slow.join().unwrap()["exito"], true);
}

#[test]
fn no_live_actor_is_service_unavailable_at_once() {
    let mut h = Harness::new(21020);
    h.storage(Storage::Answer { delay_ms: 0 });
    h.load_manager(|c| c.actor_timeout = Duration::from_millis(300));
    h.actor(Operacion::Prestamo);
    std::thread::sleep(Duration::from_millis(400));
    let t0 = Instant::now();
    let r = req(
        &h.frontend(),
        &json!({"operacion": "devolucion", "isbn": "978-0134685991", "usuario": "u", "id": "d1"}),
    );
    assert!(
        t0.elapsed() < Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(r["exito"], false);
    assert_eq!(r["error"], "ServicioNoDisponible", "{r}");
    assert_eq!(r["id"], "d1");
    // The operation that has an actor is unaffected.
    assert_eq!(req(&h.frontend(), &prestamo("u", None))["exito"], true);
}

#[test]
fn garbage_is_rejected_and_the_service_keeps_serving() {
    let mut h = Harness::new(21030);
    h.storage(Storage::Answer { delay_ms: 0 });
    h.load_manager(|_| {});
    h.actor(Operacion::Prestamo);
    let r = req_raw(&h.frontend(), b"not json");
    assert_eq!(r["error"], "PeticionInvalida", "{r}");
    let r = req_raw(&h.frontend(), &[0xff, 0x00, 0xfe]);
    assert_eq!(r["error"], "PeticionInvalida", "{r}");
    let r = req(&h.frontend(), &json!({"operacion": "robo", "isbn": "1"}));
    assert_eq!(r["error"], "PeticionInvalida", "{r}");
    assert!(r["mensaje"].as_str().unwrap().contains("unknown operacion"));

    // A DEALER without the empty delimiter, and one with two body frames.
    let ctx = zmq::Context::new();
    let dealer = ctx.socket(zmq::DEALER).unwrap();
    dealer.set_linger(0).unwrap();
    dealer.set_rcvtimeo(3000).unwrap();
    dealer.connect(&h.frontend()).unwrap();
    dealer.send("{}", 0).unwrap();
    let reply: Value = serde_json::from_slice(&dealer.recv_bytes(0).unwrap()).unwrap();
    assert_eq!(reply["error"], "PeticionInvalida");
    dealer.send_multipart(["", "a", "b"], 0).unwrap();
    let frames = dealer.recv_multipart(0).unwrap();
    assert_eq!(frames.len(), 2);
    let reply: Value = serde_json::from_slice(&frames[1]).unwrap();
    assert_eq!(reply["error"], "PeticionInvalida");

    // Garbage and unknown ids on the back-channel are dropped.
    let push = ctx.socket(zmq::PUSH).unwrap();
    push.set_linger(0).unwrap();
    push.connect(&ep(h.base + 2)).unwrap();
    push.send("garbage", 0).unwrap();
    push.send_multipart(["a", "b"], 0).unwrap();
    push.send(r#"{"tipo":"latido","operacion":"consulta","actor":"x"}"#, 0)
        .unwrap();
    let late = json!({"tipo": "resultado", "respuesta":
        {"exito": true, "operacion": "prestamo", "mensaje": "late", "id": "nobody"}});
    push.send(late.to_string().as_bytes(), 0).unwrap();

    let r = req(&h.frontend(), &prestamo("tras-basura", None));
    assert_eq!(r["exito"], true, "{r}");
    let s = req(&h.frontend(), &json!({"operacion": "status"}));
    assert_eq!(s["datos"]["actores"]["consulta"], Value::Null, "{s}");
}

#[test]
fn no_outcome_within_the_deadline_is_service_unavailable() {
    let mut h = Harness::new(21040);
    h.storage(Storage::Swallow);
    h.load_manager(|c| {
        c.deadline = Duration::from_millis(700);
        c.max_in_flight = 1;
    });
    h.actor(Operacion::Prestamo);
    h.wait_for_actor("prestamo");
    let waiting = {
        let endpoint = h.frontend();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            (req(&endpoint, &prestamo("u", Some("lento"))), t0.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    // Beyond max_in_flight: busy, at once.
    let r = req(&h.frontend(), &prestamo("v", None));
    assert_eq!(r["error"], "ServicioOcupado", "{r}");
    let (r, took) = waiting.join().unwrap();
    assert_eq!(r["error"], "ServicioNoDisponible", "{r}");
    assert_eq!(r["id"], "lento");
    assert!(took >= Duration::from_millis(650) && took < Duration::from_millis(1500));
    // consulta against a silent storage manager also ends at the deadline.
    let r = req(
        &h.frontend(),
        &json!({"operacion": "consulta", "isbn": "978-0134685991"}),
    );
    assert_eq!(r["error"], "AlmacenamientoNoDisponible", "{r}");
}

#[test]
fn an_actor_checks_topics_and_bodies_and_reports_with_heartbeats() {
    // The actor alone, against our own PUB and PULL.
    let base = 21050;
    let ctx = zmq::Context::new();
    let publ = ctx.socket(zmq::PUB).unwrap();
    publ.set_linger(0).unwrap();
    publ.bind(&ep(base + 1)).unwrap();
    let pull = ctx.socket(zmq::PULL).unwrap();
    pull.set_linger(0).unwrap();
    pull.set_rcvtimeo(3000).unwrap();
    pull.bind(&ep(base + 2)).unwrap();
    let mut h = Harness::new(base);
    h.storage(Storage::Answer { delay_ms: 0 });
    h.actor(Operacion::Prestamo);

    // The first heartbeat comes right after start.
    let first = Informe::from_bytes(&pull.recv_bytes(0).unwrap()).unwrap();
    assert!(matches!(
        first,
        Informe::Latido {
            operacion: Operacion::Prestamo,
            ..
        }
    ));
    std::thread::sleep(Duration::from_millis(200)); // subscription propagates
    let good = prestamo("ok", Some("a-1")).to_string();
    publ.send_multipart(["prestamoX", good.as_str()], 0)
        .unwrap();
    publ.send_multipart(["prestamo", "not json"], 0).unwrap();
    publ.send_multipart(["prestamo"], 0).unwrap();
    publ.send_multipart(["prestamo", &prestamo("sin-id", None).to_string()], 0)
        .unwrap();
    let other =
        json!({"operacion": "devolucion", "isbn": "978-0134685991", "usuario": "u", "id": "x"});
    publ.send_multipart(["prestamo", &other.to_string()], 0)
        .unwrap();
    publ.send_multipart(["prestamo", good.as_str()], 0).unwrap();
    let t0 = Instant::now();
    let resultado = loop {
        assert!(t0.elapsed() < Duration::from_secs(3));
        match Informe::from_bytes(&pull.recv_bytes(0).unwrap()).unwrap() {
            Informe::Resultado { respuesta } => break respuesta,
            Informe::Latido { .. } => continue,
        }
    };
    assert_eq!(resultado.id.as_deref(), Some("a-1"));
    assert!(resultado.exito);
    let calls = h.calls.lock().unwrap().clone();
    assert_eq!(
        calls.len(),
        1,
        "only the valid request reached storage: {calls:?}"
    );
    assert_eq!(calls.get("a-1"), Some(&1));
}

#[test]
fn actors_recover_after_the_load_manager_and_the_storage_manager_restart() {
    let mut h = Harness::new(21060);
    let first = Shutdown::new();
    h.load_manager_until(first.clone(), |c| c.deadline = Duration::from_millis(4000));
    h.actor_with_timeout(Operacion::Renovacion, Duration::from_millis(300));
    h.wait_for_actor("renovacion");

    // The storage manager is down at first: the actor re-sends, replaces its
    // DEALER, and the request completes once storage is up, within the deadline.
    let renovacion = |id: &str| json!({"operacion": "renovacion", "isbn": "978-0134685991", "usuario": "u", "id": id});
    let pending = {
        let endpoint = h.frontend();
        let body = renovacion("r-1");
        std::thread::spawn(move || req(&endpoint, &body))
    };
    std::thread::sleep(Duration::from_millis(1200));
    h.storage(Storage::Answer { delay_ms: 0 });
    let r = pending.join().unwrap();
    assert_eq!(r["exito"], true, "{r}");

    // The load manager restarts on the same ports; the actor's SUB and PUSH
    // reconnect by themselves.
    first.trigger();
    std::thread::sleep(Duration::from_millis(500));
    h.load_manager(|_| {});
    h.wait_for_actor("renovacion");
    let r = req(&h.frontend(), &renovacion("r-2"));
    assert_eq!(r["exito"], true, "{r}");
}
