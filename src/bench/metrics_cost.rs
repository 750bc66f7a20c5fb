//! `--metricas`: what the metrics endpoints cost. A second set of services
//! on the same cluster, identical but for their `[metrics]` endpoints (on,
//! each scraped every second by a thread here, as Prometheus would), runs
//! as one more system in each step, alternated with the pipeline whose
//! endpoints are off; the report puts their throughput side by side and
//! lists both sets' RSS.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use biblioteca_stack::{MetricsPorts, Stack, StackMetrics, StackPorts, StackSpec};

use super::BenchError;

/// How often each endpoint is scraped (Prometheus' tightest usual interval).
const SCRAPE_EVERY: Duration = Duration::from_secs(1);

/// The services with their endpoints on, and their scraper.
pub(super) struct MetricsOn {
    pub(super) stack: Stack,
    stop: Arc<AtomicBool>,
    scraper: Option<JoinHandle<()>>,
    scrapes: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
}

impl MetricsOn {
    /// Starts the services of `base` again under `dir` on free ports, the
    /// schema already migrated, with every metrics endpoint on.
    pub(super) fn start(base: &StackSpec, dir: &Path) -> Result<MetricsOn, BenchError> {
        let mut spec = base.clone();
        spec.run_dir = dir.to_path_buf();
        spec.migrate_as = None;
        spec.ports = StackPorts {
            frontend: biblioteca_stack::launch::free_port()?,
            publisher: biblioteca_stack::launch::free_port()?,
            backchannel: biblioteca_stack::launch::free_port()?,
            storage: biblioteca_stack::launch::free_port()?,
        };
        let ports = MetricsPorts::free()?;
        spec.metrics = StackMetrics::Ports(ports);
        let stack = Stack::start(spec)?;
        let urls: Vec<String> = [ports.storage, ports.carga]
            .into_iter()
            .chain(ports.actors)
            .map(|p| format!("http://127.0.0.1:{p}/metrics"))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let (scrapes, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let scraper = {
            let (stop, scrapes, failures) = (stop.clone(), scrapes.clone(), failures.clone());
            std::thread::spawn(move || scrape(&urls, &stop, &scrapes, &failures))
        };
        Ok(MetricsOn {
            stack,
            stop,
            scraper: Some(scraper),
            scrapes,
            failures,
        })
    }

    pub(super) fn frontend(&self) -> String {
        self.stack.ports().frontend_endpoint()
    }
}

impl Drop for MetricsOn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.scraper.take() {
            let _ = t.join();
        }
        eprintln!(
            "metrics on: {} scrapes of /metrics, {} failed",
            self.scrapes.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed)
        );
    }
}

/// GETs every URL each [`SCRAPE_EVERY`] until `stop`.
fn scrape(urls: &[String], stop: &AtomicBool, scrapes: &AtomicU64, failures: &AtomicU64) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(2))
        .build();
    while !stop.load(Ordering::SeqCst) {
        for url in urls {
            let ok = agent
                .get(url)
                .call()
                .ok()
                .and_then(|r| r.into_string().ok())
                .is_some_and(|body| body.contains("biblioteca_build_info"));
            let counter = if ok { scrapes } else { failures };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        for _ in 0..10 {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(SCRAPE_EVERY / 10);
        }
    }
}
