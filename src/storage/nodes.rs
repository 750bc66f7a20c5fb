//! The database nodes the storage manager may use, and which one takes writes.
//!
//! A [`Backend`] is built from one configuration: a connection pool per
//! configured node plus what the last probe saw of each (reachable, in
//! recovery, timeline). [`choose_writer`] is the whole failover policy as a
//! pure function: writes go to a reachable node that is not in recovery, is
//! not fenced by configuration and whose timeline is not older than the newest
//! timeline ever seen ([`Fencing`]). A
//! former primary that comes back on an old timeline is therefore refused and
//! reported as `fenced: stale timeline`.

use std::sync::Mutex;
use std::time::Duration;

use postgres::NoTls;
use r2d2_postgres::PostgresConnectionManager;

use super::connection::{Connection, Manager};
use serde_json::{json, Value};

use super::fencing::Fencing;
use super::StorageError;
use biblioteca_protocol::config::{DatabaseConfig, NodeConfig, NodeRole, StorageConfig};

pub type PgPool = r2d2::Pool<Manager>;

/// Answers `(in_recovery, timeline)` in one round trip. `pg_walfile_name`
/// names the timeline a primary writes on right after a promotion, before the
/// checkpoint in `pg_control_checkpoint()` catches up; it fails in recovery,
/// hence the CASE.
pub const PROBE_SQL: &str = "SELECT pg_is_in_recovery(), \
     CASE WHEN pg_is_in_recovery() \
          THEN (SELECT timeline_id FROM pg_control_checkpoint()) \
          ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int \
     END";

/// What the last probe of a node saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeState {
    /// `None` until the first probe finished.
    pub reachable: Option<bool>,
    pub in_recovery: bool,
    pub timeline: Option<u32>,
    /// Not in recovery but on a timeline older than the newest seen.
    pub stale: bool,
    pub last_error: Option<String>,
}

/// One configured node with its pool.
pub struct Node {
    pub cfg: NodeConfig,
    pub pool: PgPool,
    /// Connection settings for the monitor's own probe connection.
    pub pg: postgres::Config,
    state: Mutex<NodeState>,
}

impl Node {
    pub fn state(&self) -> NodeState {
        lock(&self.state).clone()
    }

