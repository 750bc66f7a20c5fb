//! The load generator behind `biblioteca-solicitante carga`.
//!
//! Each virtual client has its own Lazy Pirate client (one REQ socket, so at
//! most one request in flight per virtual client, exactly like a person at a
//! terminal) and its own virtual users, whose requests follow coherent
//! sequences ([`user`]). The virtual clients are spread over one thread
//! per core ([`worker`]: closed and open loop, think times). Samples go over a
//! channel to the calling thread, which aggregates them
//! ([`report`]) and reports progress once a second. They travel in batches
//! (at most [`BATCH`] apart): one wake-up of the aggregator per sample was a
//! measurable share of the generator's CPU, taken from the system under test.

pub mod chart;
pub mod csv;
pub mod report;
pub mod spec;
pub mod user;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::pirate::ClientError;
use biblioteca_protocol::config::ClientConfig;

pub use report::LoadReport;
use report::{Aggregate, Sample};
use spec::{Mix, ThinkTime};

/// Label for replies that could not be parsed.
pub const INVALID_REPLY: &str = "RespuestaInvalida";
/// How long a sleeping client may go without checking the stop flag.
const TICK: Duration = Duration::from_millis(100);
/// Longest a virtual client holds finished samples before handing them over.
const BATCH: Duration = Duration::from_millis(50);

/// Samples of one load thread, each with its completion time since the start.
type Batch = Vec<(Duration, Sample)>;
/// Virtual clients (REQ sockets) per ZeroMQ context, under libzmq's 1023.
const PER_CONTEXT: usize = 1000;

/// Raises the open-file limit to what `clients` sockets need (a ZeroMQ
/// socket holds an eventfd and a TCP connection), or says how far short the
/// hard limit falls.
pub fn raise_file_limit(clients: usize) -> Result<(), LoadError> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let needed = (clients as u64) * 2 + 256;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return Ok(());
    };
    if soft >= needed {
        return Ok(());
    }
    let _ = setrlimit(Resource::RLIMIT_NOFILE, needed.min(hard), hard);
    if needed > hard {
        return Err(LoadError::Options(format!(
            "{clients} clients need about {needed} open files but the limit is {hard}; \
             raise it (ulimit -n) or use fewer clients"
        )));
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid load options: {0}")]
    Options(String),
    #[error("virtual client failed: {0}")]
    Client(#[from] ClientError),
    #[error("cannot start a virtual client: {0}")]
    Thread(String),
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub client: ClientConfig,
    pub clients: usize,
    /// Stop after this long (whichever of duration and count comes first).
    pub duration: Option<Duration>,
    /// Stop after this many requests in total.
    pub requests: Option<u64>,
    /// Closed-loop think time between a reply and the next request.
    pub think: Option<ThinkTime>,
    /// Open loop: total requests per second across all clients.
    pub rate: Option<f64>,
    pub mix: Mix,
    pub catalogue: Vec<String>,
    /// Virtual users per virtual client.
    pub users: usize,
    /// Prefix of user names; a fresh one per run keeps old loans out of the way.
    pub prefix: String,
    pub seed: u64,
}

impl LoadOptions {
    pub fn validate(&self) -> Result<(), LoadError> {
        let bad = |m: &str| Err(LoadError::Options(m.to_string()));
        if self.clients == 0 || self.clients > 10_000 {
            return bad("clientes must be between 1 and 10000");
        }
        if self.duration.is_none() && self.requests.is_none() {
            return bad("give a duration or a request count");
        }
        if self.catalogue.is_empty() {
            return bad("the book catalogue is empty");
        }
        if self.users == 0 {
            return bad("usuarios must be at least 1");
        }
        if self.think.is_some() && self.rate.is_some() {
            return bad("think time (closed loop) and rate (open loop) exclude each other");
        }
        Ok(())
    }
}

/// A fresh user-name prefix: `carga-` and 8 hex digits.
pub fn fresh_prefix() -> String {
    let id = crate::new_request_id();
    format!("carga-{}", id.get(2..10).unwrap_or("00000000"))
}

/// What the progress line shows, once a second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub elapsed: Duration,
    pub total: Option<Duration>,
    pub requests: u64,
    pub failures: u64,
    /// Requests completed in the last interval, per second.
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total = self
            .total
            .map(|t| format!("/{}s", t.as_secs()))
            .unwrap_or_default();
        write!(
            f,
            "{}s{total}  {} requests  {:.1} req/s  {} failures  p50 {:.1} ms  p99 {:.1} ms",
            self.elapsed.as_secs(),
            self.requests,
            self.rps,
            self.failures,
            self.p50_ms,
            self.p99_ms
        )
    }
}

