//! The transport floor: the CPU one ZeroMQ TCP hop costs on this machine,
//! measured with nothing but ZeroMQ, and the best ratio any pipeline of this
//! shape could reach against pgbench here.
//!
//! A request through the pipeline crosses [`HOPS`] TCP hops (client → load
//! manager → actor → storage manager → actor → load manager → client), and
//! with libzmq each one wakes the sender's I/O thread, the receiver's I/O
//! thread and the receiving application thread. That work does not depend on
//! what the services do with a message, so it bounds what trimming them can
//! achieve. The measurement is the best case for the transport: two
//! ZeroMQ contexts in this process (each with its own I/O thread, as two
//! processes would have), `n` REQ sockets polled by one thread — like the
//! load generator — sending a request-sized message to a ROUTER that echoes
//! it at once, on an otherwise idle machine. CPU is this process's, counted
//! by [`cpu`](super::cpu) like every other part, divided by the hops made.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::cpu::{Part, Parts};
use biblioteca_runtime::net::{self, NetError};
use biblioteca_stack::launch::free_port;

/// TCP hops one write request makes through the pipeline.
pub const HOPS: u32 = 6;
/// The size of a typical loan request on the wire.
const BODY: usize = 160;
const POLL_MS: i64 = 100;

#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Launch(#[from] biblioteca_stack::launch::LaunchError),
    #[error(transparent)]
    Files(#[from] biblioteca_client::load::LoadError),
    #[error("the echo thread: {0}")]
    Thread(std::io::Error),
    #[error("no round trip completed in {0:?}")]
    NoData(Duration),
}

/// The transport floor at one number of requests in flight.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Floor {
    pub in_flight: usize,
    pub round_trips: u64,
    /// CPU microseconds per hop, both ends together.
    pub us_per_hop: f64,
}

impl Floor {
    /// CPU per request of [`HOPS`] hops.
    pub fn us_per_request(&self) -> f64 {
        self.us_per_hop * f64::from(HOPS)
    }

    /// The best ours/pgbench ratio on 2 busy cores when a pgbench
    /// transaction costs `pgbench_us` of CPU: the database work plus the hops
    /// and nothing else (no service work, no extra database cost, a client
    /// as cheap as pgbench's).
    pub fn best_ratio(&self, pgbench_us: f64) -> f64 {
        if pgbench_us <= 0.0 {
            return 0.0;
        }
        pgbench_us / (pgbench_us + self.us_per_request())
    }
}

/// Echoes every message on `router` until `stop`.
fn echo(router: &zmq::Socket, stop: &AtomicBool) -> Result<(), NetError> {
    while !stop.load(Ordering::Relaxed) {
        let mut items = [router.as_poll_item(zmq::POLLIN)];
        zmq::poll(&mut items, POLL_MS)?;
        while let Some(frames) = net::try_recv(router)? {
            router.send_multipart(frames, zmq::DONTWAIT)?;
        }
    }
    Ok(())
}

/// Measures `in_flight` request/reply pairs kept in flight for `duration`
/// (after a short warm-up).
pub fn measure(in_flight: usize, duration: Duration) -> Result<Floor, FloorError> {
    // Both ends' sockets live in this process: twice a load run's files.
    biblioteca_client::load::raise_file_limit(2 * in_flight)?;
    let endpoint = format!("tcp://127.0.0.1:{}", free_port()?);
    let ctx_echo = zmq::Context::new();
    let router = net::socket(&ctx_echo, zmq::ROUTER)?;
    net::bind(&router, &endpoint)?;
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("bench-eco".into())
            .spawn(move || echo(&router, &stop))
            .map_err(FloorError::Thread)?
    };
    let result = clients(in_flight, duration, &endpoint);
    stop.store(true, Ordering::Relaxed);
    let echo = worker.join();
    let floor = result?;
    match echo {
        Ok(r) => r?,
        Err(_) => return Err(FloorError::Thread(std::io::Error::other("panicked"))),
    }
    Ok(floor)
}

fn clients(in_flight: usize, duration: Duration, endpoint: &str) -> Result<Floor, FloorError> {
    let ctx = zmq::Context::new();
    let n = in_flight.max(1);
    let socks = (0..n)
        .map(|_| {
            let s = net::socket(&ctx, zmq::REQ)?;
            net::connect(&s, endpoint)?;
            Ok(s)
        })
        .collect::<Result<Vec<_>, NetError>>()?;
    let body = [b'x'; BODY];
    for s in &socks {
        s.send(&body[..], 0).map_err(NetError::from)?;
    }
    let warm_up = (duration / 5).min(Duration::from_millis(500));
    let count = |until: Instant| -> Result<u64, FloorError> {
        let mut done = 0;
        while Instant::now() < until {
            let mut items: Vec<zmq::PollItem> =
                socks.iter().map(|s| s.as_poll_item(zmq::POLLIN)).collect();
            zmq::poll(&mut items, POLL_MS).map_err(NetError::from)?;
            for (item, s) in items.iter().zip(&socks) {
                if item.is_readable() && net::try_recv(s)?.is_some() {
                    done += 1;
                    s.send(&body[..], 0).map_err(NetError::from)?;
                }
            }
        }
        Ok(done)
    };
    count(Instant::now() + warm_up)?;
    let process = Parts::new().with("zeromq", Part::OwnProcess);
    let before = process.now_snapshot();
    let done = count(Instant::now() + duration)?;
    if done == 0 {
        return Err(FloorError::NoData(duration));
    }
    // Two hops per round trip; the first part is this process.
    let us_per_hop = before
        .per_request(&process.now_snapshot(), 2 * done)
        .first()
        .map_or(0.0, |c| c.us_per_request);
    Ok(Floor {
        in_flight: n,
        round_trips: done,
        us_per_hop,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_round_trips_and_their_cpu() {
        let s = measure(4, Duration::from_millis(400)).expect("floor");
        assert_eq!(s.in_flight, 4);
        assert!(s.round_trips > 10, "{s:?}");
        // A hop costs something, and far less than a millisecond.
        assert!(s.us_per_hop > 0.0 && s.us_per_hop < 1000.0, "{s:?}");
        assert!((s.us_per_request() - 6.0 * s.us_per_hop).abs() < 1e-9);
    }

    #[test]
    fn best_ratio_adds_only_the_hops() {
        let s = Floor {
            in_flight: 16,
            round_trips: 1,
            us_per_hop: 25.0,
        };
        // 350 / (350 + 150)
        assert!((s.best_ratio(350.0) - 0.7).abs() < 1e-9);
        assert_eq!(s.best_ratio(0.0), 0.0);
    }
}
