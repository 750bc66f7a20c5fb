//! The storage manager's Prometheus metrics and its health checks.
//!
//! One process-wide set of handles ([`get`]) the front-end, the workers, the
//! pools' event hooks and the replication watch call into; what is cheaper
//! to read than to keep current (pool state, node roles, timelines, the
//! degraded-mode record) is read at each scrape from [`Shared`]. The
//! per-standby series are `pg_stat_replication` as the monitor's own
//! connection to the writer sees it ([`observe_standbys`]). [`serve`] adds
//! `/readiness` (ready and some node answers) and `/primary` (200 only while
//! a writable, unfenced primary on the newest timeline takes writes).

use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use biblioteca_metrics::http::{self, Checks, Endpoint, MetricsError};
use biblioteca_metrics::{
    duration_histogram, init_op_outcomes, outcome_of, Counter, Family, Gauge, GaugeF, Histogram,
    Label, NameLabel, OpOutcome, Registry, OPERATIONS,
};
use biblioteca_protocol::config::{NodeRole, ReplicationState, StorageConfig};
use biblioteca_protocol::metrics_config::PORT_ALMACENAMIENTO;
use biblioteca_runtime::shutdown::Shutdown;

use super::Shared;

/// `pg_stat_replication.sync_state`, and `absent` for a node not streaming.
const SYNC_STATES: [&str; 5] = ["sync", "quorum", "potential", "async", "absent"];

type NodeState = [(&'static str, String); 2];

pub(crate) struct Metrics {
    pub registry: Registry,
    requests: Family<OpOutcome, Counter>,
    duration: Family<Label, Histogram>,
    pub in_flight: Gauge,
    pub queue_depth: Gauge,
    pub busy_workers: Gauge,
    pub queue_wait: Histogram,
    batch_writes: Histogram,
    transaction: Family<Label, Histogram>,
    pub replayed: Counter,
    pool: Family<NodeState, Gauge>,
    checkout_wait: Family<NameLabel, Histogram>,
    checkout_timeouts: Family<NameLabel, Counter>,
    writer: Family<NameLabel, Gauge>,
    timeline: Gauge,
    newest_timeline: Gauge,
    node_up: Family<NameLabel, Gauge>,
    node_fenced: Family<NameLabel, Gauge>,
    pub fencing_refusals: Counter,
    standby_state: Family<NodeState, Gauge>,
    standby_lag_bytes: Family<NameLabel, GaugeF>,
    standby_lag_seconds: Family<NameLabel, GaugeF>,
    degraded: Gauge,
    degraded_transitions: Family<Label, Counter>,
}

fn build() -> Metrics {
    let h = duration_histogram as fn() -> Histogram;
    let requests = Family::<OpOutcome, Counter>::default();
    init_op_outcomes(&requests, &OPERATIONS);
    let duration = Family::<Label, Histogram>::new_with_constructor(h);
    for op in OPERATIONS {
        let _ = duration.get_or_create(&[("operation", op)]);
    }
    let transaction = Family::<Label, Histogram>::new_with_constructor(h);
    for kind in ["write", "read"] {
        let _ = transaction.get_or_create(&[("kind", kind)]);
    }
    let degraded_transitions = Family::<Label, Counter>::default();
    for to in ["degradada", "sincrona"] {
        let _ = degraded_transitions.get_or_create(&[("to", to)]);
    }
    let mut m = Metrics {
        requests,
        duration,
        in_flight: Gauge::default(),
        queue_depth: Gauge::default(),
        busy_workers: Gauge::default(),
        queue_wait: duration_histogram(),
        batch_writes: Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0]),
        transaction,
        replayed: Counter::default(),
        pool: Family::default(),
        checkout_wait: Family::new_with_constructor(h),
        checkout_timeouts: Family::default(),
        writer: Family::default(),
        timeline: Gauge::default(),
        newest_timeline: Gauge::default(),
        node_up: Family::default(),
        node_fenced: Family::default(),
        fencing_refusals: Counter::default(),
        standby_state: Family::default(),
        standby_lag_bytes: Family::default(),
        standby_lag_seconds: Family::default(),
        degraded: Gauge::default(),
        degraded_transitions,
        registry: Registry::new("almacenamiento"),
    };
    let r = &mut m.registry;
    r.register(
        "storage_requests",
        "Requests answered, by operation and outcome (ok or the error code)",
        m.requests.clone(),
    );
    r.register(
        "storage_request_duration_seconds",
        "From a request's arrival at the front-end to its reply, by operation",
        m.duration.clone(),
    );
    r.register(
        "storage_in_flight",
        "Requests accepted and not yet answered",
        m.in_flight.clone(),
    );
    r.register(
        "storage_queue_depth",
        "Requests waiting for a worker (or behind their book's batch)",
        m.queue_depth.clone(),
    );
    r.register(
        "storage_queue_wait_seconds",
        "From a request's arrival to a worker taking it",
        m.queue_wait.clone(),
    );
    r.register(
        "storage_busy_workers",
        "Workers running a request or a batch",
        m.busy_workers.clone(),
    );
    r.register(
        "storage_batch_writes",
        "Writes per transaction a worker ran (one book's batch)",
        m.batch_writes.clone(),
    );
    r.register("storage_transaction_duration_seconds", "A worker's transaction, commit and the synchronous standbys' confirmation included, by kind", m.transaction.clone());
    r.register(
        "storage_replayed",
        "Writes answered with the outcome stored under their id (duplicates)",
        m.replayed.clone(),
    );
    r.register(
        "storage_pool_connections",
        "Pooled connections per node, idle or in use",
        m.pool.clone(),
    );
    r.register(
        "storage_pool_checkout_wait_seconds",
        "How long a worker waited for a pooled connection, per node",
        m.checkout_wait.clone(),
    );
    r.register(
        "storage_pool_checkout_timeouts",
        "Checkouts that found no connection in connect_timeout, per node",
        m.checkout_timeouts.clone(),
    );
    r.register(
        "storage_writer",
        "1 for the node that takes writes, 0 for the others",
        m.writer.clone(),
    );
    r.register(
        "storage_timeline",
        "The writer's PostgreSQL timeline (0: no writer)",
        m.timeline.clone(),
    );
    r.register(
        "storage_newest_timeline",
        "The newest timeline ever seen (fencing refuses older primaries)",
        m.newest_timeline.clone(),
    );
    r.register(
        "storage_node_up",
        "1 when the last probe of the node answered",
        m.node_up.clone(),
    );
    r.register(
        "storage_node_fenced",
        "1 when the node is fenced: by configuration or on a stale timeline",
        m.node_fenced.clone(),
    );
    r.register(
        "storage_fencing_refusals",
        "Writes a node refused as fenced or read-only (writes moved off it)",
        m.fencing_refusals.clone(),
    );
    r.register(
        "storage_standby_sync_state",
        "Each node's sync_state in the writer's pg_stat_replication (absent: not streaming)",
        m.standby_state.clone(),
    );
    r.register(
        "storage_standby_lag_bytes",
        "WAL the standby has not replayed yet, as the writer sees it",
        m.standby_lag_bytes.clone(),
    );
    r.register(
        "storage_standby_replay_lag_seconds",
        "The standby's replay_lag, as the writer sees it",
        m.standby_lag_seconds.clone(),
    );
    r.register(
        "storage_replication_degraded",
        "1 while the primary commits without a synchronous standby (replicacion = disponible)",
        m.degraded.clone(),
    );
    r.register(
        "storage_replication_transitions",
        "Changes of the degraded-mode record, by the state entered",
        m.degraded_transitions.clone(),
    );
    m
}

