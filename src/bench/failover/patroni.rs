//! Debian's Patroni 3.0.2 as the benchmark runs it: three PostgreSQL 15
//! nodes it bootstraps itself, `synchronous_mode` and
//! `synchronous_mode_strict` on, the same three-member etcd (`etcd3`),
//! each Patroni process run as `postgres`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use biblioteca_stack::launch::free_port;

use super::ledger::Target;
use super::{kill_pid, BenchError};

/// Patroni's `ttl`, `loop_wait`, `retry_timeout` (seconds).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub ttl: u64,
    pub loop_wait: u64,
    pub retry_timeout: u64,
}

/// Patroni's defaults.
pub const DEFAULTS: Timing = Timing {
    ttl: 30,
    loop_wait: 10,
    retry_timeout: 10,
};

struct Member {
    name: String,
    port: u16,
    data_dir: PathBuf,
    child: Child,
}

pub struct Patroni {
    members: Vec<Member>,
}

fn postgres_ids() -> Result<(u32, u32), BenchError> {
    let user = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .ok_or(BenchError::NotReady("no postgres user".into()))?;
    Ok((user.uid.as_raw(), user.gid.as_raw()))
}

impl Patroni {
    pub fn start(
        dir: &Path,
        endpoints: &[String],
        scope: &str,
        t: Timing,
    ) -> Result<Patroni, BenchError> {
        let (uid, gid) = postgres_ids()?;
        let io = |e: std::io::Error| BenchError::Io(e.to_string());
        std::fs::create_dir_all(dir).map_err(io)?;
        let chown = |p: &Path| {
            nix::unistd::chown(p, Some(uid.into()), Some(gid.into()))
                .map_err(|e| BenchError::Io(format!("chown {}: {e}", p.display())))
        };
        chown(dir)?;
        let hosts: Vec<String> = endpoints
            .iter()
            .map(|e| e.trim_start_matches("http://").to_string())
            .collect();
        let mut members = Vec::new();
        for i in 0..3 {
            let name = format!("pg{i}");
            let (port, api) = (free_port()?, free_port()?);
            let data_dir = dir.join(&name);
            let yaml = format!(
                r#"scope: {scope}
namespace: /patroni/
name: {name}
log: {{level: WARNING}}
restapi: {{listen: "127.0.0.1:{api}", connect_address: "127.0.0.1:{api}"}}
etcd3: {{hosts: "{hosts}"}}
bootstrap:
  dcs:
    ttl: {ttl}
    loop_wait: {loop_wait}
    retry_timeout: {retry}
    synchronous_mode: true
    synchronous_mode_strict: true
    postgresql:
      use_pg_rewind: true
      parameters: {{wal_log_hints: "on", max_wal_senders: 10, max_replication_slots: 10, wal_keep_size: "256MB"}}
  initdb: [{{encoding: UTF8}}]
  pg_hba: ["local all all trust", "host all all 127.0.0.1/32 trust", "host replication all 127.0.0.1/32 trust"]
postgresql:
  listen: "127.0.0.1:{port}"
  connect_address: "127.0.0.1:{port}"
  data_dir: "{data}"
  bin_dir: /usr/lib/postgresql/15/bin
  pgpass: "{dir}/pgpass-{name}"
  authentication:
    superuser: {{username: postgres, password: postgres}}
    replication: {{username: replicator, password: replicator}}
  parameters: {{unix_socket_directories: "{dir}"}}
"#,
                hosts = hosts.join(","),
                ttl = t.ttl,
                loop_wait = t.loop_wait,
                retry = t.retry_timeout,
                data = data_dir.display(),
                dir = dir.display(),
            );
            let config = dir.join(format!("{name}.yml"));
            std::fs::write(&config, yaml).map_err(io)?;
            chown(&config)?;
            let log = std::fs::File::create(dir.join(format!("{name}.log"))).map_err(io)?;
            let child = Command::new("/usr/bin/patroni")
                .arg(&config)
                .uid(uid)
                .gid(gid)
                .current_dir(dir)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| BenchError::Io(format!("patroni (apt-get install patroni): {e}")))?;
            members.push(Member {
                name,
                port,
                data_dir,
                child,
            });
            // The first one bootstraps; the others clone it.
            if i == 0 {
                std::thread::sleep(Duration::from_secs(2));
            }
        }
        let p = Patroni { members };
        p.wait_ready()?;
        Ok(p)
    }

    pub fn targets(&self) -> Vec<Target> {
        self.members
            .iter()
            .map(|m| Target {
                name: m.name.clone(),
                conninfo: format!(
                    "host=127.0.0.1 port={} user=postgres dbname=postgres",
                    m.port
                ),
            })
            .collect()
    }

    fn query(&self, m: &Member, sql: &str) -> Option<postgres::Row> {
        let mut cfg: postgres::Config = format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            m.port
        )
        .parse()
        .ok()?;
        cfg.connect_timeout(Duration::from_millis(500));
        cfg.connect(postgres::NoTls).ok()?.query_one(sql, &[]).ok()
    }

    pub fn primary(&self) -> Option<String> {
        self.members
            .iter()
            .find(|m| {
                self.query(m, "SELECT NOT pg_is_in_recovery()")
                    .is_some_and(|r| r.get::<_, bool>(0))
            })
            .map(|m| m.name.clone())
    }

    /// A primary with two streaming standbys, one of them synchronous.
    fn wait_ready(&self) -> Result<(), BenchError> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ready = self.primary().and_then(|p| {
                let m = self.members.iter().find(|m| m.name == p)?;
                self.query(
                    m,
                    "SELECT count(*) FILTER (WHERE state = 'streaming') = 2 AND bool_or(sync_state = 'sync') FROM pg_stat_replication",
                )
            });
            if ready.is_some_and(|r| r.get::<_, Option<bool>>(0).unwrap_or(false)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(BenchError::NotReady("Patroni".into()));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn postmaster_pid(m: &Member) -> Option<i32> {
        std::fs::read_to_string(m.data_dir.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// SIGKILL of the primary's Patroni and postmaster at once.
    pub fn crash_primary(&mut self) -> Result<String, BenchError> {
        let name = self
            .primary()
            .ok_or(BenchError::NotReady("no primary".into()))?;
        if let Some(m) = self.members.iter_mut().find(|m| m.name == name) {
            let pm = Self::postmaster_pid(m);
            kill_pid(m.child.id() as i32);
            if let Some(pid) = pm {
                kill_pid(pid);
            }
            let _ = m.child.wait();
        }
        Ok(name)
    }

    pub fn freeze_leader(&self, secs: Duration) -> Result<(), BenchError> {
        let name = self
            .primary()
            .ok_or(BenchError::NotReady("no primary".into()))?;
        let pid = self
            .members
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.child.id() as i32)
            .ok_or(BenchError::NotReady("no Patroni".into()))?;
        super::freeze(pid, secs)
    }
}

impl Drop for Patroni {
    fn drop(&mut self) {
        for m in &mut self.members {
            let pm = Self::postmaster_pid(m);
            kill_pid(m.child.id() as i32);
            let _ = m.child.wait();
            if let Some(pid) = pm {
                kill_pid(pid);
            }
        }
    }
}
