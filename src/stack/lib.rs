//! The whole service stack on one host: storage manager, load manager and one
//! actor per write operation, started as child processes with generated
//! configs.
//!
//! The demo and the end-to-end tests both need "everything up on these ports
//! against this database"; this module is that one recipe, so the configs the
//! demo prints are the configs the tests exercise. Like a deployment, it
//! migrates the schema first as its owner ([`StackSpec::migrate_as`]), in a
//! separate `biblioteca-almacenamiento migrate` run: the services log in as
//! `app`, which may not change the schema.

pub mod etcd;
pub mod launch;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::launch::{find_binary, LaunchError, Service, ServiceSpec};
use biblioteca_cluster::OWNER_USER;
use biblioteca_protocol::config::{
    ActorConfig, DatabaseConfig, LoadManagerConfig, MetricsConfig, NodeConfig, NodeRole,
    ReplicationMode, StorageConfig,
};
use biblioteca_protocol::Operacion;
use biblioteca_runtime::sched::Scheduling;
use biblioteca_runtime::security::provision::HostKeys;
use biblioteca_runtime::security::{ClientCurve, OperatorCurve};

/// TCP ports of the services (all bound on 127.0.0.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackPorts {
    pub frontend: u16,
    pub publisher: u16,
    pub backchannel: u16,
    pub storage: u16,
}

impl Default for StackPorts {
    /// The ports the guide and its Python clients expect.
    fn default() -> Self {
        StackPorts {
            frontend: 5555,
            publisher: 5556,
            backchannel: 5557,
            storage: 5570,
        }
    }
}

impl StackPorts {
    pub fn frontend_endpoint(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.frontend)
    }

    pub fn storage_endpoint(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.storage)
    }

    pub fn publisher_endpoint(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.publisher)
    }

    pub fn backchannel_endpoint(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.backchannel)
    }
}

/// Where the services' metrics endpoints listen. Only the first actor of
/// each operation serves metrics (a second one would need a port of its own).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StackMetrics {
    /// No endpoint (most suites start many stacks at once).
    #[default]
    Off,
    /// Each service on its fixed default port (the demo).
    DefaultPorts,
    /// On these ports of 127.0.0.1.
    Ports(MetricsPorts),
}

/// Metrics ports of one stack: the storage manager, the load manager, and
/// the actors in [`Operacion::WRITES`] order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsPorts {
    pub storage: u16,
    pub carga: u16,
    pub actors: [u16; 3],
}

impl MetricsPorts {
    /// Free ports below 32768.
    pub fn free() -> Result<MetricsPorts, LaunchError> {
        let mut taken = Vec::new();
        let mut next = || -> Result<u16, LaunchError> {
            loop {
                let p = launch::free_port()?;
                if !taken.contains(&p) {
                    taken.push(p);
                    return Ok(p);
                }
            }
        };
        Ok(MetricsPorts {
            storage: next()?,
            carga: next()?,
            actors: [next()?, next()?, next()?],
        })
    }
}

impl StackMetrics {
    fn config(self, port: impl Fn(&MetricsPorts) -> u16) -> MetricsConfig {
        match self {
            StackMetrics::Off => MetricsConfig::off(),
            StackMetrics::DefaultPorts => MetricsConfig::default(),
            StackMetrics::Ports(p) => MetricsConfig::on_port(port(&p)),
        }
    }
}

/// The port a started service's metrics endpoint listens on, from its
/// configuration (`None`: off); the default port is `default_port`.
pub fn metrics_port(svc: &Service, default_port: u16) -> Option<u16> {
    #[derive(serde::Deserialize)]
    struct Only {
        #[serde(default)]
        metrics: MetricsConfig,
    }
    let only: Only = toml::from_str(&svc.spec().config_toml).ok()?;
    only.metrics
        .enabled
        .then_some(only.metrics.port.unwrap_or(default_port))
}

/// What to start.
#[derive(Debug, Clone)]
pub struct StackSpec {
    /// Configs, logs and the storage manager's state directory go here.
    pub run_dir: PathBuf,
    /// Where the `biblioteca-*` binaries are; `None`: next to this executable.
    pub bin_dir: Option<PathBuf>,
    pub ports: StackPorts,
    /// The database nodes the storage manager is configured with.
    pub nodes: Vec<NodeConfig>,
    /// One actor per entry (an operation may appear twice).
    pub actors: Vec<Operacion>,
    pub deadline: Duration,
    /// CURVE keys and the database password; default: neither.
    pub security: StackSecurity,
    /// The role `biblioteca-almacenamiento migrate` runs as before the
    /// storage manager starts (default [`OWNER_USER`]); `None`: no migrate
    /// step (the schema is already current).
    pub migrate_as: Option<String>,
    /// The services' CPU scheduling policy (`scheduling` in their configs).
    pub scheduling: Scheduling,
    /// The storage manager's `replicacion` and `degradar_tras`.
    pub replicacion: ReplicationMode,
    pub degradar_tras: std::time::Duration,
    /// The services' metrics endpoints (default: off).
    pub metrics: StackMetrics,
}

