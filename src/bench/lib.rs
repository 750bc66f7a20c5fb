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
//! ([`maquina`]) and each service's peak RSS, and checks the performance targets
//! against it and against the transport floor ([`suelo`]: what the ZeroMQ
//! hops alone cost here, measured first) and, on request, against the
//! skeleton pipeline ([`esqueleto`]: what this architecture at best reaches
//! with the real database work). Everything is stopped and removed at the
//! end, also on error or Ctrl-C.

pub mod cpu;
pub mod esqueleto;
pub mod maquina;
mod medidor;
pub mod pgbench;
pub mod suelo;
mod tabla;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use biblioteca_client::load::{self, spec};
use biblioteca_cluster::{Cluster, ClusterError, ClusterSpec, APP_DB, APP_USER, SUPERUSER};
use biblioteca_runtime::sched::Scheduling;
use biblioteca_runtime::shutdown::Shutdown;
use biblioteca_stack::launch::{free_port, LaunchError};
use biblioteca_stack::{Stack, StackPorts, StackSpec};

use esqueleto::Esqueleto;
pub use maquina::Maquina;
use medidor::Medidor;
pub use tabla::{objetivos, tabla, Objetivo};

/// Copies per generated book: far more than all virtual users can hold.
const EJEMPLARES: i32 = 100_000;
/// Unmeasured warm-up of each system before the first step.
const CALENTAMIENTO: Duration = Duration::from_secs(3);
/// Measured time of the transport floor at each client count.
const SUELO: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("database cluster: {0}")]
    Cluster(#[from] ClusterError),
    /// `cargo run --bin biblioteca-bench` builds only the bench itself.
    #[error("services: {0} (build them first: cargo build --release --bins)")]
    Launch(#[from] LaunchError),
    #[error("seeding the catalogue: {0}")]
    Storage(#[from] biblioteca_storage::StorageError),
    #[error("pgbench: {0}")]
    Pgbench(#[from] pgbench::PgbenchError),
    #[error("load generator: {0}")]
    Load(#[from] load::LoadError),
    #[error("transport floor: {0}")]
    Suelo(#[from] suelo::SueloError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Opciones(String),
    #[error("interrupted")]
    Interrumpido,
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct Opciones {
    pub clientes: Vec<usize>,
    pub duracion: Duration,
    pub libros: u64,
    /// Where the `biblioteca-*` binaries are; `None`: next to this executable.
    pub bin_dir: Option<PathBuf>,
    /// Keep the temporary directory (logs, configs) for inspection.
    pub conservar: bool,
    /// Also drive the storage manager directly (no load manager, no actor),
    /// to split the pipeline's cost between the database tier and the hops.
    pub almacenamiento: bool,
    /// Runs of each system per client count, alternated; the table shows the
    /// median run (by throughput) and the CPU figures are averaged.
    pub repeticiones: u32,
    /// The services' CPU scheduling policy (to compare against `normal`).
    pub scheduling: Scheduling,
    /// Also run the skeleton pipeline ([`esqueleto`]): forwarding-only load
    /// manager and actor in front of the real storage manager.
    pub esqueleto: bool,
}

/// Our pipeline at one client count.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Nuestro {
    pub peticiones: u64,
    pub fallos: u64,
    /// Requests (loans and returns) per second.
    pub rps: f64,
    /// Loan + return pairs per second (`rps / 2`).
    pub pares_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Nuestro {
    /// This run's requests/s over `pgbench`'s transactions/s (0 when pgbench
    /// completed nothing).
    pub fn ratio(&self, pgbench: &pgbench::Resultado) -> f64 {
        if pgbench.tps > 0.0 {
            self.rps / pgbench.tps
        } else {
            0.0
        }
    }
}

/// One client count, both systems.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fila {
    pub clientes: usize,
    pub pgbench: pgbench::Resultado,
    pub nuestro: Nuestro,
    /// The same load sent straight to the storage manager (`--almacenamiento`).
    pub almacenamiento: Option<Nuestro>,
    /// The same load through the skeleton pipeline (`--esqueleto`).
    pub esqueleto: Option<Nuestro>,
    /// Our requests/s over pgbench's transactions/s (of the median runs).
    pub ratio: f64,
    /// The same ratio for each repetition, pgbench and ours run back to back.
    pub ratios: Vec<f64>,
    /// CPU per request of each part, for each system measured.
    pub cpu: Vec<CpuSistema>,
}

/// CPU per request of the parts of one system at one client count.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuSistema {
    pub sistema: &'static str,
    pub partes: Vec<cpu::CostoParte>,
}

/// Peak resident memory of one service process.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Memoria {
    pub servicio: String,
    pub vm_hwm_kb: u64,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reporte {
    pub maquina: Maquina,
    pub duracion_s: u64,
    pub libros: u64,
    pub replicacion: &'static str,
    /// The services' CPU scheduling policy in this run.
    pub scheduling: Scheduling,
    pub filas: Vec<Fila>,
    pub memoria: Vec<Memoria>,
    /// The ZeroMQ transport floor at each client count ([`suelo`]).
    pub suelo: Vec<suelo::Suelo>,
    pub objetivos: Vec<Objetivo>,
}

/// Removes the run directory on every way out (unless kept).
struct Directorio {
    path: PathBuf,
    conservar: bool,
}

impl Drop for Directorio {
    fn drop(&mut self) {
        if self.conservar {
            eprintln!("kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The cluster, whose servers stop on every way out of the run; with
/// `--keep` (its spec's `keep`) its files and logs stay behind, without a
/// server still running on them.
struct Detenido(Cluster);

impl std::ops::Deref for Detenido {
    type Target = Cluster;

    fn deref(&self) -> &Cluster {
        &self.0
    }
}

impl Drop for Detenido {
    fn drop(&mut self) {
        // Without `keep` the cluster's own drop stops and removes it.
        if self.0.spec().keep {
            let _ = self.0.stop();
        }
    }
}

/// Runs the benchmark; progress goes to stderr.
pub fn run(opts: &Opciones, shutdown: &Shutdown) -> Result<Reporte, BenchError> {
    if opts.clientes.is_empty() || opts.clientes.iter().any(|&c| c == 0 || c > 1000) {
        return Err(BenchError::Opciones(
            "--clientes must list client counts between 1 and 1000".into(),
        ));
    }
    if opts.libros == 0 || opts.duracion < Duration::from_secs(1) {
        return Err(BenchError::Opciones(
            "--libros must be positive and --duracion at least 1s".into(),
        ));
    }
    if opts.repeticiones == 0 || opts.repeticiones > 100 {
        return Err(BenchError::Opciones(
            "--repeticiones must be between 1 and 100".into(),
        ));
    }
    let maquina = Maquina::detectar();
    eprintln!("machine: {maquina}");
    // First, while nothing else runs: the best case for the transport.
    let mut pisos = Vec::new();
    for &n in &opts.clientes {
        let s = suelo::medir(n, SUELO)?;
        eprintln!(
            "{n:>3} in flight: one ZeroMQ TCP hop costs {:.1} us of CPU ({} round trips)",
            s.us_por_salto, s.idas_y_vueltas
        );
        pisos.push(s);
        if shutdown.is_triggered() {
            return Err(BenchError::Interrumpido);
        }
    }
    let dir = Directorio {
        path: std::env::temp_dir().join(format!("biblioteca-bench-{}", std::process::id())),
        conservar: opts.conservar,
    };
    std::fs::create_dir_all(&dir.path).map_err(|source| BenchError::Io {
        path: dir.path.clone(),
        source,
    })?;
    let t0 = Instant::now();
    let cluster = Detenido(Cluster::create(ClusterSpec {
        dir: dir.path.join("pg"),
        primary_port: free_port()?,
        standby_port: free_port()?,
        synchronous: true,
        keep: opts.conservar,
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
    let esqueleto = if opts.esqueleto {
        Some(Esqueleto::arrancar(
            &dir.path.join("esqueleto"),
            opts.bin_dir.as_deref(),
            &stack.ports().storage_endpoint(),
            opts.scheduling,
        )?)
    } else {
        None
    };
    biblioteca_storage::seed(&stack.spec().storage_config(), opts.libros, EJEMPLARES)?;
    let primary = cluster.primary();
    primary.sql_as(SUPERUSER, APP_DB, "VACUUM ANALYZE")?;
    // Vacuums run between measured runs instead (`Medidor::preparar`).
    primary.sql_as(SUPERUSER, "postgres", "ALTER SYSTEM SET autovacuum = off")?;
    primary.sql_as(SUPERUSER, "postgres", "SELECT pg_reload_conf()")?;
    eprintln!(
        "cluster (synchronous standby), services and {} books ready in {:.1} s",
        opts.libros,
        t0.elapsed().as_secs_f64()
    );
    let pg_dir = dir.path.join("pgbench");
    cluster.primary().pg.make_dir(&pg_dir)?;
    let partes = medidor::partes(&cluster, &stack, esqueleto.as_ref());
    let medidor = Medidor {
        partes,
        cluster: &cluster,
        pg_dir,
        libros: opts.libros,
        catalogo: spec::catalogo(Some(opts.libros)),
        shutdown,
        ctx: zmq::Context::new(),
    };
    let mut run: u32 = 0;
    let calentar = opts.clientes.iter().copied().max().unwrap_or(1).min(4);
    medidor.pgbench(calentar, CALENTAMIENTO, run)?;
    let frontend = stack.ports().frontend_endpoint();
    // A REQ socket's ["", body] is what the storage ROUTER expects too.
    let storage = stack.ports().storage_endpoint();
    medidor.nuestro(calentar, CALENTAMIENTO, run, &frontend)?;
    let destinos = medidor::Destinos {
        frontend,
        storage: opts.almacenamiento.then_some(storage),
        esqueleto: esqueleto.as_ref().map(|e| e.frontend().to_string()),
    };
    if let Some(e) = &destinos.esqueleto {
        // Also lets the forwarding actor's subscription settle.
        medidor.nuestro(calentar, CALENTAMIENTO, run, e)?;
    }
    let mut filas = Vec::new();
    for &n in &opts.clientes {
        let fila = medidor.paso(n, opts, &mut run, &destinos)?;
        let rango = match (
            fila.ratios.iter().copied().reduce(f64::min),
            fila.ratios.iter().copied().reduce(f64::max),
        ) {
            (Some(lo), Some(hi)) if fila.ratios.len() > 1 => {
                format!(" (runs {lo:.2}-{hi:.2})")
            }
            _ => String::new(),
        };
        eprintln!(
            "{n:>3} clients: pgbench {:.0} tps (p99 {:.2} ms), ours {:.0} req/s (p99 {:.2} ms, {} failures), ratio {:.2}{rango}",
            fila.pgbench.tps,
            fila.pgbench.p99_ms,
            fila.nuestro.rps,
            fila.nuestro.p99_ms,
            fila.nuestro.fallos,
            fila.ratio
        );
        filas.push(fila);
    }
    let memoria = memoria(&stack);
    drop(esqueleto);
    drop(stack);
    drop(cluster);
    let objetivos = objetivos(&filas, &memoria, &pisos);
    Ok(Reporte {
        maquina,
        duracion_s: opts.duracion.as_secs(),
        libros: opts.libros,
        replicacion: "synchronous (local streaming standby)",
        scheduling: opts.scheduling,
        filas,
        memoria,
        suelo: pisos,
        objetivos,
    })
}

/// Peak RSS of each service, read while they still run.
fn memoria(stack: &Stack) -> Vec<Memoria> {
    stack
        .services()
        .filter_map(|s| {
            let vm_hwm_kb = maquina::vm_hwm_kb(s.pid()?)?;
            Some(Memoria {
                servicio: s.name().to_string(),
                vm_hwm_kb,
            })
        })
        .collect()
}
