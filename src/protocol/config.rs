//! TOML configuration of every service.
//!
//! Each service has one struct with defaults that match the local demo, so an
//! empty file (or no file) is a valid configuration. Parsing is split into
//! [`parse`] (a path) and [`parse_reader`] (any reader) so tests can feed
//! bytes; [`Validate`] checks what serde cannot (exactly one primary, sane
//! numbers) and every binary's `--check-config` calls both. Durations are
//! written as humantime strings (`"5s"`, `"2500ms"`, `"1m 30s"`).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::curve::{ActorCurve, ClientCurve, LoadManagerCurve, StorageCurve};
pub use crate::metrics_config::MetricsConfig;
use crate::scheduling::Scheduling;
use crate::Operacion;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid TOML: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("cannot read {path}: {source}")]
    Secret {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Checks beyond the types.
pub trait Validate {
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Reads and validates a config file.
pub fn parse<T: DeserializeOwned + Validate>(path: &Path) -> Result<T, ConfigError> {
    let file = std::fs::File::open(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_reader(file).map_err(|e| match e {
        ConfigError::Read { source, .. } => ConfigError::Read {
            path: path.to_path_buf(),
            source,
        },
        other => other,
    })
}

/// Reads and validates config bytes from any reader.
pub fn parse_reader<T: DeserializeOwned + Validate, R: Read>(mut r: R) -> Result<T, ConfigError> {
    let mut text = String::new();
    r.read_to_string(&mut text)
        .map_err(|source| ConfigError::Read {
            path: PathBuf::from("<reader>"),
            source,
        })?;
    let cfg: T = toml::from_str(&text)?;
    cfg.validate()?;
    Ok(cfg)
}

/// Loads `path` when given, else the defaults; then validates.
pub fn load<T: DeserializeOwned + Validate + Default>(
    path: Option<&Path>,
) -> Result<T, ConfigError> {
    match path {
        Some(p) => parse(p),
        None => {
            let cfg = T::default();
            cfg.validate()?;
            Ok(cfg)
        }
    }
}

/// Reads a secret from a file (a systemd credential, a `*File` option),
/// without its trailing newline; `None` when no file is configured.
pub fn read_password_file(path: Option<&Path>) -> Result<Option<String>, ConfigError> {
    let Some(path) = path else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Secret {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Some(text.trim_end_matches(['\n', '\r']).to_string()))
}

fn invalid(msg: impl Into<String>) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid(msg.into()))
}

/// Whether `ep` looks like a ZeroMQ endpoint; `name` is the key in errors.
pub fn check_endpoint(name: &str, ep: &str) -> Result<(), ConfigError> {
    let ok = ["tcp://", "ipc://", "inproc://"]
        .iter()
        .any(|p| ep.starts_with(p) && ep.len() > p.len());
    if ok {
        Ok(())
    } else {
        invalid(format!(
            "{name} = {ep:?} is not a ZeroMQ endpoint (tcp://host:port)"
        ))
    }
}

/// What a database node is to the storage manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// Writes go here.
    Primary,
    /// Read-only; serves `consulta` while the primary is unreachable.
    Standby,
    /// A former primary after a failover: never used again until rejoined.
    Fenced,
}

impl NodeRole {
    /// The configuration's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Primary => "primary",
            NodeRole::Standby => "standby",
            NodeRole::Fenced => "fenced",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub name: String,
    /// libpq-style connection string, e.g. `host=127.0.0.1 port=55432 user=app dbname=library`.
    pub conninfo: String,
    pub role: NodeRole,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    pub nodes: Vec<NodeConfig>,
    /// Connections per node pool; one per worker is enough.
    pub pool_size: u32,
    /// How long a connection attempt to a node may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Upper bound on one statement; a request never waits longer on the database.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// File holding the application role's password (kept out of the TOML).
    pub password_file: Option<PathBuf>,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            nodes: vec![
                NodeConfig {
                    name: "primary".into(),
                    conninfo: "host=127.0.0.1 port=55432 user=app dbname=library".into(),
                    role: NodeRole::Primary,
                },
                NodeConfig {
                    name: "standby".into(),
                    conninfo: "host=127.0.0.1 port=55433 user=app dbname=library".into(),
                    role: NodeRole::Standby,
                },
            ],
            pool_size: 32,
            connect_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(4),
            password_file: None,
        }
    }
}

