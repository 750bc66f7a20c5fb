//! One load thread: many virtual clients multiplexed on one thread.
//!
//! Each virtual client keeps its own Lazy Pirate [`Client`] (one REQ socket,
//! so at most one request in flight, like a person at a terminal) and its own
//! virtual users; the thread polls the sockets of every client waiting for a
//! reply and starts the requests that are due. A thread per virtual client
//! cost a wake-up of that thread per reply on top of the ZeroMQ I/O thread's,
//! and thousands of think-time users (Locust-style runs) would have meant
//! thousands of threads; a few threads (one per core, as `pgbench -j`) serve
//! them all.
//!
//! Closed loop: the next request starts when the reply has arrived (plus the
//! think time, `think`). Open loop (`rate`): each client sends on a fixed
//! schedule and latency counts from the *scheduled* time, so a slow system is
//! not hidden by clients that fell behind (coordinated omission).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::report::{Sample, NO_REPLY};
use super::user::User;
use super::{Batch, LoadOptions, BATCH, INVALID_REPLY, TICK};
use crate::pirate::{encode, new_request_id, Client, ClientError, InFlight};
use biblioteca_protocol::Peticion;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

/// Where one virtual client is.
enum State {
    /// Its next request starts at this time.
    Ready(Instant),
    /// A request is out: which, the try in flight, and when it was due.
    Waiting {
        p: Peticion,
        /// Which of the client's users sent it.
        u: usize,
        in_flight: InFlight,
        scheduled: Instant,
    },
    /// No more requests (duration over, count reached, or stopped).
    Done,
}

/// One virtual client: its socket, its users, its schedule.
struct Virtual {
    client: Client,
    users: Vec<User>,
    rng: SmallRng,
    state: State,
    /// Open loop: the time between two requests of this client.
    interval: Option<Duration>,
}

/// The virtual clients `ks` of a run, on the calling thread.
pub(super) struct LoadThread {
    pub(super) ks: Vec<usize>,
    pub(super) opts: LoadOptions,
    pub(super) start: Instant,
    pub(super) counter: Arc<AtomicU64>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) tx: mpsc::Sender<Batch>,
}

impl LoadThread {
    pub(super) fn run(self, ctx: zmq::Context) -> Result<(), ClientError> {
        let o = &self.opts;
        let interval = o
            .rate
            .map(|r| Duration::from_secs_f64(o.clients as f64 / r));
        let mut vs = Vec::with_capacity(self.ks.len());
        // Clients start staggered over one interval (open loop) or one
        // longest think time, so arrivals spread evenly instead of every
        // client's first request landing at once.
        let stagger = interval.or(o.think.map(|e| e.max)).unwrap_or_default();
        for &k in &self.ks {
            let first_due = self.start + stagger.mul_f64(k as f64 / o.clients as f64);
            vs.push(Virtual {
                client: Client::with_context(ctx.clone(), o.client.clone())?,
                users: (0..o.users)
                    .map(|u| User::new(format!("{}-c{k}-u{u}", o.prefix)))
                    .collect(),
                rng: SmallRng::seed_from_u64(
                    o.seed ^ (k as u64 + 1).wrapping_mul(0xa076_1d64_78bd_642f),
                ),
                state: State::Ready(first_due),
                interval,
            });
        }
        let mut batch = Batch::new();
        let mut delivered = Instant::now();
        let result = self.event_loop(&mut vs, &mut batch, &mut delivered);
        if !batch.is_empty() {
            let _ = self.tx.send(batch);
        }
        result
    }

    fn event_loop(
        &self,
        vs: &mut [Virtual],
        batch: &mut Batch,
        delivered: &mut Instant,
    ) -> Result<(), ClientError> {
        let end = self.opts.duration.map(|d| self.start + d);
        loop {
            let now = Instant::now();
            let closing = self.stop.load(Ordering::SeqCst) || end.is_some_and(|f| now >= f);
            for v in vs.iter_mut() {
                match v.state {
                    State::Ready(_) if closing => v.state = State::Done,
                    State::Ready(t) if t <= now => self.start(v, t)?,
                    _ => {}
                }
            }
            if vs.iter().all(|v| matches!(v.state, State::Done)) {
                return Ok(());
            }
            for i in wait_ready(vs, now)? {
                let Some(v) = vs.get_mut(i) else {
                    continue;
                };
                if let Some(m) = self.attend(v)? {
                    batch.push((self.start.elapsed(), m));
                }
            }
            if delivered.elapsed() >= BATCH && !batch.is_empty() {
                if self.tx.send(std::mem::take(batch)).is_err() {
                    return Ok(());
                }
                *delivered = Instant::now();
            }
        }
    }

