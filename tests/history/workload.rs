//! The clients of a fault test and the history they record.
//!
//! Each client thread owns one Lazy Pirate [`Client`] (one try per call, so
//! every retry is visible here) and runs short per-user sessions: borrow a
//! book, maybe renew it (sometimes once too often), usually return it
//! (sometimes twice). Every write carries an explicit id that is reused on
//! every retry. A session's requests never overlap: when one ends without a
//! definitive answer the session is abandoned, so the checker can replay each
//! user's applied operations in order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use biblioteca_client::pirate::{Client, ClientError};
use biblioteca_protocol::config::ClientConfig;
use biblioteca_protocol::curve::ClientCurve;
use biblioteca_protocol::{CodigoError, Operacion, Peticion, Respuesta};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::now_ms;

/// How hard a client tries before it reports a request as unknown.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Tries per request (the first send included), all under the same id.
    pub tries: u32,
    /// Per-try reply deadline.
    pub try_timeout_ms: u64,
    /// No new try starts once a request is this old.
    pub total: Duration,
}

/// Rides out every fault of the test.
pub const PATIENT: Budget = Budget {
    tries: 6,
    try_timeout_ms: 2000,
    total: Duration::from_secs(12),
};

/// Gives up during most outages, so requests do end unknown and the
/// checker's lookups have work to do.
pub const IMPATIENT: Budget = Budget {
    tries: 2,
    try_timeout_ms: 1000,
    total: Duration::from_secs(3),
};

/// The workload's random draws: reproducible from the seed.
pub trait Draws {
    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64;
    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u64) -> bool;
}

impl Draws for SmallRng {
    fn below(&mut self, n: u64) -> u64 {
        self.random_range(0..n.max(1))
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.random_bool(percent.min(100) as f64 / 100.0)
    }
}

/// How a request ended, as the client saw it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Outcome {
    /// A final reply: success or a definitive business error (stored under the id).
    Definitive(Respuesta),
    /// The budget ran out; `last` says how the last try ended (a transient
    /// error code, or "no reply").
    Unknown { last: String },
}

/// One request of the history; times in milliseconds since the Unix epoch
/// (comparable with the fault marks of another process on the same host).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    pub op: Operacion,
    pub isbn: String,
    pub usuario: String,
    pub start: u64,
    pub end: u64,
    pub tries: u32,
    /// Transient replies (`ServicioNoDisponible`, ...) received on the way.
    pub transient: u32,
    /// Their texts (what a human client would have read).
    pub transient_texts: Vec<String>,
    /// Tries that got no reply in time.
    pub timeouts: u32,
    pub outcome: Outcome,
}

impl Entry {
    pub fn ok(&self) -> bool {
        matches!(&self.outcome, Outcome::Definitive(r) if r.exito)
    }

    pub fn definitive(&self) -> bool {
        matches!(self.outcome, Outcome::Definitive(_))
    }
}

/// What the clients share with the test: where to send, what to borrow.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Load-manager endpoints, tried in order.
    pub endpoints: Vec<String>,
    pub curve: Option<ClientCurve>,
    /// Starts every request id and user name: the checker looks only at
    /// rows that carry it, so runs against one database do not mix.
    pub prefix: String,
    pub isbns: Vec<String>,
    pub seed: u64,
    /// Client `c` uses `budgets[c % budgets.len()]`.
    pub budgets: Vec<Budget>,
}

/// The running client threads.
pub struct Workload {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<Entry>>>,
}

impl Workload {
    pub fn start(plan: &Plan, clients: usize) -> Result<Workload, std::io::Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = zmq::Context::new();
        let threads = (0..clients)
            .map(|c| {
                let (plan, stop, ctx) = (plan.clone(), stop.clone(), ctx.clone());
                std::thread::Builder::new()
                    .name(format!("history-client-{c}"))
                    .spawn(move || run_client(c, &plan, &ctx, &stop))
            })
            .collect::<Result<_, _>>()?;
        Ok(Workload { stop, threads })
    }

    /// Lets every session's current request finish, then returns the history
    /// sorted by start time.
    pub fn finish(self) -> Vec<Entry> {
        self.stop.store(true, Ordering::SeqCst);
        // A client thread that panicked left no history: nothing to add.
        let mut all: Vec<Entry> = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().unwrap_or_default())
            .collect();
        all.sort_by_key(|e| e.start);
        all
    }
}

