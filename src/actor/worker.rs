//! The actor's poll loop over its SUB, storage DEALER and report PUSH.
//!
//! Nothing here blocks: sends use `DONTWAIT` (a full queue drops the message
//! with a log line; the load manager re-publishes, and the id makes the
//! retry safe), and the SUB is only read while fewer than `max_in_flight`
//! requests are outstanding, so overload stays in bounded ZeroMQ queues.

use std::time::{Duration, Instant};

use super::pending::{PendingTable, MAX_ATTEMPTS};
use super::ActorError;
use biblioteca_protocol::batch::{BATCH_MARK, MAX_PER_MESSAGE};
use biblioteca_protocol::config::ActorConfig;
use biblioteca_protocol::{parse_entrada, CodigoError, Entrada, Informe, Peticion, Respuesta};
use biblioteca_runtime::net;
use biblioteca_runtime::notify;
use biblioteca_runtime::request_line;
use biblioteca_runtime::request_log::ms_between;
use biblioteca_runtime::request_log::RequestLog;
use biblioteca_runtime::security::{Curve, Peer};
use biblioteca_runtime::shutdown::Shutdown;

const BATCH: usize = 256;
/// Frames kept of a publication: the topic and up to a full batch.
const PUBLICATION_FRAMES: usize = 1 + MAX_PER_MESSAGE;
/// Frames kept of a storage reply: the delimiter, the mark, the replies.
const REPLY_FRAMES: usize = 2 + MAX_PER_MESSAGE;
const TICK: Duration = Duration::from_millis(100);
/// Consecutive timeout rounds without any storage reply before the DEALER
/// is replaced by a fresh one.
const REPLACE_AFTER: u32 = 2;
/// Reports queued towards a load manager that is down; beyond it they are
/// dropped (stale heartbeats and outcomes are worthless after a restart).
const REPORT_HWM: i32 = 1000;
const DRAIN_MAX: Duration = Duration::from_secs(2);

pub(super) struct Actor {
    ctx: zmq::Context,
    cfg: ActorConfig,
    curve: Curve,
    name: String,
    sub: zmq::Socket,
    report: zmq::Socket,
    storage: zmq::Socket,
    pending: PendingTable,
    timeout_rounds: u32,
    next_heartbeat: Instant,
    request_log: RequestLog,
    /// New requests read this turn, sent to the storage manager together.
    outbox: Vec<(String, Peticion, Vec<u8>)>,
    /// Reports produced this turn, sent to the load manager together.
    reports: Vec<Vec<u8>>,
}

fn storage_socket(
    ctx: &zmq::Context,
    endpoint: &str,
    curve: &Curve,
) -> Result<zmq::Socket, ActorError> {
    let s = net::socket(ctx, zmq::DEALER)?;
    // A storage manager that vanished without closing TCP: heartbeats from
    // net::connect.
    curve.connect_to(&s, Peer::Storage)?;
    net::connect(&s, endpoint)?;
    Ok(s)
}

impl Actor {
    pub(super) fn open(
        ctx: &zmq::Context,
        cfg: ActorConfig,
        name: String,
        curve: Curve,
    ) -> Result<Actor, ActorError> {
        let sub = net::socket(ctx, zmq::SUB)?;
        sub.set_subscribe(cfg.operacion.as_str().as_bytes())?;
        curve.connect_to(&sub, Peer::LoadManager)?;
        net::connect(&sub, &cfg.subscribe)?;
        let report = net::socket(ctx, zmq::PUSH)?;
        report.set_sndhwm(REPORT_HWM)?;
        curve.connect_to(&report, Peer::LoadManager)?;
        net::connect(&report, &cfg.report)?;
        let storage = storage_socket(ctx, &cfg.storage, &curve)?;
        tracing::info!(
            operacion = %cfg.operacion,
            actor = name.as_str(),
            subscribe = cfg.subscribe.as_str(),
            report = cfg.report.as_str(),
            storage = cfg.storage.as_str(),
            "actor ready"
        );
        notify::ready(&format!("serving {} as {name}", cfg.operacion));
        Ok(Actor {
            ctx: ctx.clone(),
            pending: PendingTable::new(cfg.storage_timeout),
            request_log: RequestLog::new(cfg.request_lines_per_second, Instant::now()),
            cfg,
            curve,
            name,
            sub,
            report,
            storage,
            timeout_rounds: 0,
            next_heartbeat: Instant::now(),
            outbox: Vec::new(),
            reports: Vec::new(),
        })
    }

