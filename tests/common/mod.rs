//! Shared by the end-to-end suites (`tests/e2e`, `tests/guide_python`): a tiny
//! runner that sets one world up, runs named cases with panics caught per case,
//! always tears down, and ends with `N passed, N failed`; the world itself (a
//! PostgreSQL primary/standby pair and every service as a real process); and
//! plain-ZeroMQ request helpers that never block forever.

#![allow(dead_code)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use biblioteca_cluster::{Cluster, ClusterSpec, Node};
use biblioteca_protocol::Operacion;
use biblioteca_stack::launch::{free_port, port_in_use};
use biblioteca_stack::{Stack, StackPorts, StackSpec};
use serde_json::{json, Value};

/// The guide's catalogue.
pub const ISBNS: [&str; 4] = [
    "978-0134685991",
    "978-0135957059",
    "978-0596007126",
    "978-1491950357",
];

/// Everything one suite runs against. Fields drop in order: services first,
/// then the database servers.
pub struct World {
    pub stack: Stack,
    pub cluster: Cluster,
    pub dir: PathBuf,
    pub ctx: zmq::Context,
}

/// How a suite wants its world.
pub struct WorldSpec {
    pub tag: &'static str,
    /// ZeroMQ ports; `None`: free ports.
    pub ports: Option<StackPorts>,
    pub actors: Vec<Operacion>,
    pub deadline: Duration,
}

impl World {
    pub fn start(spec: WorldSpec) -> World {
        let dir = std::env::temp_dir().join(format!("bib-{}-{}", spec.tag, std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ports = match spec.ports {
            Some(p) => {
                for port in [p.frontend, p.publisher, p.backchannel, p.storage] {
                    assert!(
                        !port_in_use(port),
                        "port {port} is in use (a demo or another test run?); this suite needs it"
                    );
                }
                p
            }
            None => StackPorts {
                frontend: free_port().unwrap(),
                publisher: free_port().unwrap(),
                backchannel: free_port().unwrap(),
                storage: free_port().unwrap(),
            },
        };
        let mut cspec = ClusterSpec::new(dir.join("pg"));
        cspec.primary_port = free_port().unwrap();
        cspec.standby_port = free_port().unwrap();
        let t = Instant::now();
        let cluster = Cluster::create(cspec).unwrap_or_else(|e| panic!("cluster: {e}"));
        eprintln!(
            "cluster up in {:.1}s: primary 127.0.0.1:{}, standby 127.0.0.1:{} ({})",
            t.elapsed().as_secs_f64(),
            cluster.primary().port,
            cluster.standby().port,
            cluster.dir().display()
        );
        let mut sspec = StackSpec::new(
            dir.join("run"),
            ports,
            &cluster.primary().conninfo("app", "library"),
            &cluster.standby().conninfo("app", "library"),
        );
        sspec.actors = spec.actors;
        sspec.deadline = spec.deadline;
        let t = Instant::now();
        let stack = Stack::start(sspec).unwrap_or_else(|e| panic!("services: {e}"));
        eprintln!(
            "services up in {:.1}s: frontend {}, storage {}, logs in {}",
            t.elapsed().as_secs_f64(),
            ports.frontend_endpoint(),
            ports.storage_endpoint(),
            stack.run_dir().display()
        );
        World {
            stack,
            cluster,
            dir,
            ctx: zmq::Context::new(),
        }
    }

    pub fn primary(&self) -> &Node {
        self.cluster.primary()
    }

    pub fn standby(&self) -> &Node {
        self.cluster.standby()
    }

    pub fn frontend(&self) -> String {
        self.stack.ports().frontend_endpoint()
    }

    pub fn storage(&self) -> String {
        self.stack.ports().storage_endpoint()
    }

    /// One request to the load manager; panics when no reply comes in 15 s.
    pub fn send(&self, body: &Value) -> Value {
        let bytes = serde_json::to_vec(body).unwrap();
        request(&self.ctx, &self.frontend(), &bytes, Duration::from_secs(15))
            .unwrap_or_else(|| panic!("no reply from the load manager to {body}"))
    }

    pub fn op(&self, operacion: &str, isbn: &str, usuario: &str) -> Value {
        self.send(&json!({"operacion": operacion, "isbn": isbn, "usuario": usuario}))
    }

    pub fn op_id(&self, operacion: &str, isbn: &str, usuario: &str, id: &str) -> Value {
        self.send(&json!({"operacion": operacion, "isbn": isbn, "usuario": usuario, "id": id}))
    }

    /// The last lines of every service log, for failure reports.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        let mut add = |name: &str, tail: String| {
            out.push_str(&format!("--- {name} ---\n{tail}\n"));
        };
        add(
            self.stack.storage.name(),
            self.stack.storage.log_tail(lines),
        );
        add(self.stack.carga.name(), self.stack.carga.log_tail(lines));
        for (_, a) in &self.stack.actors {
            add(a.name(), a.log_tail(lines));
        }
        out
    }
}

/// `psql -tAc` on a node; panics with psql's error.
pub fn sql(node: &Node, query: &str) -> String {
    node.sql(query)
        .unwrap_or_else(|e| panic!("SQL on {}: {query}: {e}", node.name))
}