/// The process's storage manager metrics.
pub(crate) fn get() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(build)
}

impl Metrics {
    /// Creates every node's series at 0.
    fn init_nodes(&self, config: &StorageConfig) {
        for n in &config.database.nodes {
            let node = [("node", n.name.clone())];
            let _ = (
                self.writer.get_or_create(&node),
                self.node_up.get_or_create(&node),
            );
            let _ = self.node_fenced.get_or_create(&node);
            let _ = self.checkout_wait.get_or_create(&node);
            let _ = self.checkout_timeouts.get_or_create(&node);
            let _ = (
                self.standby_lag_bytes.get_or_create(&node),
                self.standby_lag_seconds.get_or_create(&node),
            );
            for state in ["idle", "in_use"] {
                let _ = self
                    .pool
                    .get_or_create(&[("node", n.name.clone()), ("state", state.into())]);
            }
            for state in SYNC_STATES {
                let _ = self
                    .standby_state
                    .get_or_create(&[("node", n.name.clone()), ("state", state.into())]);
            }
        }
    }

    /// One reply of `operation` to a request that arrived at `since`.
    pub fn answered(&self, operation: &'static str, reply: &[u8], since: Instant) {
        self.requests
            .get_or_create(&[("operation", operation), ("outcome", outcome_of(reply))])
            .inc();
        self.duration
            .get_or_create(&[("operation", operation)])
            .observe(since.elapsed().as_secs_f64());
    }

    /// A worker ran `writes` writes (0: a read) in `took`.
    pub fn transaction(&self, writes: usize, took: Duration) {
        let kind = if writes == 0 { "read" } else { "write" };
        if writes > 0 {
            self.batch_writes.observe(writes as f64);
        }
        self.transaction
            .get_or_create(&[("kind", kind)])
            .observe(took.as_secs_f64());
    }

    /// The degraded-mode record entered `to`.
    pub fn replication_changed(&self, to: ReplicationState) {
        let to = match to {
            ReplicationState::Degradada => "degradada",
            ReplicationState::Sincrona => "sincrona",
        };
        self.degraded_transitions.get_or_create(&[("to", to)]).inc();
    }