    pub(super) fn run(&mut self, shutdown: &Shutdown) -> Result<(), ActorError> {
        let mut drain_until: Option<Instant> = None;
        loop {
            shutdown.checkin("actor");
            let now = Instant::now();
            if drain_until.is_none() && shutdown.is_triggered() {
                notify::stopping();
                tracing::info!(
                    pendientes = self.pending.len(),
                    "stopping: waiting for outstanding storage replies"
                );
                let drain = self.cfg.storage_timeout.min(DRAIN_MAX);
                drain_until = Some(now + drain);
            }
            if let Some(until) = drain_until {
                if self.pending.is_empty() || now >= until {
                    tracing::info!(abandoned = self.pending.len(), "actor stopped");
                    return Ok(());
                }
            } else if now >= self.next_heartbeat {
                self.request_log.roll(now);
                self.heartbeat();
                self.next_heartbeat = now + self.cfg.heartbeat_interval;
            }
            let accept = drain_until.is_none() && self.pending.len() < self.cfg.max_in_flight;
            let (store, published) = {
                let mut items = vec![self.storage.as_poll_item(zmq::POLLIN)];
                if accept {
                    items.push(self.sub.as_poll_item(zmq::POLLIN));
                }
                net::poll(&mut items, self.poll_timeout_ms(now, accept))?;
                (
                    items[0].is_readable(),
                    items.get(1).is_some_and(|i| i.is_readable()),
                )
            };
            // Everything ready is read first, then sent on as few
            // messages as possible: outcomes to the load manager, new
            // requests to the storage manager.
            if store {
                for _ in 0..BATCH {
                    let Some(frames) = net::try_recv_up_to(&self.storage, REPLY_FRAMES)? else {
                        break;
                    };
                    for r in net::decode_replies(frames) {
                        self.on_storage_reply(r, Instant::now());
                    }
                }
            }
            if published {
                for _ in 0..BATCH {
                    if self.pending.len() + self.outbox.len() >= self.cfg.max_in_flight {
                        break;
                    }
                    let Some(frames) = net::try_recv_up_to(&self.sub, PUBLICATION_FRAMES)? else {
                        break;
                    };
                    self.on_publication(frames);
                }
                self.send_outbox();
            }
            self.timeouts(Instant::now())?;
            self.send_reports();
        }
    }

    fn poll_timeout_ms(&self, now: Instant, accept: bool) -> i64 {
        let mut due = (now + TICK).min(self.next_heartbeat);
        if let Some(t) = self.pending.next_due() {
            due = due.min(t);
        }
        if !accept {
            // The SUB is not polled while full: look again soon.
            due = due.min(now + Duration::from_millis(10));
        }
        let d = due.saturating_duration_since(now);
        (d.as_millis() as i64) + i64::from(!d.subsec_nanos().is_multiple_of(1_000_000))
    }