impl DatabaseConfig {
    pub fn primary(&self) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.role == NodeRole::Primary)
    }

    pub fn standbys(&self) -> impl Iterator<Item = &NodeConfig> {
        self.nodes.iter().filter(|n| n.role == NodeRole::Standby)
    }

    /// The password from `password_file`, without its trailing newline.
    pub fn password(&self) -> Result<Option<String>, ConfigError> {
        read_password_file(self.password_file.as_deref())
    }
}

/// `biblioteca-almacenamiento`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// ROUTER endpoint for actors and the load manager.
    pub bind: String,
    /// Worker threads, each with its own pooled connection. With synchronous
    /// replication each commit waits for the standby, so throughput grows with
    /// the number of transactions in flight: keep this well above the core count.
    pub workers: usize,
    /// Requests queued while every worker is busy; beyond it: `ServicioOcupado`.
    pub max_queue: usize,
    /// Where the storage manager keeps state that must survive restarts
    /// (the newest timeline seen, for fencing).
    pub state_dir: Option<PathBuf>,
    pub database: DatabaseConfig,
    /// CPU scheduling policy of the service's threads (`batch` or `normal`;
    /// see `sched`). Read at start.
    pub scheduling: Scheduling,
    /// CURVE encryption and authentication (see `security`); absent: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curve: Option<StorageCurve>,
    /// What happens when the synchronous standbys are gone (see
    /// [`ReplicationMode`]); `disponible` needs `state_dir`.
    pub replicacion: ReplicationMode,
    /// In `disponible`, how long the synchronous standbys may be missing
    /// before synchronous replication is switched off.
    #[serde(with = "humantime_serde")]
    pub degradar_tras: Duration,
    /// The HTTP endpoint for Prometheus and health checks (`metrics_config`).
    pub metrics: MetricsConfig,
    /// Not a key: the file that set the nodes' roles, the main file or the
    /// failover tool's drop-in (see `config_roles`).
    #[serde(skip)]
    pub roles_from: Option<PathBuf>,
}

/// The storage manager's answer to "the synchronous standby is gone".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationMode {
    /// Writes wait until enough synchronous standbys are back.
    #[default]
    Estricta,
    /// After `degradar_tras` without them, the primary commits alone
    /// (recorded, and switched back once a standby has caught up).
    Disponible,
}

/// The storage manager's record of the degraded mode, kept as JSON in
/// `state_dir/`[`REPLICACION_FILE`] on the application host so it survives
/// the primary; `biblioteca-failover promote` reads it to know whether
/// writes were acknowledged that no standby has.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReplicationRecord {
    /// `sincrona` or `degradada`.
    pub estado: ReplicationState,
    /// `automatica` (standbys gone for `degradar_tras`) or `manual`
    /// (`biblioteca-failover degrade`).
    pub motivo: Option<String>,
    /// Seconds since the epoch when the current state began.
    pub desde_unix: Option<u64>,
    /// The primary that commits without a standby.
    pub primario: Option<String>,
    /// Its `synchronous_standby_names` before degrading (restored after).
    pub nombres_sincronos: Option<String>,
    /// The last WAL position the synchronous standbys confirmed (flushed)
    /// before they were gone.
    pub standby_lsn: Option<String>,
    /// The primary's WAL position when last seen while degraded.
    pub primario_lsn: Option<String>,
    /// Writes acknowledged while degraded (at least this many; the first
    /// is on disk before its reply leaves).
    pub escrituras: u64,
}

/// Whether commits wait for the synchronous standbys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationState {
    #[default]
    Sincrona,
    Degradada,
}

/// [`ReplicationRecord`]'s file in the storage manager's `state_dir`.
pub const REPLICACION_FILE: &str = "replicacion.json";
/// Present while an operator asks for the degraded mode
/// (`biblioteca-failover degrade`; `restore` removes it).
pub const DEGRADAR_FILE: &str = "replicacion.degradar";

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            bind: "tcp://*:5570".into(),
            workers: 32,
            max_queue: 4096,
            state_dir: None,
            database: DatabaseConfig::default(),
            scheduling: Scheduling::default(),
            curve: None,
            replicacion: ReplicationMode::Estricta,
            degradar_tras: Duration::from_secs(5),
            metrics: MetricsConfig::default(),
            roles_from: None,
        }
    }
}

