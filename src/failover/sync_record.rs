//! The sync record `PREFIX/sync`: which standbys the primary's
//! `synchronous_standby_names` makes commits wait for (`ANY quorum` of
//! `standbys`), so a promoter can prove completeness even after a double
//! fault.
//!
//! In the automatic mode only the primary's agent changes
//! `synchronous_standby_names` (the storage manager's degraded mode is
//! refused with it), and always in this order: before it widens what may
//! acknowledge, it records the union of the old and new sets with the
//! smaller quorum (true under both rules); it changes the setting; then it
//! records the new set, once that proves every earlier commit too (each of
//! its standbys flushed what the primary had flushed after the change). A
//! standby that stops streaming is dropped from the set (commits go on
//! with the others, as `ANY k` already allowed), so the record then proves
//! that the survivors hold everything; one that streams again is added
//! back. The set is never emptied: with no standby streaming, commits wait
//! (strict). Every write is fenced by the leader key's revision.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::agent::Agent;
use super::pg::{self, Probe};
use super::{FailoverConfig, FailoverError, FailoverNode, Result};
use biblioteca_protocol::sync_names::{members, required};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRecord {
    /// The primary whose setting this is.
    pub primary: String,
    pub standbys: Vec<String>,
    /// The k of `ANY k`; 0 with no standby (asynchronous).
    pub quorum: usize,
}

/// The record, for a command (`None` when the automatic mode is off).
pub fn read_with(cfg: &FailoverConfig) -> Result<Option<SyncRecord>> {
    if !cfg.auto.enabled {
        return Ok(None);
    }
    let etcd = super::etcd::Etcd::new(&cfg.auto.etcd, cfg.auto.etcd_timeout);
    Ok(etcd
        .get(&cfg.auto.key("sync"))?
        .and_then(|kv| serde_json::from_str(&kv.value).ok()))
}

pub fn read(agent: &Agent<'_>) -> Result<Option<SyncRecord>> {
    Ok(agent
        .etcd
        .get(&agent.auto.key("sync"))?
        .and_then(|kv| serde_json::from_str(&kv.value).ok()))
}

/// Written only while this primary still holds the leader key at
/// `revision` (the fencing token): a primary that lost it writes nothing.
fn write(agent: &Agent<'_>, r: &SyncRecord, revision: i64) -> Result<()> {
    let written = agent.etcd.put_guarded(
        &agent.auto.key("sync"),
        &serde_json::to_string(r).unwrap_or_default(),
        &agent.auto.key("leader"),
        revision,
    )?;
    if !written {
        return Err(FailoverError::stuck(
            "the leader key changed: sync record not written",
            "this node may no longer be the leader",
            "none: the next pass looks again",
        ));
    }
    tracing::info!(standbys = ?r.standbys, quorum = r.quorum, "sync record written");
    Ok(())
}

/// The record describing `names` on `primary`.
pub fn describe(primary: &str, names: &str) -> SyncRecord {
    let standbys = members(names);
    let quorum = if standbys.is_empty() {
        0
    } else {
        required(names)
    };
    SyncRecord {
        primary: primary.to_string(),
        standbys,
        quorum,
    }
}

/// On the leader: the setting follows the streaming standbys, the record
/// follows the setting (in the order above).
pub fn maintain(
    agent: &mut Agent<'_>,
    me: &FailoverNode,
    probe: &Probe,
    revision: i64,
) -> Result<()> {
    let current_names = probe.synchronous_standby_names.clone().unwrap_or_default();
    let current = describe(&me.name, &current_names);
    let recorded = read(agent)?;
    if recorded.as_ref() != Some(&current)
        && !record_safely(agent, me, recorded.as_ref(), &current, revision)?
    {
        return Ok(());
    }
    if !agent.cfg.synchronous {
        return Ok(());
    }
    let streaming: Vec<String> = agent
        .cfg
        .nodes
        .iter()
        .filter(|n| n.name != me.name)
        .filter(|n| {
            probe
                .replicas
                .iter()
                .any(|r| r.application_name == n.name && r.state == "streaming")
        })
        .map(|n| n.name.clone())
        .collect();
    if streaming.is_empty() {
        return Ok(());
    }
    let k = agent.cfg.quorum.min(streaming.len());
    let wanted = SyncRecord {
        primary: me.name.clone(),
        standbys: streaming,
        quorum: k,
    };
    if wanted == current {
        return Ok(());
    }
    let union: Vec<String> = agent
        .cfg
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .filter(|n| current.standbys.contains(n) || wanted.standbys.contains(n))
        .collect();
    let both = SyncRecord {
        primary: me.name.clone(),
        standbys: union,
        quorum: if current.quorum == 0 {
            k
        } else {
            current.quorum.min(k)
        },
    };
    if !record_safely(agent, me, Some(&current), &both, revision)? {
        return Ok(());
    }
    let names: Vec<&str> = wanted.standbys.iter().map(String::as_str).collect();
    let value = pg::sync_names(&names, k);
    let mut c = pg::connect(me, agent.cfg.connect_timeout())?;
    pg::set_sync_standbys(&mut c, &me.name, &value)?;
    // pg_reload_conf only signals: the record narrows once the server runs
    // with the new setting.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let now: String = c
            .query_one("SELECT current_setting('synchronous_standby_names')", &[])
            .map_err(FailoverError::db(&me.name))?
            .get(0);
        if now == value {
            break;
        }
        if Instant::now() >= deadline {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::info!(node = %me.name, "synchronous_standby_names = {value}");
    record_safely(agent, me, Some(&both), &wanted, revision).map(|_| ())
}

/// Whether every commit acknowledged under `old` is provable under `new`
/// without waiting: `new` keeps all of `old`'s standbys and asks no more
/// acknowledgements (a commit on k_old of them leaves at most k_new - 1
/// non-reporters without it).
fn implied(old: Option<&SyncRecord>, new: &SyncRecord) -> bool {
    new.quorum == 0
        || old.is_some_and(|o| {
            o.primary == new.primary
                && o.quorum > 0
                && new.quorum <= o.quorum
                && o.standbys.iter().all(|s| new.standbys.contains(s))
        })
}

/// Writes `new` (the setting already in force, or wider than it) when it
/// proves every acknowledged commit: at once when [`implied`], else once
/// each of its standbys has flushed what this primary had flushed after
/// the setting changed (so it holds every earlier commit). Returns whether
/// it was written; otherwise the next pass tries again.
fn record_safely(
    agent: &Agent<'_>,
    me: &FailoverNode,
    old: Option<&SyncRecord>,
    new: &SyncRecord,
    revision: i64,
) -> Result<bool> {
    if implied(old, new) {
        write(agent, new, revision)?;
        return Ok(true);
    }
    let mut c = pg::connect(me, agent.cfg.connect_timeout())?;
    let row = c
        .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
        .map_err(FailoverError::db(&me.name))?;
    let Some(target) = row
        .get::<_, Option<String>>(0)
        .and_then(|l| l.parse::<pg::Lsn>().ok())
    else {
        return Ok(false);
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let replicas = pg::replicas(&mut c, &me.name)?;
        let caught_up = new.standbys.iter().all(|s| {
            replicas
                .iter()
                .any(|r| &r.application_name == s && r.flush_lsn.is_some_and(|f| f >= target))
        });
        if caught_up {
            write(agent, new, revision)?;
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
