//! The background check of the database nodes, and configuration reloads.
//!
//! About once a second (sooner when a worker saw a connection fail) every node
//! not fenced by configuration is probed on a connection of its own, outside
//! the pools, each probe in its own thread with a deadline so a frozen node
//! cannot stall the others. The results go to [`Backend::apply_probes`],
//! which picks the writer; a switch is also recorded in `eventos_failover`.
//! SIGHUP re-reads the configuration file: an invalid file is refused and the
//! running configuration stays; a valid one gets new pools, is probed, and is
//! swapped in between requests.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::nodes::{connect_timeout, Backend, PROBE_SQL};
use super::Shared;
use biblioteca_protocol::config::{NodeRole, StorageConfig};
use biblioteca_protocol::config_roles;
use biblioteca_runtime::notify;
use biblioteca_runtime::shutdown::Shutdown;

const INTERVAL: Duration = Duration::from_secs(1);
/// Lower bound between probes when workers keep asking for one.
const MIN_INTERVAL: Duration = Duration::from_millis(200);

type ProbeResult = Result<(bool, u32), String>;

/// The monitor's own connection per node, keyed by name and conninfo.
#[derive(Default)]
pub struct Probes {
    clients: HashMap<(String, String), postgres::Client>,
    /// The writer's synchronous replication (the degraded mode).
    watch: super::replication::Watch,
}

fn probe_one(
    pg: &postgres::Config,
    client: Option<postgres::Client>,
    timeout: Duration,
) -> (ProbeResult, Option<postgres::Client>) {
    let mut client = match client {
        Some(c) if !c.is_closed() => c,
        _ => match pg.connect(postgres::NoTls) {
            Ok(mut c) => {
                let ms = timeout.as_millis();
                if let Err(e) = c.batch_execute(&format!("SET statement_timeout = {ms}")) {
                    return (Err(e.to_string()), None);
                }
                c
            }
            Err(e) => return (Err(short(&e)), None),
        },
    };
    match client.query_one(PROBE_SQL, &[]) {
        Ok(row) => {
            let in_recovery: bool = row.get(0);
            let timeline: Option<i32> = row.get(1);
            let tl = timeline.and_then(|t| u32::try_from(t).ok()).unwrap_or(0);
            (Ok((in_recovery, tl)), Some(client))
        }
        Err(e) => (Err(short(&e)), None),
    }
}

/// A database error without the noise of nested sources.
fn short(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => d.message().to_string(),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s = format!("{s}: {inner}");
                src = inner.source();
            }
            s
        }
    }
}

impl Probes {
    /// Probes every node of `backend` in parallel; `None` for fenced nodes.
    pub fn probe(&mut self, backend: &Backend) -> Vec<Option<ProbeResult>> {
        let timeout = connect_timeout(&backend.config.database) + Duration::from_secs(1);
        let deadline = Instant::now() + timeout + Duration::from_millis(500);
        let mut waiting = Vec::with_capacity(backend.nodes.len());
        for node in &backend.nodes {
            if node.cfg.role == NodeRole::Fenced {
                waiting.push(None);
                continue;
            }
            let key = (node.cfg.name.clone(), node.cfg.conninfo.clone());
            let client = self.clients.remove(&key);
            let pg = node.pg.clone();
            let (tx, rx) = mpsc::channel();
            let spawned = biblioteca_runtime::shutdown::spawn("storage-probe", move || {
                let _ = tx.send(probe_one(&pg, client, timeout));
            });
            waiting.push(Some((key, spawned.map(|_| rx))));
        }
        waiting
            .into_iter()
            .map(|w| {
                let (key, rx) = w?;
                let rx = match rx {
                    Ok(rx) => rx,
                    Err(e) => return Some(Err(format!("cannot start probe: {e}"))),
                };
                let left = deadline.saturating_duration_since(Instant::now());
                Some(match rx.recv_timeout(left) {
                    Ok((result, client)) => {
                        if let Some(c) = client {
                            self.clients.insert(key, c);
                        }
                        result
                    }
                    Err(_) => Err("probe timed out".into()),
                })
            })
            .collect()
    }
}

/// Probes the current backend's nodes and updates the writer choice.
pub fn refresh(shared: &Shared, probes: &mut Probes) {
    let backend = shared.backend();
    refresh_backend(shared, &backend, probes);
    probes.watch.tick(&backend, &shared.replication);
}

