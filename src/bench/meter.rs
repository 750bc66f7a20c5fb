//! One step of the benchmark: both systems (and optionally the storage
//! manager alone and the skeleton pipeline) at one client count, repeated
//! and alternated, with the CPU each part spent per request.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::skeleton::Skeleton;
use super::{cpu, pgbench, switches, BenchError, BenchOptions, BenchStep, Ours, SystemCpu};
use biblioteca_client::load::{self, spec, LoadOptions};
use biblioteca_cluster::{Cluster, APP_DB, SUPERUSER};
use biblioteca_protocol::config::ClientConfig;
use biblioteca_runtime::shutdown::Shutdown;
use biblioteca_stack::Stack;

/// The run whose `key` is the median (the lower one of an even count): a
/// real run, so its latencies belong with its throughput.
fn median<T: Clone>(v: &[T], key: fn(&T) -> f64) -> Option<T> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| key(&v[a]).total_cmp(&key(&v[b])));
    let mid = idx.get(idx.len().saturating_sub(1) / 2)?;
    v.get(*mid).cloned()
}

/// One run's CPU and context switches per request, by part.
type Costs = (Vec<cpu::PartCost>, Vec<switches::PartSwitches>);

/// The mean costs of one system's runs.
fn system_cpu(system: &'static str, runs: &[Costs]) -> SystemCpu {
    let (cpus, switches): (Vec<_>, Vec<_>) = runs.iter().cloned().unzip();
    SystemCpu {
        system,
        parts: cpu::average(&cpus),
        switches: switches::average(&switches),
    }
}

/// The parts whose CPU time is counted: both PostgreSQL nodes, each service
/// and the client (pgbench, or the load generator in this process).
/// The skeleton's processes ([`Skeleton`]) count under the load manager and
/// the actors: only one system runs at a time, and the idle one's
/// heartbeats are noise.
pub(super) fn parts(cluster: &Cluster, stack: &Stack, skeleton: Option<&Skeleton>) -> cpu::Parts {
    let pids = |v: Vec<Option<u32>>| cpu::Part::Processes(v.into_iter().flatten().collect());
    let mut parts = cpu::Parts::new();
    for (name, nodo) in [
        ("pg primary", cluster.primary()),
        ("pg standby", cluster.standby()),
    ] {
        if let Some(pm) = nodo.postmaster_pid() {
            parts = parts.with(name, cpu::Part::Postgres(pm));
        }
    }
    parts
        .with("almacenamiento", pids(vec![stack.storage.pid()]))
        .with(
            "carga",
            pids(vec![
                stack.carga.pid(),
                skeleton.and_then(|e| e.load_manager.pid()),
            ]),
        )
        .with(
            "actors",
            pids(
                stack
                    .actors
                    .iter()
                    .map(|(_, s)| s.pid())
                    .chain([skeleton.and_then(|e| e.actor.pid())])
                    .collect(),
            ),
        )
        .with("client", cpu::Part::OwnProcess)
}

/// Where each system's load goes.
pub(super) struct Endpoints {
    /// The load manager (the pipeline).
    pub(super) frontend: String,
    /// The storage manager's ROUTER (`--almacenamiento`).
    pub(super) storage: Option<String>,
    /// The skeleton's load manager (`--esqueleto`).
    pub(super) skeleton: Option<String>,
}

/// Runs the two systems against one cluster and stack.
pub(super) struct Meter<'a> {
    pub(super) parts: cpu::Parts,
    pub(super) cluster: &'a Cluster,
    pub(super) pg_dir: PathBuf,
    pub(super) books: u64,
    /// The guide's four books (`--libros 4`).
    pub(super) guide: bool,
    pub(super) catalogue: Vec<String>,
    pub(super) shutdown: &'a Shutdown,
    pub(super) ctx: zmq::Context,
}

