//! Stop and reload requests, and the signal loop that raises them.
//!
//! Every service's `run(config, shutdown)` takes a [`Shutdown`]: socket threads
//! poll with short timeouts and leave their loops once it is triggered, so a
//! test can stop a server without signals. Binaries register SIGTERM/SIGINT/
//! SIGHUP *before* spawning any thread and then loop over them on the main
//! thread ([`run_with_signals`]): TERM/INT trigger the shutdown, HUP bumps the
//! reload generation that services which support reloading watch.
//!
//! The same loop drives the systemd watchdog: the threads doing the work
//! (socket threads, storage workers, the storage monitor) call
//! [`Shutdown::checkin`] once per loop iteration, and `WATCHDOG=1` is sent only
//! while every thread that ever checked in has done so recently, so a wedged
//! thread gets the service restarted instead of kept alive by a healthy main
//! thread.
//!
//! A service is alive only while all of it is: a panic in any thread (the
//! hook [`run_with_signals`] installs) logs the thread's name, stops the
//! service and ends the process non-zero, so systemd's `Restart=` or the
//! test and demo supervision brings it back instead of a main thread looping
//! on with its sockets gone. Service threads are started with [`spawn`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Shared stop flag and reload counter; cheap to clone into every thread.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    stop: Arc<AtomicBool>,
    reloads: Arc<AtomicU64>,
    checkins: Arc<Mutex<HashMap<String, Instant>>>,
    /// The first thread that panicked, once one has.
    died: Arc<Mutex<Option<String>>>,
}

/// How long a service whose thread panicked gets to stop before the process
/// ends anyway (its other threads may be waiting on the dead one).
const DEATH_GRACE: Duration = Duration::from_secs(2);

/// Starts a named service thread. Its name is what the panic hook logs when
/// it dies.
pub fn spawn<F, T>(name: impl Into<String>, f: F) -> std::io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    std::thread::Builder::new().name(name.into()).spawn(f)
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

    /// Marks the service as dead because thread `name` panicked: it stops,
    /// and [`run_with_signals`] ends the process with an error.
    pub fn thread_died(&self, name: &str) {
        if let Ok(mut died) = self.died.lock() {
            died.get_or_insert_with(|| name.to_string());
        }
        self.trigger();
    }

    /// The thread whose panic is ending the service, if any.
    pub fn died(&self) -> Option<String> {
        self.died.lock().ok().and_then(|d| d.clone())
    }

    /// Records that the thread called `name` is alive and looping.
    pub fn checkin(&self, name: &str) {
        #[cfg(feature = "fault-injection")]
        biblioteca_fault::maybe_panic(name);
        if let Ok(mut map) = self.checkins.lock() {
            match map.get_mut(name) {
                Some(t) => *t = Instant::now(),
                None => {
                    map.insert(name.to_string(), Instant::now());
                }
            }
        }
    }

    /// Every thread that ever checked in, with the time since its last
    /// check-in (the metrics endpoint's heartbeats and liveness).
    pub fn checkin_ages(&self) -> Vec<(String, Duration)> {
        let now = Instant::now();
        self.checkins
            .lock()
            .map(|map| {
                map.iter()
                    .map(|(n, t)| (n.clone(), now.duration_since(*t)))
                    .collect()
            })
            .unwrap_or_default()
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

/// Logs a panicking thread by name and marks the service dead, after the
/// default hook has printed the panic.
fn install_panic_hook(shutdown: &Shutdown) {
    let shutdown = shutdown.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        tracing::error!(
            thread = name,
            panic = %info,
            "thread {name} panicked: stopping the service so its supervisor restarts it"
        );
        shutdown.thread_died(name);
    }));
}

/// Registers the signals, runs `service` on a thread called `name` and turns
/// signals into [`Shutdown`] requests until the service returns. A panic in
/// any thread of the process stops the service and makes this an error.
pub fn run_with_signals<F>(name: &str, service: F) -> anyhow::Result<()>
where
    F: FnOnce(Shutdown) -> anyhow::Result<()> + Send + 'static,
{
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let handle = signals.handle();
    let shutdown = Shutdown::new();
    install_panic_hook(&shutdown);
    let worker = {
        let shutdown = shutdown.clone();
        spawn(name, move || {
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
    if let Some(dead) = shutdown.died() {
        let until = Instant::now() + DEATH_GRACE;
        while !worker.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Returning ends the process, whatever threads are still running.
        anyhow::bail!("thread {dead} panicked; exiting so the service is restarted");
    }
    match worker.join() {
        Ok(result) => result,
        Err(_) => Err(anyhow::anyhow!("thread {name} panicked")),
    }
}
