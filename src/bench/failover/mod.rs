//! `biblioteca-bench-failover`: our automatic mode against Patroni 3.0.2,
//! alternated trial by trial on the same machine and the same
//! three-member etcd, with the same writer ([`ledger`]).
//!
//! Each trial of each system: a fresh trio (a primary, two synchronous
//! standbys), the writer running; the leader's agent (or Patroni) frozen
//! for 1 s, then 2 s (a failover caused by either is counted); then the
//! primary's host crashed (agent or Patroni and the postmaster SIGKILLed)
//! and the time to the first acknowledged write measured; then the
//! acknowledged writes missing on the new primary, and the time during
//! which two nodes accepted writes at once.

pub mod ledger;
pub mod ours;
pub mod patroni;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use biblioteca_stack::etcd::EtcdCluster;
use ledger::{Sampler, Target, Writer};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Io(String),
    #[error("{0} never became ready")]
    NotReady(String),
    #[error("{0}")]
    Cluster(#[from] biblioteca_cluster::ClusterError),
    #[error("{0}")]
    Launch(#[from] biblioteca_stack::launch::LaunchError),
    #[error("{0}")]
    Etcd(#[from] biblioteca_stack::etcd::EtcdLaunchError),
}

pub(crate) fn kill_pid(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// SIGSTOP for `secs`, then SIGCONT.
pub(crate) fn freeze(pid: i32, secs: Duration) -> Result<(), BenchError> {
    use nix::sys::signal::{kill, Signal};
    let pid = nix::unistd::Pid::from_raw(pid);
    kill(pid, Signal::SIGSTOP).map_err(|e| BenchError::Io(format!("SIGSTOP: {e}")))?;
    std::thread::sleep(secs);
    kill(pid, Signal::SIGCONT).map_err(|e| BenchError::Io(format!("SIGCONT: {e}")))
}

/// The systems compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum System {
    /// `biblioteca-failover agent`, `ttl` 5 s.
    Ours,
    /// Patroni at its defaults (`ttl` 30, `loop_wait` 10, `retry_timeout` 10).
    PatroniDefaults,
    /// Patroni at our TTL (`ttl` 5, `loop_wait` 1, `retry_timeout` 2).
    PatroniOurTtl,
}

impl System {
    pub const ALL: [System; 3] = [System::Ours, System::PatroniDefaults, System::PatroniOurTtl];

    pub fn label(self) -> &'static str {
        match self {
            System::Ours => "ours (ttl 5s)",
            System::PatroniDefaults => "Patroni defaults (ttl 30s)",
            System::PatroniOurTtl => "Patroni ttl 5s",
        }
    }

    /// Long enough after a blip for a failover it caused to show.
    fn settle(self) -> Duration {
        match self {
            System::PatroniDefaults => Duration::from_secs(35),
            _ => Duration::from_secs(8),
        }
    }
}

enum Running {
    Ours(Box<ours::Ours>),
    Patroni(patroni::Patroni),
}

impl Running {
    fn targets(&self) -> Vec<Target> {
        match self {
            Running::Ours(o) => o.targets(),
            Running::Patroni(p) => p.targets(),
        }
    }
    fn primary(&self) -> Option<String> {
        match self {
            Running::Ours(o) => o.primary(),
            Running::Patroni(p) => p.primary(),
        }
    }
    fn freeze_leader(&self, d: Duration) -> Result<(), BenchError> {
        match self {
            Running::Ours(o) => o.freeze_leader(d),
            Running::Patroni(p) => p.freeze_leader(d),
        }
    }
    fn crash_primary(&mut self) -> Result<String, BenchError> {
        match self {
            Running::Ours(o) => o.crash_primary(),
            Running::Patroni(p) => p.crash_primary(),
        }
    }
}

/// One trial's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    pub system: System,
    /// Crash → first acknowledged write (None: none within the limit).
    pub recovery_secs: Option<f64>,
    pub lost: usize,
    pub two_writable_secs: f64,
    pub blip_failovers: usize,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub trials: usize,
    pub systems: Vec<System>,
    pub dir: PathBuf,
}

