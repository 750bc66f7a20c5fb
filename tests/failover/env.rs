//! One test's world: a local primary/standby pair (`biblioteca::cluster`),
//! every service (`biblioteca::stack`), and a `biblioteca-failover` config
//! pointing at both, on fixed ports below 32768 (PostgreSQL 264xx, services
//! 274xx) so this suite never collides with the others.
//!
//! Tests run one at a time ([`serial`]): each needs two servers and five
//! processes, and the machine has two cores.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use biblioteca_client::pirate::Client;
use biblioteca_cluster::{wait_until, Cluster, ClusterSpec, Node};
use biblioteca_protocol::config::{ClientConfig, ReplicationMode};
use biblioteca_protocol::{Operacion, Peticion, Respuesta};
use biblioteca_stack::launch::{port_in_use, run_failover};
use biblioteca_stack::{Stack, StackPorts, StackSpec};

/// The storage manager's `degradar_tras` in this suite.
pub const DEGRADAR_TRAS: Duration = Duration::from_secs(3);

static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

pub const ISBNS: [&str; 4] = [
    "978-0134685991",
    "978-0135957059",
    "978-0596007126",
    "978-1491950357",
];

pub struct Env {
    pub dir: PathBuf,
    pub stack: Option<Stack>,
    pub cluster: Cluster,
    pub failover_toml: PathBuf,
    pub ports: StackPorts,
}

fn pick(base: u16) -> u16 {
    (base..base + 50)
        .find(|p| !port_in_use(*p))
        .unwrap_or_else(|| panic!("no free port from {base}"))
}

impl Env {
    /// `slot` (0..9) separates the ports of the suite's tests.
    pub fn new(tag: &str, slot: u16) -> Env {
        Env::with(tag, slot, 1, ReplicationMode::Estricta)
    }