/// Runs one load test; `stop` ends it early (the report covers what ran).
pub fn run(
    opts: &LoadOptions,
    ctx: &zmq::Context,
    stop: &Arc<AtomicBool>,
    mut on_progress: impl FnMut(&Progress),
) -> Result<LoadReport, LoadError> {
    opts.validate()?;
    let mut aggregate = Aggregate::new();
    let start = Instant::now();
    let start_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let counter = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel::<Batch>();
    raise_file_limit(opts.clients)?;
    // One thread per core (as pgbench -j), each with every n-th client; more
    // when a thread would hold more clients than one context has sockets.
    let n = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .max(opts.clients.div_ceil(PER_CONTEXT))
        .min(opts.clients);
    let mut threads = Vec::with_capacity(n);
    for t in 0..n {
        let worker = worker::LoadThread {
            ks: (t..opts.clients).step_by(n).collect(),
            opts: opts.clone(),
            start,
            counter: counter.clone(),
            stop: stop.clone(),
            tx: tx.clone(),
        };
        // libzmq caps a context at 1023 sockets (this binding cannot raise it).
        let ctx = if opts.clients > PER_CONTEXT {
            zmq::Context::new()
        } else {
            ctx.clone()
        };
        let h = std::thread::Builder::new()
            .name(format!("carga-{t}"))
            .spawn(move || worker.run(ctx))
            .map_err(|e| LoadError::Thread(e.to_string()));
        match h {
            Ok(h) => threads.push(h),
            Err(e) => {
                stop.store(true, Ordering::SeqCst);
                return Err(e);
            }
        }
    }
    drop(tx);
    let mut last_tick = Instant::now();
    let mut previous = 0;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(batch) => {
                for (t, m) in &batch {
                    aggregate.record(m, *t);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let dt = last_tick.elapsed();
        if dt >= Duration::from_secs(1) {
            aggregate.advance(start.elapsed());
            let (p50_ms, p99_ms) = aggregate.p50_p99();
            let requests = aggregate.requests();
            on_progress(&Progress {
                elapsed: start.elapsed(),
                total: opts.duration,
                requests,
                failures: aggregate.failures(),
                rps: (requests - previous) as f64 / dt.as_secs_f64(),
                p50_ms,
                p99_ms,
            });
            previous = requests;
            last_tick = Instant::now();
        }
    }
    let mut failure = None;
    for h in threads {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(LoadError::Client(e)),
            Err(_) => failure = Some(LoadError::Thread("a load thread panicked".into())),
        }
    }
    if let Some(e) = failure {
        if aggregate.requests() == 0 {
            return Err(e);
        }
        tracing::warn!(error = %e, "a virtual client stopped early");
    }
    Ok(aggregate.report(opts.clients, start_unix, start.elapsed()))
}

/// Client counts of `--experimento`.
pub const EXPERIMENT: [usize; 3] = [4, 6, 10];
/// Duration of each experiment step unless `--duracion` says otherwise.
pub const EXPERIMENT_DURATION: Duration = Duration::from_secs(120);

/// One aggregated row per run: the experiment's table.
pub fn experiment_table(reports: &[LoadReport]) -> String {
    let mut out = format!(
        "{:>7} {:>9} {:>9} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
        "CLIENTS", "REQS", "REQ/S", "FAILS", "MEAN", "STDDEV", "P50", "P90", "P99", "MAX"
    );
    for r in reports {
        let t = &r.total;
        out.push_str(&format!(
            "{:>7} {:>9} {:>9.1} {:>7} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}\n",
            r.clients,
            t.requests,
            t.rps,
            t.failures,
            t.mean_ms,
            t.stddev_ms,
            t.p50_ms,
            t.p90_ms,
            t.p99_ms,
            t.max_ms
        ));
    }
    out.push_str("latencies in ms");
    out
}

#[cfg(test)]
mod tests;
