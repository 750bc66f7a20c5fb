//! What every service exposes to operators: Prometheus metrics and health
//! endpoints.
//!
//! A [`Registry`] holds the metrics every service has (build info, ready,
//! each thread's last heartbeat, taken from the [`Shutdown`] check-ins the
//! watchdog uses) plus whatever the service registers under the
//! `biblioteca_` prefix; closures added with [`Registry::on_scrape`] refresh
//! gauges that are cheaper to read than to keep current (pool state, node
//! roles). [`http::serve`] runs the HTTP thread (`/metrics` in the
//! Prometheus text format 0.0.4, `/liveness`, `/readiness`, and routes a
//! service adds, such as the storage manager's `/primary`);
//! [`textfile`] writes a node_exporter textfile for short-lived tools.
//! Instrumentation stays thin: each service keeps one struct of metric
//! handles and calls into it.

pub mod http;
pub mod textfile;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use biblioteca_protocol::CodigoError;
use biblioteca_runtime::shutdown::Shutdown;
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Metric;

/// A gauge holding seconds or other fractional values.
pub type GaugeF = Gauge<f64, AtomicU64>;
/// One label.
pub type Label = [(&'static str, &'static str); 1];
/// One label whose values come from configuration (node, thread names).
pub type NameLabel = [(&'static str, String); 1];
/// `operation` and `outcome`.
pub type OpOutcome = [(&'static str, &'static str); 2];

/// Buckets of request and transaction durations, in seconds: from half a
/// millisecond (a cached read) to 10 s (past every deadline).
pub const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The operation labels of requests: the four operations and `resultado`
/// (a stored outcome looked up by id).
pub const OPERATIONS: [&str; 5] = [
    "prestamo",
    "devolucion",
    "renovacion",
    "consulta",
    "resultado",
];

/// Every outcome label a reply can carry: `ok`, each error code, `error`
/// (a failure without a code).
pub const OUTCOMES: [&str; 12] = [
    "ok",
    "LibroNoEncontrado",
    "SinEjemplaresDisponibles",
    "PrestamoActivo",
    "PrestamoNoEncontrado",
    "LimiteRenovaciones",
    "PeticionInvalida",
    "ServicioNoDisponible",
    "AlmacenamientoNoDisponible",
    "ServicioOcupado",
    "SolicitudDesconocida",
    "error",
];

/// A thread silent this long makes `/liveness` fail (the busiest loop
/// checks in every 100 ms, an idle storage worker every second).
pub const LIVENESS_STALE_SECS: f64 = 10.0;

/// A duration histogram with [`DURATION_BUCKETS`].
pub fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Seconds since the Unix epoch, as Prometheus timestamps are.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The outcome label of a serialized reply: `ok`, its error code, or
/// `error`. Reads the bytes instead of parsing them, so labelling a reply
/// costs a prefix check on the hot path.
pub fn outcome_of(reply: &[u8]) -> &'static str {
    if reply.starts_with(br#"{"exito":true"#) {
        return "ok";
    }
    const KEY: &[u8] = br#""error":""#;
    let Some(at) = reply.windows(KEY.len()).position(|w| w == KEY) else {
        return "error";
    };
    let rest = &reply[at + KEY.len()..];
    let end = rest.iter().position(|b| *b == b'"').unwrap_or(0);
    let name = String::from_utf8_lossy(&rest[..end]);
    serde_json::from_value::<CodigoError>(serde_json::Value::String(name.into_owned()))
        .map(CodigoError::as_str)
        .unwrap_or("error")
}

type Hook = Box<dyn Fn() + Send + Sync>;

/// One service's metrics: the common ones and what the service registers.
pub struct Registry {
    inner: prometheus_client::registry::Registry,
    hooks: Mutex<Vec<Hook>>,
    ready_flag: AtomicBool,
    ready: Gauge,
    heartbeats: Family<NameLabel, GaugeF>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// A registry with `biblioteca_build_info{service,version}`,
    /// `biblioteca_ready` and `biblioteca_thread_heartbeat_timestamp_seconds`.
    pub fn new(service: &'static str) -> Registry {
        let mut inner = prometheus_client::registry::Registry::with_prefix("biblioteca");
        inner.register(
            "build",
            "The running binary: service and version",
            Info::new([("service", service), ("version", env!("CARGO_PKG_VERSION"))]),
        );
        let ready = Gauge::default();
        inner.register(
            "ready",
            "1 once the service has told systemd READY=1, until it stops",
            ready.clone(),
        );
        let heartbeats = Family::<NameLabel, GaugeF>::default();
        inner.register(
            "thread_heartbeat_timestamp_seconds",
            "When each service thread last checked in (the watchdog's heartbeat)",
            heartbeats.clone(),
        );
        Registry {
            inner,
            hooks: Mutex::new(Vec::new()),
            ready_flag: AtomicBool::new(false),
            ready,
            heartbeats,
        }
    }

    /// Registers `metric` as `biblioteca_<name>` (a counter gets `_total`
    /// appended by the encoder: `name` must not end in it).
    pub fn register(&mut self, name: &str, help: &str, metric: impl Metric) {
        self.inner.register(name, help, metric);
    }

    /// Runs `hook` before every scrape.
    pub fn on_scrape(&self, hook: impl Fn() + Send + Sync + 'static) {
        if let Ok(mut hooks) = self.hooks.lock() {
            hooks.push(Box::new(hook));
        }
    }

    /// Announces readiness to systemd and to `/readiness` together.
    pub fn ready(&self, status: &str) {
        biblioteca_runtime::notify::ready(status);
        self.ready_flag.store(true, Ordering::SeqCst);
        self.ready.set(1);
    }

    /// No longer ready (stopping).
    pub fn not_ready(&self) {
        self.ready_flag.store(false, Ordering::SeqCst);
        self.ready.set(0);
    }

    pub fn is_ready(&self) -> bool {
        self.ready_flag.load(Ordering::SeqCst)
    }

    /// The text exposition of every metric, fresh.
    pub fn encode(&self, shutdown: &Shutdown) -> Result<String, std::fmt::Error> {
        let now = unix_now();
        for (thread, age) in shutdown.checkin_ages() {
            self.heartbeats
                .get_or_create(&[("thread", thread)])
                .set(now - age.as_secs_f64());
        }
        if let Ok(hooks) = self.hooks.lock() {
            for hook in hooks.iter() {
                hook();
            }
        }
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.inner)?;
        Ok(out)
    }
}

