//! `biblioteca-bench`: how close the whole pipeline (client → load manager →
//! actor → storage manager → PostgreSQL) comes to the database alone.
//!
//! One run builds everything in a fresh temporary directory on free ports: a
//! primary with a synchronous standby ([`biblioteca_cluster`]), the services
//! ([`biblioteca_stack`]) and a generated catalogue ([`biblioteca_storage::seed`]).
//! Then, for each client count, `pgbench` runs the storage manager's own loan
//! and return transactions ([`pgbench`]) and the load generator
//! ([`biblioteca_client::load`]) runs closed-loop virtual users that each borrow a
//! random book and return it, over and over. Both count one request (a loan or
//! a return) as one transaction, so their rates compare like with like. The
//! report adds the CPU time each part spent per request ([`cpu`]), the machine
//! ([`machine`]) and each service's peak RSS, and checks the performance targets
//! against it and against the transport floor ([`floor`]: what the ZeroMQ
//! hops alone cost here, measured first) and, on request, against the
//! skeleton pipeline ([`skeleton`]: what this architecture at best reaches
//! with the real database work), and, with `--metricas`, against the same
//! services with their metrics endpoints on and scraped ([`metrics_cost`]).
//! Everything is stopped and removed at the end, also on error or Ctrl-C.

pub mod cpu;
pub mod failover;
pub mod floor;
pub mod machine;
mod meter;
mod metrics_cost;
pub mod pgbench;
pub mod skeleton;
pub mod switches;
mod table;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use biblioteca_client::load::{self, spec};
use biblioteca_cluster::{Cluster, ClusterError, ClusterSpec, APP_DB, APP_USER, SUPERUSER};
use biblioteca_runtime::sched::Scheduling;
use biblioteca_runtime::shutdown::Shutdown;
use biblioteca_stack::launch::{free_port, LaunchError};
use biblioteca_stack::{Stack, StackPorts, StackSpec};

pub use machine::Machine;
use meter::Meter;
use skeleton::Skeleton;
pub use table::{table, targets, Target};

/// `--libros 4` is the guide's catalogue: the four ISBNs migration 0002
/// seeds (the demo's, the guide's, the course experiment's), stock raised to
/// [`COPIES`]; any other count is generated books `1..=N`.
pub const GUIDE_BOOKS: u64 = 4;