    /// Starts the next request of `v`, due at `scheduled`.
    fn start(&self, v: &mut Virtual, scheduled: Instant) -> Result<(), ClientError> {
        if let Some(n) = self.opts.requests {
            if self.counter.fetch_add(1, Ordering::SeqCst) >= n {
                v.state = State::Done;
                return Ok(());
            }
        }
        let u = v.rng.random_range(0..v.users.len().max(1));
        let Some(user) = v.users.get(u) else {
            v.state = State::Done;
            return Ok(());
        };
        let mut p = user.next_request(&mut v.rng, &self.opts.mix, &self.opts.catalogue);
        // The id is fixed before the first try, so every retry carries it.
        p.id = Some(new_request_id());
        // Closed loop: latency counts from the send, not from when it was due.
        let scheduled = if v.interval.is_some() {
            scheduled
        } else {
            Instant::now()
        };
        let in_flight = v.client.begin(encode(&p))?;
        v.state = State::Waiting {
            p,
            u,
            in_flight,
            scheduled,
        };
        Ok(())
    }

    /// A reply arrived or a deadline passed: the sample, if the request ended.
    fn attend(&self, v: &mut Virtual) -> Result<Option<Sample>, ClientError> {
        let State::Waiting { in_flight, .. } = &mut v.state else {
            return Ok(None);
        };
        let reply = match v.client.receive() {
            Ok(Some(r)) => Ok(r),
            Ok(None) if Instant::now() < in_flight.deadline() => return Ok(None),
            Ok(None) => {
                if v.client.expire(in_flight)? {
                    return Ok(None);
                }
                Err(None)
            }
            Err(ClientError::MalformedReply { .. }) => Err(Some(INVALID_REPLY)),
            Err(e) => return Err(e),
        };
        let State::Waiting {
            p, u, scheduled, ..
        } = std::mem::replace(&mut v.state, State::Done)
        else {
            return Ok(None);
        };
        let latency = scheduled.elapsed();
        let user = v.users.get_mut(u);
        let sample = match reply {
            Ok(r) => {
                if let Some(u) = user {
                    u.observe(&p, Some(&r));
                }
                Sample {
                    operacion: p.operacion,
                    latency: Some(latency),
                    failure: if r.exito {
                        None
                    } else {
                        Some(r.error.map(|c| c.as_str()).unwrap_or("SinCodigo"))
                    },
                }
            }
            // Every try went unanswered: the outcome is unknown.
            Err(None) => {
                if let Some(u) = user {
                    u.observe(&p, None);
                }
                Sample {
                    operacion: p.operacion,
                    latency: None,
                    failure: Some(NO_REPLY),
                }
            }
            Err(Some(code)) => Sample {
                operacion: p.operacion,
                latency: Some(latency),
                failure: Some(code),
            },
        };
        v.state = State::Ready(self.next_request(v, scheduled));
        Ok(Some(sample))
    }

    /// When `v`'s next request is due.
    fn next_request(&self, v: &mut Virtual, scheduled: Instant) -> Instant {
        if let Some(i) = v.interval {
            return scheduled + i;
        }
        match self.opts.think {
            Some(e) => {
                let think = e.min + (e.max.saturating_sub(e.min)).mul_f64(v.rng.random::<f64>());
                Instant::now() + think
            }
            None => Instant::now(),
        }
    }
}

/// Waits for a reply on any waiting client's socket, a deadline, or the
/// next due start; returns the clients that need attention.
fn wait_ready(vs: &[Virtual], now: Instant) -> Result<Vec<usize>, ClientError> {
    let mut until = now + TICK;
    let mut who = Vec::new();
    let mut items = Vec::new();
    for (i, v) in vs.iter().enumerate() {
        match &v.state {
            State::Ready(t) => until = until.min(*t),
            State::Waiting { in_flight, .. } => {
                until = until.min(in_flight.deadline());
                match v.client.socket() {
                    Some(s) => {
                        items.push(s.as_poll_item(zmq::POLLIN));
                        who.push(i);
                    }
                    // No socket (a send failed): only the deadline matters.
                    None => until = now,
                }
            }
            State::Done => {}
        }
    }
    let d = until.saturating_duration_since(now);
    // Round up so a deadline under a millisecond away does not spin.
    let ms = d.as_millis() as i64 + i64::from(!d.subsec_nanos().is_multiple_of(1_000_000));
    biblioteca_runtime::net::poll(&mut items, ms)?;
    let mut attend = vec![false; vs.len()];
    for (i, it) in who.iter().zip(&items) {
        if it.is_readable() {
            if let Some(a) = attend.get_mut(*i) {
                *a = true;
            }
        }
    }
    // Expired tries too (one that is also readable gets its reply first).
    let now = Instant::now();
    for (a, v) in attend.iter_mut().zip(vs) {
        if let State::Waiting { in_flight, .. } = &v.state {
            *a |= in_flight.deadline() <= now;
        }
    }
    Ok(attend
        .iter()
        .enumerate()
        .filter(|(_, a)| **a)
        .map(|(i, _)| i)
        .collect())
}
