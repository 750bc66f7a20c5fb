//! The ROUTER front-end and the worker threads.
//!
//! One thread owns the ROUTER: it splits envelopes, validates frames (garbage
//! gets `PeticionInvalida` when it has a return route and is dropped with a
//! log line when it has none), answers `status` itself and queues everything
//! else for the workers ([`dispatch`](super::dispatch): straight to an idle
//! worker, else a bounded queue; full queue: `ServicioOcupado`). Each worker
//! owns a PUSH socket over inproc back to the front-end's PULL, so no socket
//! crosses threads; a reply carries the worker's number (it is idle again)
//! and the job number (which route it goes to). On shutdown the front-end
//! stops reading, lets the workers finish what was queued and delivers those
//! replies before returning.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::dispatch::{Dispatch, Refused};
use super::{handler, Shared, StorageError};
use biblioteca_protocol::{self as protocol, CodigoError, Entrada, Respuesta};
use biblioteca_runtime::net::{self, Envelope, NetError};
use biblioteca_runtime::notify;
use biblioteca_runtime::shutdown::Shutdown;

const POLL: Duration = Duration::from_millis(100);
/// Longest an idle worker waits for a job before checking in again.
const WORKER_IDLE: Duration = Duration::from_secs(1);
/// Messages read from the ROUTER per loop turn, so replies are not starved.
const BURST: usize = 256;

/// A request handed to a worker, as the front-end remembers it.
struct Pending {
    route: Vec<Vec<u8>>,
    since: Instant,
    op: &'static str,
    id: Option<String>,
}

/// A validated request on its way to a worker.
struct Job {
    n: u64,
    entrada: Entrada,
}

static INSTANCE: AtomicU64 = AtomicU64::new(0);