    pub fn set_state(&self, s: NodeState) {
        *lock(&self.state) = s;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Session settings applied to every pooled connection, so no request waits
/// on the database longer than the configured bound.
#[derive(Debug)]
struct SessionSettings {
    statement_timeout_ms: u64,
}

impl r2d2::CustomizeConnection<Connection, postgres::Error> for SessionSettings {
    fn on_acquire(&self, conn: &mut Connection) -> Result<(), postgres::Error> {
        let ms = self.statement_timeout_ms;
        conn.batch_execute(&format!(
            "SET statement_timeout = {ms}; SET lock_timeout = {ms}; \
             SET idle_in_transaction_session_timeout = {}",
            ms * 4
        ))
    }
}

/// r2d2 retries connections in the background; its failures are expected
/// while a node is down and the monitor reports them already.
#[derive(Debug)]
struct QuietErrors;

impl r2d2::HandleError<postgres::Error> for QuietErrors {
    fn handle_error(&self, error: postgres::Error) {
        tracing::debug!(error = %error, "pool connection attempt failed");
    }
}

pub fn connect_timeout(db: &DatabaseConfig) -> Duration {
    db.connect_timeout.max(Duration::from_secs(1))
}

/// The libpq settings of one node with the bounds every connection needs.
pub fn pg_config(
    node: &NodeConfig,
    db: &DatabaseConfig,
    password: Option<&str>,
) -> Result<postgres::Config, StorageError> {
    let mut pg: postgres::Config = node.conninfo.parse().map_err(|e| StorageError::Node {
        node: node.name.clone(),
        reason: format!("invalid conninfo: {e}"),
    })?;
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(connect_timeout(db));
    }
    if let (Some(p), None) = (password, pg.get_password()) {
        pg.password(p);
    }
    if pg.get_application_name().is_none() {
        pg.application_name("biblioteca-almacenamiento");
    }
    // A peer that vanishes without closing (cable pulled, host frozen) must
    // fail the request, not hang a worker.
    pg.keepalives(true)
        .keepalives_idle(Duration::from_secs(2))
        .keepalives_interval(Duration::from_secs(1))
        .keepalives_retries(3)
        .tcp_user_timeout(db.statement_timeout + connect_timeout(db));
    Ok(pg)
}

/// Every node of one configuration and the node currently taking writes.
pub struct Backend {
    pub config: StorageConfig,
    pub nodes: Vec<Node>,
    writer: Mutex<Option<usize>>,
    /// The last node that took writes, kept while none can: a failover is a
    /// switch from it, even across an outage.
    last_writer: Mutex<Option<String>>,
}

impl Backend {
    /// Builds the pools without connecting (connections are opened on demand,
    /// so a node that is down does not stop the others from being used).
    pub fn new(config: StorageConfig) -> Result<Backend, StorageError> {
        let db = &config.database;
        let password = db.password()?;
        if (db.pool_size as usize) < config.workers {
            tracing::warn!(
                pool_size = db.pool_size,
                workers = config.workers,
                "database.pool_size is smaller than workers: workers will wait for connections"
            );
        }
        let mut nodes = Vec::with_capacity(db.nodes.len());
        for n in &db.nodes {
            let pg = pg_config(n, db, password.as_deref())?;
            let manager = Manager(PostgresConnectionManager::new(pg.clone(), NoTls));
            let pool = r2d2::Pool::builder()
                .max_size(db.pool_size)
                .min_idle(Some(0))
                .connection_timeout(connect_timeout(db))
                // Checked by the write path instead (see write::write_as).
                .test_on_check_out(false)
                .error_handler(Box::new(QuietErrors))
                .connection_customizer(Box::new(SessionSettings {
                    statement_timeout_ms: db.statement_timeout.as_millis() as u64,
                }))
                .build_unchecked(manager);
            nodes.push(Node {
                cfg: n.clone(),
                pool,
                pg,
                state: Mutex::new(NodeState::default()),
            });
        }
        Ok(Backend {
            config,
            nodes,
            writer: Mutex::new(None),
            last_writer: Mutex::new(None),
        })
    }

    /// The node taking writes (with its index), if any.
    pub fn writer(&self) -> Option<(usize, &Node)> {
        let idx = *lock(&self.writer);
        idx.and_then(|i| self.nodes.get(i).map(|n| (i, n)))
    }

    pub fn writer_index(&self) -> Option<usize> {
        *lock(&self.writer)
    }

    /// Nodes that may answer reads when the writer cannot: reachable, not
    /// fenced, not stale.
    pub fn readable_standbys(&self) -> impl Iterator<Item = &Node> {
        let writer = self.writer_index();
        self.nodes.iter().enumerate().filter_map(move |(i, n)| {
            let s = n.state();
            let ok = Some(i) != writer
                && n.cfg.role != NodeRole::Fenced
                && s.reachable == Some(true)
                && !s.stale;
            ok.then_some(n)
        })
    }

