//! Stop and reload requests, and the signal loop that raises them.
//!
//! Every service's `run(config, shutdown)` takes a [`Shutdown`]: socket threads
//! poll with short timeouts and leave their loops once it is triggered, so a
//! test can stop a server without signals. Binaries register SIGTERM/SIGINT/
//! SIGHUP *before* spawning any thread and then loop over them on the main
//! thread ([`run_with_signals`]): TERM/INT trigger the shutdown, HUP bumps the
//! reload generation that services which support reloading watch.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Shared stop flag and reload counter; cheap to clone into every thread.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    stop: Arc<AtomicBool>,
    reloads: Arc<AtomicU64>,
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
    while !shutdown.is_triggered() {
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