struct Session<'a> {
    c: usize,
    prefix: &'a str,
    budget: Budget,
    client: &'a mut Client,
    usuario: String,
    isbn: String,
    seq: &'a mut u64,
    log: &'a mut Vec<Entry>,
}

impl Session<'_> {
    /// Sends one request until a definitive answer or the budget; `None`
    /// when it ended unknown (the session must stop).
    fn send(&mut self, op: Operacion) -> Option<Respuesta> {
        *self.seq += 1;
        let id = format!("{}{}-{}", self.prefix, self.c, self.seq);
        let p = Peticion {
            operacion: op,
            isbn: self.isbn.clone(),
            usuario: self.usuario.clone(),
            id: Some(id.clone()),
        };
        let (start, begun) = (now_ms(), Instant::now());
        let (mut tries, mut transient, mut timeouts) = (0, 0, 0);
        let mut transient_texts = Vec::new();
        let mut last = String::new();
        let mut answer = None;
        while tries < self.budget.tries && begun.elapsed() < self.budget.total {
            tries += 1;
            match self.client.request(&p) {
                Ok(r) if r.error.is_none_or(CodigoError::is_definitive) => {
                    answer = Some(r);
                    break;
                }
                Ok(r) => {
                    transient += 1;
                    last = r.error.map(|c| c.to_string()).unwrap_or_default();
                    transient_texts.push(format!("{last}: {}", r.mensaje));
                    // Back off a little: the fault is usually still there.
                    std::thread::sleep(Duration::from_millis(150 * u64::from(tries)));
                }
                Err(ClientError::Unknown { .. }) => {
                    timeouts += 1;
                    last = "no reply".into();
                }
                Err(e) => {
                    last = e.to_string();
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        let outcome = match &answer {
            Some(r) => Outcome::Definitive(r.clone()),
            None => Outcome::Unknown { last },
        };
        self.log.push(Entry {
            id,
            op,
            isbn: self.isbn.clone(),
            usuario: self.usuario.clone(),
            start,
            end: now_ms(),
            tries,
            transient,
            transient_texts,
            timeouts,
            outcome,
        });
        answer
    }
}

fn run_client(c: usize, plan: &Plan, ctx: &zmq::Context, stop: &AtomicBool) -> Vec<Entry> {
    let budget = plan
        .budgets
        .get(c % plan.budgets.len().max(1))
        .copied()
        .unwrap_or(PATIENT);
    let cfg = ClientConfig {
        endpoints: plan.endpoints.clone(),
        timeout: Duration::from_millis(budget.try_timeout_ms),
        // One try per call: the session loop retries (same id) and counts.
        retries: 1,
        curve: plan.curve.clone(),
    };
    let mut client = match Client::with_context(ctx.clone(), cfg) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "client {c} cannot start");
            return Vec::new();
        }
    };
    let mut rng =
        SmallRng::seed_from_u64(plan.seed ^ (c as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut log = Vec::new();
    let mut seq = 0u64;
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let isbn = plan.isbns[rng.below(plan.isbns.len() as u64) as usize].clone();
        let mut s = Session {
            c,
            prefix: &plan.prefix,
            budget,
            client: &mut client,
            usuario: format!("{}{c}u{n}", plan.prefix),
            isbn,
            seq: &mut seq,
            log: &mut log,
        };
        session(&mut s, &mut rng);
        std::thread::sleep(Duration::from_millis(5 + rng.below(20)));
    }
    log
}

/// One user's sequence; stops at the first request without a definitive answer.
fn session(s: &mut Session<'_>, rng: &mut SmallRng) {
    let pause = |rng: &mut SmallRng| std::thread::sleep(Duration::from_millis(rng.below(15)));
    if rng.chance(10) && s.send(Operacion::Consulta).is_none() {
        return;
    }
    match s.send(Operacion::Prestamo) {
        Some(r) if r.exito => {}
        _ => return,
    }
    // 0..=3 renewals: the third one hits LimiteRenovaciones.
    let renewals = [0, 0, 1, 1, 2, 3][rng.below(6) as usize];
    for _ in 0..renewals {
        pause(rng);
        if s.send(Operacion::Renovacion).is_none() {
            return;
        }
    }
    // A few loans stay out, so copies do run short towards the end.
    if rng.chance(2) {
        return;
    }
    pause(rng);
    if s.send(Operacion::Devolucion).is_none() {
        return;
    }
    if rng.chance(8) {
        // Returning twice: PrestamoNoEncontrado, never a second return.
        s.send(Operacion::Devolucion);
    }
}
