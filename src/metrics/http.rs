//! The HTTP thread: `/metrics`, `/liveness`, `/readiness` and a service's own
//! checks (the storage manager's `/primary`).
//!
//! Blocking tiny_http on a thread of its own (no async runtime in the
//! services). [`serve`] binds before it returns, so a service that calls it
//! before `READY=1` is scrapeable as soon as systemd thinks it is up, and
//! a port already taken is a start-up error, not a silent gap in the
//! graphs. The thread polls with a short timeout, watches the service's
//! [`Shutdown`] and checks in like every other thread. A check answers 200
//! or 503 with a one-line reason; HEAD and OPTIONS (what HAProxy's
//! `httpchk` sends) get the status without a body.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use biblioteca_protocol::config::MetricsConfig;
use biblioteca_runtime::shutdown::Shutdown;
use tiny_http::{Header, Method, Request, Response, Server};

use crate::Registry;

/// How often the thread looks at the shutdown flag.
const POLL: Duration = Duration::from_millis(200);
/// The thread's name, in logs and in its own heartbeat series.
pub const THREAD: &str = "metrics-http";

/// A check's verdict: `Ok(text)` answers 200, `Err(reason)` 503.
pub type Verdict = Result<String, String>;
type Check = Box<dyn Fn() -> Verdict + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics endpoint: cannot listen on {addr}: {reason}")]
    Bind { addr: String, reason: String },
    #[error("metrics endpoint: cannot start its thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// What the health endpoints check beyond "ready and every thread beating".
#[derive(Default)]
pub struct Checks {
    readiness: Option<Check>,
    routes: Vec<(&'static str, Check)>,
}

impl Checks {
    pub fn new() -> Checks {
        Checks::default()
    }

    /// `/readiness` also needs `check` (e.g. "a database node answers").
    pub fn readiness(mut self, check: impl Fn() -> Verdict + Send + Sync + 'static) -> Checks {
        self.readiness = Some(Box::new(check));
        self
    }

    /// Serves `path` (e.g. `/primary`) with `check`.
    pub fn route(
        mut self,
        path: &'static str,
        check: impl Fn() -> Verdict + Send + Sync + 'static,
    ) -> Checks {
        self.routes.push((path, Box::new(check)));
        self
    }
}

/// The running endpoint; dropping it stops the thread.
pub struct Endpoint {
    server: Arc<Server>,
    thread: Option<JoinHandle<()>>,
    addr: String,
}

impl Endpoint {
    /// The address actually bound.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the metrics endpoint's thread panicked");
            }
        }
    }
}

/// Binds `config`'s address (`default_port` when it names none) and serves
/// until `shutdown` or the returned [`Endpoint`] is dropped; `None` when
/// the configuration turns the endpoint off.
pub fn serve(
    config: &MetricsConfig,
    default_port: u16,
    registry: &'static Registry,
    checks: Checks,
    shutdown: &Shutdown,
) -> Result<Option<Endpoint>, MetricsError> {
    if !config.enabled {
        return Ok(None);
    }
    let want = config.listen(default_port);
    let server = Server::http(want.as_str()).map_err(|e| MetricsError::Bind {
        addr: want.clone(),
        reason: e.to_string(),
    })?;
    let addr = server
        .server_addr()
        .to_ip()
        .map_or(want.clone(), |a| a.to_string());
    let server = Arc::new(server);
    let thread = {
        let (server, shutdown) = (server.clone(), shutdown.clone());
        biblioteca_runtime::shutdown::spawn(THREAD, move || {
            run(&server, registry, &checks, &shutdown)
        })?
    };
    tracing::info!(
        addr = addr.as_str(),
        "metrics and health endpoint listening"
    );
    Ok(Some(Endpoint {
        server,
        thread: Some(thread),
        addr,
    }))
}

fn run(server: &Server, registry: &Registry, checks: &Checks, shutdown: &Shutdown) {
    while !shutdown.is_triggered() {
        shutdown.checkin(THREAD);
        match server.recv_timeout(POLL) {
            Ok(Some(request)) => answer(request, registry, checks, shutdown),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                std::thread::sleep(POLL);
            }
        }
    }
}

/// The status, content type and body of `path`.
fn route(
    path: &str,
    registry: &Registry,
    checks: &Checks,
    shutdown: &Shutdown,
) -> (u16, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let verdict = |v: Verdict| match v {
        Ok(text) => (200, TEXT, text + "\n"),
        Err(reason) => (503, TEXT, reason + "\n"),
    };
    match path {
        "/metrics" => match registry.encode(shutdown) {
            Ok(text) => (
                200,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                text,
            ),
            Err(_) => (500, TEXT, "cannot encode the metrics\n".into()),
        },
        "/liveness" => verdict(liveness(shutdown)),
        "/readiness" => verdict(readiness(registry, checks, shutdown)),
        other => match checks.routes.iter().find(|(p, _)| *p == other) {
            Some((_, check)) => verdict(check()),
            None => (
                404,
                TEXT,
                "not found: /metrics, /liveness, /readiness\n".into(),
            ),
        },
    }
}

/// Every thread that ever checked in did so recently (or is waiting on the
/// database, as the watchdog counts it), and none died.
fn liveness(shutdown: &Shutdown) -> Verdict {
    if let Some(dead) = shutdown.died() {
        return Err(format!("thread {dead} panicked"));
    }
    let stale = shutdown.stale_threads(Duration::from_secs_f64(crate::LIVENESS_STALE_SECS));
    if stale.is_empty() {
        Ok("alive".into())
    } else {
        Err(format!("threads silent: {}", stale.join(", ")))
    }
}

fn readiness(registry: &Registry, checks: &Checks, shutdown: &Shutdown) -> Verdict {
    if shutdown.is_triggered() {
        return Err("stopping".into());
    }
    if !registry.is_ready() {
        return Err("not ready yet".into());
    }
    match &checks.readiness {
        Some(check) => check(),
        None => Ok("ready".into()),
    }
}

fn answer(request: Request, registry: &Registry, checks: &Checks, shutdown: &Shutdown) {
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let with_body = match request.method() {
        Method::Get => true,
        Method::Head | Method::Options => false,
        _ => {
            let r = Response::from_string("GET, HEAD or OPTIONS\n").with_status_code(405);
            let _ = request.respond(r);
            return;
        }
    };
    let (status, content_type, body) = route(&path, registry, checks, shutdown);
    let mut response = Response::from_string(if with_body { body } else { String::new() })
        .with_status_code(status);
    if let Ok(h) = Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes()) {
        response = response.with_header(h);
    }
    if let Err(e) = request.respond(response) {
        tracing::debug!(error = %e, "metrics endpoint: reply not sent");
    }
}