/// Copies per generated book: far more than all virtual users can hold.
const COPIES: i32 = 100_000;
/// Unmeasured warm-up of each system before the first step.
const WARM_UP: Duration = Duration::from_secs(3);
/// Measured time of the transport floor at each client count.
const FLOOR: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("database cluster: {0}")]
    Cluster(#[from] ClusterError),
    /// `cargo run --bin biblioteca-bench` builds only the bench itself; the
    /// error says how to build the rest.
    #[error("services: {0}")]
    Launch(#[from] LaunchError),
    #[error("seeding the catalogue: {0}")]
    Storage(#[from] biblioteca_storage::StorageError),
    #[error("pgbench: {0}")]
    Pgbench(#[from] pgbench::PgbenchError),
    #[error("load generator: {0}")]
    Load(#[from] load::LoadError),
    #[error("transport floor: {0}")]
    Floor(#[from] floor::FloorError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Options(String),
    #[error("interrupted")]
    Interrupted,
}

/// What to measure (the flags of `biblioteca-bench`).
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// Client counts, comma-separated (10 is there for the p99 target).
    #[arg(
        long = "clientes",
        value_delimiter = ',',
        default_value = "1,4,10,16,64"
    )]
    pub clients: Vec<usize>,
    /// Duration of each step (each system, each client count), e.g. 20s.
    #[arg(long = "duracion", default_value = "20s", value_parser = spec::duration)]
    pub duration: Duration,
    /// Books in the generated catalogue.
    #[arg(long = "libros", default_value_t = 1000)]
    pub books: u64,
    /// Keep the temporary directory (server and service logs).
    #[arg(long)]
    pub keep: bool,
    /// Also send the same load straight to the storage manager, to split the
    /// pipeline's cost between the database tier and the ZeroMQ hops.
    #[arg(long = "almacenamiento")]
    pub storage_alone: bool,
    /// Also run the skeleton: a load manager and an actor that only forward
    /// frames (biblioteca-esqueleto) in front of the real storage manager,
    /// the ceiling for any pipeline of this shape here.
    #[arg(long = "esqueleto")]
    pub skeleton: bool,
    /// Also run the same pipeline with every service's metrics endpoint on
    /// and scraped each second (the pipeline measured first has them off),
    /// alternated run by run: what metrics cost in throughput and RSS.
    #[arg(long = "metricas")]
    pub metrics: bool,
    /// Runs of each system per client count, alternated (pgbench, ours, ...):
    /// the table shows the median run, CPU per request is averaged. Use 3 or
    /// more on a machine whose speed swings between runs.
    #[arg(long = "repeticiones", default_value_t = 1)]
    pub repetitions: u32,
    /// The services' CPU scheduling policy: batch (their default) or normal
    /// (the kernel's default, for a baseline run).
    #[arg(long, default_value_t = Scheduling::default())]
    pub scheduling: Scheduling,
    /// Where the biblioteca-* binaries are (default: next to this one).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
}

/// Our pipeline at one client count.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ours {
    pub requests: u64,
    pub failures: u64,
    /// Requests (loans and returns) per second.
    pub rps: f64,
    /// Loan + return pairs per second (`rps / 2`).
    pub pairs_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Ours {
    /// This run's requests/s over `pgbench`'s transactions/s (0 when pgbench
    /// completed nothing).
    pub fn ratio(&self, pgbench: &pgbench::PgbenchResult) -> f64 {
        if pgbench.tps > 0.0 {
            self.rps / pgbench.tps
        } else {
            0.0
        }
    }
}

/// One client count, both systems.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchStep {
    pub clients: usize,
    pub pgbench: pgbench::PgbenchResult,
    pub ours: Ours,
    /// The same load sent straight to the storage manager (`--almacenamiento`).
    pub storage_alone: Option<Ours>,
    /// The same load through the skeleton pipeline (`--esqueleto`).
    pub skeleton: Option<Ours>,
    /// The pipeline with its metrics endpoints on and scraped (`--metricas`).
    pub metrics_on: Option<Ours>,
    /// Our requests/s over pgbench's transactions/s (of the median runs).
    pub ratio: f64,
    /// The same ratio for each repetition, pgbench and ours run back to back.
    pub ratios: Vec<f64>,
    /// CPU per request of each part, for each system measured.
    pub cpu: Vec<SystemCpu>,
}

/// CPU per request of the parts of one system at one client count.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SystemCpu {
    pub system: &'static str,
    pub parts: Vec<cpu::PartCost>,
    /// Context switches per request of each part.
    pub switches: Vec<switches::PartSwitches>,
}

/// Peak resident memory of one service process.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Memory {
    pub service: String,
    pub vm_hwm_kb: u64,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    pub machine: Machine,
    pub duration_s: u64,
    pub books: u64,
    pub replication: &'static str,
    /// The services' CPU scheduling policy in this run.
    pub scheduling: Scheduling,
    pub rows: Vec<BenchStep>,
    pub memory: Vec<Memory>,
    /// The ZeroMQ transport floor at each client count ([`floor`]).
    pub floor: Vec<floor::Floor>,
    pub targets: Vec<Target>,
}

/// Removes the run directory on every way out (unless kept).
struct RunDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The cluster, whose servers stop on every way out of the run; with
/// `--keep` (its spec's `keep`) its files and logs stay behind, without a
/// server still running on them.
struct Stopped(Cluster);

impl std::ops::Deref for Stopped {
    type Target = Cluster;

