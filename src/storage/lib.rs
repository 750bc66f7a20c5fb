//! The storage manager (`biblioteca-almacenamiento`): the only process that
//! touches PostgreSQL.
//!
//! It serves the client protocol on a ROUTER ([`server`]), runs every write as
//! one transaction that also stores the request id and its reply
//! ([`ops`], exactly-once), picks and fences the database node that takes
//! writes ([`nodes`], [`monitor`]) and refuses to start on a schema that
//! lacks migrations ([`migrate`]). [`run`] is the service; [`migrate`](fn@migrate)
//! (a deployment step, run as the schema's owner) and [`seed`](fn@seed) are
//! the one-shot subcommands of the binary.
//!
//! Besides the four operations the socket answers `{"operacion":"status"}`
//! (without touching the database) and `{"operacion":"resultado","id":X}`
//! (the stored reply of request X, or `SolicitudDesconocida`).

mod batch;
mod connection;
mod credentials;
mod dispatch;
mod failure;
mod fencing;
mod handler;
mod migrate;
mod monitor;
mod nodes;
mod ops;
mod replication;
mod replication_record;
pub mod seed;
mod server;
mod status;
mod write;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use biblioteca_protocol::config::{ConfigError, StorageConfig};
use biblioteca_runtime::net::NetError;
use biblioteca_runtime::shutdown::Shutdown;

