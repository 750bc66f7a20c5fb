//! The load manager's table of write requests awaiting an outcome.
//!
//! One entry per request id: the request as published, every client waiting
//! for it (a retry under the same id attaches to the entry instead of being
//! published again), when to re-publish and when each client's deadline runs
//! out. Timers are found by scanning, but only when the earliest one is due
//! (`next_due`), so a busy loop does not pay for the scan on every message.
//! [`unknown_outcome`] words the reply of a request whose outcome is not
//! known yet (its deadline passed, or the load manager is stopping).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use biblioteca_protocol::{Operacion, Peticion, Respuesta};

/// The text of a reply sent before a published request's outcome is known.
/// Actors and the storage manager keep working on it (a frozen or restarting
/// storage manager may apply it seconds later), so it must not read as a
/// failure: the client learns the outcome by retrying under the same id (the
/// id makes that safe) or by looking it up.
pub fn unknown_outcome(causa: &str, id: Option<&str>) -> String {
    let id = id.unwrap_or("<id>");
    format!(
        "{causa}; the outcome is UNKNOWN: the request may still be applied. Retry with the \
         same id (it is applied at most once) or look it up with \
         {{\"operacion\":\"resultado\",\"id\":\"{id}\"}}"
    )
}

/// A client waiting for a reply: its ROUTER route and its own deadline.
#[derive(Debug, Clone)]
pub struct Waiter {
    /// Routing frames up to and including the empty delimiter.
    pub route: Vec<Vec<u8>>,
    pub received: Instant,
    pub deadline: Instant,
}

/// One published request.
#[derive(Debug)]
pub struct Entry {
    /// The request as published (its `id` is set).
    pub peticion: Peticion,
    pub payload: Vec<u8>,
    pub waiters: Vec<Waiter>,
    pub next_publish: Instant,
    pub publications: u32,
    /// The last transient outcome an actor reported (storage unreachable or
    /// busy): not final, so the request stays in flight and is re-published;
    /// it becomes the reply if the deadline passes first.
    pub transient: Option<Respuesta>,
}

/// What [`InFlight::admit`] did with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Admision {
    /// A new entry: publish its payload now.
    New,
    /// The id was already in flight for the same request: the client waits too.
    Attached,
    /// The id is in flight for a different request (or none was set); the
    /// client's route is handed back so it can be told.
    Conflict(Vec<Vec<u8>>),
}

/// A client whose deadline passed before any final outcome.
#[derive(Debug)]
pub struct Expired {
    pub waiter: Waiter,
    pub peticion: Peticion,
    pub transient: Option<Respuesta>,
}

/// Work the timers produced.
#[derive(Debug, Default)]
pub struct Tick {
    /// (topic, payload) to publish again.
    pub republish: Vec<(Operacion, Vec<u8>)>,
    pub expired: Vec<Expired>,
}

#[derive(Debug)]
pub struct InFlight {
    entries: HashMap<String, Entry>,
    waiters: usize,
    republish: Duration,
    deadline: Duration,
    next_due: Option<Instant>,
}

fn earliest(a: Option<Instant>, b: Instant) -> Option<Instant> {
    Some(a.map_or(b, |a| a.min(b)))
}

impl InFlight {
    pub fn new(republish: Duration, deadline: Duration) -> InFlight {
        InFlight {
            entries: HashMap::new(),
            waiters: 0,
            republish,
            deadline,
            next_due: None,
        }
    }

    /// Clients waiting, over all entries (what `max_in_flight` bounds).
    pub fn waiters(&self) -> usize {
        self.waiters
    }

    /// When the longest-waiting client arrived (a scan: call it rarely).
    pub fn oldest_received(&self) -> Option<Instant> {
        self.entries
            .values()
            .flat_map(|e| e.waiters.iter().map(|w| w.received))
            .min()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// When [`InFlight::tick`] next has work.
    pub fn next_due(&self) -> Option<Instant> {
        self.next_due
    }

    /// Adds a client for `peticion` (whose `id` must be set).
    pub fn admit(&mut self, peticion: Peticion, route: Vec<Vec<u8>>, now: Instant) -> Admision {
        let Some(id) = peticion.id.clone() else {
            return Admision::Conflict(route);
        };
        let waiter = Waiter {
            route,
            received: now,
            deadline: now + self.deadline,
        };
        if let Some(entry) = self.entries.get_mut(&id) {
            if entry.peticion != peticion {
                return Admision::Conflict(waiter.route);
            }
            self.next_due = earliest(self.next_due, waiter.deadline);
            entry.waiters.push(waiter);
            self.waiters += 1;
            return Admision::Attached;
        }
        let next_publish = now + self.republish;
        self.next_due = earliest(self.next_due, next_publish.min(waiter.deadline));
        let payload = peticion.to_bytes();
        self.entries.insert(
            id,
            Entry {
                peticion,
                payload,
                waiters: vec![waiter],
                next_publish,
                publications: 1,
                transient: None,
            },
        );
        self.waiters += 1;
        Admision::New
    }

    /// The payload of a newly admitted entry, to publish it the first time.
    pub fn payload(&self, id: &str) -> Option<&[u8]> {
        self.entries.get(id).map(|e| e.payload.as_slice())
    }

    /// Removes the entry of a final outcome; `None` for unknown ids (late duplicates).
    pub fn complete(&mut self, id: &str) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        self.waiters -= entry.waiters.len();
        Some(entry)
    }