    fn deref(&self) -> &Cluster {
        &self.0
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // Without `keep` the cluster's own drop stops and removes it.
        if self.0.spec().keep {
            let _ = self.0.stop();
        }
    }
}

/// Runs the benchmark; progress goes to stderr.
pub fn run(opts: &BenchOptions, shutdown: &Shutdown) -> Result<BenchReport, BenchError> {
    if opts.clients.is_empty() || opts.clients.iter().any(|&c| c == 0 || c > 1000) {
        return Err(BenchError::Options(
            "--clientes must list client counts between 1 and 1000".into(),
        ));
    }
    if opts.books == 0 || opts.duration < Duration::from_secs(1) {
        return Err(BenchError::Options(
            "--libros must be positive and --duracion at least 1s".into(),
        ));
    }
    if opts.repetitions == 0 || opts.repetitions > 100 {
        return Err(BenchError::Options(
            "--repeticiones must be between 1 and 100".into(),
        ));
    }
    let machine = Machine::detect();
    eprintln!("machine: {machine}");
    // First, while nothing else runs: the best case for the transport.
    let mut floors = Vec::new();
    for &n in &opts.clients {
        let s = floor::measure(n, FLOOR)?;
        eprintln!(
            "{n:>3} in flight: one ZeroMQ TCP hop costs {:.1} us of CPU ({} round trips)",
            s.us_per_hop, s.round_trips
        );
        floors.push(s);
        if shutdown.is_triggered() {
            return Err(BenchError::Interrupted);
        }
    }
    let dir = RunDir {
        path: std::env::temp_dir().join(format!("biblioteca-bench-{}", std::process::id())),
        keep: opts.keep,
    };
    std::fs::create_dir_all(&dir.path).map_err(|source| BenchError::Io {
        path: dir.path.clone(),
        source,
    })?;
    let t0 = Instant::now();
    let cluster = Stopped(Cluster::create(ClusterSpec {
        dir: dir.path.join("pg"),
        primary_port: free_port()?,
        standby_port: free_port()?,
        synchronous: true,
        standbys: 1,
        quorum: 1,
        keep: opts.keep,
    })?);
    let ports = StackPorts {
        frontend: free_port()?,
        publisher: free_port()?,
        backchannel: free_port()?,
        storage: free_port()?,
    };
    let mut spec = StackSpec::new(
        dir.path.join("servicios"),
        ports,
        &cluster.primary().conninfo(APP_USER, APP_DB),
        &cluster.standby().conninfo(APP_USER, APP_DB),
    );
    spec.bin_dir = opts.bin_dir.clone();
    spec.scheduling = opts.scheduling;
    let stack = Stack::start(spec)?;
    let metrics_on = if opts.metrics {
        Some(metrics_cost::MetricsOn::start(
            stack.spec(),
            &dir.path.join("servicios-metricas"),
        )?)
    } else {
        None
    };
    let skeleton = if opts.skeleton {
        Some(Skeleton::start(
            &dir.path.join("esqueleto"),
            opts.bin_dir.as_deref(),
            &stack.ports().storage_endpoint(),
            opts.scheduling,
        )?)
    } else {
        None
    };
    let primary = cluster.primary();
    let guide = opts.books == GUIDE_BOOKS;
    if guide {
        primary.sql_as(
            SUPERUSER,
            APP_DB,
            &format!(
                "UPDATE libros SET ejemplares = {COPIES} WHERE isbn IN ('{}')",
                spec::GUIDE_CATALOGUE.join("', '")
            ),
        )?;
    } else {
        // The stack migrated the schema with the storage manager it runs
        // (`--bin-dir`: maybe another tree's), so no version check here.
        biblioteca_storage::seed_any_version(&stack.spec().storage_config(), opts.books, COPIES)?;
    }
    primary.sql_as(SUPERUSER, APP_DB, "VACUUM ANALYZE")?;
    // Vacuums run between measured runs instead (`Meter::prepare`).
    primary.sql_as(SUPERUSER, "postgres", "ALTER SYSTEM SET autovacuum = off")?;
    primary.sql_as(SUPERUSER, "postgres", "SELECT pg_reload_conf()")?;
    eprintln!(
        "cluster (synchronous standby), services and {} books{} ready in {:.1} s",
        opts.books,
        if guide {
            " (the guide's catalogue)"
        } else {
            ""
        },
        t0.elapsed().as_secs_f64()
    );
    let pg_dir = dir.path.join("pgbench");
    cluster.primary().pg.make_dir(&pg_dir)?;
    let parts = meter::parts(
        &cluster,
        &stack,
        skeleton.as_ref(),
        metrics_on.as_ref().map(|m| &m.stack),
    );
    let meter = Meter {
        parts,
        cluster: &cluster,
        pg_dir,
        books: opts.books,
        guide,
        catalogue: if guide {
            spec::catalogue(None)
        } else {
            spec::catalogue(Some(opts.books))
        },
        shutdown,
        ctx: zmq::Context::new(),
    };
    let mut run: u32 = 0;
    let warm_up = opts.clients.iter().copied().max().unwrap_or(1).min(4);
    meter.pgbench(warm_up, WARM_UP, run)?;
    let frontend = stack.ports().frontend_endpoint();
    // A REQ socket's ["", body] is what the storage ROUTER expects too.
    let storage = stack.ports().storage_endpoint();
    meter.ours(warm_up, WARM_UP, run, &frontend)?;
    let endpoints = meter::Endpoints {
        frontend,
        storage: opts.storage_alone.then_some(storage),
        skeleton: skeleton.as_ref().map(|e| e.frontend().to_string()),
        metrics_on: metrics_on.as_ref().map(metrics_cost::MetricsOn::frontend),
    };
    // Also lets the forwarding actors' subscriptions settle.
    for e in [&endpoints.skeleton, &endpoints.metrics_on]
        .into_iter()
        .flatten()
    {
        meter.ours(warm_up, WARM_UP, run, e)?;
    }
    let mut rows = Vec::new();
    for &n in &opts.clients {
        let row = meter.step(n, opts, &mut run, &endpoints)?;
        let range = match (
            row.ratios.iter().copied().reduce(f64::min),
            row.ratios.iter().copied().reduce(f64::max),
        ) {
            (Some(lo), Some(hi)) if row.ratios.len() > 1 => {
                format!(" (runs {lo:.2}-{hi:.2})")
            }
            _ => String::new(),
        };
        eprintln!(
            "{n:>3} clients: pgbench {:.0} tps (p99 {:.2} ms), ours {:.0} req/s (p99 {:.2} ms, {} failures), ratio {:.2}{range}",
            row.pgbench.tps,
            row.pgbench.p99_ms,
            row.ours.rps,
            row.ours.p99_ms,
            row.ours.failures,
            row.ratio
        );
        rows.push(row);
    }
    let mut memory = memory(&stack, "");
    if let Some(m) = &metrics_on {
        memory.extend(self::memory(&m.stack, "metrics on: "));
    }
    drop(metrics_on);
    drop(skeleton);
    drop(stack);
    drop(cluster);
    let targets = targets(&rows, &memory, &floors);
    Ok(BenchReport {
        machine,
        duration_s: opts.duration.as_secs(),
        books: opts.books,
        replication: "synchronous (local streaming standby)",
        scheduling: opts.scheduling,
        rows,
        memory,
        floor: floors,
        targets,
    })
}

/// Peak RSS of each service, read while they still run, named with `prefix`.
fn memory(stack: &Stack, prefix: &str) -> Vec<Memory> {
    stack
        .services()
        .filter_map(|s| {
            let vm_hwm_kb = machine::vm_hwm_kb(s.pid()?)?;
            Some(Memory {
                service: format!("{prefix}{}", s.name()),
                vm_hwm_kb,
            })
        })
        .collect()
}
