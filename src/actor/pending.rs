//! An actor's requests outstanding at the storage manager, by id.
//!
//! The load manager re-publishes unanswered requests, so the same id can
//! arrive many times; while it is here it is not sent again. A request that
//! the storage manager leaves unanswered for `storage_timeout` is re-sent
//! (the id makes that safe), and after a few tries given up on.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use biblioteca_protocol::Peticion;

/// Tries (first send included) before a request is given up on.
pub const MAX_ATTEMPTS: u32 = 3;

#[derive(Debug)]
pub struct Pending {
    pub peticion: Peticion,
    pub payload: Vec<u8>,
    pub received: Instant,
    pub sent_at: Instant,
    pub attempts: u32,
}

/// What the storage timeout produced.
#[derive(Debug, Default)]
pub struct Sweep {
    /// Payloads to send again (already marked as sent now).
    pub resend: Vec<Vec<u8>>,
    /// Requests out of tries, removed from the table.
    pub abandoned: Vec<Pending>,
    /// Requests that just timed out for the first time (still outstanding):
    /// worth telling the load manager why it is waiting.
    pub late: Vec<Peticion>,
}

#[derive(Debug)]
pub struct PendingTable {
    map: HashMap<String, Pending>,
    timeout: Duration,
}

impl PendingTable {
    pub fn new(timeout: Duration) -> PendingTable {
        PendingTable {
            map: HashMap::new(),
            timeout,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.map.contains_key(id)
    }

    pub fn insert(&mut self, id: String, peticion: Peticion, payload: Vec<u8>, now: Instant) {
        self.map.insert(
            id,
            Pending {
                peticion,
                payload,
                received: now,
                sent_at: now,
                attempts: 1,
            },
        );
    }

    pub fn take(&mut self, id: &str) -> Option<Pending> {
        self.map.remove(id)
    }

    /// The earliest moment a request times out.
    pub fn next_due(&self) -> Option<Instant> {
        self.map.values().map(|p| p.sent_at + self.timeout).min()
    }

    /// Requests unanswered for the timeout: re-send, or give up after
    /// [`MAX_ATTEMPTS`].
    pub fn sweep(&mut self, now: Instant) -> Sweep {
        let mut out = Sweep::default();
        let mut gone = Vec::new();
        for (id, p) in &mut self.map {
            if now.duration_since(p.sent_at) < self.timeout {
                continue;
            }
            if p.attempts >= MAX_ATTEMPTS {
                gone.push(id.clone());
                continue;
            }
            if p.attempts == 1 {
                out.late.push(p.peticion.clone());
            }
            p.attempts += 1;
            p.sent_at = now;
            out.resend.push(p.payload.clone());
        }
        for id in gone {
            if let Some(p) = self.map.remove(&id) {
                out.abandoned.push(p);
            }
        }
        out
    }

    /// Every outstanding payload, marked as sent now (after the storage
    /// socket was replaced, whatever sat in the old one is gone).
    pub fn resend_all(&mut self, now: Instant) -> Vec<Vec<u8>> {
        self.map
            .values_mut()
            .map(|p| {
                p.sent_at = now;
                p.payload.clone()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use biblioteca_protocol::Operacion;

    #[test]
    fn resends_then_gives_up() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = PendingTable::new(ms(100));
        let pet = Peticion {
            operacion: Operacion::Prestamo,
            isbn: "978-0134685991".into(),
            usuario: "u".into(),
            id: Some("a".into()),
        };
        p.insert("a".into(), pet, b"x".to_vec(), t0);
        assert!(p.contains("a"));
        assert!(p.sweep(t0 + ms(50)).resend.is_empty());
        let first = p.sweep(t0 + ms(100));
        assert_eq!(first.resend, vec![b"x".to_vec()]);
        assert_eq!(first.late.len(), 1);
        let second = p.sweep(t0 + ms(200));
        assert_eq!(second.resend.len(), 1);
        assert!(second.late.is_empty());
        let last = p.sweep(t0 + ms(300));
        assert_eq!(last.abandoned.len(), 1);
        assert!(p.is_empty());
    }
}
