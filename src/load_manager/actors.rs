//! Which operations have live actors, from their heartbeats.
//!
//! Each actor sends `Informe::Latido` every `heartbeat_interval`; an actor silent
//! for `actor_timeout` counts as gone. With no live actor for an operation
//! the load manager answers `ServicioNoDisponible` at once instead of letting
//! the client wait out the deadline, except during a start-up grace period
//! (one timeout long) in which actors are still (re)connecting.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use biblioteca_protocol::Operacion;

/// Actors remembered per operation; more names than this are ignored (a
/// misbehaving peer cannot grow the table without bound).
const MAX_ACTORS_PER_OP: usize = 256;
const MAX_ACTOR_NAME: usize = 128;

#[derive(Debug, Default)]
struct OpActors {
    actors: HashMap<String, Instant>,
    last: Option<Instant>,
}

#[derive(Debug)]
pub struct Liveness {
    timeout: Duration,
    started: Instant,
    ops: HashMap<Operacion, OpActors>,
}

impl Liveness {
    pub fn new(timeout: Duration, now: Instant) -> Liveness {
        Liveness {
            timeout,
            started: now,
            ops: HashMap::new(),
        }
    }

    /// Records a heartbeat; false when it was not acceptable.
    pub fn latido(&mut self, op: Operacion, actor: &str, now: Instant) -> bool {
        if !op.is_write() || actor.is_empty() || actor.len() > MAX_ACTOR_NAME {
            return false;
        }
        let entry = self.ops.entry(op).or_default();
        entry.last = Some(now);
        if let Some(seen) = entry.actors.get_mut(actor) {
            *seen = now;
            return true;
        }
        if entry.actors.len() >= MAX_ACTORS_PER_OP {
            return false;
        }
        entry.actors.insert(actor.to_string(), now);
        tracing::info!(
            operacion = %op,
            actor,
            vivos = entry.actors.len(),
            "actor appeared"
        );
        true
    }

    /// Forgets actors silent for longer than the timeout, logging each.
    pub fn sweep(&mut self, now: Instant) {
        let timeout = self.timeout;
        for (op, entry) in &mut self.ops {
            let before = entry.actors.len();
            entry.actors.retain(|actor, seen| {
                let alive = now.duration_since(*seen) < timeout;
                if !alive {
                    tracing::warn!(
                        operacion = %op,
                        actor = actor.as_str(),
                        silent_ms = now.duration_since(*seen).as_millis() as u64,
                        "actor went silent"
                    );
                }
                alive
            });
            if before > 0 && entry.actors.is_empty() {
                tracing::warn!(
                    operacion = %op,
                    "no live actor left: requests get ServicioNoDisponible"
                );
            }
        }
    }

    pub fn alive(&self, op: Operacion, now: Instant) -> usize {
        self.ops.get(&op).map_or(0, |e| {
            e.actors
                .values()
                .filter(|seen| now.duration_since(**seen) < self.timeout)
                .count()
        })
    }

    /// Whether a request for `op` should be published: some actor is alive,
    /// or we started too recently to know.
    pub fn accepts(&self, op: Operacion, now: Instant) -> bool {
        self.alive(op, now) > 0 || now.duration_since(self.started) < self.timeout
    }

    /// `{prestamo: {vivos, ultimo_latido_ms}, ...}` for the status reply.
    pub fn snapshot(&self, now: Instant) -> Value {
        let mut out = Map::new();
        for op in Operacion::WRITES {
            let last = self
                .ops
                .get(&op)
                .and_then(|e| e.last)
                .map(|t| now.duration_since(t).as_millis() as u64);
            out.insert(
                op.as_str().to_string(),
                json!({"vivos": self.alive(op, now), "ultimo_latido_ms": last}),
            );
        }
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_then_heartbeats_decide() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut l = Liveness::new(ms(300), t0);
        assert!(l.accepts(Operacion::Prestamo, t0 + ms(100)));
        assert!(!l.accepts(Operacion::Prestamo, t0 + ms(300)));
        assert!(l.latido(Operacion::Prestamo, "a", t0 + ms(350)));
        assert!(!l.latido(Operacion::Consulta, "a", t0 + ms(350)));
        assert!(l.accepts(Operacion::Prestamo, t0 + ms(400)));
        assert_eq!(l.alive(Operacion::Prestamo, t0 + ms(400)), 1);
        assert!(!l.accepts(Operacion::Devolucion, t0 + ms(400)));
        l.sweep(t0 + ms(700));
        assert_eq!(l.alive(Operacion::Prestamo, t0 + ms(700)), 0);
        let snap = l.snapshot(t0 + ms(700));
        assert_eq!(snap["prestamo"]["vivos"], 0);
        assert_eq!(snap["prestamo"]["ultimo_latido_ms"], 350);
        assert!(snap["devolucion"]["ultimo_latido_ms"].is_null());
    }
}