impl Validate for StorageConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        check_endpoint("bind", &self.bind)?;
        self.metrics.validate()?;
        if self.workers == 0 || self.workers > 256 {
            return invalid("workers must be between 1 and 256");
        }
        if self.max_queue == 0 {
            return invalid("max_queue must be at least 1");
        }
        if self.replicacion == ReplicationMode::Disponible && self.state_dir.is_none() {
            return invalid("replicacion = \"disponible\" needs state_dir (the degraded-mode record lives there)");
        }
        let db = &self.database;
        if db.pool_size == 0 {
            return invalid("database.pool_size must be at least 1");
        }
        if db.statement_timeout.is_zero() {
            return invalid("database.statement_timeout must be positive");
        }
        let primaries = db
            .nodes
            .iter()
            .filter(|n| n.role == NodeRole::Primary)
            .count();
        if primaries != 1 {
            return invalid(format!(
                "database.nodes must name exactly one primary, found {primaries}"
            ));
        }
        let mut names: Vec<&str> = db.nodes.iter().map(|n| n.name.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) || names.iter().any(|n| n.is_empty()) {
            return invalid("database.nodes need distinct, non-empty names");
        }
        Ok(())
    }
}

/// Default of `request_lines_per_second`: every request of a demonstration
/// or a light load, a readable sample of a heavy one.
pub const REQUEST_LINES_PER_SECOND: u32 = 50;

/// `biblioteca-carga`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoadManagerConfig {
    /// ROUTER for clients (REQ or DEALER).
    pub frontend: String,
    /// PUB to actors; topics are operation names.
    pub publisher: String,
    /// PULL on which actors report outcomes and heartbeats.
    pub backchannel: String,
    /// The storage manager, for `consulta`.
    pub storage: String,
    /// A client hears `ServicioNoDisponible` when no outcome arrives in this time.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// Re-publish an unanswered request this often (safe: ids are idempotent).
    #[serde(with = "humantime_serde")]
    pub republish_after: Duration,
    /// An operation's actors count as gone when silent this long.
    #[serde(with = "humantime_serde")]
    pub actor_timeout: Duration,
    /// Requests in flight at once; beyond it clients hear `ServicioOcupado`.
    pub max_in_flight: usize,
    /// CPU scheduling policy of the service's threads (`batch` or `normal`;
    /// see `sched`). Read at start.
    pub scheduling: Scheduling,
    /// Request lines a second logged at `info`, the rest at `debug` and
    /// summarized (see `request_log`); 0: every one at `info`.
    pub request_lines_per_second: u32,
    /// CURVE encryption and authentication (see `security`); absent: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curve: Option<LoadManagerCurve>,
    /// The HTTP endpoint for Prometheus and health checks (`metrics_config`).
    pub metrics: MetricsConfig,
}

impl Default for LoadManagerConfig {
    fn default() -> Self {
        LoadManagerConfig {
            frontend: "tcp://*:5555".into(),
            publisher: "tcp://*:5556".into(),
            backchannel: "tcp://*:5557".into(),
            storage: "tcp://127.0.0.1:5570".into(),
            deadline: Duration::from_secs(5),
            republish_after: Duration::from_secs(1),
            actor_timeout: Duration::from_secs(3),
            max_in_flight: 10_000,
            scheduling: Scheduling::default(),
            request_lines_per_second: REQUEST_LINES_PER_SECOND,
            curve: None,
            metrics: MetricsConfig::default(),
        }
    }
}

impl Validate for LoadManagerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.metrics.validate()?;
        check_endpoint("frontend", &self.frontend)?;
        check_endpoint("publisher", &self.publisher)?;
        check_endpoint("backchannel", &self.backchannel)?;
        check_endpoint("storage", &self.storage)?;
        if self.deadline.is_zero() || self.republish_after.is_zero() || self.actor_timeout.is_zero()
        {
            return invalid("deadline, republish_after and actor_timeout must be positive");
        }
        if self.max_in_flight == 0 {
            return invalid("max_in_flight must be at least 1");
        }
        Ok(())
    }
}

