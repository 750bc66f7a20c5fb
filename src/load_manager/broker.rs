//! The load manager's poll loop: every socket, every message, every timer.
//!
//! Sends never block: replies to clients go out on a ROUTER (which drops for
//! vanished peers), publications on a PUB (which drops at its high-water mark;
//! re-publication covers that), and requests to the storage manager with
//! `DONTWAIT` (a full queue is answered at once instead of waited on).
//! Each socket is drained before the loop sleeps; the requests admitted in
//! one turn are published as one message per operation, and an actor's
//! report message may carry several outcomes ([`biblioteca_protocol::batch`]).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::actors::Liveness;
use super::inflight::{Admision, InFlight};
use super::queries::{Consulta, Consultas};
use super::sockets::Sockets;
use super::status::{self, Counters, Ids};
use super::LoadManagerError;
use biblioteca_protocol::batch::MAX_PER_MESSAGE;
use biblioteca_protocol::config::LoadManagerConfig;
use biblioteca_protocol::{
    parse_entrada, CodigoError, Entrada, Informe, Invalida, Operacion, Peticion, Respuesta,
};
use biblioteca_runtime::net::{self, Envelope};
use biblioteca_runtime::notify;
use biblioteca_runtime::request_line;
use biblioteca_runtime::request_log::ms_between;
use biblioteca_runtime::request_log::RequestLog;
use biblioteca_runtime::shutdown::Shutdown;

/// Messages taken from one socket before looking at the others (fairness).
const BATCH: usize = 512;
/// Longest poll, so a shutdown request is noticed quickly.
const TICK: Duration = Duration::from_millis(100);
/// How often silent actors are looked for.
const SWEEP: Duration = Duration::from_millis(250);
/// Longest wait for in-flight requests once asked to stop.
const DRAIN_MAX: Duration = Duration::from_secs(3);
pub(super) struct Broker {
    cfg: LoadManagerConfig,
    s: Sockets,
    inflight: InFlight,
    consultas: Consultas,
    liveness: Liveness,
    ids: Ids,
    started: Instant,
    atendidas: u64,
    stopping: bool,
    next_sweep: Instant,
    request_log: RequestLog,
    /// Requests admitted this turn, published together ([`Self::publish_all`]).
    to_publish: Vec<(Operacion, String)>,
}

/// The text of a reply sent before a published request's outcome is known.
/// Actors and the storage manager keep working on it (a frozen or restarting
/// storage manager may apply it seconds later), so it must not read as a
/// failure: the client learns the outcome by retrying under the same id (the
/// id makes that safe) or by looking it up.
fn unknown_outcome(causa: &str, id: Option<&str>) -> String {
    let id = id.unwrap_or("<id>");
    format!(
        "{causa}; the outcome is UNKNOWN: the request may still be applied. Retry with the \
         same id (it is applied at most once) or look it up with \
         {{\"operacion\":\"resultado\",\"id\":\"{id}\"}}"
    )
}

impl Broker {
    pub(super) fn new(cfg: LoadManagerConfig, s: Sockets, now: Instant) -> Broker {
        Broker {
            inflight: InFlight::new(cfg.republish_after, cfg.deadline),
            consultas: Consultas::new(),
            liveness: Liveness::new(cfg.actor_timeout, now),
            ids: Ids::new(),
            started: now,
            atendidas: 0,
            stopping: false,
            next_sweep: now + SWEEP,
            request_log: RequestLog::new(cfg.request_lines_per_second, now),
            to_publish: Vec::new(),
            cfg,
            s,
        }
    }

    fn en_curso(&self) -> usize {
        self.inflight.waiters() + self.consultas.len()
    }