/// What secures a stack (the demo's `--seguro`, the security tests).
#[derive(Debug, Clone, Default)]
pub struct StackSecurity {
    /// Every service's key pair: CURVE on every endpoint when set.
    pub keys: Option<HostKeys>,
    /// The application role's password (`database.password_file`).
    pub password_file: Option<PathBuf>,
    /// The schema owner's password (`migrate --password-file`).
    pub owner_password_file: Option<PathBuf>,
}

impl StackSpec {
    /// The `[curve]` section a client of this stack needs.
    pub fn client_curve(&self) -> Option<ClientCurve> {
        self.security.keys.as_ref().map(HostKeys::client_curve)
    }

    /// The `[storage.curve]` section of `biblioteca-failover` for this stack.
    pub fn operator_curve(&self) -> Option<OperatorCurve> {
        self.security.keys.as_ref().map(HostKeys::operator_curve)
    }
}

impl StackSpec {
    /// Every service on `ports`, against a primary and a standby.
    pub fn new(
        run_dir: impl Into<PathBuf>,
        ports: StackPorts,
        primary: &str,
        standby: &str,
    ) -> Self {
        StackSpec {
            run_dir: run_dir.into(),
            bin_dir: None,
            ports,
            nodes: vec![
                NodeConfig {
                    name: "primary".into(),
                    conninfo: primary.to_string(),
                    role: NodeRole::Primary,
                },
                NodeConfig {
                    name: "standby".into(),
                    conninfo: standby.to_string(),
                    role: NodeRole::Standby,
                },
            ],
            actors: Operacion::WRITES.to_vec(),
            deadline: LoadManagerConfig::default().deadline,
            security: StackSecurity::default(),
            migrate_as: Some(OWNER_USER.to_string()),
            scheduling: Scheduling::default(),
            replicacion: ReplicationMode::default(),
            degradar_tras: StorageConfig::default().degradar_tras,
            metrics: StackMetrics::default(),
        }
    }

    /// Configures the storage manager with every node of `cluster` under
    /// its own name (the primary, then each standby), logging in as `app`.
    pub fn use_cluster(&mut self, cluster: &biblioteca_cluster::Cluster) {
        self.nodes = cluster
            .nodes()
            .iter()
            .enumerate()
            .map(|(i, n)| NodeConfig {
                name: n.name.clone(),
                conninfo: n.conninfo(biblioteca_cluster::APP_USER, biblioteca_cluster::APP_DB),
                role: if i == 0 {
                    NodeRole::Primary
                } else {
                    NodeRole::Standby
                },
            })
            .collect();
    }

    pub fn storage_config(&self) -> StorageConfig {
        StorageConfig {
            bind: self.ports.storage_endpoint(),
            state_dir: Some(self.run_dir.join("almacenamiento-state")),
            database: DatabaseConfig {
                nodes: self.nodes.clone(),
                password_file: self.security.password_file.clone(),
                ..DatabaseConfig::default()
            },
            curve: self.security.keys.as_ref().map(HostKeys::storage_curve),
            scheduling: self.scheduling,
            replicacion: self.replicacion,
            degradar_tras: self.degradar_tras,
            metrics: self.metrics.config(|p| p.storage),
            ..StorageConfig::default()
        }
    }

    pub fn load_manager_config(&self) -> LoadManagerConfig {
        LoadManagerConfig {
            frontend: self.ports.frontend_endpoint(),
            publisher: self.ports.publisher_endpoint(),
            backchannel: self.ports.backchannel_endpoint(),
            storage: self.ports.storage_endpoint(),
            deadline: self.deadline,
            curve: self
                .security
                .keys
                .as_ref()
                .map(HostKeys::load_manager_curve),
            scheduling: self.scheduling,
            metrics: self.metrics.config(|p| p.carga),
            ..LoadManagerConfig::default()
        }
    }

    pub fn actor_config(&self, operacion: Operacion) -> ActorConfig {
        let slot = Operacion::WRITES.iter().position(|o| *o == operacion);
        let metrics = self
            .metrics
            .config(|p| slot.and_then(|i| p.actors.get(i)).copied().unwrap_or(0));
        ActorConfig {
            operacion,
            subscribe: self.ports.publisher_endpoint(),
            report: self.ports.backchannel_endpoint(),
            storage: self.ports.storage_endpoint(),
            curve: self
                .security
                .keys
                .as_ref()
                .map(|k| k.actor_curve(operacion)),
            scheduling: self.scheduling,
            metrics,
            ..ActorConfig::default()
        }
    }

    fn service(&self, name: &str, binary: &str, toml: String) -> Result<ServiceSpec, LaunchError> {
        let binary = find_binary(binary, self.bin_dir.as_deref())?;
        let mut spec = ServiceSpec::new(name, binary, toml, &self.run_dir);
        spec.ready_timeout = Duration::from_secs(30);
        Ok(spec)
    }

    /// The launch spec of the storage manager (its config path is what
    /// `biblioteca-failover` rewrites).
    pub fn storage_spec(&self) -> Result<ServiceSpec, LaunchError> {
        self.service(
            "almacenamiento",
            "biblioteca-almacenamiento",
            to_toml(&self.storage_config())?,
        )
    }

