//! `biblioteca-actor`, which executes one write operation.
//!
//! An actor subscribes to its operation's topic on the load manager's PUB,
//! sends each request to the storage manager over a DEALER (many in flight,
//! matched by id, re-sent on timeout, the socket replaced after repeated
//! timeouts), and PUSHes each outcome and a heartbeat every `heartbeat_interval` to
//! the load manager's back-channel. All three sockets are connected, so
//! ZeroMQ reconnects them when the load manager or the storage manager
//! restarts; one thread polls them. What is ready together travels together:
//! the requests of one turn go to the storage manager in one message, the
//! outcomes of one turn to the load manager in one message
//! ([`biblioteca_protocol::batch`]).
//!
//! - [`worker`]: the poll loop.
//! - [`pending`]: requests outstanding at the storage manager.

mod pending;
mod worker;

use std::sync::atomic::{AtomicUsize, Ordering};

use biblioteca_protocol::config::ActorConfig;
use biblioteca_runtime::shutdown::Shutdown;

/// Socket and CURVE set-up failures (shared with the other socket services).
pub type ActorError = biblioteca_runtime::net::ServiceError;

/// Serves `config.operacion` until `shutdown`, then waits briefly for the
/// storage manager's answers to what is outstanding and returns.
pub fn run(config: ActorConfig, shutdown: Shutdown) -> Result<(), ActorError> {
    // Before the first socket starts libzmq's threads, so they inherit it.
    biblioteca_runtime::sched::apply_or_warn(config.scheduling);
    let ctx = zmq::Context::new();
    let curve = biblioteca_runtime::security::actor(config.curve.as_ref())?;
    let mut actor = worker::Actor::open(&ctx, config, actor_name(), curve)?;
    actor.run(&shutdown)
}

/// `<hostname>-<pid>`, with a suffix for the second and later actors of one
/// process (tests), so the load manager counts each one.
pub fn actor_name() -> String {
    static INSTANCES: AtomicUsize = AtomicUsize::new(0);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "actor".to_string());
    let base = format!("{host}-{}", std::process::id());
    match INSTANCES.fetch_add(1, Ordering::Relaxed) {
        0 => base,
        n => format!("{base}-{n}"),
    }
}