/// Binds the ROUTER, starts the workers and serves until `shutdown`.
pub fn serve(shared: Arc<Shared>, bind: &str, shutdown: &Shutdown) -> Result<(), StorageError> {
    let ctx = zmq::Context::new();
    // Declared before the sockets, so it outlives them (dropped after).
    let (curve, _zap) =
        biblioteca_runtime::security::storage(&ctx, shared.backend().config.curve.as_ref())?;
    let router = net::client_facing(&ctx, zmq::ROUTER)?;
    curve
        .serve(&router, biblioteca_runtime::security::DOMAIN_STORAGE)
        .map_err(NetError::from)?;
    net::bind(&router, bind)?;
    let replies = net::socket(&ctx, zmq::PULL)?;
    let inproc = format!(
        "inproc://storage-replies-{}",
        INSTANCE.fetch_add(1, Ordering::Relaxed)
    );
    net::bind(&replies, &inproc)?;

    let cfg = shared.backend().config.clone();
    let mut workers = Vec::with_capacity(cfg.workers);
    let mut channels = Vec::with_capacity(cfg.workers);
    for i in 0..cfg.workers {
        let push = net::socket(&ctx, zmq::PUSH)?;
        net::connect(&push, &inproc)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let handle =
            biblioteca_runtime::shutdown::spawn(format!("storage-worker-{i}"), move || {
                worker(i, &shared, &rx, &push, &shutdown)
            })?;
        workers.push(handle);
        channels.push(tx);
    }

    let node = shared.writer_name().unwrap_or_else(|| "none".into());
    notify::ready(&format!("serving on {bind}, writes to {node}"));
    tracing::info!(endpoint = bind, node, workers = cfg.workers, "ready");

    // Longer than any legitimate request (a connection, then statements
    // bounded by statement_timeout); past it the database is hung.
    let deadline = cfg.database.statement_timeout
        + super::nodes::connect_timeout(&cfg.database)
        + Duration::from_secs(1);
    let mut front = Front {
        router,
        replies,
        pending: HashMap::new(),
        next: 0,
        dispatch: Dispatch::new(channels, cfg.max_queue),
        shared: shared.clone(),
        deadline,
        next_sweep: Instant::now(),
    };
    let drain_for = deadline;
    let mut stop_deadline: Option<Instant> = None;
    loop {
        shutdown.checkin("front-end");
        let accepting = stop_deadline.is_none();
        front.turn(accepting)?;
        if accepting && shutdown.is_triggered() {
            notify::stopping();
            tracing::info!(
                in_flight = front.pending.len(),
                "stopping: finishing in-flight requests"
            );
            stop_deadline = Some(Instant::now() + drain_for);
        }
        if let Some(deadline) = stop_deadline {
            if front.pending.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    abandoned = front.pending.len(),
                    "stop deadline reached with requests in flight"
                );
                break;
            }
        }
    }
    // Closed channels let every worker exit after its current job.
    front.dispatch.close();
    for w in workers {
        if w.join().is_err() {
            tracing::error!("a storage worker panicked");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

struct Front {
    router: zmq::Socket,
    replies: zmq::Socket,
    /// Job number → the route to reply along.
    pending: HashMap<u64, Pending>,
    next: u64,
    dispatch: Dispatch<Job>,
    shared: Arc<Shared>,
    /// A request unanswered this long gets `AlmacenamientoNoDisponible`.
    deadline: Duration,
    next_sweep: Instant,
}

impl Front {
    fn turn(&mut self, accepting: bool) -> Result<(), StorageError> {
        let mut items = [
            self.replies.as_poll_item(zmq::POLLIN),
            self.router.as_poll_item(if accepting {
                zmq::POLLIN
            } else {
                zmq::PollEvents::empty()
            }),
        ];
        net::poll(&mut items, POLL.as_millis() as i64)?;
        while let Some(frames) = net::try_recv(&self.replies)? {
            self.deliver(frames);
        }
        if accepting {
            for _ in 0..BURST {
                let Some(frames) = net::try_recv(&self.router)? else {
                    break;
                };
                self.accept(frames);
            }
        }
        self.sweep();
        self.shared.set_in_flight(self.pending.len());
        Ok(())
    }

    /// Answers requests a worker has held past the deadline (a database
    /// node that froze without closing its connections). The worker's late
    /// reply is dropped; retrying under the same id stays safe.
    fn sweep(&mut self) {
        let now = Instant::now();
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + Duration::from_millis(250);
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.since) >= self.deadline)
            .map(|(n, _)| *n)
            .collect();
        for n in expired {
            let Some(p) = self.pending.remove(&n) else {
                continue;
            };
            tracing::warn!(job = n, id = ?p.id, "no answer from the database in time");
            let reply = Respuesta::error(
                p.op,
                CodigoError::AlmacenamientoNoDisponible,
                format!(
                    "no answer from the database within {} ms; retrying with the same id is safe",
                    self.deadline.as_millis()
                ),
            )
            .with_id(p.id)
            .to_bytes();
            self.send(p.route, &reply);
        }
    }

    fn deliver(&mut self, mut frames: Vec<Vec<u8>>) {
        let (Some(reply), Some(n), Some(w)) = (frames.pop(), frames.pop(), frames.pop()) else {
            return;
        };
        let w = u64::from_be_bytes(w.as_slice().try_into().unwrap_or([0xff; 8]));
        self.dispatch.done(usize::try_from(w).unwrap_or(usize::MAX));
        let n = u64::from_be_bytes(n.as_slice().try_into().unwrap_or([0xff; 8]));
        let Some(p) = self.pending.remove(&n) else {
            tracing::debug!(job = n, "late reply for an expired job dropped");
            return;
        };
        self.send(p.route, &reply);
    }

    fn send(&self, route: Vec<Vec<u8>>, reply: &[u8]) {
        let env = Envelope {
            route,
            body: Vec::new(),
        };
        match env.reply(&self.router, reply) {
            Ok(()) => self.shared.count_answered(),
            // The peer may be gone (its identity unknown now): nothing to do.
            Err(e) => tracing::debug!(error = %e, "reply not sent"),
        }
    }

    fn accept(&mut self, frames: Vec<Vec<u8>>) {
        let count = frames.len();
        let Some(env) = Envelope::split(frames) else {
            tracing::warn!(
                frames = count,
                "dropping a message without an empty delimiter frame (no way to reply)"
            );
            return;
        };
        let Some(body) = env.single_body() else {
            let why = protocol::Invalida(format!(
                "expected exactly one body frame after the delimiter, got {}",
                env.body.len()
            ));
            let reply = Respuesta::invalida(b"", &why).to_bytes();
            self.send(env.route, &reply);
            return;
        };
        let entrada = match protocol::parse_entrada(body) {
            Ok(e) => e,
            Err(why) => {
                tracing::debug!(reason = %why, "invalid request");
                let reply = Respuesta::invalida(body, &why).to_bytes();
                self.send(env.route, &reply);
                return;
            }
        };
        if entrada == Entrada::Status {
            let reply = status_reply(&self.shared);
            self.send(env.route, &reply);
            return;
        }
        let n = self.next;
        self.next += 1;
        let id = match &entrada {
            Entrada::Operacion(p) => p.id.clone(),
            Entrada::Resultado { id } => Some(id.clone()),
            Entrada::Status => None,
        };
        let op = match &entrada {
            Entrada::Operacion(p) => p.operacion.as_str(),
            _ => "resultado",
        };
        match self.dispatch.submit(Job { n, entrada }) {
            Ok(()) => {
                let pending = Pending {
                    route: env.route,
                    since: Instant::now(),
                    op,
                    id,
                };
                self.pending.insert(n, pending);
            }
            Err((Refused::Full, _)) => {
                let reply = Respuesta::error(
                    op,
                    CodigoError::ServicioOcupado,
                    "the storage manager's queue is full; retry later with the same id",
                )
                .with_id(id)
                .to_bytes();
                self.send(env.route, &reply);
            }
            Err((Refused::Gone, _)) => {
                let reply = Respuesta::error(
                    op,
                    CodigoError::AlmacenamientoNoDisponible,
                    "the storage manager is stopping; retry with the same id",
                )
                .with_id(id)
                .to_bytes();
                self.send(env.route, &reply);
            }
        }
    }
}

