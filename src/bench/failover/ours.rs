//! Our automatic mode as the benchmark runs it: a primary with two
//! synchronous standbys (`ANY 1`, `biblioteca_cluster`) and one
//! `biblioteca-failover agent` per node on the shared etcd.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use biblioteca_cluster::{Cluster, ClusterSpec, SUPERUSER};
use biblioteca_failover::agent::Leader;
use biblioteca_failover::etcd::Etcd;
use biblioteca_stack::launch::{find_binary, free_port};

use super::ledger::Target;
use super::{kill_pid, BenchError};

pub struct Ours {
    /// Agents stop before the servers (field order).
    agents: Vec<(String, Child)>,
    cluster: Cluster,
    etcd: Etcd,
    prefix: String,
}

impl Ours {
    pub fn start(
        dir: &Path,
        endpoints: &[String],
        prefix: &str,
        ttl: Duration,
    ) -> Result<Ours, BenchError> {
        let mut spec = ClusterSpec::new(dir.join("pg"));
        spec.primary_port = free_port()?;
        spec.standby_port = free_port()?;
        spec.standbys = 2;
        let cluster = Cluster::create(spec)?;
        let mut text = String::new();
        for n in cluster.nodes() {
            text += &n.failover_toml_entry(SUPERUSER, "postgres");
        }
        let quoted: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
        text += &format!(
            "[auto]\nenabled = true\netcd = [{}]\nprefix = \"{prefix}\"\nttl = \"{}s\"\nloop_wait = \"1s\"\n",
            quoted.join(", "),
            ttl.as_secs()
        );
        let toml = dir.join("failover.toml");
        std::fs::write(&toml, text)
            .map_err(|e| BenchError::Io(format!("{}: {e}", toml.display())))?;
        let bin = find_binary("biblioteca-failover", None)?;
        let mut agents = Vec::new();
        for n in cluster.nodes() {
            let log = std::fs::File::create(dir.join(format!("agent-{}.log", n.name)))
                .map_err(|e| BenchError::Io(e.to_string()))?;
            let child = Command::new(&bin)
                .arg("--config")
                .arg(&toml)
                .args(["agent", "--node", &n.name])
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| BenchError::Io(format!("agent: {e}")))?;
            agents.push((n.name.clone(), child));
        }
        let ours = Ours {
            agents,
            cluster,
            etcd: Etcd::new(endpoints, Duration::from_secs(1)),
            prefix: prefix.to_string(),
        };
        ours.wait_ready()?;
        Ok(ours)
    }

    fn leader(&self) -> Option<Leader> {
        let kv = self.etcd.get(&format!("{}/leader", self.prefix)).ok()??;
        Leader::parse(&kv).filter(|l| l.promoted)
    }

    /// The leader key is held and both standbys are in the sync record.
    fn wait_ready(&self) -> Result<(), BenchError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let record = self
                .etcd
                .get(&format!("{}/sync", self.prefix))
                .ok()
                .flatten()
                .and_then(|kv| serde_json::from_str::<serde_json::Value>(&kv.value).ok());
            let standbys = record
                .as_ref()
                .and_then(|r| r["standbys"].as_array().map(Vec::len))
                .unwrap_or(0);
            if self.leader().is_some() && standbys == 2 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(BenchError::NotReady("our agents".into()));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn targets(&self) -> Vec<Target> {
        self.cluster
            .nodes()
            .iter()
            .map(|n| Target {
                name: n.name.clone(),
                conninfo: n.conninfo(SUPERUSER, "postgres"),
            })
            .collect()
    }

    pub fn primary(&self) -> Option<String> {
        self.leader().map(|l| l.node)
    }

    /// SIGKILL of the primary's agent and postmaster at once.
    pub fn crash_primary(&mut self) -> Result<String, BenchError> {
        let name = self
            .primary()
            .ok_or(BenchError::NotReady("no leader".into()))?;
        if let Some((_, c)) = self.agents.iter_mut().find(|(n, _)| *n == name) {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(n) = self.cluster.nodes().into_iter().find(|n| n.name == name) {
            n.kill9()?;
        }
        Ok(name)
    }

    pub fn freeze_leader(&self, secs: Duration) -> Result<(), BenchError> {
        let name = self
            .primary()
            .ok_or(BenchError::NotReady("no leader".into()))?;
        let pid = self
            .agents
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| c.id() as i32)
            .ok_or(BenchError::NotReady("no agent".into()))?;
        super::freeze(pid, secs)
    }
}

impl Drop for Ours {
    fn drop(&mut self) {
        for (_, c) in &mut self.agents {
            kill_pid(c.id() as i32);
            let _ = c.wait();
        }
    }
}