    pub(super) fn run(&mut self, shutdown: &Shutdown) -> Result<(), LoadManagerError> {
        let mut drain_until: Option<Instant> = None;
        loop {
            shutdown.checkin("broker");
            let now = Instant::now();
            if drain_until.is_none() && shutdown.is_triggered() {
                let drain = self.cfg.deadline.min(DRAIN_MAX);
                notify::stopping();
                tracing::info!(
                    en_curso = self.en_curso(),
                    drain_ms = drain.as_millis() as u64,
                    "stopping: refusing new requests, draining those in flight"
                );
                self.stopping = true;
                drain_until = Some(now + drain);
            }
            if let Some(until) = drain_until {
                if (self.inflight.is_empty() && self.consultas.is_empty()) || now >= until {
                    self.abandon_all(now);
                    tracing::info!(atendidas = self.atendidas, "load manager stopped");
                    return Ok(());
                }
            }
            let (front, back, store) = {
                let mut items = [
                    self.s.frontend.as_poll_item(zmq::POLLIN),
                    self.s.backchannel.as_poll_item(zmq::POLLIN),
                    self.s.storage.as_poll_item(zmq::POLLIN),
                ];
                net::poll(&mut items, self.poll_timeout_ms(now))?;
                (
                    items[0].is_readable(),
                    items[1].is_readable(),
                    items[2].is_readable(),
                )
            };
            // Outcomes first: they free slots for the clients that follow.
            if back {
                for _ in 0..BATCH {
                    let Some(frames) = net::try_recv_up_to(&self.s.backchannel, MAX_PER_MESSAGE)?
                    else {
                        break;
                    };
                    self.on_reports(frames, Instant::now());
                }
            }
            if store {
                for _ in 0..BATCH {
                    let Some(frames) = net::try_recv(&self.s.storage)? else {
                        break;
                    };
                    self.on_storage_reply(frames, Instant::now());
                }
            }
            if front {
                for _ in 0..BATCH {
                    let Some(frames) = net::try_recv(&self.s.frontend)? else {
                        break;
                    };
                    self.on_client(frames, Instant::now());
                }
                // Every request read above, one message per operation.
                self.publish_all();
            }
            self.timers(Instant::now());
        }
    }

    fn poll_timeout_ms(&self, now: Instant) -> i64 {
        let mut due = now + TICK;
        for t in [self.inflight.next_due(), self.consultas.next_due()]
            .into_iter()
            .flatten()
        {
            due = due.min(t);
        }
        due = due.min(self.next_sweep);
        // Round up so a timer due in under a millisecond does not spin.
        let d = due.saturating_duration_since(now);
        (d.as_millis() as i64) + i64::from(!d.subsec_nanos().is_multiple_of(1_000_000))
    }

    /// Sends `body` along a client's route; a vanished client is not an error.
    fn reply(&mut self, route: &[Vec<u8>], body: &[u8]) {
        let mut frames: Vec<&[u8]> = route.iter().map(Vec::as_slice).collect();
        frames.push(body);
        if let Err(e) = self.s.frontend.send_multipart(frames, zmq::DONTWAIT) {
            tracing::debug!(error = %e, "reply not delivered");
        }
        self.atendidas += 1;
    }