fn trial(
    system: System,
    etcd: &EtcdCluster,
    dir: &std::path::Path,
    n: usize,
) -> Result<Trial, BenchError> {
    let dir = dir.join(format!("{system:?}-{n}"));
    let endpoints = etcd.endpoints();
    let mut running = match system {
        System::Ours => Running::Ours(Box::new(ours::Ours::start(
            &dir,
            &endpoints,
            &format!("/bench-ours-{n}"),
            Duration::from_secs(5),
        )?)),
        System::PatroniDefaults | System::PatroniOurTtl => {
            let t = if system == System::PatroniDefaults {
                patroni::DEFAULTS
            } else {
                patroni::Timing {
                    ttl: 5,
                    loop_wait: 1,
                    retry_timeout: 2,
                }
            };
            Running::Patroni(patroni::Patroni::start(
                &dir,
                &endpoints,
                &format!("bench-{system:?}-{n}"),
                t,
            )?)
        }
    };
    let targets = running.targets();
    let multi = ledger::multi_host(&targets, "postgres", "postgres");
    ledger::prepare(&multi).map_err(BenchError::Io)?;
    let sampler = Sampler::start(targets);
    let writer = Writer::start(multi.clone());
    std::thread::sleep(Duration::from_secs(2));
    let mut blip_failovers = 0;
    for secs in [1, 2] {
        let before = running.primary();
        running.freeze_leader(Duration::from_secs(secs))?;
        std::thread::sleep(system.settle());
        if running.primary() != before {
            blip_failovers += 1;
        }
    }
    let crashed_at = Instant::now();
    let old = running.crash_primary()?;
    tracing::info!(?system, trial = n, %old, "primary's host crashed");
    let recovery = writer.first_ack_after(crashed_at, Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(2));
    let acked = writer.stop();
    let two = sampler.stop();
    let lost = ledger::lost(&multi, &acked).map_err(BenchError::Io)?;
    drop(running);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Trial {
        system,
        recovery_secs: recovery.map(|d| d.as_secs_f64()),
        lost,
        two_writable_secs: two.as_secs_f64(),
        blip_failovers,
    })
}

/// Runs `trials` rounds, each system once per round, in turn.
pub fn run(opts: &Options) -> Result<Vec<Trial>, BenchError> {
    std::fs::create_dir_all(&opts.dir).map_err(|e| BenchError::Io(e.to_string()))?;
    let etcd = EtcdCluster::start(&opts.dir, 21000)?;
    let mut out = Vec::new();
    for n in 0..opts.trials {
        for &s in &opts.systems {
            let t = trial(s, &etcd, &opts.dir, n)?;
            eprintln!(
                "trial {n} {}: recovery {} s, lost {}, two writable {:.1} s, blip failovers {}",
                s.label(),
                t.recovery_secs.map_or("-".into(), |r| format!("{r:.1}")),
                t.lost,
                t.two_writable_secs,
                t.blip_failovers
            );
            out.push(t);
        }
    }
    Ok(out)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One row per system, and the ratio of our p50 to Patroni's at its defaults.
pub fn table(trials: &[Trial], systems: &[System]) -> String {
    let mut s = format!(
        "{:<28} {:>6} {:>8} {:>8} {:>8} {:>6} {:>10} {:>6}\n",
        "system", "trials", "p50 s", "p95 s", "max s", "lost", "2 prim. s", "blips"
    );
    let mut p50 = std::collections::HashMap::new();
    for &sys in systems {
        let ts: Vec<&Trial> = trials.iter().filter(|t| t.system == sys).collect();
        let mut r: Vec<f64> = ts.iter().filter_map(|t| t.recovery_secs).collect();
        r.sort_by(f64::total_cmp);
        let never = ts.len() - r.len();
        let median = percentile(&r, 0.5);
        p50.insert(format!("{sys:?}"), median);
        s += &format!(
            "{:<28} {:>6} {:>8.1} {:>8.1} {:>8.1} {:>6} {:>10.1} {:>6}{}\n",
            sys.label(),
            ts.len(),
            median,
            percentile(&r, 0.95),
            r.last().copied().unwrap_or(f64::NAN),
            ts.iter().map(|t| t.lost).sum::<usize>(),
            ts.iter().map(|t| t.two_writable_secs).sum::<f64>(),
            ts.iter().map(|t| t.blip_failovers).sum::<usize>(),
            if never > 0 {
                format!("  ({never} never recovered)")
            } else {
                String::new()
            }
        );
    }
    if let (Some(o), Some(p)) = (p50.get("Ours"), p50.get("PatroniDefaults")) {
        s += &format!(
            "ours / Patroni defaults (p50): {:.2} (goal: at most 0.33)\n",
            o / p
        );
    }
    s
}