    /// Keeps a transient outcome; returns false for unknown ids.
    pub fn note_transient(&mut self, id: &str, respuesta: Respuesta) -> bool {
        match self.entries.get_mut(id) {
            Some(entry) => {
                entry.transient = Some(respuesta);
                true
            }
            None => false,
        }
    }

    /// Re-publications due and clients whose deadline passed, as of `now`.
    pub fn tick(&mut self, now: Instant) -> Tick {
        let mut out = Tick::default();
        if !matches!(self.next_due, Some(due) if due <= now) {
            return out;
        }
        let mut next_due: Option<Instant> = None;
        let mut finished = Vec::new();
        for (id, entry) in &mut self.entries {
            let (gone, kept): (Vec<Waiter>, Vec<Waiter>) =
                entry.waiters.drain(..).partition(|w| w.deadline <= now);
            entry.waiters = kept;
            for waiter in gone {
                out.expired.push(Expired {
                    waiter,
                    peticion: entry.peticion.clone(),
                    transient: entry.transient.clone(),
                });
            }
            if entry.waiters.is_empty() {
                finished.push(id.clone());
                continue;
            }
            if entry.next_publish <= now {
                out.republish
                    .push((entry.peticion.operacion, entry.payload.clone()));
                entry.publications += 1;
                entry.next_publish = now + self.republish;
            }
            next_due = earliest(next_due, entry.next_publish);
            for w in &entry.waiters {
                next_due = earliest(next_due, w.deadline);
            }
        }
        for id in finished {
            self.entries.remove(&id);
        }
        self.waiters -= out.expired.len();
        self.next_due = next_due;
        out
    }

    /// Empties the table (shutdown): every entry with its waiters.
    pub fn drain(&mut self) -> Vec<Entry> {
        self.waiters = 0;
        self.next_due = None;
        self.entries.drain().map(|(_, e)| e).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pet(id: &str, usuario: &str) -> Peticion {
        Peticion {
            operacion: Operacion::Prestamo,
            isbn: "978-0134685991".into(),
            usuario: usuario.into(),
            id: Some(id.into()),
        }
    }

    #[test]
    fn same_id_attaches_and_completes_together() {
        let t0 = Instant::now();
        let mut t = InFlight::new(Duration::from_millis(100), Duration::from_millis(1000));
        assert_eq!(
            t.admit(pet("a", "u"), vec![b"1".to_vec()], t0),
            Admision::New
        );
        assert_eq!(
            t.admit(pet("a", "u"), vec![b"2".to_vec()], t0),
            Admision::Attached
        );
        assert_eq!(
            t.admit(pet("a", "other"), vec![b"3".to_vec()], t0),
            Admision::Conflict(vec![b"3".to_vec()])
        );
        assert_eq!(t.waiters(), 2);
        let e = t.complete("a").unwrap();
        assert_eq!(e.waiters.len(), 2);
        assert_eq!(t.waiters(), 0);
        assert!(t.complete("a").is_none());
    }

    #[test]
    fn republishes_until_the_deadline_then_expires() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut t = InFlight::new(ms(100), ms(250));
        t.admit(pet("a", "u"), vec![], t0);
        assert!(t.tick(t0 + ms(50)).republish.is_empty());
        assert_eq!(t.tick(t0 + ms(100)).republish.len(), 1);
        assert_eq!(t.tick(t0 + ms(200)).republish.len(), 1);
        let last = t.tick(t0 + ms(250));
        assert_eq!(last.expired.len(), 1);
        assert!(last.republish.is_empty());
        assert!(t.is_empty());
        assert_eq!(t.waiters(), 0);
        assert_eq!(t.next_due(), None);
    }
}