    /// Runs `biblioteca-almacenamiento migrate --user ROLE` to completion
    /// (config and log `migrate.toml`, `migrate.log` in the run directory).
    pub fn migrate(&self) -> Result<(), LaunchError> {
        let Some(role) = &self.migrate_as else {
            return Ok(());
        };
        let binary = find_binary("biblioteca-almacenamiento", self.bin_dir.as_deref())?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LaunchError::Io { path, source }
        };
        let config = self.run_dir.join("migrate.toml");
        let mut migrate = self.storage_config();
        migrate.metrics = MetricsConfig::off();
        std::fs::write(&config, to_toml(&migrate)?).map_err(io(&config))?;
        let log = self.run_dir.join("migrate.log");
        let mut cmd = std::process::Command::new(&binary);
        cmd.arg("--config")
            .arg(&config)
            .args(["migrate", "--user", role.as_str()]);
        if let Some(p) = &self.security.owner_password_file {
            cmd.arg("--password-file").arg(p);
        }
        let (text, failure) = match biblioteca_cluster::pg::run_command(&mut cmd) {
            Ok(out) => ([out.stdout, out.stderr].concat(), None),
            Err(e) => (e.to_string().into_bytes(), Some(e.to_string())),
        };
        std::fs::write(&log, text).map_err(io(&log))?;
        match failure {
            None => Ok(()),
            Some(status) => Err(LaunchError::Exited {
                name: "migrate".into(),
                status,
                tail: biblioteca_cluster::node::tail(&log, 20),
                log,
            }),
        }
    }

    pub fn load_manager_spec(&self) -> Result<ServiceSpec, LaunchError> {
        self.service(
            "carga",
            "biblioteca-carga",
            to_toml(&self.load_manager_config())?,
        )
    }

    /// Actor `index` of operation `op` (names must be unique per run dir).
    pub fn actor_spec(&self, op: Operacion, index: usize) -> Result<ServiceSpec, LaunchError> {
        let name = if index == 0 {
            format!("actor-{op}")
        } else {
            format!("actor-{op}-{index}")
        };
        self.service(
            &name,
            "biblioteca-actor",
            to_toml(&{
                let mut cfg = self.actor_config(op);
                if index > 0 {
                    cfg.metrics = MetricsConfig::off();
                }
                cfg
            })?,
        )
    }
}

fn to_toml<T: serde::Serialize>(value: &T) -> Result<String, LaunchError> {
    toml::to_string(value).map_err(|e| LaunchError::Io {
        path: PathBuf::from("<generated config>"),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}

/// The running services. Dropping it kills them all.
#[derive(Debug)]
pub struct Stack {
    spec: StackSpec,
    pub storage: Service,
    pub carga: Service,
    /// In start order; `(operation, service)`.
    pub actors: Vec<(Operacion, Service)>,
}

impl Stack {
    /// Migrates the schema ([`StackSpec::migrate`]), then starts the storage
    /// manager, the load manager and the actors, each after the previous one
    /// reported `READY=1`.
    pub fn start(spec: StackSpec) -> Result<Stack, LaunchError> {
        std::fs::create_dir_all(&spec.run_dir).map_err(|source| LaunchError::Io {
            path: spec.run_dir.clone(),
            source,
        })?;
        spec.migrate()?;
        let storage = Service::start(spec.storage_spec()?)?;
        let carga = Service::start(spec.load_manager_spec()?)?;
        let mut stack = Stack {
            spec,
            storage,
            carga,
            actors: Vec::new(),
        };
        for op in stack.spec.actors.clone() {
            stack.add_actor(op)?;
        }
        Ok(stack)
    }

    /// Starts one more actor for `op` (several instances may serve one topic).
    pub fn add_actor(&mut self, op: Operacion) -> Result<&mut Service, LaunchError> {
        let index = self.actors.iter().filter(|(o, _)| *o == op).count();
        let svc = Service::start(self.spec.actor_spec(op, index)?)?;
        self.actors.push((op, svc));
        let last = self.actors.len() - 1;
        Ok(&mut self.actors[last].1)
    }

    /// Every service: the storage manager, the load manager, the actors.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        [&self.storage, &self.carga]
            .into_iter()
            .chain(self.actors.iter().map(|(_, s)| s))
    }

    /// The first actor serving `op`.
    pub fn actor(&mut self, op: Operacion) -> Option<&mut Service> {
        self.actors
            .iter_mut()
            .find(|(o, _)| *o == op)
            .map(|(_, s)| s)
    }

    pub fn spec(&self) -> &StackSpec {
        &self.spec
    }

    pub fn ports(&self) -> StackPorts {
        self.spec.ports
    }

    pub fn run_dir(&self) -> &Path {
        &self.spec.run_dir
    }

    /// Stops actors, then the load manager, then the storage manager, so
    /// in-flight requests drain towards the database.
    pub fn stop(&mut self) {
        for (_, a) in self.actors.iter_mut().rev() {
            let _ = a.stop();
        }
        let _ = self.carga.stop();
        let _ = self.storage.stop();
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop();
    }
}
