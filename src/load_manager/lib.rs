//! `biblioteca-carga`, the load manager.
//!
//! Owns the client front-end (ROUTER, so REQ and DEALER clients are served
//! concurrently), the publication of write requests to the actors (PUB, topic
//! = operation name), the back-channel on which actors report outcomes and
//! heartbeats (PULL), and the DEALER over which `consulta` goes straight to
//! the storage manager. One thread polls all four sockets (lbbroker style);
//! nothing in the loop blocks, so a slow storage manager or an operation
//! without actors never holds up anyone else.
//!
//! - [`broker`]: the poll loop and what each message does.
//! - [`inflight`]: write requests awaiting an outcome (re-publication, deadlines).
//! - [`queries`]: clients awaiting the storage manager.
//! - [`actors`]: which operations have live actors.
//! - [`status`]: the status reply and assigned request ids.
//! - [`metrics`]: Prometheus metrics and the health endpoint.

mod actors;
mod broker;
mod inflight;
mod metrics;
mod queries;
mod sockets;
mod status;

use std::time::Instant;

use biblioteca_protocol::config::LoadManagerConfig;
use biblioteca_runtime::shutdown::Shutdown;

/// Socket and CURVE set-up failures (shared with the other socket services).
pub type LoadManagerError = biblioteca_runtime::net::ServiceError;

/// Binds the sockets, announces readiness and serves until `shutdown`;
/// then refuses new requests, drains those in flight for a short while and
/// returns.
pub fn run(config: LoadManagerConfig, shutdown: Shutdown) -> Result<(), LoadManagerError> {
    // Before the first socket starts libzmq's threads, so they inherit it.
    biblioteca_runtime::sched::apply_or_warn(config.scheduling);
    let ctx = zmq::Context::new();
    // Declared before the sockets, so it outlives them (dropped after).
    let (curve, _zap) = biblioteca_runtime::security::load_manager(&ctx, config.curve.as_ref())?;
    let sockets = sockets::Sockets::open(&ctx, &config, &curve)?;
    let _endpoint =
        metrics::serve(&config, &shutdown).map_err(|e| LoadManagerError::Metrics(Box::new(e)))?;
    tracing::info!(
        frontend = config.frontend.as_str(),
        publisher = config.publisher.as_str(),
        backchannel = config.backchannel.as_str(),
        storage = config.storage.as_str(),
        deadline = %humantime::format_duration(config.deadline),
        "load manager ready"
    );
    metrics::get().registry.ready(&format!(
        "serving clients on {}, publishing on {}",
        config.frontend, config.publisher
    ));
    let mut b = broker::Broker::new(config, sockets, Instant::now());
    b.run(&shutdown)
}
