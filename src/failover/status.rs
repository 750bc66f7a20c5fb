//! `status`: one row per node (reachable, role, timeline, WAL position, lag,
//! replication and sync state as the primary sees them) and which node the
//! storage manager serves from.

use serde::Serialize;
use std::fmt::Write as _;

use super::pg::{self, Lsn, Probe, Role};
use super::storage::query_target;
use super::FailoverConfig;

#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub reachable: bool,
    pub role: Role,
    pub timeline: Option<u32>,
    pub lsn: Option<Lsn>,
    /// Standby: how far its replay is behind the primary's current WAL (or,
    /// without a reachable primary, behind what it received).
    pub lag_bytes: Option<u64>,
    /// Standby: `now() - pg_last_xact_replay_timestamp()`; grows while idle.
    pub lag_secs: Option<f64>,
    /// From the primary's `pg_stat_replication`, matched by `application_name`.
    pub replication_state: Option<String>,
    pub sync_state: Option<String>,
    pub replay_paused: bool,
    pub synchronous_standby_names: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StorageView {
    pub endpoint: String,
    pub reachable: bool,
    /// The node it writes to (`datos.nodo`).
    pub serving_from: Option<String>,
    pub reply: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub nodes: Vec<NodeStatus>,
    pub storage: StorageView,
}

/// Probes every node concurrently, so down nodes cost one connect timeout in total.
pub fn probe_all(cfg: &FailoverConfig) -> Vec<Probe> {
    let timeout = cfg.connect_timeout();
    std::thread::scope(|s| {
        let handles: Vec<_> = cfg
            .nodes
            .iter()
            .map(|n| s.spawn(move || pg::probe(n, timeout)))
            .collect();
        handles
            .into_iter()
            .zip(&cfg.nodes)
            .map(|(h, n)| {
                h.join()
                    .unwrap_or_else(|_| Probe::down(&n.name, "probe thread failed".into()))
            })
            .collect()
    })
}

/// Rows from probes: a standby's lag is measured against a reachable primary.
pub fn rows(probes: &[Probe]) -> Vec<NodeStatus> {
    let primary = probes.iter().find(|p| p.role == Role::Primary);
    probes
        .iter()
        .map(|p| {
            let replica =
                primary.and_then(|pr| pr.replicas.iter().find(|r| r.application_name == p.name));
            let lag_bytes = match p.role {
                Role::Standby => {
                    let ahead = primary.and_then(|pr| pr.lsn).or(p.receive_lsn);
                    match (p.replay_lsn, ahead) {
                        (Some(replay), Some(ahead)) => Some(replay.behind(ahead)),
                        _ => None,
                    }
                }
                _ => None,
            };
            NodeStatus {
                name: p.name.clone(),
                reachable: p.reachable(),
                role: p.role,
                timeline: p.timeline,
                lsn: p.lsn,
                lag_bytes,
                lag_secs: p.replay_age_secs,
                replication_state: replica.map(|r| r.state.clone()),
                sync_state: replica.map(|r| r.sync_state.clone()),
                replay_paused: p.replay_paused,
                synchronous_standby_names: p.synchronous_standby_names.clone(),
                error: p.error.clone(),
            }
        })
        .collect()
}

pub fn collect(cfg: &FailoverConfig) -> Report {
    let probes = probe_all(cfg);
    let timeout = cfg.storage.status_timeout;
    let storage = match query_target(&cfg.storage, timeout) {
        Ok(Some(s)) => StorageView {
            endpoint: cfg.storage.endpoint.clone(),
            reachable: true,
            serving_from: s.writer,
            reply: Some(s.raw),
        },
        _ => StorageView {
            endpoint: cfg.storage.endpoint.clone(),
            reachable: false,
            serving_from: None,
            reply: None,
        },
    };
    Report {
        nodes: rows(&probes),
        storage,
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".to_string(), T::to_string)
}

pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12} {:<9} {:<8} {:>3} {:<14} {:>10} {:>9} {:<10} {:<6}",
        "NODE", "REACHABLE", "ROLE", "TL", "LSN", "LAG_BYTES", "LAG_S", "REPL", "SYNC"
    );
    for n in &report.nodes {
        let lag_secs = n.lag_secs.map(|s| format!("{s:.1}"));
        let mut repl = opt(&n.replication_state);
        if n.replay_paused {
            repl = format!("{repl} (replay paused)");
        }
        let _ = writeln!(
            out,
            "{:<12} {:<9} {:<8} {:>3} {:<14} {:>10} {:>9} {:<10} {:<6}",
            n.name,
            if n.reachable { "yes" } else { "no" },
            n.role.to_string(),
            opt(&n.timeline),
            opt(&n.lsn),
            opt(&n.lag_bytes),
            opt(&lag_secs),
            repl,
            opt(&n.sync_state),
        );
        if let Some(e) = &n.error {
            let _ = writeln!(out, "  {}: {e}", n.name);
        }
    }
    let storage = if !report.storage.reachable {
        "unreachable".to_string()
    } else {
        format!(
            "serving from {}",
            report
                .storage
                .serving_from
                .as_deref()
                .unwrap_or("(no node)")
        )
    };
    let _ = writeln!(
        out,
        "storage manager ({}): {storage}",
        report.storage.endpoint
    );
    out
}