impl Meter<'_> {
    /// One client count: every system `repetitions` times, alternated, each
    /// run from freshly vacuumed and checkpointed tables ([`Self::prepare`]).
    pub(super) fn step(
        &self,
        n: usize,
        opts: &BenchOptions,
        run: &mut u32,
        endpoints: &Endpoints,
    ) -> Result<BenchStep, BenchError> {
        let (mut pgbench_runs, mut ours) = (Vec::new(), Vec::new());
        let (mut cpu_pgbench, mut cpu_ours) = (Vec::new(), Vec::new());
        // The optional systems: (name, endpoint, runs, CPU per run).
        let mut extra: Vec<(&'static str, &str, Vec<Ours>, Vec<_>)> = [
            ("storage alone", endpoints.storage.as_deref()),
            ("skeleton", endpoints.skeleton.as_deref()),
        ]
        .into_iter()
        .filter_map(|(name, ep)| Some((name, ep?, Vec::new(), Vec::new())))
        .collect();
        for rep in 1..=opts.repetitions {
            *run += 1;
            let tag = if opts.repetitions > 1 {
                format!(" (run {rep}/{})", opts.repetitions)
            } else {
                String::new()
            };
            self.prepare()?;
            eprintln!("{n:>3} clients: pgbench{tag} ...");
            let (before, watch) = self.start_counting();
            let r = self.pgbench(n, opts.duration, *run)?;
            cpu_pgbench.push(self.cpu(&before, watch, r.transactions));
            pgbench_runs.push(r);
            eprintln!("{n:>3} clients: pipeline{tag} ...");
            self.prepare()?;
            let (before, watch) = self.start_counting();
            let r = self.ours(n, opts.duration, *run, &endpoints.frontend)?;
            cpu_ours.push(self.cpu(&before, watch, r.requests));
            ours.push(r);
            for (name, endpoint, runs, cpus) in &mut extra {
                *run += 1;
                self.prepare()?;
                eprintln!("{n:>3} clients: {name}{tag} ...");
                let (before, watch) = self.start_counting();
                let r = self.ours(n, opts.duration, *run, endpoint)?;
                cpus.push(self.cpu(&before, watch, r.requests));
                runs.push(r);
            }
        }
        let ratios = pgbench_runs
            .iter()
            .zip(&ours)
            .map(|(p, o)| o.ratio(p))
            .collect();
        let (Some(pgbench), Some(ours)) =
            (median(&pgbench_runs, |r| r.tps), median(&ours, |r| r.rps))
        else {
            return Err(BenchError::Options("no run was measured".into()));
        };
        let mut cpu = vec![
            system_cpu("pgbench", &cpu_pgbench),
            system_cpu("ours", &cpu_ours),
        ];
        for (system, _, runs, cpus) in &extra {
            // Each run against the pgbench run of its own repetition.
            let per_run: Vec<String> = runs
                .iter()
                .zip(&pgbench_runs)
                .map(|(r, p)| format!("{:.2}", r.ratio(p)))
                .collect();
            eprintln!(
                "{n:>3} clients: {system}/pgbench per run: {}",
                per_run.join(", ")
            );
            cpu.push(system_cpu(system, cpus));
        }
        let of = |name: &str| {
            let (_, _, runs, _) = extra.iter().find(|e| e.0 == name)?;
            median(runs, |r| r.rps)
        };
        Ok(BenchStep {
            clients: n,
            ratio: ours.ratio(&pgbench),
            ratios,
            storage_alone: of("storage alone"),
            skeleton: of("skeleton"),
            pgbench,
            ours,
            cpu,
        })
    }

    /// The CPU times and the context-switch counters at a run's start.
    fn start_counting(&self) -> (cpu::Snapshot, switches::Watch) {
        (
            self.parts.now_snapshot(),
            switches::Watch::start(&self.parts),
        )
    }

    /// CPU and context switches per request since `before`. The short wait
    /// lets the postmaster reap the backends of a pgbench run that just
    /// ended, so their CPU is counted.
    fn cpu(&self, before: &cpu::Snapshot, watch: switches::Watch, requests: u64) -> Costs {
        std::thread::sleep(Duration::from_millis(300));
        (
            before.per_request(&self.parts.now_snapshot(), requests),
            watch.finish(requests),
        )
    }

    /// Before each run: a `VACUUM` of the catalogue's tables and a
    /// checkpoint, so every run starts from the same kind of state and
    /// neither a vacuum nor a checkpoint lands in the middle of one.
    /// Autovacuum is off on the benchmark's cluster (see `super::run`): it
    /// would clean up after one system while the other is being measured,
    /// charging that system seconds of CPU it did not cause.
    fn prepare(&self) -> Result<(), BenchError> {
        if self.shutdown.is_triggered() {
            return Err(BenchError::Interrupted);
        }
        let primary = self.cluster.primary();
        primary.sql_as(SUPERUSER, APP_DB, "VACUUM")?;
        primary.sql_as(SUPERUSER, "postgres", "CHECKPOINT")?;
        Ok(())
    }

    pub(super) fn pgbench(
        &self,
        clients: usize,
        d: Duration,
        run: u32,
    ) -> Result<pgbench::PgbenchResult, BenchError> {
        let p = self.cluster.primary();
        let r = pgbench::PgbenchRun {
            pg: &p.pg,
            dir: &self.pg_dir,
            port: p.port,
            clients,
            duration: d,
            books: self.books,
            guide: self.guide,
            run,
        }
        .run()?;
        if self.shutdown.is_triggered() {
            return Err(BenchError::Interrupted);
        }
        Ok(r)
    }

    /// Closed-loop loan/return users against `endpoint`.
    pub(super) fn ours(
        &self,
        clients: usize,
        d: Duration,
        run: u32,
        endpoint: &str,
    ) -> Result<Ours, BenchError> {
        let opts = LoadOptions {
            client: ClientConfig {
                endpoints: vec![endpoint.to_string()],
                ..ClientConfig::default()
            },
            clients,
            duration: Some(d),
            requests: None,
            think: None,
            rate: None,
            // Returns only: a user without a loan borrows instead, so each
            // virtual user alternates a loan and the return of that book.
            mix: spec::Mix::parse("devolucion=1").map_err(BenchError::Options)?,
            catalogue: self.catalogue.clone(),
            users: 1,
            prefix: format!("bench{run}-{}", load::fresh_prefix()),
            seed: u64::from(run) + 1,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (stop, done, sd) = (stop.clone(), done.clone(), self.shutdown.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    if sd.is_triggered() {
                        stop.store(true, Ordering::SeqCst);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        let report = load::run(&opts, &self.ctx, &stop, |_| {});
        done.store(true, Ordering::SeqCst);
        let _ = watcher.join();
        if self.shutdown.is_triggered() {
            return Err(BenchError::Interrupted);
        }
        let t = report?.total;
        Ok(Ours {
            requests: t.requests,
            failures: t.failures,
            rps: t.rps,
            pairs_s: t.rps / 2.0,
            p50_ms: t.p50_ms,
            p99_ms: t.p99_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_run() {
        let v = [3.0, 1.0, 2.0];
        assert_eq!(median(&v, |x| *x), Some(2.0));
        assert_eq!(median(&[4.0, 1.0], |x| *x), Some(1.0));
        assert_eq!(median::<f64>(&[], |x| *x), None);
    }
}
