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
//! thread. A thread blocked in a call to the database ([`Shutdown::waiting`])
//! is not wedged: a commit waits for a synchronous standby as long as the
//! standby is away, and the wait ends when the standby answers or the
//! connection dies (TCP keepalives and `tcp_user_timeout` bound a silent
//! peer). Restarting the service would not end that wait, only drop the
//! connections that carry it.
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
    /// Threads in a declared wait on the database, since when.
    waits: Arc<Mutex<HashMap<String, Instant>>>,
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
        self.touch(name);
    }

    fn touch(&self, name: &str) {
        if let Ok(mut map) = self.checkins.lock() {
            match map.get_mut(name) {
                Some(t) => *t = Instant::now(),
                None => {
                    map.insert(name.to_string(), Instant::now());
                }
            }
        }
    }

    /// Marks thread `name` as waiting on the database until the guard is
    /// dropped (it then checks in): the watchdog counts it alive meanwhile.
    pub fn waiting(&self, name: &str) -> Waiting<'_> {
        if let Ok(mut map) = self.waits.lock() {
            map.insert(name.to_string(), Instant::now());
        }
        Waiting {
            shutdown: self,
            name: name.to_string(),
        }
    }

    /// Threads waiting on the database for longer than `over`, with how long.
    pub fn long_waits(&self, over: Duration) -> Vec<(String, Duration)> {
        let now = Instant::now();
        self.waits
            .lock()
            .map(|map| {
                map.iter()
                    .map(|(n, t)| (n.clone(), now.duration_since(*t)))
                    .filter(|(_, d)| *d > over)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Threads that have not checked in within `within` and are not waiting
    /// on the database (empty: all healthy).
    pub fn stale_threads(&self, within: Duration) -> Vec<String> {
        let now = Instant::now();
        let waiting: Vec<String> = self
            .waits
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        self.checkins
            .lock()
            .map(|map| {
                map.iter()
                    .filter(|(n, t)| now.duration_since(**t) > within && !waiting.contains(n))
                    .map(|(n, _)| n.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A declared wait on the database ([`Shutdown::waiting`]).
pub struct Waiting<'a> {
    shutdown: &'a Shutdown,
    name: String,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Ok(mut map) = self.shutdown.waits.lock() {
            map.remove(&self.name);
        }
        // Not `checkin`: a drop during a panic's unwinding must not panic.
        self.shutdown.touch(&self.name);
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
    let mut told_waits = false;
    while !shutdown.is_triggered() {
        if let Some(interval) = watchdog {
            if last_ping.elapsed() >= interval / 3 {
                let stale = shutdown.stale_threads(interval / 2);
                let waits = shutdown.long_waits(interval / 2);
                if !waits.is_empty() && !told_waits {
                    tracing::warn!(threads = ?waits, "threads waiting on the database (a commit waiting for a synchronous standby, a silent node): alive, keep-alives continue");
                }
                told_waits = !waits.is_empty();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_waiting_on_the_database_is_not_stale_and_a_silent_one_is() {
        let s = Shutdown::new();
        s.checkin("worker");
        s.checkin("silent");
        let wait = s.waiting("worker");
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            s.stale_threads(Duration::from_millis(10)),
            vec!["silent".to_string()]
        );
        assert_eq!(s.long_waits(Duration::from_millis(10)).len(), 1);
        drop(wait);
        assert!(s.long_waits(Duration::ZERO).is_empty());
        // The end of the wait counts as a check-in.
        assert_eq!(
            s.stale_threads(Duration::from_millis(10)),
            vec!["silent".to_string()]
        );
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(s.stale_threads(Duration::from_millis(10)).len(), 2);
    }
}