    fn on_client(&mut self, frames: Vec<Vec<u8>>, now: Instant) {
        if !frames.iter().skip(1).any(Vec::is_empty) {
            // A raw DEALER without the empty delimiter: answer it its own way.
            tracing::warn!(
                frames = frames.len(),
                "client message without an empty delimiter frame"
            );
            if let [identity, body, ..] = frames.as_slice() {
                let why = Invalida("expected [\"\", request] from a DEALER client".into());
                let r = Respuesta::invalida(body, &why).to_bytes();
                self.reply(std::slice::from_ref(identity), &r);
            }
            return;
        }
        let Some(env) = Envelope::split(frames) else {
            return;
        };
        let Some(body) = env.single_body() else {
            let why = Invalida(format!(
                "expected one request frame, got {}",
                env.body.len()
            ));
            let r = Respuesta::invalida(b"", &why).to_bytes();
            self.reply(&env.route, &r);
            return;
        };
        let entrada = match parse_entrada(body) {
            Ok(e) => e,
            Err(why) => {
                tracing::info!(reason = %why, "invalid request rejected");
                let r = Respuesta::invalida(body, &why).to_bytes();
                self.reply(&env.route, &r);
                return;
            }
        };
        let route = env.route;
        match entrada {
            Entrada::Status => {
                let c = Counters {
                    started: self.started,
                    atendidas: self.atendidas,
                    en_curso: self.en_curso(),
                    max_en_curso: self.cfg.max_in_flight,
                };
                let r = status::status(c, &self.liveness, now).to_bytes();
                self.reply(&route, &r);
            }
            Entrada::Resultado { id } => {
                if let Some(route) = self.admissible(route, "resultado", Some(&id)) {
                    let body = json!({"operacion": "resultado", "id": id});
                    self.forward(route, id.clone(), body, Some(id), "resultado", now);
                }
            }
            Entrada::Operacion(p) if !p.operacion.is_write() => {
                if let Some(route) = self.admissible(route, "consulta", p.id.as_deref()) {
                    let corr = self.ids.next("q");
                    let mut body = json!({"operacion": "consulta", "isbn": p.isbn, "id": corr});
                    if !p.usuario.is_empty() {
                        body["usuario"] = Value::String(p.usuario.clone());
                    }
                    self.forward(route, corr, body, p.id, "consulta", now);
                }
            }
            Entrada::Operacion(p) => self.on_write(route, p, now),
        }
    }

    /// The route back when a new request may be accepted; otherwise the
    /// client has been answered (stopping, or too busy) and `None` returned.
    fn admissible(
        &mut self,
        route: Vec<Vec<u8>>,
        operacion: &str,
        id: Option<&str>,
    ) -> Option<Vec<Vec<u8>>> {
        let id = id.map(str::to_string);
        if self.stopping {
            let r = Respuesta::error(
                operacion,
                CodigoError::ServicioNoDisponible,
                "the load manager is stopping; retry with the same id",
            );
            self.reply(&route, &r.with_id(id).to_bytes());
            return None;
        }
        let en_curso = self.en_curso();
        if en_curso >= self.cfg.max_in_flight {
            tracing::warn!(en_curso, operacion, "busy: request refused");
            let r = Respuesta::error(
                operacion,
                CodigoError::ServicioOcupado,
                format!("busy, retry: {en_curso} requests in flight"),
            );
            self.reply(&route, &r.with_id(id).to_bytes());
            return None;
        }
        Some(route)
    }

    fn on_write(&mut self, route: Vec<Vec<u8>>, mut p: Peticion, now: Instant) {
        let op = p.operacion;
        tracing::debug!(
            id = p.id.as_deref(),
            operacion = %op,
            isbn = p.isbn.as_str(),
            usuario = p.usuario.as_str(),
            "request received"
        );
        if !self.liveness.accepts(op, now) {
            let r = Respuesta::error(
                op.as_str(),
                CodigoError::ServicioNoDisponible,
                format!(
                    "no live {op} actor (no heartbeat in the last {} ms); retry later",
                    self.cfg.actor_timeout.as_millis()
                ),
            )
            .with_id(p.id.clone());
            self.log_outcome(&p, &r, now, now);
            self.reply(&route, &r.to_bytes());
            return;
        }
        let Some(route) = self.admissible(route, op.as_str(), p.id.as_deref()) else {
            return;
        };
        let id = match &p.id {
            Some(id) => id.clone(),
            None => self.ids.next("c"),
        };
        p.id = Some(id.clone());
        match self.inflight.admit(p, route, now) {
            Admision::New => self.to_publish.push((op, id)),
            Admision::Attached => {
                tracing::debug!(
                    id = id.as_str(),
                    "joined the same request already in flight"
                );
            }
            Admision::Conflict(route) => {
                let r = Respuesta::error(
                    op.as_str(),
                    CodigoError::PeticionInvalida,
                    format!("id {id:?} is in flight for a different request"),
                );
                self.reply(&route, &r.to_bytes());
            }
        }
    }

