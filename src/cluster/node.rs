//! One PostgreSQL server of a local cluster and what tests and tools do to it:
//! start, stop, SIGKILL, promote, and run SQL through `psql` exactly as the
//! guide does (`psql -h 127.0.0.1 -p PORT -U app -d library -tAc ...`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::pg::PgBin;
use super::ClusterError;

/// Role owning the application database; what the services log in as.
pub const APP_USER: &str = "app";
/// The application database.
pub const APP_DB: &str = "library";
/// The bootstrap superuser created by `initdb -U postgres`.
pub const SUPERUSER: &str = "postgres";

/// How `pg_ctl stop` shuts a server down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Waits for clients to disconnect.
    Smart,
    /// Disconnects clients, checkpoints: a clean shutdown.
    Fast,
    /// No checkpoint: the next start runs crash recovery.
    Immediate,
}

impl StopMode {
    pub fn as_str(self) -> &'static str {
        match self {
            StopMode::Smart => "smart",
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// One server: its name (`primary`, `standby`), port and directories.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub port: u16,
    /// The data directory (`PGDATA`).
    pub data_dir: PathBuf,
    /// Where the server's Unix socket lives (inside the cluster directory).
    pub socket_dir: PathBuf,
    /// The server log written by `pg_ctl -l`.
    pub log_file: PathBuf,
    /// Working directory for commands (the cluster directory).
    pub base_dir: PathBuf,
    pub pg: PgBin,
}

impl Node {
    /// libpq connection string over TCP, e.g. for the storage manager's config.
    pub fn conninfo(&self, user: &str, db: &str) -> String {
        format!("host=127.0.0.1 port={} user={user} dbname={db}", self.port)
    }

    /// This node as a `[[nodes]]` entry of `biblioteca-failover`'s TOML,
    /// connecting as `user` to `db`.
    pub fn failover_toml_entry(&self, user: &str, db: &str) -> String {
        format!(
            "[[nodes]]\nname = \"{}\"\nconninfo = \"{}\"\ndata_dir = \"{}\"\nlog_file = \"{}\"\n\n",
            self.name,
            self.conninfo(user, db),
            self.data_dir.display(),
            self.log_file.display()
        )
    }

    /// `pg_ctl -D DATA ARGS..` (as the PostgreSQL user when root).
    pub fn pg_ctl<I, S>(&self, args: I) -> Result<String, ClusterError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = self.pg.command("pg_ctl", &self.base_dir);
        cmd.arg("-D").arg(&self.data_dir).args(args);
        let out = super::pg::run_command(&mut cmd)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) -> Result<(), ClusterError> {
        let log = self.log_file.clone();
        self.pg_ctl([
            "-l".as_ref(),
            log.as_os_str(),
            "-w".as_ref(),
            "-t".as_ref(),
            "60".as_ref(),
            "start".as_ref(),
        ])
        .map(|_| ())
        .map_err(|e| self.with_log_tail(e))
    }

    /// `pg_ctl stop -m MODE -w`.
    pub fn stop(&self, mode: StopMode) -> Result<(), ClusterError> {
        self.pg_ctl(["-m", mode.as_str(), "-w", "-t", "60", "stop"])
            .map(|_| ())
    }

    /// `pg_ctl reload`: re-reads the configuration files.
    pub fn reload(&self) -> Result<(), ClusterError> {
        self.pg_ctl(["reload"]).map(|_| ())
    }

    /// Whether a postmaster answers for this data directory (`pg_ctl status`).
    pub fn is_running(&self) -> bool {
        self.pg_ctl(["status"]).is_ok()
    }

    /// The postmaster's pid from `postmaster.pid`, if the file exists.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// SIGKILL to the postmaster, like a machine losing power (the backends
    /// notice and exit on their own); waits until the process is gone.
    pub fn kill9(&self) -> Result<(), ClusterError> {
        let pid = self.postmaster_pid().ok_or_else(|| ClusterError::State {
            node: self.name.clone(),
            what: "no postmaster.pid: server not running".into(),
        })?;
        let pid = Pid::from_raw(pid);
        kill(pid, Signal::SIGKILL).map_err(|e| ClusterError::State {
            node: self.name.clone(),
            what: format!("kill -9 {pid}: {e}"),
        })?;
        wait_until(
            Duration::from_secs(10),
            "postmaster to die after SIGKILL",
            || Ok(kill(pid, None).is_err()),
        )
    }

    /// `pg_ctl promote -w`: ends recovery, the node becomes a primary.
    pub fn promote(&self) -> Result<(), ClusterError> {
        self.pg_ctl(["-w", "-t", "60", "promote"]).map(|_| ())
    }

    /// Runs `query` as `app` on `library` and returns psql's `-tA` output, trimmed.
    pub fn sql(&self, query: &str) -> Result<String, ClusterError> {
        self.sql_as(APP_USER, APP_DB, query)
    }

    /// Runs `query` as `user` on `db` (`psql -tA -v ON_ERROR_STOP=1 -c`).
    pub fn sql_as(&self, user: &str, db: &str, query: &str) -> Result<String, ClusterError> {
        let mut cmd = self.pg.command("psql", &self.base_dir);
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(["-U", user, "-d", db, "-tAc", query])
            .env("PGCONNECT_TIMEOUT", "5");
        let out = super::pg::run_command(&mut cmd)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `SELECT pg_is_in_recovery()`: true on a standby.
    pub fn is_in_recovery(&self) -> Result<bool, ClusterError> {
        Ok(self.sql("SELECT pg_is_in_recovery()")? == "t")
    }

    /// Waits until the server answers a query.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), ClusterError> {
        let what = format!("{} to accept connections", self.name);
        wait_until(timeout, &what, || {
            Ok(self.sql_as(SUPERUSER, "postgres", "SELECT 1").is_ok())
        })
    }

    /// The last lines of the server log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_file, lines)
    }

    fn with_log_tail(&self, e: ClusterError) -> ClusterError {
        match e {
            ClusterError::Command {
                command,
                status,
                stderr,
            } => ClusterError::Command {
                command,
                status,
                stderr: format!(
                    "{stderr}\n--- {} ---\n{}",
                    self.log_file.display(),
                    self.log_tail(20)
                ),
            },
            other => other,
        }
    }
}

/// The last `lines` lines of a text file ("" when unreadable).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls `check` every 100 ms until it says true, or fails with a timeout.
pub fn wait_until<F>(timeout: Duration, what: &str, mut check: F) -> Result<(), ClusterError>
where
    F: FnMut() -> Result<bool, ClusterError>,
{
    let start = Instant::now();
    loop {
        if check()? {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(ClusterError::Timeout {
                what: what.to_string(),
                secs: timeout.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
