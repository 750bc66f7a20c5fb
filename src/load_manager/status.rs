//! The load manager's own `{"operacion":"status"}` reply and request ids.
//!
//! Status is answered without touching any other process, so it works (and
//! says what is missing) while actors or the storage manager are down.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::{SmallRng, SysRng};
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::actors::Liveness;
use biblioteca_protocol::Respuesta;

/// What the status reply reports beyond actor liveness.
#[derive(Debug, Clone, Copy)]
pub struct Counters {
    pub started: Instant,
    /// Requests answered since start (any outcome).
    pub atendidas: u64,
    /// Clients waiting for a reply right now.
    pub en_curso: usize,
    pub max_en_curso: usize,
}

pub fn status(c: Counters, liveness: &Liveness, now: Instant) -> Respuesta {
    let uptime_s = now.duration_since(c.started).as_secs();
    Respuesta::ok(
        "status",
        format!(
            "load manager up {uptime_s} s, {} requests in flight",
            c.en_curso
        ),
        json!({
            "servicio": "carga",
            "uptime_s": uptime_s,
            "atendidas": c.atendidas,
            "en_curso": c.en_curso,
            "max_en_curso": c.max_en_curso,
            "actores": liveness.snapshot(now),
        }),
    )
}

/// Request ids the load manager assigns: `<prefix>-<16 hex>` from a fast
/// generator seeded by the OS (or, should that fail, by time and pid).
/// Uniqueness, not secrecy, is what matters: ids only have to differ from
/// each other and across restarts.
#[derive(Debug)]
pub struct Ids {
    rng: SmallRng,
}

impl Ids {
    pub fn new() -> Ids {
        let rng = SmallRng::try_from_rng(&mut SysRng).unwrap_or_else(|_| {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            SmallRng::seed_from_u64(nanos ^ u64::from(std::process::id()).rotate_left(32))
        });
        Ids { rng }
    }

    pub fn next(&mut self, prefix: &str) -> String {
        format!("{prefix}-{:016x}", self.rng.next_u64())
    }
}

impl Default for Ids {
    fn default() -> Self {
        Ids::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use biblioteca_protocol::validate_id;

    #[test]
    fn ids_are_valid_and_distinct() {
        let mut ids = Ids::new();
        let a = ids.next("c");
        let b = ids.next("c");
        assert_ne!(a, b);
        assert_eq!(a.len(), 18);
        assert!(validate_id(&a).is_ok());
    }
}