    /// Publishes the requests admitted this turn: per operation, as few
    /// `[topic, request, ...]` messages as the bound allows, so the actor
    /// wakes up once for all of them.
    fn publish_all(&mut self) {
        let pending = std::mem::take(&mut self.to_publish);
        for op in Operacion::WRITES {
            let payloads: Vec<&[u8]> = pending
                .iter()
                .filter(|(o, _)| *o == op)
                .filter_map(|(_, id)| self.inflight.payload(id))
                .collect();
            self.publish(op, &payloads);
        }
    }

    fn publish(&self, op: Operacion, payloads: &[&[u8]]) {
        let topic = op.as_str().as_bytes();
        for (n, r) in net::send_batched(&self.s.publisher, &[topic], payloads) {
            if let Err(e) = r {
                tracing::warn!(error = %e, requests = n, "publication failed; will re-publish");
            }
        }
    }

    fn forward(
        &mut self,
        route: Vec<Vec<u8>>,
        key: String,
        body: Value,
        client_id: Option<String>,
        operacion: &'static str,
        now: Instant,
    ) {
        let isbn = body["isbn"]
            .as_str()
            .or(body["id"].as_str())
            .unwrap_or_default()
            .to_string();
        tracing::debug!(
            key = key.as_str(),
            operacion,
            isbn = isbn.as_str(),
            "to storage"
        );
        let c = Consulta {
            route,
            client_id,
            operacion,
            isbn,
            received: now,
            deadline: now + self.cfg.deadline,
        };
        if !self.consultas.wait(key.clone(), c) {
            return; // the same lookup is already outstanding
        }
        let bytes = body.to_string().into_bytes();
        let frames: [&[u8]; 2] = [b"", &bytes];
        if let Err(e) = self.s.storage.send_multipart(frames, zmq::DONTWAIT) {
            let mensaje = if matches!(e, zmq::Error::EAGAIN) {
                "the storage manager is not keeping up or not reachable; retry".to_string()
            } else {
                format!("cannot reach the storage manager: {e}")
            };
            for c in self.consultas.take(&key) {
                let r = Respuesta::error(
                    c.operacion,
                    CodigoError::AlmacenamientoNoDisponible,
                    mensaje.clone(),
                );
                self.answer_consulta(c, r, now);
            }
        }
    }

    fn answer_consulta(&mut self, c: Consulta, r: Respuesta, now: Instant) {
        let r = r.with_id(c.client_id.clone());
        request_line!(
            self.request_log.admit(now),
            id = c.client_id.as_deref(),
            operacion = c.operacion,
            isbn = c.isbn.as_str(),
            resultado = r.outcome(),
            ms = ms_between(c.received, now),
            "answered"
        );
        self.reply(&c.route, &r.to_bytes());
    }

    fn on_storage_reply(&mut self, frames: Vec<Vec<u8>>, now: Instant) {
        let Some(r) = net::decode_reply(frames) else {
            return;
        };
        let Some(id) = r.id.clone() else {
            tracing::warn!(
                mensaje = r.mensaje.as_str(),
                "storage reply without id dropped"
            );
            return;
        };
        let waiting = self.consultas.take(&id);
        if waiting.is_empty() {
            tracing::debug!(
                id = id.as_str(),
                "storage reply for nobody waiting (late) ignored"
            );
        }
        for c in waiting {
            self.answer_consulta(c, r.clone(), now);
        }
    }

    /// One report per frame: an actor sends the outcomes it had ready
    /// together.
    fn on_reports(&mut self, frames: Vec<Vec<u8>>, now: Instant) {
        for frame in &frames {
            self.on_report(frame, now);
        }
    }

    fn on_report(&mut self, frame: &[u8], now: Instant) {
        match Informe::from_bytes(frame) {
            Err(e) => tracing::warn!(error = %e, "back-channel report dropped"),
            Ok(Informe::Latido { operacion, actor }) => {
                if !self.liveness.latido(operacion, &actor, now) {
                    tracing::warn!(operacion = %operacion, "heartbeat rejected");
                }
            }
            Ok(Informe::Resultado { respuesta }) => self.on_result(respuesta, now),
        }
    }

