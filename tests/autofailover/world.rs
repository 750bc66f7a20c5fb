//! One test's world for the automatic mode: the failover suite's
//! PostgreSQL nodes and services ([`Env`]), a three-member etcd, one
//! `biblioteca-failover agent` per database node and one beside the
//! storage manager, all real processes.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use biblioteca_failover::agent::Leader;
use biblioteca_failover::sync_record::SyncRecord;
use biblioteca_protocol::config::ReplicationMode;
use biblioteca_stack::launch::find_binary;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::env::Env;
use crate::proxy::Relay;
use biblioteca_stack::etcd::EtcdCluster;

/// The leader key's lifetime in this suite (the documented default).
pub const TTL: Duration = Duration::from_secs(5);

pub struct World {
    /// Agents stop before etcd and the servers (field order).
    pub agents: BTreeMap<String, Child>,
    pub etcd: EtcdCluster,
    pub env: Env,
}

/// The agent beside the storage manager.
pub const STORAGE_AGENT: &str = "storage";

impl World {
    pub fn start(tag: &str, slot: u16, standbys: usize) -> World {
        let env = Env::with(tag, slot, standbys, ReplicationMode::Estricta);
        let etcd = EtcdCluster::start(&env.dir, 23000 + slot * 20).unwrap();
        let endpoints: Vec<String> = etcd
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect();
        let mut text = std::fs::read_to_string(&env.failover_toml).unwrap();
        text = format!(
            "{text}\n[auto]\nenabled = true\netcd = [{}]\nprefix = \"/biblioteca-test\"\nttl = \"{}s\"\nloop_wait = \"1s\"\n",
            endpoints.join(", "),
            TTL.as_secs()
        );
        std::fs::write(&env.failover_toml, text).unwrap();
        let mut w = World {
            agents: BTreeMap::new(),
            etcd,
            env,
        };
        let names: Vec<String> = w
            .env
            .cluster
            .nodes()
            .iter()
            .map(|n| n.name.clone())
            .collect();
        for n in names {
            w.spawn_agent(&n);
        }
        w.spawn_agent(STORAGE_AGENT);
        let primary = w.env.primary().name.clone();
        w.wait_leader(&primary, Duration::from_secs(20));
        let mut standbys = w.standby_names();
        standbys.sort();
        w.wait_sync_record(&standbys, Duration::from_secs(20));
        w
    }

    pub fn sync_record(&self) -> Option<SyncRecord> {
        let kv = self
            .etcd
            .client()
            .get("/biblioteca-test/sync")
            .ok()
            .flatten()?;
        serde_json::from_str(&kv.value).ok()
    }

    /// Until the sync record names exactly `standbys` (sorted).
    pub fn wait_sync_record(&self, standbys: &[String], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let mut now = self.sync_record().map(|r| r.standbys).unwrap_or_default();
            now.sort();
            if now == standbys {
                return;
            }
            if Instant::now() >= deadline {
                self.dump_logs();
                panic!(
                    "the sync record never named {standbys:?}: {:?}",
                    self.sync_record()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The standbys' names, in the cluster's order.
    pub fn standby_names(&self) -> Vec<String> {
        self.env
            .cluster
            .standbys()
            .iter()
            .map(|n| n.name.clone())
            .collect()
    }

    pub fn spawn_agent(&mut self, node: &str) {
        let config = self.env.failover_toml.clone();
        self.spawn_agent_with(node, &config);
    }

    /// Restarts `node`'s agent with its etcd traffic through relays the
    /// test can cut.
    pub fn relay_agent(&mut self, node: &str) -> Vec<Relay> {
        let relays: Vec<Relay> = self
            .etcd
            .members
            .iter()
            .map(|m| Relay::start(m.client))
            .collect();
        let text = std::fs::read_to_string(&self.env.failover_toml).unwrap();
        let mut relayed = text.clone();
        for (m, r) in self.etcd.members.iter().zip(&relays) {
            relayed = relayed.replace(
                &format!("http://127.0.0.1:{}\"", m.client),
                &format!("http://127.0.0.1:{}\"", r.port),
            );
        }
        assert_ne!(relayed, text, "no etcd endpoint replaced");
        let config = self.env.dir.join(format!("failover-{node}.toml"));
        std::fs::write(&config, relayed).unwrap();
        self.kill_agent(node);
        self.spawn_agent_with(node, &config);
        relays
    }

    fn spawn_agent_with(&mut self, node: &str, config: &std::path::Path) {
        let bin = find_binary("biblioteca-failover", None).unwrap();
        let log = std::fs::File::create(self.env.dir.join(format!("agent-{node}.log"))).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg("--config").arg(config).arg("agent");
        if node != STORAGE_AGENT {
            cmd.args(["--node", node]);
        }
        let child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agents.insert(node.to_string(), child);
    }

    pub fn agent_log(&self, node: &str) -> String {
        std::fs::read_to_string(self.env.dir.join(format!("agent-{node}.log"))).unwrap_or_default()
    }

    pub fn kill_agent(&mut self, node: &str) {
        if let Some(mut c) = self.agents.remove(node) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal_agent(&self, node: &str, sig: Signal) {
        let c = &self.agents[node];
        kill(Pid::from_raw(c.id() as i32), sig).unwrap();
    }

    /// The leader key: its holder and revision.
    pub fn leader(&self) -> Option<(Leader, i64)> {
        let kv = self
            .etcd
            .client()
            .get("/biblioteca-test/leader")
            .ok()
            .flatten()?;
        Leader::parse(&kv).map(|l| (l, kv.mod_revision))
    }

    /// Until `node` holds the leader key with its promotion done.
    pub fn wait_leader(&self, node: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((l, _)) = self.leader() {
                if l.node == node && l.promoted {
                    return;
                }
            }
            if Instant::now() >= deadline {
                self.dump_logs();
                panic!("{node} never became the leader: {:?}", self.leader());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn dump_logs(&self) {
        for name in self.agents.keys() {
            let log = self.agent_log(name);
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            println!("--- agent {name} ---");
            for l in tail.iter().rev() {
                println!("{l}");
            }
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        let names: Vec<String> = self.agents.keys().cloned().collect();
        for n in names {
            self.kill_agent(&n);
        }
    }
}
