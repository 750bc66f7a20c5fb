//! A real three-member etcd (Debian's `etcd-server` 3.4) on loopback ports
//! below 32768, in a directory of the caller's: the automatic failover's
//! suite and its benchmark run against it. Members can be killed and
//! restarted one by one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::launch::port_in_use;
use biblioteca_failover::etcd::Etcd;

const ETCD: &str = "/usr/bin/etcd";

pub struct Member {
    pub name: String,
    pub client: u16,
    peer: u16,
    child: Option<Child>,
}

pub struct EtcdCluster {
    dir: PathBuf,
    pub members: Vec<Member>,
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdLaunchError {
    #[error("etcd is not installed (apt-get install etcd-server; .ci/setup-debian does)")]
    NotInstalled,
    #[error("no free port from {0}")]
    NoPort(u16),
    #[error("etcd {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd: {0}")]
    NotReady(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EtcdLaunchError {
    let what = what.into();
    move |source| EtcdLaunchError::Io { what, source }
}

fn free_from(start: u16, taken: &[u16]) -> Result<u16, EtcdLaunchError> {
    (start..start.saturating_add(400))
        .find(|p| !taken.contains(p) && !port_in_use(*p))
        .ok_or(EtcdLaunchError::NoPort(start))
}

impl EtcdCluster {
    /// Three members with client and peer ports from `base`.
    pub fn start(dir: &Path, base: u16) -> Result<EtcdCluster, EtcdLaunchError> {
        if !Path::new(ETCD).exists() {
            return Err(EtcdLaunchError::NotInstalled);
        }
        let mut taken = Vec::new();
        let mut members = Vec::new();
        for i in 0..3 {
            let client = free_from(base + i * 2, &taken)?;
            taken.push(client);
            let peer = free_from(client + 1, &taken)?;
            taken.push(peer);
            members.push(Member {
                name: format!("etcd{i}"),
                client,
                peer,
                child: None,
            });
        }
        let mut c = EtcdCluster {
            dir: dir.join("etcd"),
            members,
        };
        for i in 0..3 {
            c.spawn(i, "new")?;
        }
        c.wait_healthy()?;
        Ok(c)
    }

    fn spawn(&mut self, i: usize, state: &str) -> Result<(), EtcdLaunchError> {
        let cluster: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect();
        let m = &mut self.members[i];
        let data = self.dir.join(&m.name);
        std::fs::create_dir_all(&data).map_err(io(data.display().to_string()))?;
        let log_path = self.dir.join(format!("{}.log", m.name));
        let log = std::fs::File::create(&log_path).map_err(io(log_path.display().to_string()))?;
        let child = Command::new(ETCD)
            .args(["--name", &m.name, "--data-dir"])
            .arg(&data)
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{}", m.client),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{}", m.client),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer),
                "--initial-cluster",
                &cluster.join(","),
                "--initial-cluster-token",
                "biblioteca-test",
                "--initial-cluster-state",
                state,
                "--log-level",
                "warn",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(io("start"))?;
        m.child = Some(child);
        Ok(())
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect()
    }

    pub fn client(&self) -> Etcd {
        Etcd::new(&self.endpoints(), Duration::from_secs(1))
    }

    /// Until a linearizable read through every running member succeeds.
    pub fn wait_healthy(&self) -> Result<(), EtcdLaunchError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let one = Etcd::new(
                &[format!("http://127.0.0.1:{}", m.client)],
                Duration::from_secs(1),
            );
            while one.get("/health").is_err() {
                if Instant::now() >= deadline {
                    return Err(EtcdLaunchError::NotReady(format!("{} not healthy", m.name)));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// The index of the etcd leader.
    pub fn leader(&self) -> Result<usize, EtcdLaunchError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for (i, m) in self.members.iter().enumerate() {
                let one = Etcd::new(
                    &[format!("http://127.0.0.1:{}", m.client)],
                    Duration::from_secs(1),
                );
                if m.child.is_some() && one.is_leader().unwrap_or(false) {
                    return Ok(i);
                }
            }
            if Instant::now() >= deadline {
                return Err(EtcdLaunchError::NotReady("no leader".into()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        tracing::info!(member = %self.members[i].name, "etcd member killed");
    }

    /// Brings a killed member back with its data directory.
    pub fn restart(&mut self, i: usize) -> Result<(), EtcdLaunchError> {
        self.spawn(i, "existing")?;
        tracing::info!(member = %self.members[i].name, "etcd member restarted");
        Ok(())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