    /// Takes the probe results (same order as `nodes`; `None` for nodes not
    /// probed because the configuration fences them), updates every node's
    /// state and picks the writer. Logs failovers and fencing decisions;
    /// returns the node writes switched away from, when they did.
    pub fn apply_probes(
        &self,
        results: Vec<Option<Result<(bool, u32), String>>>,
        fencing: &Fencing,
    ) -> Option<String> {
        for (_, tl) in results.iter().flatten().flatten() {
            fencing.observe(*tl);
        }
        let newest = fencing.newest();
        let mut observed = Vec::with_capacity(self.nodes.len());
        for (node, r) in self.nodes.iter().zip(results) {
            let before = node.state();
            let mut s = before.clone();
            match r {
                None => s = NodeState::default(),
                Some(Ok((in_recovery, tl))) => {
                    s.reachable = Some(true);
                    s.in_recovery = in_recovery;
                    s.timeline = Some(tl);
                    s.stale = !in_recovery && tl < newest;
                    s.last_error = None;
                }
                Some(Err(e)) => {
                    s.reachable = Some(false);
                    s.stale = false;
                    s.last_error = Some(e);
                }
            }
            log_transition(&node.cfg, &before, &s, newest);
            observed.push(Observed {
                role: node.cfg.role,
                reachable: s.reachable == Some(true),
                in_recovery: s.in_recovery,
                timeline: s.timeline.unwrap_or(0),
            });
            node.set_state(s);
        }
        let mut writer = lock(&self.writer);
        let chosen = choose_writer(&observed, *writer, newest);
        let mut failover = None;
        if chosen != *writer {
            let mut last = lock(&self.last_writer);
            match chosen.and_then(|i| self.nodes.get(i)) {
                Some(node) => {
                    let to = node.cfg.name.clone();
                    match last.as_deref() {
                        Some(from) if from != to => {
                            tracing::warn!(
                                timeline = newest,
                                "FAILOVER: switching writes from {from} to {to}"
                            );
                            failover = Some(from.to_string());
                        }
                        _ => tracing::info!(timeline = newest, "writes go to {to}"),
                    }
                    *last = Some(to);
                }
                None => tracing::error!(
                    "no writable database node: writes fail with AlmacenamientoNoDisponible (last writer: {})",
                    last.as_deref().unwrap_or("none")
                ),
            }
            *writer = chosen;
        }
        failover
    }

    /// The node that took writes last (now or before an outage).
    pub fn last_writer(&self) -> Option<String> {
        lock(&self.last_writer).clone()
    }

    /// Starts a reloaded backend's history where the old one ended.
    pub fn inherit_last_writer(&self, name: Option<String>) {
        *lock(&self.last_writer) = name;
    }

    /// Stops writes to node `idx` (a write found it in recovery or on an old
    /// timeline) until a probe says it is fit again.
    pub fn demote(&self, idx: usize, reason: &str, stale: bool) {
        let mut writer = lock(&self.writer);
        if *writer != Some(idx) {
            return;
        }
        if let Some(node) = self.nodes.get(idx) {
            tracing::error!(node = %node.cfg.name, reason, "refusing writes on this node");
            let mut s = node.state();
            if stale {
                s.stale = true;
            } else {
                s.in_recovery = true;
            }
            node.set_state(s);
        }
        *writer = None;
    }

    /// `datos.nodos` of the status reply.
    pub fn nodes_status(&self) -> Value {
        let writer = self.writer_index();
        let list: Vec<Value> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let s = n.state();
                let mut v = json!({
                    "nombre": n.cfg.name,
                    "rol": n.cfg.role.as_str(),
                    "estado": estado(n.cfg.role, &s, Some(i) == writer),
                    "timeline": s.timeline,
                });
                if let (Some(e), Value::Object(m)) = (&s.last_error, &mut v) {
                    m.insert("error".into(), Value::String(e.clone()));
                }
                v
            })
            .collect();
        Value::Array(list)
    }
}

/// `nodos[].estado` in the status reply.
pub fn estado(role: NodeRole, s: &NodeState, writing: bool) -> &'static str {
    if role == NodeRole::Fenced {
        return "fenced";
    }
    match s.reachable {
        None => "unknown",
        Some(false) => "unreachable",
        Some(true) if s.stale => "fenced: stale timeline",
        Some(true) if writing => "writing",
        Some(true) if s.in_recovery => "standby",
        Some(true) => "available",
    }
}

fn log_transition(cfg: &NodeConfig, before: &NodeState, after: &NodeState, newest: u32) {
    if after.stale && !before.stale {
        tracing::error!(
            node = %cfg.name,
            timeline = ?after.timeline,
            newest,
            "FENCED: node is a primary on a stale timeline (an old primary that came back); it will never take writes"
        );
    }
    match (before.reachable, after.reachable) {
        (Some(true), Some(false)) | (None, Some(false)) => tracing::warn!(
            node = %cfg.name,
            error = after.last_error.as_deref().unwrap_or(""),
            "database node unreachable"
        ),
        (Some(false), Some(true)) | (None, Some(true)) => tracing::info!(
            node = %cfg.name,
            in_recovery = after.in_recovery,
            timeline = ?after.timeline,
            "database node reachable"
        ),
        _ => {}
    }
    if before.reachable == Some(true)
        && after.reachable == Some(true)
        && before.in_recovery
        && !after.in_recovery
    {
        tracing::warn!(node = %cfg.name, timeline = ?after.timeline, "node left recovery (promoted)");
    }
}