/// Creates every `operation` × `outcome` series of `family` at 0.
pub fn init_op_outcomes<M, C>(family: &Family<OpOutcome, M, C>, operations: &[&'static str])
where
    M: Clone,
    C: prometheus_client::metrics::family::MetricConstructor<M>,
{
    for op in operations {
        for outcome in OUTCOMES {
            let _ = family.get_or_create(&[("operation", op), ("outcome", outcome)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use biblioteca_protocol::Respuesta;

    #[test]
    fn outcomes_are_read_from_the_bytes() {
        let ok = Respuesta::ok("prestamo", "x", serde_json::Value::Null).to_bytes();
        assert_eq!(outcome_of(&ok), "ok");
        let busy = Respuesta::error("prestamo", CodigoError::ServicioOcupado, "busy").to_bytes();
        assert_eq!(outcome_of(&busy), "ServicioOcupado");
        assert_eq!(outcome_of(b""), "error");
        assert_eq!(outcome_of(br#"{"exito":false,"error":"Nope"}"#), "error");
        for code in OUTCOMES.iter().filter(|o| **o != "ok" && **o != "error") {
            let body = format!(r#"{{"exito":false,"error":"{code}"}}"#);
            assert_eq!(outcome_of(body.as_bytes()), *code);
        }
    }

    #[test]
    fn common_metrics_are_there_from_the_start() {
        let r = Registry::new("test");
        let sd = Shutdown::new();
        sd.checkin("loop");
        let text = r.encode(&sd).unwrap();
        assert!(
            text.contains("biblioteca_build_info{service=\"test\""),
            "{text}"
        );
        assert!(text.contains("biblioteca_ready 0"), "{text}");
        assert!(
            text.contains("biblioteca_thread_heartbeat_timestamp_seconds{thread=\"loop\"}"),
            "{text}"
        );
    }
}