pub use migrate::{MigrationError, APP_TABLES, MIGRATIONS};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("database: {0}")]
    Db(#[from] postgres::Error),
    #[error(transparent)]
    Migration(#[from] MigrationError),
    #[error("node {node}: {reason}")]
    Node { node: String, reason: String },
    #[error("no writable database node: {0}")]
    NoWriter(String),
    #[error("state file {path}: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start a thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error(transparent)]
    Security(#[from] biblioteca_runtime::security::SecurityError),
    #[error("the database refused the application role's credentials ({0}); check database.password_file and the node's pg_hba.conf")]
    Credentials(String),
}

/// What every thread of one storage manager shares.
pub(crate) struct Shared {
    backend: RwLock<Arc<nodes::Backend>>,
    fencing: fencing::Fencing,
    started: Instant,
    answered: AtomicU64,
    in_flight: AtomicUsize,
    recheck: AtomicBool,
    /// The degraded-mode record (see [`replication`]).
    replication: replication_record::Replication,
}

impl Shared {
    fn new(backend: nodes::Backend, fencing: fencing::Fencing) -> Shared {
        let replication = replication_record::Replication::new(backend.config.state_dir.as_deref());
        Shared {
            replication,
            backend: RwLock::new(Arc::new(backend)),
            fencing,
            started: Instant::now(),
            answered: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            recheck: AtomicBool::new(false),
        }
    }

    /// The configuration and pools in force; a request keeps the one it
    /// started with, so a reload swaps between requests.
    fn backend(&self) -> Arc<nodes::Backend> {
        self.backend
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn swap(&self, b: Arc<nodes::Backend>) {
        *self.backend.write().unwrap_or_else(|p| p.into_inner()) = b;
    }

    fn writer_name(&self) -> Option<String> {
        self.backend().writer().map(|(_, n)| n.cfg.name.clone())
    }

    /// Asks the monitor to probe the nodes soon (a connection failed).
    fn request_recheck(&self) {
        self.recheck.store(true, Ordering::SeqCst);
    }

    fn take_recheck(&self) -> bool {
        self.recheck.swap(false, Ordering::SeqCst)
    }

    fn count_answered(&self) {
        self.answered.fetch_add(1, Ordering::Relaxed);
    }

    fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    fn set_in_flight(&self, n: usize) {
        self.in_flight.store(n, Ordering::Relaxed);
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// What [`Validate`](biblioteca_protocol::config::Validate) cannot see from
/// the text alone: every node's conninfo parses as a libpq connection string,
/// and the `[curve]` section's key files load.
pub fn check_config(config: &StorageConfig) -> Result<(), ConfigError> {
    for n in &config.database.nodes {
        if n.conninfo.parse::<postgres::Config>().is_err() {
            return Err(ConfigError::Invalid(format!(
                "node {:?}: conninfo is not a valid connection string",
                n.name
            )));
        }
    }
    biblioteca_runtime::security::check(config.curve.as_ref())
}

/// Logs the names in the failover tool's roles file that the main
/// configuration no longer lists (they are ignored).
pub fn warn_unknown_roles(loaded: &biblioteca_protocol::config_roles::Loaded) {
    if !loaded.unknown.is_empty() {
        let from = loaded.config.roles_from.as_deref();
        tracing::warn!(
            nodes = loaded.unknown.join(", "),
            roles_from = %from.unwrap_or(std::path::Path::new("-")).display(),
            "the roles file names nodes the configuration does not list; ignored"
        );
    }
}

/// Runs the storage manager until `shutdown`: waits for a writable node,
/// checks the schema is migrated, binds `config.bind`, signals READY and serves.
/// `config_path` is re-read on SIGHUP (`shutdown.reload_generation()`).
pub fn run(
    config: StorageConfig,
    config_path: Option<PathBuf>,
    shutdown: Shutdown,
) -> Result<(), StorageError> {
    // Before the pools and the sockets start their threads, so they inherit it.
    biblioteca_runtime::sched::apply_or_warn(config.scheduling);
    let fencing = fencing::Fencing::load(config.state_dir.as_ref())?;
    let bind = config.bind.clone();
    let shared = Arc::new(Shared::new(nodes::Backend::new(config)?, fencing));
    let mut probes = monitor::Probes::default();
    let mut generation = shutdown.reload_generation();
    let waited = wait_for_database(
        &shared,
        &mut probes,
        &shutdown,
        config_path.as_deref(),
        &mut generation,
    )?;
    if !waited {
        return Ok(());
    }
    let stop_monitor = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (shared, stop) = (shared.clone(), stop_monitor.clone());
        let shutdown = shutdown.clone();
        biblioteca_runtime::shutdown::spawn("storage-monitor", move || {
            let path = config_path.as_deref();
            monitor::run(shared, probes, path, &shutdown, generation, &stop)
        })?
    };
    let served = server::serve(shared, &bind, &shutdown);
    stop_monitor.store(true, Ordering::SeqCst);
    if monitor.join().is_err() {
        tracing::error!("the storage monitor panicked");
    }
    served
}

/// Probes until a writable node answers and its schema has every migration
/// (a schema that lacks some, or privileges to read it, is fatal); `false`
/// when stopped first. A SIGHUP meanwhile reloads the configuration
/// (the file may be what points at the wrong node).
fn wait_for_database(
    shared: &Shared,
    probes: &mut monitor::Probes,
    shutdown: &Shutdown,
    config_path: Option<&std::path::Path>,
    generation: &mut u64,
) -> Result<bool, StorageError> {
    let mut attempt = 0u32;
    while !shutdown.is_triggered() {
        let g = shutdown.reload_generation();
        if g != *generation {
            *generation = g;
            monitor::reload(shared, config_path, probes, false);
        }
        monitor::refresh(shared, probes);
        let backend = shared.backend();
        let failure = match backend.writer() {
            None => "no writable database node yet".to_string(),
            Some((_, node)) => match node.pool.get() {
                Err(e) => format!("node {}: {e}", node.cfg.name),
                Ok(mut conn) => match migrate::check(&mut conn) {
                    Ok(()) => {
                        tracing::info!(node = %node.cfg.name, "database answered; schema up to date");
                        return Ok(true);
                    }
                    Err(e) if fatal_schema_error(&e) => return Err(e.into()),
                    Err(e) => format!("schema check on {}: {e}", node.cfg.name),
                },
            },
        };
        // Waiting helps a node that is still starting, never one that says no.
        if let Some(reason) = credentials::refused(&backend) {
            return Err(StorageError::Credentials(reason));
        }
        if attempt.is_multiple_of(5) {
            tracing::warn!(reason = %failure, "waiting for the database");
        }
        attempt += 1;
        for _ in 0..10 {
            if shutdown.is_triggered() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(false)
}

/// Waiting will not fix a schema that lacks migrations or that we may not read.
fn fatal_schema_error(e: &MigrationError) -> bool {
    match e {
        MigrationError::Behind { .. } => true,
        MigrationError::Db(db) => {
            db.code() == Some(&postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
        }
        _ => false,
    }
}

/// Who `biblioteca-almacenamiento migrate` connects as.
#[derive(Debug, Clone, Default)]
pub struct MigrateAs {
    /// Connect here (e.g. `host=.. user=biblioteca_owner dbname=library`)
    /// instead of the configured primary.
    pub conninfo: Option<String>,
    /// The configured writer, but as this role.
    pub user: Option<String>,
    /// File holding that role's password. Without it a `conninfo` connects
    /// with what it names itself, a `user` with `database.password_file`.
    pub password_file: Option<PathBuf>,
    /// The role granted row privileges; default: the user of the configured
    /// primary's conninfo (nothing is granted when it is the migrating role).
    pub app_role: Option<String>,
}

/// Probes the configured nodes once and connects to the one that takes writes.
fn connect_writer(config: &StorageConfig) -> Result<postgres::Client, StorageError> {
    Ok(writer_config(config)?.connect(postgres::NoTls)?)
}

/// The connection settings of the node that takes writes.
fn writer_config(config: &StorageConfig) -> Result<postgres::Config, StorageError> {
    let fencing = fencing::Fencing::load(config.state_dir.as_ref())?;
    let backend = nodes::Backend::new(config.clone())?;
    let mut probes = monitor::Probes::default();
    let results = probes.probe(&backend);
    let reasons: Vec<String> = backend
        .nodes
        .iter()
        .zip(&results)
        .filter_map(|(n, r)| match r {
            Some(Err(e)) => Some(format!("{}: {e}", n.cfg.name)),
            _ => None,
        })
        .collect();
    backend.apply_probes(results, &fencing);
    let Some((_, node)) = backend.writer() else {
        return Err(StorageError::NoWriter(if reasons.is_empty() {
            "every reachable node is in recovery, fenced or on a stale timeline".into()
        } else {
            reasons.join("; ")
        }));
    };
    tracing::info!(node = %node.cfg.name, "writable node found");
    Ok(node.pg.clone())
}

/// `biblioteca-almacenamiento migrate`: applies pending migrations as the
/// role `how` names and grants the application role its row privileges;
/// returns the versions applied now.
pub fn migrate(config: &StorageConfig, how: &MigrateAs) -> Result<Vec<i32>, StorageError> {
    let mut pg = match &how.conninfo {
        Some(c) => nodes::pg_config(
            &biblioteca_protocol::config::NodeConfig {
                name: "migrate".into(),
                conninfo: c.clone(),
                role: biblioteca_protocol::config::NodeRole::Primary,
            },
            &config.database,
            None,
        )?,
        None => writer_config(config)?,
    };
    if let Some(user) = &how.user {
        pg.user(user);
    }
    if let Some(password) =
        biblioteca_protocol::config::read_password_file(how.password_file.as_deref())?
    {
        pg.password(password);
    }
    let app_role = how.app_role.clone().or_else(|| {
        let primary = config.database.primary()?;
        let parsed: postgres::Config = primary.conninfo.parse().ok()?;
        parsed.get_user().map(str::to_string)
    });
    let app_role = app_role.filter(|r| Some(r.as_str()) != pg.get_user());
    let mut client = pg.connect(postgres::NoTls)?;
    Ok(migrate::apply_and_grant(&mut client, app_role.as_deref())?)
}

/// `biblioteca-almacenamiento seed --libros N --ejemplares K`: checks the
/// schema is migrated, then adds generated books `1..=N` (ISBN
/// [`biblioteca_protocol::catalogue::isbn`]) that are missing; returns how many were added.
pub fn seed(config: &StorageConfig, libros: u64, ejemplares: i32) -> Result<u64, StorageError> {
    let mut client = connect_writer(config)?;
    migrate::check(&mut client)?;
    Ok(seed::seed(&mut client, libros, ejemplares)?)
}