/// What [`choose_writer`] needs to know of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    pub role: NodeRole,
    pub reachable: bool,
    pub in_recovery: bool,
    pub timeline: u32,
}

/// The failover policy. Candidates are reachable, not in recovery, not fenced
/// by configuration and not on a timeline older than `newest`; among those on
/// the highest timeline the current writer stays, else the configured primary
/// wins, else the first in configuration order.
pub fn choose_writer(nodes: &[Observed], current: Option<usize>, newest: u32) -> Option<usize> {
    let candidate = |o: &Observed| {
        o.role != NodeRole::Fenced && o.reachable && !o.in_recovery && o.timeline >= newest
    };
    let top = nodes
        .iter()
        .filter(|o| candidate(o))
        .map(|o| o.timeline)
        .max()?;
    let best = |i: usize| {
        nodes
            .get(i)
            .is_some_and(|o| candidate(o) && o.timeline == top)
    };
    if let Some(c) = current.filter(|&c| best(c)) {
        return Some(c);
    }
    (0..nodes.len())
        .find(|&i| best(i) && nodes[i].role == NodeRole::Primary)
        .or_else(|| (0..nodes.len()).find(|&i| best(i)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(role: NodeRole, reachable: bool, in_recovery: bool, timeline: u32) -> Observed {
        Observed {
            role,
            reachable,
            in_recovery,
            timeline,
        }
    }

    #[test]
    fn the_primary_writes_while_healthy() {
        let n = [
            obs(NodeRole::Primary, true, false, 1),
            obs(NodeRole::Standby, true, true, 1),
        ];
        assert_eq!(choose_writer(&n, None, 1), Some(0));
        assert_eq!(choose_writer(&n, Some(0), 1), Some(0));
    }

    #[test]
    fn a_promoted_standby_takes_over() {
        let n = [
            obs(NodeRole::Primary, false, false, 0),
            obs(NodeRole::Standby, true, false, 2),
        ];
        assert_eq!(choose_writer(&n, Some(0), 2), Some(1));
        let n = [
            obs(NodeRole::Primary, true, true, 1),
            obs(NodeRole::Standby, true, true, 1),
        ];
        assert_eq!(choose_writer(&n, Some(0), 1), None);
    }

    #[test]
    fn an_old_primary_on_a_stale_timeline_is_refused() {
        let n = [
            obs(NodeRole::Primary, true, false, 1),
            obs(NodeRole::Standby, true, false, 2),
        ];
        assert_eq!(choose_writer(&n, Some(1), 2), Some(1));
        assert_eq!(choose_writer(&n, Some(0), 2), Some(1));
        let alone = [
            obs(NodeRole::Primary, true, false, 1),
            obs(NodeRole::Standby, false, false, 0),
        ];
        assert_eq!(choose_writer(&alone, None, 2), None);
    }

    #[test]
    fn fenced_nodes_never_write() {
        let n = [
            obs(NodeRole::Fenced, true, false, 3),
            obs(NodeRole::Primary, true, false, 3),
        ];
        assert_eq!(choose_writer(&n, Some(0), 3), Some(1));
        let only = [obs(NodeRole::Fenced, true, false, 3)];
        assert_eq!(choose_writer(&only, None, 1), None);
    }

    #[test]
    fn estado_names() {
        let mut s = NodeState {
            reachable: Some(true),
            ..NodeState::default()
        };
        assert_eq!(estado(NodeRole::Primary, &s, true), "writing");
        s.stale = true;
        assert_eq!(
            estado(NodeRole::Primary, &s, false),
            "fenced: stale timeline"
        );
        s.reachable = Some(false);
        assert_eq!(estado(NodeRole::Primary, &s, false), "unreachable");
        assert_eq!(estado(NodeRole::Fenced, &s, false), "fenced");
    }
}
