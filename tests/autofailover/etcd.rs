//! A real three-member etcd (Debian's `etcd-server` 3.4) on loopback ports
//! below 32768, in a temporary directory; members can be killed, frozen
//! and restarted one by one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use biblioteca_failover::etcd::Etcd;
use biblioteca_stack::launch::port_in_use;

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

fn free_from(start: u16, taken: &[u16]) -> u16 {
    (start..start + 400)
        .find(|p| !taken.contains(p) && !port_in_use(*p))
        .unwrap_or_else(|| panic!("no free port from {start}"))
}

impl EtcdCluster {
    /// Three members with client and peer ports from `base`.
    pub fn start(dir: &Path, base: u16) -> EtcdCluster {
        let bin = Path::new("/usr/bin/etcd");
        assert!(
            bin.exists(),
            "etcd is not installed (apt-get install etcd-server; .ci/setup-debian does)"
        );
        let mut taken = Vec::new();
        let mut members = Vec::new();
        for i in 0..3 {
            let client = free_from(base + i * 2, &taken);
            taken.push(client);
            let peer = free_from(client + 1, &taken);
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
            c.spawn(i, "new");
        }
        c.wait_healthy();
        c
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let cluster: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect();
        let m = &mut self.members[i];
        let data = self.dir.join(&m.name);
        std::fs::create_dir_all(&data).unwrap();
        let log = std::fs::File::create(self.dir.join(format!("{}.log", m.name))).unwrap();
        let child = Command::new("/usr/bin/etcd")
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
            .unwrap_or_else(|e| panic!("etcd: {e}"));
        m.child = Some(child);
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
    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let one = Etcd::new(
                &[format!("http://127.0.0.1:{}", m.client)],
                Duration::from_secs(1),
            );
            while one.get("/health").is_err() {
                assert!(Instant::now() < deadline, "etcd {} not healthy", m.name);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// The index of the etcd leader.
    pub fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for (i, m) in self.members.iter().enumerate() {
                let one = Etcd::new(
                    &[format!("http://127.0.0.1:{}", m.client)],
                    Duration::from_secs(1),
                );
                if m.child.is_some() && one.is_leader().unwrap_or(false) {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no etcd leader");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        println!("etcd member {} killed", self.members[i].name);
    }

    /// Brings a killed member back with its data directory.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i, "existing");
        println!("etcd member {} restarted", self.members[i].name);
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