/// Polls `check` every 100 ms for up to `timeout`.
/// Asserts that `query` on the standby returns `want` within `within`
/// (replication is asynchronous to the reader even when commits are synchronous).
pub fn assert_on_standby(w: &World, query: &str, want: &str, within: Duration) {
    assert!(
        eventually(within, || w.standby().sql(query).is_ok_and(|s| s == want)),
        "standby: {query} gave {:?} after {within:?}, want {want:?}",
        w.standby().sql(query)
    );
}

pub fn eventually<F: FnMut() -> bool>(timeout: Duration, mut check: F) -> bool {
    let start = Instant::now();
    loop {
        if check() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One REQ round trip on a fresh socket; `None` on timeout (or an unparsable reply).
pub fn request(
    ctx: &zmq::Context,
    endpoint: &str,
    body: &[u8],
    timeout: Duration,
) -> Option<Value> {
    let raw = request_raw(ctx, endpoint, body, timeout)?;
    match serde_json::from_slice(&raw) {
        Ok(v) => Some(v),
        Err(e) => panic!(
            "reply from {endpoint} is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&raw)
        ),
    }
}

/// One REQ round trip returning the reply bytes.
pub fn request_raw(
    ctx: &zmq::Context,
    endpoint: &str,
    body: &[u8],
    timeout: Duration,
) -> Option<Vec<u8>> {
    let s = ctx.socket(zmq::REQ).unwrap();
    s.set_linger(0).unwrap();
    s.set_rcvtimeo(timeout.as_millis() as i32).unwrap();
    s.set_sndtimeo(timeout.as_millis() as i32).unwrap();
    s.connect(endpoint).unwrap();
    s.send(body, 0).ok()?;
    s.recv_bytes(0).ok()
}

/// Sends raw frames on a DEALER and waits for one reply message (all frames).
pub fn dealer_exchange(
    ctx: &zmq::Context,
    endpoint: &str,
    frames: &[&[u8]],
    timeout: Duration,
) -> Option<Vec<Vec<u8>>> {
    let s = ctx.socket(zmq::DEALER).unwrap();
    s.set_linger(0).unwrap();
    s.set_rcvtimeo(timeout.as_millis() as i32).unwrap();
    s.connect(endpoint).unwrap();
    s.send_multipart(frames.iter().copied(), 0).unwrap();
    s.recv_multipart(0).ok()
}

pub fn field<'a>(v: &'a Value, name: &str) -> &'a Value {
    v.get(name).unwrap_or(&Value::Null)
}

/// Asserts `exito: true`, printing the reply otherwise.
pub fn assert_ok(v: &Value, what: &str) {
    assert_eq!(
        field(v, "exito"),
        &json!(true),
        "{what}: expected success, got {v}"
    );
}

/// Asserts `exito: false` with error `code`.
pub fn assert_err(v: &Value, code: &str, what: &str) {
    assert_eq!(
        field(v, "exito"),
        &json!(false),
        "{what}: expected {code}, got {v}"
    );
    assert_eq!(
        field(v, "error"),
        &json!(code),
        "{what}: expected {code}, got {v}"
    );
}

/// A named check run by [`run_suite`].
pub type Case = (&'static str, fn(&mut World));

/// Sets the world up once, runs the cases whose names contain the first
/// non-flag argument (all when none), catches each case's panic, tears down,
/// prints `N passed, N failed` last and exits non-zero on any failure.
pub fn run_suite(suite: &str, setup: impl FnOnce() -> World, cases: &[Case]) -> ! {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let list = std::env::args().any(|a| a == "--list");
    let selected: Vec<&Case> = cases
        .iter()
        .filter(|(name, _)| filter.as_deref().is_none_or(|f| name.contains(f)))
        .collect();
    if list {
        for (name, _) in &selected {
            println!("{name}: test");
        }
        std::process::exit(0);
    }
    println!("\nrunning {} {suite} cases", selected.len());
    if selected.is_empty() {
        println!("0 passed, 0 failed");
        std::process::exit(0);
    }
    let started = Instant::now();
    let mut world = match catch_unwind(AssertUnwindSafe(setup)) {
        Ok(w) => w,
        Err(e) => {
            println!("{suite}: setup FAILED: {}", panic_text(&e));
            println!("0 passed, {} failed", selected.len());
            std::process::exit(1);
        }
    };
    let (mut passed, mut failed) = (0, Vec::new());
    for (name, case) in selected {
        let t = Instant::now();
        match catch_unwind(AssertUnwindSafe(|| case(&mut world))) {
            Ok(()) => {
                passed += 1;
                println!("case {name} ... ok ({:.1}s)", t.elapsed().as_secs_f64());
            }
            Err(e) => {
                println!(
                    "case {name} ... FAILED ({:.1}s): {}",
                    t.elapsed().as_secs_f64(),
                    panic_text(&e)
                );
                println!("{}", world.log_tails(15));
                failed.push(*name);
            }
        }
    }
    let dir = world.dir.clone();
    drop(world);
    if failed.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!(
            "failed: {}; logs kept in {}",
            failed.join(", "),
            dir.display()
        );
    }
    println!(
        "{suite} finished in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    println!("{passed} passed, {} failed", failed.len());
    std::process::exit(if failed.is_empty() { 0 } else { 1 });
}

fn panic_text(e: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = e.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = e.downcast_ref::<&str>() {
        s.to_string()
    } else {
        "panic".into()
    }
}
