//! Local PostgreSQL clusters (a primary and one or more streaming standbys)
//! for the demo, the tests and the failover tool.
//!
//! [`Cluster::create`] builds everything inside one directory: `initdb` of the
//! primary, its settings (loopback only, replication, synchronous commit to the
//! standby named `standby`, or with several standbys `standby1`..`standbyN`
//! under quorum commit `ANY k (...)`), trust authentication on 127.0.0.1, the roles
//! `biblioteca_owner` (owner of database `library` and, once migrated, of its
//! tables: schema changes run as it), `app` (the services' login: no
//! ownership, only the row privileges the migrations grant it, plus the right
//! to change `synchronous_standby_names` for the degraded mode) and
//! `replicator`, a physical replication slot per standby,
//! then each standby by `pg_basebackup -R -S NAME`, started and waited for
//! until `pg_stat_replication` shows it streaming (and `sync` when
//! synchronous). As root every PostgreSQL program runs as `postgres` through
//! `runuser`, in directories that user owns ([`pg`]). Each [`Node`] can be
//! started, stopped, killed with SIGKILL, promoted and queried ([`node`]).
//! [`Cluster::require_passwords`] switches a created cluster to
//! `scram-sha-256` with generated passwords ([`auth`]).
//!
//! Layout of `dir`: `primary/` and `standby/` (or `standby1/`..) data
//! directories, `run/` (Unix sockets), `<name>.log` (server logs). Dropping a
//! [`Cluster`] stops every server (immediate) and removes `dir` unless
//! [`ClusterSpec::keep`] is set.
//!
//! Settings that differ per node (port, socket directory, the synchronous
//! standby list) live in `node.conf`, included from `postgresql.conf`; the
//! standby's copy is rewritten after the base backup, so a promoted standby
//! does not wait for a synchronous standby that does not exist.

pub mod auth;
pub mod node;
pub mod pg;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use node::{wait_until, Node, StopMode, APP_DB, APP_USER, SUPERUSER};
pub use pg::{synchronous_standby_names, PgBin};

/// Name of the standby of a one-standby cluster: its `application_name`
/// and its replication slot (with several: `standby1`, `standby2`, ...).
pub const STANDBY_NAME: &str = "standby";
/// Role used by the standby to stream WAL.
pub const REPLICATION_USER: &str = "replicator";
/// Role owning database `library` and its schema; `biblioteca-almacenamiento
/// migrate --user biblioteca_owner` runs as it, the services never do.
pub const OWNER_USER: &str = "biblioteca_owner";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot find the PostgreSQL binaries: {0}")]
    NoBinaries(String),
    #[error("running as root needs a `postgres` user to run PostgreSQL, and there is none")]
    NoPostgresUser,
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("timed out after {secs} s waiting for {what}")]
    Timeout { what: String, secs: u64 },
    #[error("{node}: {what}")]
    State { node: String, what: String },
}

/// What to create.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Holds both data directories, sockets and logs; created if missing,
    /// must not contain a previous cluster.
    pub dir: PathBuf,
    pub primary_port: u16,
    /// The first standby's port; further standbys take the next ports.
    pub standby_port: u16,
    /// How many standbys (at least 1).
    pub standbys: usize,
    /// With several standbys, a commit waits for this many of them
    /// (`ANY quorum (...)`).
    pub quorum: usize,
    /// Commits wait for the standby (`synchronous_standby_names = 'standby'`).
    pub synchronous: bool,
    /// Leave servers and files behind on drop (for the demo or debugging).
    pub keep: bool,
}

impl ClusterSpec {
    /// The demo's defaults: ports 55432/55433, synchronous, removed on drop.
    pub fn new(dir: impl Into<PathBuf>) -> ClusterSpec {
        ClusterSpec {
            dir: dir.into(),
            primary_port: 55432,
            standby_port: 55433,
            standbys: 1,
            quorum: 1,
            synchronous: true,
            keep: false,
        }
    }
}

/// A running primary and its streaming standbys.
#[derive(Debug)]
pub struct Cluster {
    spec: ClusterSpec,
    primary: Node,
    standbys: Vec<Node>,
}

