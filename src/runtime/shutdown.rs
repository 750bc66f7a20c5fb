//! Stop and reload requests, and the signal loop that raises them.
//!
//! Every service's `run(config, shutdown)` takes a [`Shutdown`]: socket threads
//! poll with short timeouts and leave their loops once it is triggered, so a
//! test can stop a server without signals. Binaries register SIGTERM/SIGINT/
//! SIGHUP *before* spawning any thread and then loop over them on the main
//! thread ([`run_with_signals`]): TERM/INT trigger the shutdown, HUP bumps the
//! reload generation that services which support reloading watch.
//!
//! The same loop drives the systemd watchdog: socket threads call
//! [`Shutdown::checkin`] once per loop iteration, and `WATCHDOG=1` is sent only
//! while every thread that ever checked in has done so recently, so a wedged
//! socket thread gets the service restarted instead of kept alive by a healthy
//! main thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Shared stop flag and reload counter; cheap to clone into every thread.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    stop: Arc<AtomicBool>,
    reloads: Arc<AtomicU64>,
    checkins: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    pub fn trigger(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn is_triggered(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Asks services to re-read their configuration.
    pub fn request_reload(&self) {
        self.reloads.fetch_add(1, Ordering::SeqCst);
    }

    /// A counter that changes each time a reload was requested.
    pub fn reload_generation(&self) -> u64 {
        self.reloads.load(Ordering::SeqCst)
    }

    /// Records that the thread called `name` is alive and looping.
    pub fn checkin(&self, name: &str) {
        if let Ok(mut map) = self.checkins.lock() {
            match map.get_mut(name) {
                Some(t) => *t = Instant::now(),
                None => {
                    map.insert(name.to_string(), Instant::now());
                }
            }
        }
    }

    /// Threads that have not checked in within `within` (empty: all healthy).
    pub fn stale_threads(&self, within: Duration) -> Vec<String> {
        let now = Instant::now();
        self.checkins
            .lock()
            .map(|map| {
                map.iter()
                    .filter(|(_, t)| now.duration_since(**t) > within)
                    .map(|(n, _)| n.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Registers the signals, runs `service` on a worker thread and turns signals
/// into [`Shutdown`] requests until the service returns.
pub fn run_with_signals<F>(service: F) -> anyhow::Result<()>
where
    F: FnOnce(Shutdown) -> anyhow::Result<()> + Send + 'static,
{
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let handle = signals.handle();
    let shutdown = Shutdown::new();
    let worker = {
        let shutdown = shutdown.clone();
        std::thread::Builder::new()
            .name("service".into())
            .spawn(move || {
                let result = service(shutdown.clone());
                // The service may return on its own (fatal error): wake the signal loop.
                shutdown.trigger();
                result
            })?
    };
    let watchdog = crate::notify::watchdog_interval();
    let mut last_ping = Instant::now();
    let mut warned = false;
    while !shutdown.is_triggered() {
        if let Some(interval) = watchdog {
            if last_ping.elapsed() >= interval / 3 {
                let stale = shutdown.stale_threads(interval / 2);
                if stale.is_empty() {
                    crate::notify::watchdog();
                    last_ping = Instant::now();
                    warned = false;
                } else if !warned {
                    tracing::error!(threads = ?stale, "threads stopped checking in: withholding watchdog keep-alives");
                    warned = true;
                }
            }
        }
        for sig in signals.pending() {
            match sig {
                SIGHUP => {
                    tracing::info!("SIGHUP: reload requested");
                    shutdown.request_reload();
                }
                _ => {
                    tracing::info!(signal = sig, "stop requested");
                    shutdown.trigger();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    handle.close();
    match worker.join() {
        Ok(result) => result,
        Err(_) => Err(anyhow::anyhow!("service thread panicked")),
    }
}
