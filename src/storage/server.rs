//! The ROUTER front-end and the worker threads.
//!
//! One thread owns the ROUTER: it splits envelopes, validates frames (garbage
//! gets `PeticionInvalida` when it has a return route and is dropped with a
//! log line when it has none), answers `status` itself and queues everything
//! else for the workers ([`dispatch`](super::dispatch): each turn reads
//! everything ready, then hands it to idle workers, the writes of several
//! books together; else a bounded queue; a book's writes queue behind its
//! batch in flight; full queue: `ServicioOcupado`). A peer may send several
//! requests in one message (`["", "lote", request, ...]`, see
//! [`biblioteca_protocol::batch`]); their replies go back the same way, the
//! ones ready in a turn together. Each worker owns a PUSH socket
//! over inproc back to the front-end's PULL, so no socket crosses threads;
//! one message carries the worker's number (it is idle again) and, for each
//! job it ran, the job number (which route it goes to) and the reply. On
//! shutdown the front-end stops reading, lets the workers finish what was
//! queued and delivers those replies before returning.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::dispatch::{Dispatch, Refused, Work};
use super::status::status_reply;
use super::{handler, Shared, StorageError};
use biblioteca_protocol::{self as protocol, batch, CodigoError, Entrada, Respuesta};
use biblioteca_runtime::net::{self, Envelope, NetError};
use biblioteca_runtime::notify;
use biblioteca_runtime::shutdown::Shutdown;

const POLL: Duration = Duration::from_millis(100);
/// Longest an idle worker waits for a job before checking in again.
const WORKER_IDLE: Duration = Duration::from_secs(1);
/// Messages read from the ROUTER per loop turn, so replies are not starved.
const BURST: usize = 256;
/// Frames kept of one message: a route, the delimiter, the mark and a
/// multi-request message's requests ([`batch`]); anything longer is refused.
const READ_FRAMES: usize = net::MAX_FRAMES + 1 + batch::MAX_PER_MESSAGE;

/// The frames a ROUTER needs to send a reply back to a peer.
type Route = Vec<Vec<u8>>;

/// A request handed to a worker, as the front-end remembers it.
struct Pending {
    route: Vec<Vec<u8>>,
    since: Instant,
    op: &'static str,
    id: Option<String>,
    /// It came in a multi-request message: its reply may share one too.
    lote: bool,
}

/// A validated request on its way to a worker.
struct Job {
    n: u64,
    entrada: Entrada,
}