/// The standbys' names: `standby` alone, else `standby1`..`standbyN`.
pub fn standby_names(count: usize) -> Vec<String> {
    match count {
        0 | 1 => vec![STANDBY_NAME.to_string()],
        n => (1..=n).map(|i| format!("{STANDBY_NAME}{i}")).collect(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterError + '_ {
    move |source| ClusterError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Cluster {
    /// Creates and starts both servers; on failure whatever was started is
    /// stopped again (the directory is left for inspection).
    pub fn create(spec: ClusterSpec) -> Result<Cluster, ClusterError> {
        let pg = PgBin::detect()?;
        let dir = absolute(&spec.dir)?;
        if dir.join("primary").exists() {
            return Err(ClusterError::State {
                node: "cluster".into(),
                what: format!("{} already holds a cluster", dir.display()),
            });
        }
        pg.make_dir(&dir)?;
        let socket_dir = dir.join("run");
        pg.make_dir(&socket_dir)?;
        let node = |name: &str, port: u16| Node {
            name: name.to_string(),
            port,
            data_dir: dir.join(name),
            socket_dir: socket_dir.clone(),
            log_file: dir.join(format!("{name}.log")),
            base_dir: dir.clone(),
            pg: pg.clone(),
        };
        let standbys = standby_names(spec.standbys)
            .iter()
            .zip(spec.standby_port..)
            .map(|(name, port)| node(name, port))
            .collect();
        let mut cluster = Cluster {
            primary: node("primary", spec.primary_port),
            standbys,
            spec: ClusterSpec {
                dir,
                // Until fully built, a failure must not delete the evidence.
                keep: true,
                ..spec.clone()
            },
        };
        if let Err(e) = cluster.build() {
            for n in cluster.standbys.iter().chain([&cluster.primary]) {
                if n.postmaster_pid().is_some() {
                    let _ = n.stop(StopMode::Immediate);
                }
            }
            return Err(e);
        }
        cluster.spec.keep = spec.keep;
        Ok(cluster)
    }

    fn build(&self) -> Result<(), ClusterError> {
        let p = &self.primary;
        let pg = &p.pg;
        pg.run(
            "initdb",
            [
                "-D".as_ref(),
                p.data_dir.as_os_str(),
                "-U".as_ref(),
                SUPERUSER.as_ref(),
                "--auth=trust".as_ref(),
                "--no-sync".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--locale=C".as_ref(),
            ],
            &self.spec.dir,
        )?;
        append(
            &p.data_dir.join("postgresql.conf"),
            "\n# biblioteca cluster\n\
             listen_addresses = '127.0.0.1'\n\
             wal_level = replica\n\
             max_wal_senders = 10\n\
             max_replication_slots = 10\n\
             wal_keep_size = '256MB'\n\
             wal_log_hints = on\n\
             hot_standby = on\n\
             # hot_standby_feedback stays off: it holds back HOT pruning of\n\
             # the guide's four hot rows (docs/benchmark.md, run M)\n\
             synchronous_commit = on\n\
             # a silent network noticed in seconds (docs/failover.md)\n\
             wal_sender_timeout = '10s'\n\
             wal_receiver_timeout = '10s'\n\
             wal_receiver_status_interval = '2s'\n\
             wal_retrieve_retry_interval = '2s'\n\
             tcp_keepalives_idle = 5\n\
             tcp_keepalives_interval = 2\n\
             tcp_keepalives_count = 3\n\
             tcp_user_timeout = '10s'\n\
             max_connections = 200\n\
             include_if_exists = 'node.conf'\n",
        )?;
        write_file(
            &p.data_dir.join("pg_hba.conf"),
            "# biblioteca cluster: trust on loopback (security comes later)\n\
             local all all trust\n\
             local replication all trust\n\
             host all all 127.0.0.1/32 trust\n\
             host replication all 127.0.0.1/32 trust\n",
        )?;
        // Synchronous commit is switched on only once the standby streams:
        // before that, every commit (even CREATE ROLE) would wait forever.
        self.write_node_conf(p, "")?;
        p.start()?;
        // pg_monitor: the guide reads pg_stat_replication as `app` (part 3).
        // ALTER SYSTEM on synchronous_standby_names and pg_reload_conf: the
        // storage manager's degraded mode (docs/failover.md).
        let slots: String = self
            .standbys
            .iter()
            .map(|s| format!("SELECT pg_create_physical_replication_slot('{}');", s.name))
            .collect();
        p.sql_as(
            SUPERUSER,
            "postgres",
            &format!(
                "CREATE ROLE {APP_USER} LOGIN IN ROLE pg_monitor; \
                 CREATE ROLE {OWNER_USER} LOGIN; \
                 CREATE ROLE {REPLICATION_USER} LOGIN REPLICATION; \
                 GRANT ALTER SYSTEM ON PARAMETER synchronous_standby_names TO {APP_USER}; \
                 {slots}"
            ),
        )?;
        p.sql_as(
            SUPERUSER,
            "postgres",
            &format!("CREATE DATABASE {APP_DB} OWNER {OWNER_USER}"),
        )?;
        p.sql_as(
            SUPERUSER,
            APP_DB,
            &format!("GRANT EXECUTE ON FUNCTION pg_reload_conf() TO {APP_USER}"),
        )?;
        for s in &self.standbys {
            self.build_standby(s)?;
        }
        if self.spec.synchronous {
            let names: Vec<&str> = self.standbys.iter().map(|s| s.name.as_str()).collect();
            self.write_node_conf(
                p,
                &format!(
                    "synchronous_standby_names = '{}'\n",
                    synchronous_standby_names(&names, self.spec.quorum)
                ),
            )?;
            p.reload()?;
        }
        self.wait_streaming(Duration::from_secs(60))
    }

    fn build_standby(&self, s: &Node) -> Result<(), ClusterError> {
        let p = &self.primary;
        let source = format!(
            "host=127.0.0.1 port={} user={REPLICATION_USER} application_name={}",
            p.port, s.name
        );
        p.pg.run(
            "pg_basebackup",
            [
                "-d".as_ref(),
                source.as_ref(),
                "-D".as_ref(),
                s.data_dir.as_os_str(),
                "-R".as_ref(),
                "-S".as_ref(),
                s.name.as_ref(),
                "-X".as_ref(),
                "stream".as_ref(),
                "--no-sync".as_ref(),
                "-c".as_ref(),
                "fast".as_ref(),
            ],
            &self.spec.dir,
        )?;
        // Later lines win: pin the name the primary's synchronous list expects.
        append(
            &s.data_dir.join("postgresql.auto.conf"),
            &format!(
                "primary_conninfo = '{source}'\nprimary_slot_name = '{}'\n",
                s.name
            ),
        )?;
        self.write_node_conf(s, "")?;
        s.start()
    }

    fn write_node_conf(&self, n: &Node, extra: &str) -> Result<(), ClusterError> {
        let path = n.data_dir.join("node.conf");
        write_file(
            &path,
            &format!(
                "# settings of node {name}\nport = {port}\nunix_socket_directories = '{sock}'\n{extra}",
                name = n.name,
                port = n.port,
                sock = n.socket_dir.display()
            ),
        )?;
        n.pg.give(&path)
    }

    /// Waits until the primary reports every standby streaming (and `sync`,
    /// or `quorum` with several, when the cluster is synchronous).
    pub fn wait_streaming(&self, timeout: Duration) -> Result<(), ClusterError> {
        let want = match (self.spec.synchronous, self.standbys.len()) {
            (false, _) => "streaming|async",
            (true, 1) => "streaming|sync",
            (true, _) => "streaming|quorum",
        };
        wait_until(timeout, "the standbys to stream", || {
            for s in &self.standbys {
                let state = self.primary.sql_as(
                    SUPERUSER,
                    "postgres",
                    &format!(
                        "SELECT state || '|' || sync_state FROM pg_stat_replication \
                         WHERE application_name = '{}'",
                        s.name
                    ),
                )?;
                if state != want {
                    return Ok(false);
                }
            }
            Ok(true)
        })
    }

    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    pub fn dir(&self) -> &Path {
        &self.spec.dir
    }

    pub fn primary(&self) -> &Node {
        &self.primary
    }

    /// The (first) standby.
    pub fn standby(&self) -> &Node {
        &self.standbys[0]
    }

    pub fn standbys(&self) -> &[Node] {
        &self.standbys
    }

    /// Every node, primary first.
    pub fn nodes(&self) -> Vec<&Node> {
        std::iter::once(&self.primary)
            .chain(&self.standbys)
            .collect()
    }

    /// Changes whether the directory survives the drop.
    pub fn set_keep(&mut self, keep: bool) {
        self.spec.keep = keep;
    }

    /// Stops both servers (fast) without removing anything.
    pub fn stop(&self) -> Result<(), ClusterError> {
        let mut first_err = None;
        for n in self.standbys.iter().chain([&self.primary]) {
            if n.is_running() {
                if let Err(e) = n.stop(StopMode::Fast) {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.spec.keep {
            return;
        }
        for n in self.standbys.iter().chain([&self.primary]) {
            if n.postmaster_pid().is_some() && n.stop(StopMode::Immediate).is_err() {
                let _ = n.kill9();
            }
        }
        let _ = std::fs::remove_dir_all(&self.spec.dir);
    }
}

fn absolute(dir: &Path) -> Result<PathBuf, ClusterError> {
    if dir.is_absolute() {
        Ok(dir.to_path_buf())
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(dir))
            .map_err(io_err(dir))
    }
}

fn append(path: &Path, text: &str) -> Result<(), ClusterError> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(text.as_bytes()).map_err(io_err(path))
}

fn write_file(path: &Path, text: &str) -> Result<(), ClusterError> {
    std::fs::write(path, text).map_err(io_err(path))
}