/// `biblioteca-actor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActorConfig {
    /// The operation this actor serves (its topic).
    pub operacion: Operacion,
    /// The load manager's PUB endpoint.
    pub subscribe: String,
    /// The load manager's back-channel.
    pub report: String,
    /// The storage manager.
    pub storage: String,
    /// A storage request unanswered this long is re-sent on a fresh socket.
    #[serde(with = "humantime_serde")]
    pub storage_timeout: Duration,
    /// Requests this actor has at the storage manager at once.
    pub max_in_flight: usize,
    /// How often the actor tells the load manager it is alive.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// CPU scheduling policy of the service's threads (`batch` or `normal`;
    /// see `sched`). Read at start.
    pub scheduling: Scheduling,
    /// As for the load manager.
    pub request_lines_per_second: u32,
    /// CURVE encryption and authentication (see `security`); absent: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curve: Option<ActorCurve>,
    /// The HTTP endpoint for Prometheus and health checks (`metrics_config`).
    pub metrics: MetricsConfig,
}

impl Default for ActorConfig {
    fn default() -> Self {
        ActorConfig {
            operacion: Operacion::Prestamo,
            subscribe: "tcp://127.0.0.1:5556".into(),
            report: "tcp://127.0.0.1:5557".into(),
            storage: "tcp://127.0.0.1:5570".into(),
            storage_timeout: Duration::from_millis(2500),
            max_in_flight: 64,
            heartbeat_interval: Duration::from_secs(1),
            scheduling: Scheduling::default(),
            request_lines_per_second: REQUEST_LINES_PER_SECOND,
            curve: None,
            metrics: MetricsConfig::default(),
        }
    }
}

impl Validate for ActorConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.metrics.validate()?;
        check_endpoint("subscribe", &self.subscribe)?;
        check_endpoint("report", &self.report)?;
        check_endpoint("storage", &self.storage)?;
        if !self.operacion.is_write() {
            return invalid("an actor serves prestamo, devolucion or renovacion; consulta goes to the storage manager");
        }
        if self.storage_timeout.is_zero()
            || self.heartbeat_interval.is_zero()
            || self.max_in_flight == 0
        {
            return invalid(
                "storage_timeout, heartbeat_interval and max_in_flight must be positive",
            );
        }
        Ok(())
    }
}

/// `biblioteca-solicitante`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// Load-manager endpoints, tried in order when one does not answer.
    pub endpoints: Vec<String>,
    /// Per-try reply deadline.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Tries per request (same id each time).
    pub retries: u32,
    /// CURVE encryption and authentication (see `security`); absent: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curve: Option<ClientCurve>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            endpoints: vec!["tcp://127.0.0.1:5555".into()],
            timeout: Duration::from_secs(6),
            retries: 3,
            curve: None,
        }
    }
}

impl Validate for ClientConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.endpoints.is_empty() {
            return invalid("endpoints must name at least one load manager");
        }
        for ep in &self.endpoints {
            check_endpoint("endpoints", ep)?;
        }
        if self.timeout.is_zero() || self.retries == 0 {
            return invalid("timeout and retries must be positive");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_files_give_the_demo_defaults() {
        let s: StorageConfig = parse_reader(&b""[..]).unwrap();
        assert_eq!(s, StorageConfig::default());
        let c: LoadManagerConfig = parse_reader(&b""[..]).unwrap();
        assert_eq!(c.frontend, "tcp://*:5555");
        let a: ActorConfig = parse_reader(&b"operacion = \"devolucion\"\n"[..]).unwrap();
        assert_eq!(a.operacion, Operacion::Devolucion);
    }

    #[test]
    fn rejects_what_would_break_at_run_time() {
        let two_primaries = br#"
            [[database.nodes]]
            name = "a"
            conninfo = "host=x"
            role = "primary"
            [[database.nodes]]
            name = "b"
            conninfo = "host=y"
            role = "primary"
        "#;
        let err = parse_reader::<StorageConfig, _>(&two_primaries[..]).unwrap_err();
        assert!(err.to_string().contains("exactly one primary"), "{err}");
        let err = parse_reader::<LoadManagerConfig, _>(&b"frontend = \"5555\""[..]).unwrap_err();
        assert!(err.to_string().contains("not a ZeroMQ endpoint"), "{err}");
        let err = parse_reader::<ActorConfig, _>(&b"operacion = \"consulta\""[..]).unwrap_err();
        assert!(err.to_string().contains("consulta"), "{err}");
        let err = parse_reader::<LoadManagerConfig, _>(&b"nonsense = 1"[..]).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
