//! The suite's world: a primary and a synchronous standby, every service
//! with its metrics endpoint on a free port (`replicacion = "disponible"`,
//! `degradar_tras` 3 s), and a `biblioteca-failover` configuration.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use biblioteca_client::pirate::Client;
use biblioteca_cluster::{Cluster, ClusterSpec, Node};
use biblioteca_protocol::config::{ClientConfig, ReplicationMode};
use biblioteca_protocol::{Operacion, Peticion};
use biblioteca_stack::launch::{free_port, run_failover};
use biblioteca_stack::{MetricsPorts, Stack, StackMetrics, StackPorts, StackSpec};

use crate::prom::status;

pub struct World {
    pub stack: Stack,
    pub cluster: Cluster,
    pub dir: PathBuf,
    pub metrics: MetricsPorts,
    failover_toml: PathBuf,
}

impl World {
    pub fn start(tag: &str) -> World {
        let dir = crate::scratch(tag);
        let mut cspec = ClusterSpec::new(dir.join("pg"));
        cspec.primary_port = free_port().unwrap();
        cspec.standby_port = free_port().unwrap();
        let cluster = Cluster::create(cspec).unwrap_or_else(|e| panic!("cluster: {e}"));
        let ports = StackPorts {
            frontend: free_port().unwrap(),
            publisher: free_port().unwrap(),
            backchannel: free_port().unwrap(),
            storage: free_port().unwrap(),
        };
        let (p, s) = (cluster.primary(), cluster.standby());
        let mut spec = StackSpec::new(
            dir.join("run"),
            ports,
            &p.conninfo("app", "library"),
            &s.conninfo("app", "library"),
        );
        spec.use_cluster(&cluster);
        spec.deadline = Duration::from_secs(4);
        spec.replicacion = ReplicationMode::Disponible;
        spec.degradar_tras = Duration::from_secs(3);
        let metrics = MetricsPorts::free().unwrap();
        spec.metrics = StackMetrics::Ports(metrics);
        let stack = Stack::start(spec).unwrap_or_else(|e| panic!("stack: {e}"));
        let failover_toml = dir.join("failover.toml");
        let w = World {
            stack,
            cluster,
            dir,
            metrics,
            failover_toml,
        };
        w.write_failover_toml();
        w
    }

    /// Prometheus jobs: one per service.
    pub fn targets(&self) -> Vec<(&'static str, u16)> {
        let m = self.metrics;
        vec![
            ("biblioteca-almacenamiento", m.storage),
            ("biblioteca-carga", m.carga),
            ("biblioteca-actor-prestamo", m.actors[0]),
            ("biblioteca-actor-devolucion", m.actors[1]),
            ("biblioteca-actor-renovacion", m.actors[2]),
        ]
    }

    pub fn storage_port(&self) -> u16 {
        self.metrics.storage
    }

    fn write_failover_toml(&self) {
        let node = |n: &Node| n.failover_toml_entry("postgres", "library");
        let pid = self.stack.storage.pid().expect("storage pid");
        let nodes: String = self.cluster.nodes().into_iter().map(node).collect();
        let text = format!(
            "catchup = \"3s\"\n\n{nodes}[storage]\nendpoint = \"{}\"\nconfig = \"{}\"\nreload = \"pid\"\npid = {pid}\nswitch_wait = \"30s\"\n",
            self.stack.ports().storage_endpoint(),
            self.stack.storage.spec().config_path().display(),
        );
        std::fs::write(&self.failover_toml, text).unwrap();
    }

    /// One request through the load manager; any reply counts.
    pub fn request(&self, op: Operacion, isbn: &str, usuario: &str) {
        let mut client = Client::new(ClientConfig {
            endpoints: vec![self.stack.ports().frontend_endpoint()],
            timeout: Duration::from_secs(6),
            retries: 1,
            curve: None,
        })
        .unwrap();
        let p = Peticion {
            operacion: op,
            isbn: isbn.into(),
            usuario: usuario.into(),
            id: None,
        };
        let r = client
            .request(&p)
            .unwrap_or_else(|e| panic!("{op} {isbn} {usuario}: {e}"));
        assert!(r.exito, "{op} {isbn} {usuario}: {}", r.mensaje);
    }

    pub fn kill_actor(&mut self, op: Operacion) {
        self.stack.actor(op).unwrap().kill9().unwrap();
    }

    /// `biblioteca-failover --config .. ARGS`: (success, output).
    pub fn failover(&self, args: &[&str]) -> (bool, String) {
        let (ok, text) = run_failover(&self.failover_toml, args).unwrap();
        println!("$ biblioteca-failover {}\n{text}", args.join(" "));
        (ok, text)
    }

    /// Waits until `path` on `port` answers `want`.
    pub fn wait_status(&self, port: u16, path: &str, want: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = status(port, path);
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{path} on {port}: {got}, wanted {want}\n{}",
                self.stack.storage.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops everything and removes the directory.
    pub fn finish(self) {
        let dir = self.dir.clone();
        drop(self);
        let _ = std::fs::remove_dir_all(dir);
    }
}