    fn send_report(&self, informe: &Informe) -> bool {
        match self.report.send(informe.to_bytes(), zmq::DONTWAIT) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "report not queued (load manager unreachable?)");
                false
            }
        }
    }

    fn heartbeat(&self) {
        self.send_report(&Informe::Latido {
            operacion: self.cfg.operacion,
            actor: self.name.clone(),
        });
    }

    /// `[topic, request, ...]`: one request, or several the load manager
    /// had ready together.
    fn on_publication(&mut self, frames: Vec<Vec<u8>>) {
        let op = self.cfg.operacion;
        let [topic, bodies @ ..] = frames.as_slice() else {
            return;
        };
        if bodies.is_empty() {
            tracing::warn!(
                frames = frames.len(),
                "publication dropped: expected [topic, request, ...]"
            );
            return;
        }
        if topic.as_slice() != op.as_str().as_bytes() {
            // SUB filters by prefix: "prestamo" also lets "prestamoX" through.
            tracing::warn!(
                topic = %String::from_utf8_lossy(topic),
                "publication for another topic dropped"
            );
            return;
        }
        for body in bodies {
            self.on_request(body);
        }
    }

    fn on_request(&mut self, body: &[u8]) {
        let op = self.cfg.operacion;
        let p = match parse_entrada(body) {
            Ok(Entrada::Operacion(p)) if p.operacion == op && p.id.is_some() => p,
            Ok(_) => {
                tracing::warn!("publication dropped: not a {op} request with an id");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "malformed publication dropped");
                return;
            }
        };
        let Some(id) = p.id.clone() else {
            return;
        };
        if self.pending.contains(&id) || self.outbox.iter().any(|(o, _, _)| *o == id) {
            tracing::debug!(
                id = id.as_str(),
                "re-publication of a request already at storage"
            );
            return;
        }
        tracing::debug!(
            id = id.as_str(),
            isbn = p.isbn.as_str(),
            usuario = p.usuario.as_str(),
            "request received"
        );
        let payload = p.to_bytes();
        self.outbox.push((id, p, payload));
    }

    /// Sends the requests read this turn: one alone as `["", request]`,
    /// several as `["", "lote", request, ...]`. What the storage manager's
    /// queue refuses is dropped until re-published.
    fn send_outbox(&mut self) {
        let now = Instant::now();
        let outbox = std::mem::take(&mut self.outbox);
        if let [(id, _, payload)] = outbox.as_slice() {
            if !self.to_storage(payload) {
                tracing::warn!(
                    id = id.as_str(),
                    "storage queue full: request dropped until re-published"
                );
                return;
            }
        } else if !outbox.is_empty() {
            let bodies: Vec<&[u8]> = outbox.iter().map(|(_, _, b)| b.as_slice()).collect();
            let sent = net::send_batched(&self.storage, &[b"", BATCH_MARK], &bodies);
            let mut at = 0;
            let mut refused = Vec::new();
            for (n, r) in sent {
                if let Err(e) = r {
                    tracing::warn!(requests = n, error = %e, "storage queue full: requests dropped until re-published");
                    refused.extend(at..at + n);
                }
                at += n;
            }
            for (i, (id, p, payload)) in outbox.into_iter().enumerate() {
                if !refused.contains(&i) {
                    self.pending.insert(id, p, payload, now);
                }
            }
            return;
        }
        for (id, p, payload) in outbox {
            self.pending.insert(id, p, payload, now);
        }
    }

    /// Sends the reports produced this turn to the load manager, several
    /// in one message (one report per frame).
    fn send_reports(&mut self) {
        let reports = std::mem::take(&mut self.reports);
        let bodies: Vec<&[u8]> = reports.iter().map(Vec::as_slice).collect();
        for (n, r) in net::send_batched(&self.report, &[], &bodies) {
            if let Err(e) = r {
                tracing::warn!(
                    reports = n,
                    error = %e,
                    "outcomes not reported: back-channel full (the load manager will re-publish)"
                );
            }
        }
    }

    fn to_storage(&self, payload: &[u8]) -> bool {
        let frames: [&[u8]; 2] = [b"", payload];
        match self.storage.send_multipart(frames, zmq::DONTWAIT) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "send to storage failed");
                false
            }
        }
    }

    fn on_storage_reply(&mut self, r: Respuesta, now: Instant) {
        self.timeout_rounds = 0;
        let Some(id) = r.id.clone() else {
            tracing::warn!(
                mensaje = r.mensaje.as_str(),
                "storage reply without id dropped"
            );
            return;
        };
        let Some(p) = self.pending.take(&id) else {
            tracing::debug!(
                id = id.as_str(),
                "storage reply for nothing outstanding ignored"
            );
            return;
        };
        self.finish(&p.peticion, r, p.received, now);
    }

    /// Reports an outcome and logs it.
    fn finish(&mut self, p: &Peticion, r: Respuesta, received: Instant, now: Instant) {
        let resultado = r.outcome();
        request_line!(
            self.request_log.admit(now),
            id = p.id.as_deref(),
            isbn = p.isbn.as_str(),
            usuario = p.usuario.as_str(),
            resultado,
            ms = ms_between(received, now),
            "processed"
        );
        // Sent with the turn's other reports ([`Self::send_reports`]).
        self.reports
            .push(Informe::Resultado { respuesta: r }.to_bytes());
    }

    fn timeouts(&mut self, now: Instant) -> Result<(), ActorError> {
        let sweep = self.pending.sweep(now);
        for p in sweep.abandoned {
            let r = Respuesta::error(
                self.cfg.operacion.as_str(),
                CodigoError::AlmacenamientoNoDisponible,
                format!("the storage manager did not answer after {MAX_ATTEMPTS} tries"),
            )
            .with_id(p.peticion.id.clone());
            self.finish(&p.peticion, r, p.received, now);
        }
        for p in &sweep.late {
            // Not final: the load manager keeps waiting (and re-publishing), but
            // if its deadline passes first the client hears the real cause.
            let r = Respuesta::error(
                self.cfg.operacion.as_str(),
                CodigoError::AlmacenamientoNoDisponible,
                format!(
                    "the storage manager has not answered in {} ms; still trying",
                    self.cfg.storage_timeout.as_millis()
                ),
            )
            .with_id(p.id.clone());
            self.send_report(&Informe::Resultado { respuesta: r });
        }
        if sweep.resend.is_empty() {
            return Ok(());
        }
        self.timeout_rounds += 1;
        if self.timeout_rounds < REPLACE_AFTER {
            tracing::warn!(count = sweep.resend.len(), "storage timeout: re-sending");
            for payload in &sweep.resend {
                self.to_storage(payload);
            }
            return Ok(());
        }
        // Whatever sits in the old socket's queues is dropped with it.
        tracing::warn!(
            endpoint = self.cfg.storage.as_str(),
            "storage manager silent: replacing the connection"
        );
        self.storage = storage_socket(&self.ctx, &self.cfg.storage, &self.curve)?;
        self.timeout_rounds = 0;
        for payload in self.pending.resend_all(now) {
            self.to_storage(&payload);
        }
        Ok(())
    }
}
