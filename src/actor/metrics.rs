//! The actor's Prometheus metrics: one process-wide set of handles ([`get`])
//! the poll loop calls into, and the HTTP endpoint's start-up ([`serve`]).

use std::sync::OnceLock;
use std::time::Instant;

use biblioteca_metrics::http::{self, Checks, Endpoint, MetricsError};
use biblioteca_metrics::{
    duration_histogram, init_op_outcomes, Counter, Family, Gauge, Histogram, Label, OpOutcome,
    Registry,
};
use biblioteca_protocol::config::ActorConfig;
use biblioteca_protocol::metrics_config::actor_port;
use biblioteca_runtime::shutdown::Shutdown;

pub(crate) struct Metrics {
    pub registry: Registry,
    received: Family<Label, Counter>,
    operations: Family<OpOutcome, Counter>,
    duration: Family<Label, Histogram>,
    round_trip: Family<Label, Histogram>,
    in_flight: Family<Label, Gauge>,
    duplicates: Family<Label, Counter>,
}

fn build() -> Metrics {
    let mut registry = Registry::new("actor");
    let received = Family::<Label, Counter>::default();
    registry.register(
        "actor_messages_received",
        "Requests received from the load manager (re-publications included)",
        received.clone(),
    );
    let operations = Family::<OpOutcome, Counter>::default();
    registry.register(
        "actor_operations",
        "Outcomes reported to the load manager, by outcome",
        operations.clone(),
    );
    let histogram = duration_histogram as fn() -> Histogram;
    let duration = Family::<Label, Histogram>::new_with_constructor(histogram);
    registry.register(
        "actor_operation_duration_seconds",
        "From a request's arrival to its outcome",
        duration.clone(),
    );
    let round_trip = Family::<Label, Histogram>::new_with_constructor(histogram);
    registry.register(
        "actor_storage_round_trip_seconds",
        "From the last send to the storage manager to its reply",
        round_trip.clone(),
    );
    let in_flight = Family::<Label, Gauge>::default();
    registry.register(
        "actor_in_flight",
        "Requests outstanding at the storage manager",
        in_flight.clone(),
    );
    let duplicates = Family::<Label, Counter>::default();
    registry.register(
        "actor_duplicates",
        "Re-publications of a request already at the storage manager (not sent again)",
        duplicates.clone(),
    );
    Metrics {
        registry,
        received,
        operations,
        duration,
        round_trip,
        in_flight,
        duplicates,
    }
}

/// The process's actor metrics.
pub(crate) fn get() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(build)
}

impl Metrics {
    /// Creates every series of `op` at 0.
    fn init(&self, op: &'static str) {
        let l = [("operation", op)];
        init_op_outcomes(&self.operations, &[op]);
        let _ = (
            self.received.get_or_create(&l),
            self.duplicates.get_or_create(&l),
        );
        let _ = (
            self.duration.get_or_create(&l),
            self.round_trip.get_or_create(&l),
        );
        let _ = self.in_flight.get_or_create(&l);
    }

    pub fn received(&self, op: &'static str) {
        self.received.get_or_create(&[("operation", op)]).inc();
    }

    pub fn duplicate(&self, op: &'static str) {
        self.duplicates.get_or_create(&[("operation", op)]).inc();
    }

    pub fn storage_reply(&self, op: &'static str, sent_at: Instant) {
        self.round_trip
            .get_or_create(&[("operation", op)])
            .observe(sent_at.elapsed().as_secs_f64());
    }

    pub fn finished(&self, op: &'static str, outcome: &'static str, received: Instant) {
        self.operations
            .get_or_create(&[("operation", op), ("outcome", outcome)])
            .inc();
        self.duration
            .get_or_create(&[("operation", op)])
            .observe(received.elapsed().as_secs_f64());
    }

    pub fn in_flight(&self, op: &'static str, n: usize) {
        self.in_flight
            .get_or_create(&[("operation", op)])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// Starts the endpoint (before `READY=1`); `None` when turned off.
pub(crate) fn serve(
    config: &ActorConfig,
    shutdown: &Shutdown,
) -> Result<Option<Endpoint>, MetricsError> {
    get().init(config.operacion.as_str());
    http::serve(
        &config.metrics,
        actor_port(config.operacion),
        &get().registry,
        Checks::new(),
        shutdown,
    )
}