fn refresh_backend(shared: &Shared, backend: &Backend, probes: &mut Probes) {
    let results = probes.probe(backend);
    if let Some(from) = backend.apply_probes(results, &shared.fencing) {
        if let Some((_, node)) = backend.writer() {
            record_failover(node, &from, shared.fencing.newest());
        }
    }
}

/// Best effort: the switch is already logged; the table is for operators.
fn record_failover(node: &super::nodes::Node, old: &str, timeline: u32) {
    let tl = i32::try_from(timeline).unwrap_or(i32::MAX);
    let result = node.pool.get().map_err(|e| e.to_string()).and_then(|mut c| {
        c.execute(
            "INSERT INTO eventos_failover (nodo_anterior, nodo_nuevo, timeline) VALUES ($1, $2, $3)",
            &[&old, &node.cfg.name, &tl],
        )
        .map_err(|e| e.to_string())
    });
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot record the failover in eventos_failover");
    }
}

/// The monitor thread: probes until `stop`, reloads on SIGHUP.
pub fn run(
    shared: Arc<Shared>,
    mut probes: Probes,
    config_path: Option<&Path>,
    shutdown: &Shutdown,
    mut generation: u64,
    stop: &AtomicBool,
) {
    let mut last = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        shutdown.checkin("storage-monitor");
        let g = shutdown.reload_generation();
        if g != generation {
            generation = g;
            reload(&shared, config_path, &mut probes, true);
            last = Instant::now();
        }
        let since = last.elapsed();
        if since >= INTERVAL || (since >= MIN_INTERVAL && shared.take_recheck()) {
            refresh(&shared, &mut probes);
            last = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGHUP: re-read, validate, build, probe, swap. `serving` is false while
/// the service still waits for its database (no READY yet, so no RELOADING).
pub fn reload(shared: &Shared, config_path: Option<&Path>, probes: &mut Probes, serving: bool) {
    let Some(path) = config_path else {
        tracing::info!("SIGHUP without a configuration file: re-probing the nodes");
        refresh(shared, probes);
        return;
    };
    let parsed =
        config_roles::load_storage(path).and_then(|l| crate::check_config(&l.config).map(|()| l));
    let mut cfg: StorageConfig = match parsed {
        Ok(loaded) => {
            crate::warn_unknown_roles(&loaded);
            loaded.config
        }
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "reload refused: keeping the running configuration");
            return;
        }
    };
    if serving {
        notify::reloading();
    }
    let old = shared.backend();
    let fixed = &old.config;
    if cfg.bind != fixed.bind
        || cfg.workers != fixed.workers
        || cfg.max_queue != fixed.max_queue
        || cfg.state_dir != fixed.state_dir
    {
        tracing::warn!(
            "bind, workers, max_queue and state_dir changes take effect only after a restart"
        );
        cfg.bind = fixed.bind.clone();
        cfg.workers = fixed.workers;
        cfg.max_queue = fixed.max_queue;
        cfg.state_dir = fixed.state_dir.clone();
    }
    let backend = match Backend::new(cfg) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "reload refused: keeping the running configuration");
            if serving {
                notify::ready(&status_line(&old));
            }
            return;
        }
    };
    *probes = Probes::default();
    let before = old.last_writer();
    backend.inherit_last_writer(before.clone());
    let results = probes.probe(&backend);
    let switched = backend.apply_probes(results, &shared.fencing);
    let backend = Arc::new(backend);
    shared.swap(backend.clone());
    let after = backend.writer().map(|(_, n)| n.cfg.name.clone());
    tracing::info!(
        node = after.as_deref().unwrap_or("none"),
        previous = before.as_deref().unwrap_or("none"),
        roles_from = %backend.config.roles_from.as_deref().unwrap_or(Path::new("-")).display(),
        "configuration reloaded"
    );
    if let (Some(from), Some((_, node))) = (switched, backend.writer()) {
        record_failover(node, &from, shared.fencing.newest());
    }
    if serving {
        notify::ready(&status_line(&backend));
    }
}

pub fn status_line(backend: &Backend) -> String {
    match backend.writer() {
        Some((_, n)) => format!(
            "serving on {}, writes to {}",
            backend.config.bind, n.cfg.name
        ),
        None => format!(
            "serving on {}, no writable database node",
            backend.config.bind
        ),
    }
}