    /// `standbys` standbys (quorum `ANY 1` with several) and the storage
    /// manager's `replicacion` (`degradar_tras` 3 s).
    pub fn with(tag: &str, slot: u16, standbys: usize, replicacion: ReplicationMode) -> Env {
        let dir = std::env::temp_dir().join(format!("bib-failover-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // Everything lives in the cluster's directory, which its drop removes.
        let mut spec = ClusterSpec::new(&dir);
        spec.primary_port = pick(26400 + slot * 10);
        spec.standby_port = pick(spec.primary_port + 1);
        spec.standbys = standbys;
        let cluster = Cluster::create(spec).unwrap_or_else(|e| panic!("cluster: {e}"));
        let base = 27400 + slot * 10;
        let ports = StackPorts {
            frontend: pick(base),
            publisher: pick(base + 2),
            backchannel: pick(base + 4),
            storage: pick(base + 6),
        };
        let (p, s) = (cluster.primary(), cluster.standby());
        let mut stack_spec = StackSpec::new(
            dir.join("run"),
            ports,
            &p.conninfo("app", "library"),
            &s.conninfo("app", "library"),
        );
        stack_spec.deadline = Duration::from_millis(4000);
        stack_spec.use_cluster(&cluster);
        stack_spec.replicacion = replicacion;
        stack_spec.degradar_tras = DEGRADAR_TRAS;
        let stack = Stack::start(stack_spec).unwrap_or_else(|e| panic!("stack: {e}"));
        let mut env = Env {
            failover_toml: dir.join("failover.toml"),
            dir,
            stack: Some(stack),
            cluster,
            ports,
        };
        env.write_failover_toml();
        env
    }

    pub fn storage_config_path(&self) -> PathBuf {
        self.stack().storage.spec().config_path()
    }

    /// The failover tool's roles drop-in for the storage manager.
    pub fn roles_path(&self) -> PathBuf {
        let main = self.storage_config_path();
        let cfg = biblioteca_protocol::config_roles::parse_main(&main).unwrap();
        biblioteca_protocol::config_roles::path_for(&cfg, &main)
    }

    pub fn roles_text(&self) -> String {
        let path = self.roles_path();
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    pub fn stack(&self) -> &Stack {
        self.stack.as_ref().expect("stack running")
    }

    /// (Re)writes the failover config (the storage manager's pid changes on restart).
    pub fn write_failover_toml(&mut self) {
        let node = |n: &Node| n.failover_toml_entry("postgres", "library");
        let pid = self.stack().storage.pid().expect("storage pid");
        let nodes: String = self.cluster.nodes().into_iter().map(node).collect();
        let text = format!(
            "catchup = \"3s\"\n\n{nodes}[storage]\nendpoint = \"{}\"\nconfig = \"{}\"\nreload = \"pid\"\npid = {pid}\nswitch_wait = \"30s\"\n",
            self.ports.storage_endpoint(),
            self.storage_config_path().display(),
        );
        std::fs::write(&self.failover_toml, text).unwrap();
    }

    pub fn primary(&self) -> &Node {
        self.cluster.primary()
    }

    pub fn standby(&self) -> &Node {
        self.cluster.standby()
    }

    /// Runs `biblioteca-failover --config .. ARGS`, echoes its output, and
    /// returns (success, stdout + stderr).
    pub fn failover(&self, args: &[&str]) -> (bool, String) {
        let started = Instant::now();
        let (ok, text) = run_failover(&self.failover_toml, args).unwrap();
        println!(
            "$ biblioteca-failover {} ({:.1}s, {})\n{text}",
            args.join(" "),
            started.elapsed().as_secs_f64(),
            if ok { "ok" } else { "failed" }
        );
        (ok, text)
    }

    pub fn client(&self, timeout_ms: u64) -> Client {
        Client::new(ClientConfig {
            endpoints: vec![self.ports.frontend_endpoint()],
            timeout: Duration::from_millis(timeout_ms),
            retries: 3,
            curve: None,
        })
        .unwrap()
    }

    pub fn request(&self, op: Operacion, isbn: &str, usuario: &str) -> Respuesta {
        let r = self
            .client(5000)
            .request(&peticion(op, isbn, usuario, None))
            .unwrap_or_else(|e| panic!("{op} {isbn} {usuario}: {e}"));
        println!("{op} {isbn} {usuario} -> exito {} {}", r.exito, r.mensaje);
        r
    }

    /// Retries a loan until it succeeds or `timeout` passes.
    pub fn loan_until_ok(&self, isbn: &str, usuario: &str, timeout: Duration) -> Respuesta {
        let deadline = Instant::now() + timeout;
        let id = format!("loan-{usuario}");
        loop {
            let r = self.client(3000).request(&peticion(
                Operacion::Prestamo,
                isbn,
                usuario,
                Some(id.clone()),
            ));
            match r {
                Ok(r) if r.exito => return r,
                other if Instant::now() >= deadline => panic!("loan never succeeded: {other:?}"),
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

/// Waits until `primary` shows `standby` streaming synchronously.
pub fn wait_sync(primary: &Node, standby: &str, timeout: Duration) {
    wait_until(timeout, "synchronous streaming", || {
        Ok(primary
            .sql_as(
                "postgres",
                "postgres",
                &format!("SELECT state || '|' || sync_state FROM pg_stat_replication WHERE application_name = '{standby}'"),
            )
            .map(|s| s == "streaming|sync")
            .unwrap_or(false))
    })
    .unwrap();
}

impl Drop for Env {
    /// Services stop before the servers (field order); on a failure the
    /// logs are printed first, since the directory goes with the cluster.
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(stack) = &self.stack {
                println!(
                    "--- storage manager log ---\n{}",
                    stack.storage.log_tail(40)
                );
            }
            for n in self.cluster.nodes() {
                println!("--- {} server log ---\n{}", n.name, n.log_tail(20));
            }
        }
    }
}

pub fn peticion(op: Operacion, isbn: &str, usuario: &str, id: Option<String>) -> Peticion {
    Peticion {
        operacion: op,
        isbn: isbn.into(),
        usuario: usuario.into(),
        id,
    }
}

/// `SELECT ..` as the superuser on `library`, psql `-tA` output.
pub fn sql(n: &Node, q: &str) -> String {
    n.sql_as("postgres", "library", q)
        .unwrap_or_else(|e| panic!("{} {q}: {e}", n.name))
}

/// Each book's available copies plus its active loans, by ISBN.
pub fn copies(n: &Node) -> Vec<(String, i64)> {
    sql(
        n,
        "SELECT l.isbn, l.ejemplares + (SELECT count(*) FROM prestamos p WHERE p.isbn = l.isbn AND p.estado = 'ACTIVO') FROM libros l ORDER BY 1",
    )
    .lines()
    .map(|l| {
        let (isbn, n) = l.split_once('|').unwrap();
        (isbn.to_string(), n.parse().unwrap())
    })
    .collect()
}
