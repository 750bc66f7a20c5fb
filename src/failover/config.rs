//! `biblioteca-failover`'s TOML configuration.
//!
//! It names every database node with an administrative connection string
//! (a superuser or replication-capable role: promotion, `ALTER SYSTEM`,
//! slots), optionally a file holding that role's password and the data
//! directory this host manages for it, and the storage manager to re-point
//! after a role change (with a CURVE key it allows, when it has `[curve]`).
//! Parsing and validation go through the shared [`biblioteca_protocol::config::parse`] like
//! every other service.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

use biblioteca_protocol::config::{ConfigError, Validate};
use biblioteca_runtime::security::OperatorCurve;

pub use super::auto_config::AutoConfig;

/// One PostgreSQL node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverNode {
    /// Same name as in the storage manager's `[[database.nodes]]` and the
    /// standby's `application_name`.
    pub name: String,
    /// Administrative libpq connection string (superuser or replication role).
    pub conninfo: String,
    /// File holding the password of `conninfo`'s role (kept out of the TOML
    /// and off command lines: `pg_rewind`/`pg_basebackup` get it through a
    /// private pgpass file, a rejoined standby through `passfile=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Set when this host manages the node's files (stop, rewind, start).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Shell command starting the node; default `pg_ctl start` on `data_dir`.
    #[serde(default)]
    pub start: Option<String>,
    /// Shell command stopping the node; default `pg_ctl stop -m fast` on `data_dir`.
    #[serde(default)]
    pub stop: Option<String>,
    /// Server log for the default start; default `<data_dir>/../<dir name>.log`.
    #[serde(default)]
    pub log_file: Option<PathBuf>,
}

impl FailoverNode {
    /// The password from `password_file`, without its trailing newline.
    pub fn password(&self) -> Result<Option<String>, ConfigError> {
        biblioteca_protocol::config::read_password_file(self.password_file.as_deref())
    }

    /// Whether this host can stop and start the node.
    pub fn managed(&self) -> bool {
        self.data_dir.is_some() || (self.start.is_some() && self.stop.is_some())
    }
}

/// How the storage manager is told to re-read its config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReloadMethod {
    /// `systemctl reload UNIT`.
    Systemd,
    /// SIGHUP to `pid` or the pid in `pid_file`.
    Pid,
    /// The operator reloads it; the tool only waits for it.
    None,
}

/// The storage manager to re-point after a role change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageTarget {
    /// Its ROUTER, answering `{"operacion":"status"}`.
    pub endpoint: String,
    /// Its TOML config (`StorageConfig`), rewritten atomically with a `.bak`.
    pub config: Option<PathBuf>,
    pub reload: ReloadMethod,
    pub unit: String,
    pub pid_file: Option<PathBuf>,
    pub pid: Option<i32>,
    /// One status request waits this long for a reply.
    #[serde(with = "humantime_serde")]
    pub status_timeout: Duration,
    /// After a reload, how long to wait for it to serve from the new node.
    #[serde(with = "humantime_serde")]
    pub switch_wait: Duration,
    /// Needed when the storage manager has `[curve]`: a key on its `allow`
    /// list and its public key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub curve: Option<OperatorCurve>,
}

impl Default for StorageTarget {
    fn default() -> Self {
        StorageTarget {
            endpoint: "tcp://127.0.0.1:5570".into(),
            config: None,
            reload: ReloadMethod::Systemd,
            unit: "biblioteca-almacenamiento.service".into(),
            pid_file: None,
            pid: None,
            status_timeout: Duration::from_millis(1500),
            switch_wait: Duration::from_secs(30),
            curve: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FailoverConfig {
    pub nodes: Vec<FailoverNode>,
    pub storage: StorageTarget,
    /// PostgreSQL binaries (pg_ctl, pg_rewind, pg_basebackup, pg_controldata);
    /// default: `PG_BIN`, the Debian PostgreSQL 15 directory, `pg_config --bindir`.
    pub pg_bin: Option<PathBuf>,
    /// Per connection attempt to a node.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait for `pg_promote` and for a node to leave recovery.
    #[serde(with = "humantime_serde")]
    pub promote_timeout: Duration,
    /// How long a standby may take to replay WAL it already received before
    /// promotion is refused.
    #[serde(with = "humantime_serde")]
    pub catchup: Duration,
    /// Longest wait for a rejoined standby to stream.
    #[serde(with = "humantime_serde")]
    pub streaming_timeout: Duration,
    /// After `rejoin`, commits wait for the rejoined standby
    /// (`synchronous_standby_names`); false keeps replication asynchronous.
    pub synchronous: bool,
    /// With several standbys, a commit waits for this many of them
    /// (`ANY quorum (...)`); `promote` trusts the most advanced reachable
    /// standby only when at least `standbys - quorum + 1` answer.
    pub quorum: usize,
    /// node_exporter's textfile directory: each action that changes
    /// something records its last run, last success and duration there
    /// (`biblioteca_failover_<action>.prom`); absent: nothing is written.
    pub textfile_dir: Option<PathBuf>,
    /// The opt-in automatic mode (`biblioteca-failover agent`).
    pub auto: AutoConfig,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            nodes: Vec::new(),
            storage: StorageTarget::default(),
            pg_bin: None,
            connect_timeout: Duration::from_secs(3),
            promote_timeout: Duration::from_secs(60),
            catchup: Duration::from_secs(10),
            streaming_timeout: Duration::from_secs(120),
            synchronous: true,
            quorum: 1,
            textfile_dir: None,
            auto: AutoConfig::default(),
        }
    }
}

impl FailoverConfig {
    pub fn node(&self, name: &str) -> Option<&FailoverNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout.max(Duration::from_secs(1))
    }