fn worker(me: usize, shared: &Shared, rx: &Receiver<Job>, push: &zmq::Socket, shutdown: &Shutdown) {
    let name = format!("storage-worker-{me}");
    let me = (me as u64).to_be_bytes();
    loop {
        // An idle worker still checks in: the watchdog hears from every worker.
        shutdown.checkin(&name);
        let job = match rx.recv_timeout(WORKER_IDLE) {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            // The front-end closed the channel: stop.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let op = match &job.entrada {
            Entrada::Operacion(p) => p.operacion.as_str(),
            _ => "resultado",
        };
        let entrada = job.entrada.clone();
        // The client still gets an answer when the handler panics; the
        // panic hook then stops the process so it is restarted whole.
        let reply = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            handler::handle(shared, entrada)
        }))
        .unwrap_or_else(|_| {
            tracing::error!(job = job.n, "request handler panicked");
            Respuesta::error(
                op,
                CodigoError::AlmacenamientoNoDisponible,
                "internal error",
            )
            .to_bytes()
        });
        if let Err(e) = push.send_multipart([&me[..], &job.n.to_be_bytes()[..], &reply], 0) {
            tracing::error!(error = %e, "cannot hand a reply to the front-end");
        }
    }
}

/// `{"operacion":"status"}`: answered without touching the database.
pub fn status_reply(shared: &Shared) -> Vec<u8> {
    let backend = shared.backend();
    let writer = backend.writer().map(|(_, n)| n.cfg.name.clone());
    let mensaje = match &writer {
        Some(n) => format!("storage manager up; writes go to {n}"),
        None => "storage manager up; no writable database node".to_string(),
    };
    Respuesta::ok(
        "status",
        mensaje,
        json!({
            "servicio": "almacenamiento",
            "nodo": writer,
            "uptime_s": shared.started.elapsed().as_secs(),
            "atendidas": shared.answered(),
            "en_curso": shared.in_flight(),
            "workers": backend.config.workers,
            "nodos": backend.nodes_status(),
            "timeline": shared.fencing.newest(),
        }),
    )
    .to_bytes()
}
