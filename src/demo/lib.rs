//! `biblioteca-demo`: the whole system on one machine, for people who want to
//! see it work.
//!
//! It creates a PostgreSQL primary and streaming standby in a directory,
//! starts every service on the default ports, prints where everything is (and
//! writes the same to `endpoints.json`), then either waits for Ctrl-C or runs
//! the reference scenario ([`scenario`]). On the way out it stops everything
//! it started and removes what it created unless asked to keep it.

pub mod endpoints;
pub mod failover;
pub mod scenario;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use biblioteca_cluster::auth::Passwords;
use biblioteca_cluster::{Cluster, ClusterError, ClusterSpec};
use biblioteca_runtime::security::provision::HostKeys;
use biblioteca_runtime::security::SecurityError;
use biblioteca_runtime::shutdown::Shutdown;
use biblioteca_stack::launch::{port_in_use, LaunchError};
use biblioteca_stack::{Stack, StackPorts, StackSecurity, StackSpec};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("port {port} ({what}) is already in use: is another demo running? Stop it or pick other ports")]
    PortInUse { port: u16, what: &'static str },
    #[error("{0} already holds a demo cluster (left by --keep?): remove it or choose another --data-dir")]
    DirInUse(PathBuf),
    #[error("database cluster: {0}")]
    Cluster(#[from] ClusterError),
    #[error("services: {0}")]
    Launch(#[from] LaunchError),
    #[error("security: {0}")]
    Security(#[from] SecurityError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the scenario failed: {failed} of {total} checks did not hold")]
    ScenarioFailed { failed: usize, total: usize },
}

/// What the demo should do.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Where the cluster, configs and logs go; `None`: a fresh temporary directory.
    pub data_dir: Option<PathBuf>,
    /// Keep the directory (servers are still stopped) when the demo ends.
    pub keep: bool,
    /// Run the reference scenario and exit instead of waiting for Ctrl-C.
    pub scenario: bool,
    pub primary_port: u16,
    /// The first standby's port; further standbys take the next ports.
    pub standby_port: u16,
    /// How many standbys; with two or more, commits use quorum `ANY 1`.
    pub standbys: usize,
    pub ports: StackPorts,
    /// Commit without waiting for the standby (faster, may lose the last
    /// transactions on failover).
    pub asynchronous: bool,
    /// Where the `biblioteca-*` binaries are; `None`: next to this executable.
    pub bin_dir: Option<PathBuf>,
    /// Security on: CURVE keys in `claves/`, scram passwords
    /// in `secretos/` and `pgpass`.
    pub secure: bool,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            data_dir: None,
            keep: false,
            scenario: false,
            primary_port: 55432,
            standby_port: 55433,
            standbys: 1,
            ports: StackPorts::default(),
            asynchronous: false,
            bin_dir: None,
            secure: false,
        }
    }
}

/// A running demo: the database cluster and the services.
pub struct Demo {
    pub config: DemoConfig,
    pub dir: PathBuf,
    pub cluster: Cluster,
    pub stack: Stack,
    /// The database passwords of a `--seguro` demo.
    pub passwords: Option<Passwords>,
}

impl Demo {
    /// Checks the ports, creates the cluster and starts every service.
    pub fn start(config: DemoConfig) -> Result<Demo, DemoError> {
        check_ports(&config)?;
        let dir = match &config.data_dir {
            Some(d) => d.clone(),
            None => std::env::temp_dir().join(format!("biblioteca-demo-{}", std::process::id())),
        };
        if dir.join("primary").exists() {
            return Err(DemoError::DirInUse(dir));
        }
        let started = Instant::now();
        println!(
            "Creating a PostgreSQL primary and a streaming standby in {} ...",
            dir.display()
        );
        let cluster = Cluster::create(ClusterSpec {
            dir: dir.clone(),
            primary_port: config.primary_port,
            standby_port: config.standby_port,
            standbys: config.standbys.max(1),
            quorum: 1,
            synchronous: !config.asynchronous,
            keep: config.keep,
        })?;
        let standbys: Vec<String> = cluster
            .standbys()
            .iter()
            .map(|s| format!("{} on 127.0.0.1:{}", s.name, s.port))
            .collect();
        println!(
            "  primary on 127.0.0.1:{}, {} ({} replication), {:.1} s",
            config.primary_port,
            standbys.join(", "),
            match (config.asynchronous, standbys.len()) {
                (true, _) => "asynchronous",
                (false, 1) => "synchronous",
                (false, _) => "synchronous, quorum ANY 1",
            },
            started.elapsed().as_secs_f64()
        );
        let mut spec = StackSpec::new(
            dir.join("servicios"),
            config.ports,
            &cluster.primary().conninfo("app", "library"),
            &cluster.standby().conninfo("app", "library"),
        );
        spec.use_cluster(&cluster);
        spec.bin_dir = config.bin_dir.clone();
        spec.metrics = biblioteca_stack::StackMetrics::DefaultPorts;
        let passwords = if config.secure {
            let passwords = cluster.require_passwords()?;
            let keys = HostKeys::generate(&dir.join("claves"))?;
            println!(
                "  secured: scram-sha-256 passwords in {}, CURVE keys in {}",
                passwords.pgpass.display(),
                keys.dir.display()
            );
            spec.security = StackSecurity {
                keys: Some(keys),
                password_file: Some(passwords.app.clone()),
                owner_password_file: Some(passwords.owner.clone()),
            };
            Some(passwords)
        } else {
            None
        };
        println!("Starting the storage manager, the load manager and the actors ...");
        let stack = Stack::start(spec)?;
        Ok(Demo {
            config,
            dir,
            cluster,
            stack,
            passwords,
        })
    }

    /// Stops the services, then the database; removes the directory unless `keep`.
    pub fn finish(mut self) {
        self.stack.stop();
        let _ = self.cluster.stop();
        if self.config.keep {
            println!("Kept {} (servers stopped).", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
            println!("Removed {}.", self.dir.display());
        }
    }
}

fn check_ports(config: &DemoConfig) -> Result<(), DemoError> {
    let p = &config.ports;
    let standbys = (0..config.standbys.max(1) as u16)
        .map(|i| (config.standby_port.saturating_add(i), "PostgreSQL standby"));
    let wanted = [
        (config.primary_port, "PostgreSQL primary"),
        (p.frontend, "load manager, clients"),
        (p.publisher, "load manager, actors"),
        (p.backchannel, "load manager, back-channel"),
        (p.storage, "storage manager"),
    ];
    for (port, what) in wanted.into_iter().chain(standbys) {
        if port_in_use(port) {
            return Err(DemoError::PortInUse { port, what });
        }
    }
    Ok(())
}

/// Runs the demo until `shutdown` (or, with `scenario`, until the scenario ends).
pub fn run(config: DemoConfig, shutdown: Shutdown) -> Result<(), DemoError> {
    let demo = Demo::start(config)?;
    let result = serve(&demo, &shutdown);
    demo.finish();
    result
}

fn serve(demo: &Demo, shutdown: &Shutdown) -> Result<(), DemoError> {
    let info = endpoints::Endpoints::of(demo);
    info.write(&demo.dir.join("endpoints.json"))?;
    endpoints::write_failover_config(demo)?;
    info.print(&demo.dir);
    if demo.config.scenario {
        let report = scenario::run(demo);
        return if report.failed == 0 {
            Ok(())
        } else {
            Err(DemoError::ScenarioFailed {
                failed: report.failed,
                total: report.total,
            })
        };
    }
    println!("\nThe system is up. Press Ctrl-C to stop it.");
    while !shutdown.is_triggered() {
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("\nStopping ...");
    Ok(())
}