    pub fn names(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn invalid(msg: impl Into<String>) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid(msg.into()))
}

impl Validate for FailoverConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.nodes.len() < 2 {
            return invalid("[[nodes]] must list at least two database nodes");
        }
        let mut names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return invalid("[[nodes]] need distinct names");
        }
        for n in &self.nodes {
            if n.name.is_empty()
                || !n
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return invalid(format!(
                    "node name {:?} must be letters, digits, '_' or '-' (it is also an application_name and a slot name)",
                    n.name
                ));
            }
            if n.conninfo.parse::<postgres::Config>().is_err() {
                return invalid(format!(
                    "node {:?}: conninfo is not a valid connection string",
                    n.name
                ));
            }
            if let Err(e) = n.password() {
                return invalid(format!("node {:?}: {e}", n.name));
            }
            if n.start.is_some() != n.stop.is_some() && n.data_dir.is_none() {
                return invalid(format!(
                    "node {:?}: set both start and stop, or data_dir",
                    n.name
                ));
            }
        }
        biblioteca_protocol::config::check_endpoint("storage.endpoint", &self.storage.endpoint)?;
        biblioteca_runtime::security::check(self.storage.curve.as_ref())?;
        if self.storage.reload == ReloadMethod::Pid
            && self.storage.pid.is_none()
            && self.storage.pid_file.is_none()
        {
            return invalid("storage.reload = \"pid\" needs storage.pid or storage.pid_file");
        }
        if self.quorum == 0 || self.quorum >= self.nodes.len() {
            return invalid("quorum must be at least 1 and smaller than the number of nodes");
        }
        if self.promote_timeout.is_zero() || self.storage.status_timeout.is_zero() {
            return invalid("promote_timeout and storage.status_timeout must be positive");
        }
        let names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
        self.auto.validate(&names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use biblioteca_protocol::config::parse_reader;

    const TWO: &str = r#"
        [[nodes]]
        name = "primary"
        conninfo = "host=127.0.0.1 port=55432 user=postgres dbname=library"
        data_dir = "/tmp/p"
        [[nodes]]
        name = "standby"
        conninfo = "host=127.0.0.1 port=55433 user=postgres dbname=library"
        [storage]
        config = "/etc/biblioteca/almacenamiento.toml"
        reload = "pid"
        pid = 42
    "#;

    #[test]
    fn parses_the_documented_shape() {
        let c: FailoverConfig = parse_reader(TWO.as_bytes()).unwrap();
        assert_eq!(c.nodes.len(), 2);
        assert!(c.node("primary").unwrap().managed());
        assert!(!c.node("standby").unwrap().managed());
        assert_eq!(c.storage.endpoint, "tcp://127.0.0.1:5570");
        assert_eq!(c.storage.reload, ReloadMethod::Pid);
    }

    #[test]
    fn rejects_what_would_fail_mid_failover() {
        let one = "[[nodes]]\nname = \"a\"\nconninfo = \"host=x\"\n";
        assert!(parse_reader::<FailoverConfig, _>(one.as_bytes()).is_err());
        let no_pid = TWO.replace("pid = 42", "");
        let err = parse_reader::<FailoverConfig, _>(no_pid.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("pid_file"), "{err}");
        let bad_name = TWO.replace("name = \"standby\"", "name = \"stand by\"");
        assert!(parse_reader::<FailoverConfig, _>(bad_name.as_bytes()).is_err());
    }
}
