//! The sync record `PREFIX/sync`: which standbys the primary's
//! `synchronous_standby_names` makes commits wait for (`ANY quorum` of
//! `standbys`), so a promoter can prove completeness even after a double
//! fault.
//!
//! In the automatic mode only the primary's agent changes
//! `synchronous_standby_names` (the storage manager's degraded mode is
//! refused with it), and always in this order: before it widens what may
//! acknowledge, it records the union of the old and new sets with the
//! smaller quorum (true under both rules); it changes the setting; after it
//! narrows, it records the new set. A standby that stops streaming is
//! dropped from the set (commits go on with the others, as `ANY k` already
//! allowed), so the record then proves that the survivors hold everything;
//! one that streams again is added back. The set is never emptied: with
//! no standby streaming, commits wait (strict).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::agent::Agent;
use super::pg::{self, Probe};
use super::{FailoverError, FailoverNode, Result};
use biblioteca_protocol::sync_names::{members, required};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRecord {
    /// The primary whose setting this is.
    pub primary: String,
    pub standbys: Vec<String>,
    /// The k of `ANY k`; 0 with no standby (asynchronous).
    pub quorum: usize,
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
    if read(agent)?.as_ref() != Some(&current) {
        write(agent, &current, revision)?;
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
    write(agent, &both, revision)?;
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
    write(agent, &wanted, revision)
}
