//! The load manager's Prometheus metrics: one process-wide set of handles
//! ([`get`]) the broker calls into, and the HTTP endpoint's start-up
//! ([`serve`]).

use std::sync::OnceLock;
use std::time::Instant;

use biblioteca_metrics::http::{self, Checks, Endpoint, MetricsError};
use biblioteca_metrics::{
    duration_histogram, init_op_outcomes, Counter, Family, Gauge, GaugeF, Histogram, Label,
    OpOutcome, Registry, OPERATIONS,
};
use biblioteca_protocol::config::LoadManagerConfig;
use biblioteca_protocol::metrics_config::PORT_CARGA;
use biblioteca_protocol::{Operacion, Respuesta};

use super::actors::Liveness;
use super::inflight::InFlight;
use super::queries::Consultas;
use biblioteca_runtime::shutdown::Shutdown;

const WRITES: [&str; 3] = ["prestamo", "devolucion", "renovacion"];

pub(crate) struct Metrics {
    pub registry: Registry,
    requests: Family<OpOutcome, Counter>,
    duration: Family<Label, Histogram>,
    in_flight: Gauge,
    oldest_age: GaugeF,
    expirations: Family<Label, Counter>,
    republications: Family<Label, Counter>,
    late: Family<Label, Counter>,
    heartbeat: Family<Label, GaugeF>,
    actors: Family<Label, Gauge>,
}

fn build() -> Metrics {
    let mut registry = Registry::new("carga");
    let requests = Family::<OpOutcome, Counter>::default();
    init_op_outcomes(&requests, &OPERATIONS);
    registry.register(
        "load_manager_requests",
        "Requests answered, by operation and outcome (ok or the error code)",
        requests.clone(),
    );
    let duration =
        Family::<Label, Histogram>::new_with_constructor(duration_histogram as fn() -> Histogram);
    let expirations = Family::<Label, Counter>::default();
    let republications = Family::<Label, Counter>::default();
    let heartbeat = Family::<Label, GaugeF>::default();
    let actors = Family::<Label, Gauge>::default();
    for op in OPERATIONS {
        let _ = duration.get_or_create(&[("operation", op)]);
    }
    for op in WRITES {
        let l = [("operation", op)];
        let _ = (
            expirations.get_or_create(&l),
            republications.get_or_create(&l),
        );
        let _ = (heartbeat.get_or_create(&l), actors.get_or_create(&l));
    }
    let late = Family::<Label, Counter>::default();
    for source in ["actor", "storage"] {
        let _ = late.get_or_create(&[("source", source)]);
    }
    registry.register(
        "load_manager_request_duration_seconds",
        "From a request's arrival to its reply, by operation",
        duration.clone(),
    );
    let in_flight = Gauge::default();
    registry.register(
        "load_manager_in_flight",
        "Clients waiting for a reply (writes and storage look-ups)",
        in_flight.clone(),
    );
    let oldest_age = GaugeF::default();
    registry.register(
        "load_manager_oldest_in_flight_age_seconds",
        "How long the oldest waiting write has waited (0: none)",
        oldest_age.clone(),
    );
    registry.register(
        "load_manager_deadline_expirations",
        "Writes answered ServicioNoDisponible or the last transient cause at the deadline",
        expirations.clone(),
    );
    registry.register(
        "load_manager_republications",
        "Unanswered writes published again to the actors",
        republications.clone(),
    );
    registry.register(
        "load_manager_late_results",
        "Outcomes that arrived after their client was answered (ignored)",
        late.clone(),
    );
    registry.register(
        "load_manager_actor_last_heartbeat_timestamp_seconds",
        "When an actor of each operation last sent a heartbeat (0: never)",
        heartbeat.clone(),
    );
    registry.register(
        "load_manager_actors_alive",
        "Actors of each operation heard from within actor_timeout",
        actors.clone(),
    );
    Metrics {
        registry,
        requests,
        duration,
        in_flight,
        oldest_age,
        expirations,
        republications,
        late,
        heartbeat,
        actors,
    }
}

/// The process's load manager metrics.
pub(crate) fn get() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(build)
}

impl Metrics {
    /// One reply to a client of `operation` that arrived at `received`.
    pub fn answered(&self, operation: &'static str, outcome: &'static str, received: Instant) {
        self.requests
            .get_or_create(&[("operation", operation), ("outcome", outcome)])
            .inc();
        self.duration
            .get_or_create(&[("operation", operation)])
            .observe(received.elapsed().as_secs_f64());
    }

    pub fn expired(&self, op: Operacion) {
        self.expirations
            .get_or_create(&[("operation", op.as_str())])
            .inc();
    }

    /// `n` requests of `op` published again.
    pub fn republished(&self, op: Operacion, n: usize) {
        if n > 0 {
            self.republications
                .get_or_create(&[("operation", op.as_str())])
                .inc_by(n as u64);
        }
    }

    pub fn late(&self, source: &'static str) {
        self.late.get_or_create(&[("source", source)]).inc();
    }

    pub fn heartbeat(&self, op: Operacion) {
        self.heartbeat
            .get_or_create(&[("operation", op.as_str())])
            .set(biblioteca_metrics::unix_now());
    }

    /// A request refused before it was admitted (stopping, busy).
    pub fn refused(&self, operacion: &str, r: &Respuesta) {
        self.answered(op_label(operacion), r.outcome(), Instant::now());
    }

    /// The gauges the broker's sweep keeps current: clients waiting, since
    /// when the oldest waits (a scan, hence only at the sweep), and each
    /// operation's live actors.
    pub fn observe(
        &self,
        in_flight: usize,
        writes: &InFlight,
        lookups: &Consultas,
        actors: &Liveness,
        now: Instant,
    ) {
        self.in_flight
            .set(i64::try_from(in_flight).unwrap_or(i64::MAX));
        let oldest = [writes.oldest_received(), lookups.oldest_received()];
        let oldest = oldest.into_iter().flatten().min();
        self.oldest_age
            .set(oldest.map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64()));
        for op in Operacion::WRITES {
            self.actors
                .get_or_create(&[("operation", op.as_str())])
                .set(i64::try_from(actors.alive(op, now)).unwrap_or(i64::MAX));
        }
    }
}

/// The `operation` label of a request refused before it was read whole.
fn op_label(operacion: &str) -> &'static str {
    Operacion::from_wire(operacion).map_or("resultado", Operacion::as_str)
}

/// Starts the endpoint (before `READY=1`); `None` when turned off.
pub(crate) fn serve(
    config: &LoadManagerConfig,
    shutdown: &Shutdown,
) -> Result<Option<Endpoint>, MetricsError> {
    http::serve(
        &config.metrics,
        PORT_CARGA,
        &get().registry,
        Checks::new(),
        shutdown,
    )
}