    fn on_result(&mut self, r: Respuesta, now: Instant) {
        let Some(id) = r.id.clone() else {
            tracing::warn!("result without id dropped");
            return;
        };
        if let Some(code) = r.error.filter(|c| !c.is_definitive()) {
            // Not final: keep re-publishing; this becomes the reply at the deadline.
            if self.inflight.note_transient(&id, r) {
                tracing::debug!(id = id.as_str(), error = %code, "transient outcome, still trying");
            }
            return;
        }
        let Some(entry) = self.inflight.complete(&id) else {
            tracing::debug!(
                id = id.as_str(),
                "result for an unknown id (late duplicate) ignored"
            );
            return;
        };
        let bytes = r.clone().with_id(Some(id)).to_bytes();
        for w in &entry.waiters {
            self.log_outcome(&entry.peticion, &r, w.received, now);
            self.reply(&w.route, &bytes);
        }
    }

    fn log_outcome(&mut self, p: &Peticion, r: &Respuesta, received: Instant, now: Instant) {
        request_line!(
            self.request_log.admit(now),
            id = r.id.as_deref().or(p.id.as_deref()),
            operacion = %p.operacion,
            isbn = p.isbn.as_str(),
            usuario = p.usuario.as_str(),
            resultado = r.outcome(),
            ms = ms_between(received, now),
            "answered"
        );
    }

    fn timers(&mut self, now: Instant) {
        self.request_log.roll(now);
        let tick = self.inflight.tick(now);
        for op in Operacion::WRITES {
            let payloads: Vec<&[u8]> = tick
                .republish
                .iter()
                .filter(|(o, _)| *o == op)
                .map(|(_, p)| p.as_slice())
                .collect();
            self.publish(op, &payloads);
        }
        if !tick.republish.is_empty() {
            tracing::debug!(
                count = tick.republish.len(),
                "re-published unanswered requests"
            );
        }
        for e in tick.expired {
            let (codigo, causa) = match e.transient {
                Some(t) => (
                    t.error.unwrap_or(CodigoError::ServicioNoDisponible),
                    t.mensaje,
                ),
                None => (
                    CodigoError::ServicioNoDisponible,
                    format!(
                        "no outcome from the {} actors within {} ms",
                        e.peticion.operacion,
                        self.cfg.deadline.as_millis()
                    ),
                ),
            };
            let r = Respuesta::error(
                e.peticion.operacion.as_str(),
                codigo,
                unknown_outcome(&causa, e.peticion.id.as_deref()),
            )
            .with_id(e.peticion.id.clone());
            self.log_outcome(&e.peticion, &r, e.waiter.received, now);
            self.reply(&e.waiter.route, &r.to_bytes());
        }
        for c in self.consultas.expire(now) {
            let r = Respuesta::error(
                c.operacion,
                CodigoError::AlmacenamientoNoDisponible,
                format!(
                    "the storage manager did not answer within {} ms",
                    self.cfg.deadline.as_millis()
                ),
            );
            self.answer_consulta(c, r, now);
        }
        if now >= self.next_sweep {
            self.liveness.sweep(now);
            self.next_sweep = now + SWEEP;
        }
    }

    /// Answers everyone still waiting when the drain period ends.
    fn abandon_all(&mut self, now: Instant) {
        for entry in self.inflight.drain() {
            let r = Respuesta::error(
                entry.peticion.operacion.as_str(),
                CodigoError::ServicioNoDisponible,
                unknown_outcome(
                    "the load manager stopped before an outcome arrived",
                    entry.peticion.id.as_deref(),
                ),
            )
            .with_id(entry.peticion.id.clone());
            for w in &entry.waiters {
                self.log_outcome(&entry.peticion, &r, w.received, now);
                self.reply(&w.route, &r.to_bytes());
            }
        }
        for c in self.consultas.drain() {
            let r = Respuesta::error(
                c.operacion,
                CodigoError::ServicioNoDisponible,
                "the load manager stopped before the storage manager answered",
            );
            self.answer_consulta(c, r, now);
        }
    }
}
