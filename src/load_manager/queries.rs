//! Clients waiting for the storage manager: `consulta` and `resultado`.
//!
//! These requests go straight to the storage manager over one DEALER, so
//! replies come back in any order and are matched by the reply's `id`. A
//! `consulta` is forwarded under a correlation id of ours and the client's own
//! id (or none) is put back in the reply; a `resultado` lookup is matched by
//! the id it looks up. Each client has a deadline, so a slow or dead storage
//! manager costs bounded memory and never holds anyone else up.

use std::collections::HashMap;
use std::time::Instant;

/// A client waiting for a storage reply.
#[derive(Debug, Clone)]
pub struct Consulta {
    pub route: Vec<Vec<u8>>,
    /// The id the client sent, restored in its reply.
    pub client_id: Option<String>,
    /// What was asked, for logs: operacion and isbn (or looked-up id).
    pub operacion: &'static str,
    pub isbn: String,
    pub received: Instant,
    pub deadline: Instant,
}

#[derive(Debug, Default)]
pub struct Consultas {
    waiting: HashMap<String, Vec<Consulta>>,
    count: usize,
    next_due: Option<Instant>,
}

impl Consultas {
    pub fn new() -> Consultas {
        Consultas::default()
    }

    pub fn len(&self) -> usize {
        self.count
    }

    /// When the longest-waiting look-up arrived (a scan: call it rarely).
    pub fn oldest_received(&self) -> Option<Instant> {
        self.waiting.values().flatten().map(|c| c.received).min()
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.next_due
    }

    /// Registers a client under `key`; true when it is the first one (send
    /// the request), false when it joins an identical outstanding lookup.
    pub fn wait(&mut self, key: String, c: Consulta) -> bool {
        self.next_due = Some(self.next_due.map_or(c.deadline, |d| d.min(c.deadline)));
        self.count += 1;
        let list = self.waiting.entry(key).or_default();
        list.push(c);
        list.len() == 1
    }

    /// The clients waiting for the reply with this id (empty when unknown);
    /// also forgets a key whose request could not be sent.
    pub fn take(&mut self, key: &str) -> Vec<Consulta> {
        let list = self.waiting.remove(key).unwrap_or_default();
        self.count -= list.len();
        list
    }

    /// Clients whose deadline passed.
    pub fn expire(&mut self, now: Instant) -> Vec<Consulta> {
        if !matches!(self.next_due, Some(due) if due <= now) {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut next_due: Option<Instant> = None;
        self.waiting.retain(|_, list| {
            let (gone, kept): (Vec<Consulta>, Vec<Consulta>) =
                list.drain(..).partition(|c| c.deadline <= now);
            out.extend(gone);
            for c in &kept {
                next_due = Some(next_due.map_or(c.deadline, |d| d.min(c.deadline)));
            }
            *list = kept;
            !list.is_empty()
        });
        self.count -= out.len();
        self.next_due = next_due;
        out
    }

    /// Every waiting client (shutdown).
    pub fn drain(&mut self) -> Vec<Consulta> {
        self.count = 0;
        self.next_due = None;
        self.waiting.drain().flat_map(|(_, l)| l).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn c(deadline: Instant) -> Consulta {
        Consulta {
            route: vec![],
            client_id: None,
            operacion: "consulta",
            isbn: "x".into(),
            received: deadline,
            deadline,
        }
    }

    #[test]
    fn matches_and_expires() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut w = Consultas::new();
        assert!(w.wait("q1".into(), c(t0 + ms(10))));
        assert!(w.wait("r".into(), c(t0 + ms(50))));
        assert!(!w.wait("r".into(), c(t0 + ms(60))));
        assert_eq!(w.len(), 3);
        assert_eq!(w.take("q1").len(), 1);
        assert!(w.take("nope").is_empty());
        assert_eq!(w.expire(t0 + ms(55)).len(), 1);
        assert_eq!(w.len(), 1);
        assert_eq!(w.expire(t0 + ms(60)).len(), 1);
        assert!(w.is_empty());
    }
}