    /// Reads what the scrape shows from the current backend.
    fn observe(&self, shared: &Shared) {
        let backend = shared.backend();
        let writer = backend.writer_index();
        self.newest_timeline.set(i64::from(shared.fencing.newest()));
        self.timeline.set(0);
        for (i, n) in backend.nodes.iter().enumerate() {
            let s = n.state();
            let node = [("node", n.cfg.name.clone())];
            let is_writer = writer == Some(i);
            self.writer.get_or_create(&node).set(i64::from(is_writer));
            if is_writer {
                self.timeline.set(i64::from(s.timeline.unwrap_or(0)));
            }
            self.node_up
                .get_or_create(&node)
                .set(i64::from(s.reachable == Some(true)));
            let fenced = n.cfg.role == NodeRole::Fenced || s.stale;
            self.node_fenced.get_or_create(&node).set(i64::from(fenced));
            let st = n.pool.state();
            let idle = i64::from(st.idle_connections);
            let pool = |state: &str, v: i64| {
                self.pool
                    .get_or_create(&[("node", n.cfg.name.clone()), ("state", state.to_string())])
                    .set(v);
            };
            pool("idle", idle);
            pool("in_use", i64::from(st.connections) - idle);
        }
        let degraded = shared.replication.registro().estado == ReplicationState::Degradada;
        self.degraded.set(i64::from(degraded));
    }

    /// One standby's row of the writer's `pg_stat_replication`.
    fn standby(&self, node: &str, state: &str, lag_bytes: f64, lag_seconds: f64) {
        for s in SYNC_STATES {
            self.standby_state
                .get_or_create(&[("node", node.to_string()), ("state", s.to_string())])
                .set(i64::from(s == state));
        }
        let l = [("node", node.to_string())];
        self.standby_lag_bytes.get_or_create(&l).set(lag_bytes);
        self.standby_lag_seconds.get_or_create(&l).set(lag_seconds);
    }
}

/// Each streaming standby with its sync state and lag behind the writer.
const STANDBYS_SQL: &str = "SELECT application_name, sync_state, state,
    coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::float8,
    coalesce(extract(epoch FROM replay_lag), 0)::float8
  FROM pg_stat_replication";

/// Updates the per-standby series from the writer (`nodes`: every
/// configured name, so one that stopped streaming reads `absent`).
pub(crate) fn observe_standbys(c: &mut postgres::Client, nodes: &[String]) {
    let rows = match c.query(STANDBYS_SQL, &[]) {
        Ok(rows) => rows,
        Err(e) => {
            tracing::debug!(error = %e, "metrics: cannot read pg_stat_replication");
            return;
        }
    };
    let m = get();
    for name in nodes {
        let row = rows
            .iter()
            .find(|r| r.get::<_, Option<String>>(0).as_deref() == Some(name));
        match row {
            Some(r) if r.get::<_, Option<String>>(2).as_deref() == Some("streaming") => {
                let state: Option<String> = r.get(1);
                let state = state.unwrap_or_else(|| "async".into());
                m.standby(name, &state, r.get(3), r.get(4));
            }
            _ => m.standby(name, "absent", 0.0, 0.0),
        }
    }
}

/// r2d2's event hooks of one node's pool: checkout waits and timeouts.
#[derive(Debug)]
pub(crate) struct PoolEvents {
    pub node: String,
}

impl r2d2::HandleEvent for PoolEvents {
    fn handle_checkout(&self, event: r2d2::event::CheckoutEvent) {
        get()
            .checkout_wait
            .get_or_create(&[("node", self.node.clone())])
            .observe(event.duration().as_secs_f64());
    }

    fn handle_timeout(&self, _event: r2d2::event::TimeoutEvent) {
        get()
            .checkout_timeouts
            .get_or_create(&[("node", self.node.clone())])
            .inc();
    }
}

/// Starts the endpoint (before the database is waited for, so
/// `/readiness` answers 503 meanwhile); `None` when turned off.
pub(crate) fn serve(
    shared: &Arc<Shared>,
    shutdown: &Shutdown,
) -> Result<Option<Endpoint>, MetricsError> {
    let backend = shared.backend();
    let config = &backend.config;
    get().init_nodes(config);
    let weak: Weak<Shared> = Arc::downgrade(shared);
    get().registry.on_scrape({
        let weak = weak.clone();
        move || {
            if let Some(shared) = weak.upgrade() {
                get().observe(&shared);
            }
        }
    });
    let readable = {
        let weak = weak.clone();
        move || {
            let shared = weak.upgrade().ok_or("stopping")?;
            let backend = shared.backend();
            if backend
                .nodes
                .iter()
                .any(|n| n.state().reachable == Some(true))
            {
                Ok("ready".to_string())
            } else {
                Err("no database node answers".to_string())
            }
        }
    };
    let primary = move || {
        let shared = weak.upgrade().ok_or("stopping")?;
        match shared.writer_name() {
            Some(name) => Ok(format!("writes go to {name}")),
            None => Err("no writable, unfenced primary on the newest timeline".to_string()),
        }
    };
    let checks = Checks::new().readiness(readable).route("/primary", primary);
    http::serve(
        &config.metrics,
        PORT_ALMACENAMIENTO,
        &get().registry,
        checks,
        shutdown,
    )
}
