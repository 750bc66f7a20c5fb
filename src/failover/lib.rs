//! `biblioteca-failover`: changing which PostgreSQL node is the primary.
//!
//! This module owns the operator's side of high availability: inspecting the
//! nodes ([`status`]), promoting a standby after the primary died
//! ([`promote`]), turning a former primary back into a standby ([`rejoin`])
//! and a planned role swap with nothing lost ([`switchover`]). Each command
//! ends by re-pointing the storage manager (the new roles written atomically
//! to its roles drop-in, never to the deployment's main file, then a
//! reload) and waits until the storage manager reports it serves from
//! the new node, so "exit 0" means writes flow again. Every step prints one
//! line through [`Progress`]; a failure says what state things were left in
//! and what to do next ([`FailoverError::Stuck`]).

pub mod agent;
pub mod auto_config;
pub mod config;
pub mod degrade;
pub mod election;
pub mod etcd;
pub mod follow;
pub mod local;
pub mod manual;
pub mod pg;
pub mod promote;
pub mod quorum;
pub mod rejoin;
pub mod roles_file;
pub mod status;
pub mod storage;
pub mod switchover;
pub mod sync_record;

use std::time::Instant;

pub use config::{AutoConfig, FailoverConfig, FailoverNode, ReloadMethod, StorageTarget};

#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    /// A step could not be done; nothing after it was attempted.
    #[error("{what}\n  state: {state}\n  next:  {next}")]
    Stuck {
        what: String,
        state: String,
        next: String,
    },
    #[error("node {node}: {}", pg::describe_error(source))]
    Db {
        node: String,
        #[source]
        source: postgres::Error,
    },
    #[error("{0}")]
    Config(#[from] biblioteca_protocol::config::ConfigError),
    #[error("storage manager config {path}: {reason}")]
    StorageConfig { path: String, reason: String },
    #[error("`{command}` failed: {reason}")]
    Command { command: String, reason: String },
    #[error("{0}")]
    Net(#[from] biblioteca_runtime::net::NetError),
    #[error("{0}")]
    Cluster(#[from] biblioteca_cluster::ClusterError),
    #[error("{0}")]
    Etcd(#[from] etcd::EtcdError),
    #[error("curve: {0}")]
    Security(#[from] biblioteca_runtime::security::SecurityError),
}

impl FailoverError {
    pub fn stuck(
        what: impl Into<String>,
        state: impl Into<String>,
        next: impl Into<String>,
    ) -> Self {
        FailoverError::Stuck {
            what: what.into(),
            state: state.into(),
            next: next.into(),
        }
    }

    pub(crate) fn db(node: &str) -> impl FnOnce(postgres::Error) -> FailoverError + '_ {
        move |source| FailoverError::Db {
            node: node.to_string(),
            source,
        }
    }
}

pub type Result<T, E = FailoverError> = std::result::Result<T, E>;

/// Prints one line per step, prefixed with the time since the command began
/// (mirrored to the log at debug level: the lines are the tool's output).
pub struct Progress {
    start: Instant,
    sink: Box<dyn Fn(&str) + Send + Sync>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new(Box::new(|line| println!("{line}")))
    }
}

impl Progress {
    pub fn new(sink: Box<dyn Fn(&str) + Send + Sync>) -> Progress {
        Progress {
            start: Instant::now(),
            sink,
        }
    }

    /// A step in progress or done.
    pub fn step(&self, msg: impl AsRef<str>) {
        let msg = msg.as_ref();
        tracing::debug!("{msg}");
        (self.sink)(&format!("[{:6.1}s] {msg}", self.elapsed_secs()));
    }

    /// Something the operator should know but that does not stop the command.
    pub fn warn(&self, msg: impl AsRef<str>) {
        let msg = msg.as_ref();
        tracing::debug!("warning: {msg}");
        (self.sink)(&format!("[{:6.1}s] WARNING: {msg}", self.elapsed_secs()));
    }

    pub fn elapsed_secs(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}
