//! What every system is measured with: one writer that inserts numbered
//! rows into `bench_ledger` every 100 ms through libpq's multi-host
//! connection (`target_session_attrs=read-write`, so it finds whichever
//! node is the primary, as a client of either system would), recording
//! which ids were acknowledged and when; and a sampler that counts the time
//! during which two nodes accepted writes at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One node as the bench reaches it: `host=.. port=.. user=.. dbname=..`.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub conninfo: String,
}

fn connect(conninfo: &str, timeout: Duration) -> Option<postgres::Client> {
    let mut cfg: postgres::Config = conninfo.parse().ok()?;
    cfg.connect_timeout(timeout);
    cfg.connect(postgres::NoTls).ok()
}

/// Creates the ledger table on the primary (`multi`: every node).
pub fn prepare(multi: &str) -> Result<(), String> {
    let mut c = connect(multi, Duration::from_secs(5)).ok_or("no writable node")?;
    c.batch_execute("CREATE TABLE IF NOT EXISTS bench_ledger (id bigint PRIMARY KEY, at timestamptz DEFAULT now())")
        .map_err(|e| e.to_string())
}

/// Every node's conninfo joined into one multi-host read-write conninfo.
pub fn multi_host(targets: &[Target], user: &str, db: &str) -> String {
    let field = |key: &str| {
        targets
            .iter()
            .filter_map(|t| {
                t.conninfo
                    .split_whitespace()
                    .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        "host={} port={} user={user} dbname={db} target_session_attrs=read-write",
        field("host"),
        field("port")
    )
}

pub struct Writer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    acks: Arc<Mutex<Vec<(i64, Instant)>>>,
}

impl Writer {
    pub fn start(multi: String) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let (s, a) = (stop.clone(), acks.clone());
        let handle = std::thread::spawn(move || {
            let mut client: Option<postgres::Client> = None;
            let mut id: i64 = 0;
            while !s.load(Ordering::SeqCst) {
                let started = Instant::now();
                if client.is_none() {
                    client = connect(&multi, Duration::from_secs(1));
                }
                if let Some(c) = client.as_mut() {
                    id += 1;
                    match c.execute("INSERT INTO bench_ledger (id) VALUES ($1)", &[&id]) {
                        Ok(_) => {
                            if let Ok(mut v) = a.lock() {
                                v.push((id, Instant::now()));
                            }
                        }
                        Err(_) => client = None,
                    }
                }
                std::thread::sleep(Duration::from_millis(100).saturating_sub(started.elapsed()));
            }
        });
        Writer {
            stop,
            handle: Some(handle),
            acks,
        }
    }

    /// The first acknowledgement at or after `t`.
    pub fn first_ack_after(&self, t: Instant, within: Duration) -> Option<Duration> {
        let deadline = Instant::now() + within;
        loop {
            let found = self
                .acks
                .lock()
                .ok()
                .and_then(|v| v.iter().find(|(_, at)| *at >= t).map(|(_, at)| *at - t));
            if found.is_some() || Instant::now() >= deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the writer; the acknowledged ids.
    pub fn stop(mut self) -> Vec<i64> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.acks
            .lock()
            .map(|v| v.iter().map(|(id, _)| *id).collect())
            .unwrap_or_default()
    }
}

/// Acknowledged ids missing from the primary reachable through `multi`.
pub fn lost(multi: &str, acked: &[i64]) -> Result<usize, String> {
    let mut c = connect(multi, Duration::from_secs(5)).ok_or("no writable node to count on")?;
    let rows = c
        .query("SELECT id FROM bench_ledger", &[])
        .map_err(|e| e.to_string())?;
    let stored: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    Ok(acked.iter().filter(|id| !stored.contains(id)).count())
}

/// Counts the time two or more nodes accept writes at once.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Duration>>,
}

impl Sampler {
    pub fn start(targets: Vec<Target>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut both = Duration::ZERO;
            while !s.load(Ordering::SeqCst) {
                let started = Instant::now();
                let writable = targets
                    .iter()
                    .filter(|t| {
                        connect(&t.conninfo, Duration::from_millis(300))
                            .and_then(|mut c| {
                                c.query_one("SELECT NOT pg_is_in_recovery()", &[]).ok()
                            })
                            .is_some_and(|r| r.get::<_, bool>(0))
                    })
                    .count();
                std::thread::sleep(Duration::from_millis(200).saturating_sub(started.elapsed()));
                if writable >= 2 {
                    both += started.elapsed();
                }
            }
            both
        });
        Sampler {
            stop,
            handle: Some(handle),
        }
    }

    pub fn stop(mut self) -> Duration {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}