impl Work for Job {
    fn book(&self) -> Option<&str> {
        handler::write_book(&self.entrada)
    }
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
        let (tx, rx) = mpsc::channel::<Vec<Job>>();
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
        outgoing: Vec::new(),
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
    /// Replies for peers that send several requests per message, by route,
    /// sent together at the end of the turn.
    outgoing: Vec<(Route, Vec<Vec<u8>>)>,
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
        // Everything that is ready is read before anything is placed, so
        // writes that arrived together (and workers that became idle
        // together) make one batch: opportunistic, no waiting.
        self.dispatch.hold();
        // The workers' own messages: a whole batch of replies in one.
        while let Some(frames) = net::try_recv_up_to(&self.replies, usize::MAX)? {
            self.deliver(frames);
        }
        if accepting {
            for _ in 0..BURST {
                let Some(frames) = net::try_recv_up_to(&self.router, READ_FRAMES)? else {
                    break;
                };
                self.accept(frames);
            }
        }
        self.dispatch.release();
        self.sweep();
        self.flush();
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
            self.answer(p.route, reply, p.lote);
        }
    }

    /// Replies to a request: at once, or with the others for the same peer
    /// at the end of the turn when it sends several per message.
    fn answer(&mut self, route: Vec<Vec<u8>>, reply: Vec<u8>, lote: bool) {
        if !lote {
            self.send(route, &reply);
            return;
        }
        match self.outgoing.iter_mut().find(|(r, _)| *r == route) {
            Some((_, replies)) => replies.push(reply),
            None => self.outgoing.push((route, vec![reply])),
        }
    }

    /// Sends the gathered replies, each peer's in as few messages as the
    /// bound allows (`["", "lote", reply, ...]`; one alone as usual).
    fn flush(&mut self) {
        for (route, replies) in std::mem::take(&mut self.outgoing) {
            if let [one] = replies.as_slice() {
                self.send(route, one);
                continue;
            }
            let mut head: Vec<&[u8]> = route.iter().map(Vec::as_slice).collect();
            head.push(batch::BATCH_MARK);
            let bodies: Vec<&[u8]> = replies.iter().map(Vec::as_slice).collect();
            for (n, sent) in net::send_batched(&self.router, &head, &bodies) {
                match sent {
                    Ok(()) => (0..n).for_each(|_| self.shared.count_answered()),
                    Err(e) => tracing::debug!(error = %e, "replies not sent"),
                }
            }
        }
    }

    /// `[worker, job, reply, job, reply, ...]` from a worker.
    fn deliver(&mut self, frames: Vec<Vec<u8>>) {
        let number = |f: &[u8]| u64::from_be_bytes(f.try_into().unwrap_or([0xff; 8]));
        let mut frames = frames.into_iter();
        let Some(w) = frames.next() else {
            return;
        };
        self.dispatch
            .done(usize::try_from(number(&w)).unwrap_or(usize::MAX));
        while let (Some(n), Some(reply)) = (frames.next(), frames.next()) {
            let n = number(&n);
            let Some(p) = self.pending.remove(&n) else {
                tracing::debug!(job = n, "late reply for an expired job dropped");
                continue;
            };
            self.answer(p.route, reply, p.lote);
        }
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
        if let Some(bodies) = batch::batch_body(&env.body) {
            for body in bodies {
                self.accept_one(env.route.clone(), body, true);
            }
            return;
        }
        let Some(body) = env.single_body() else {
            let why = protocol::Invalida(format!(
                "expected exactly one body frame after the delimiter, got {}",
                env.body.len()
            ));
            let reply = Respuesta::invalida(b"", &why).to_bytes();
            self.send(env.route, &reply);
            return;
        };
        self.accept_one(env.route.clone(), body, false);
    }

    /// One request frame from `route` (`lote`: one of several in a message).
    fn accept_one(&mut self, route: Vec<Vec<u8>>, body: &[u8], lote: bool) {
        let entrada = match protocol::parse_entrada(body) {
            Ok(e) => e,
            Err(why) => {
                tracing::debug!(reason = %why, "invalid request");
                let reply = Respuesta::invalida(body, &why).to_bytes();
                self.answer(route, reply, lote);
                return;
            }
        };
        if entrada == Entrada::Status {
            let reply = status_reply(&self.shared);
            self.answer(route, reply, lote);
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
                    route,
                    since: Instant::now(),
                    op,
                    id,
                    lote,
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
                self.answer(route, reply, lote);
            }
            Err((Refused::Gone, _)) => {
                let reply = Respuesta::error(
                    op,
                    CodigoError::AlmacenamientoNoDisponible,
                    "the storage manager is stopping; retry with the same id",
                )
                .with_id(id)
                .to_bytes();
                self.answer(route, reply, lote);
            }
        }
    }
}

fn worker(
    me: usize,
    shared: &Shared,
    rx: &Receiver<Vec<Job>>,
    push: &zmq::Socket,
    shutdown: &Shutdown,
) {
    let name = format!("storage-worker-{me}");
    let me = (me as u64).to_be_bytes();
    loop {
        // An idle worker still checks in: the watchdog hears from every worker.
        shutdown.checkin(&name);
        let jobs = match rx.recv_timeout(WORKER_IDLE) {
            Ok(jobs) => jobs,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            // The front-end closed the channel: stop.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let numbers: Vec<[u8; 8]> = jobs.iter().map(|j| j.n.to_be_bytes()).collect();
        // Alive while the database holds it (a commit waiting for a standby).
        let replies = {
            let _wait = shutdown.waiting(&name);
            handler::handle_batch(shared, jobs.into_iter().map(|j| j.entrada).collect())
        };
        let mut frames: Vec<&[u8]> = Vec::with_capacity(1 + 2 * replies.len());
        frames.push(&me[..]);
        for (n, reply) in numbers.iter().zip(&replies) {
            frames.push(&n[..]);
            frames.push(reply);
        }
        if let Err(e) = push.send_multipart(frames, 0) {
            tracing::error!(error = %e, "cannot hand replies to the front-end");
        }
    }
}
