//! The manual commands in the automatic mode: `promote` and `switchover`
//! go through the same leader key as the agents, so a person and an agent
//! never promote two nodes.
//!
//! Before `pg_promote` the command takes the key by compare-and-swap: when
//! it is absent (the old primary's lease expired), or from the old primary
//! in a switchover. It writes the key without a lease (held by the
//! operator's decision, not by a process that could die) and marks it
//! promoted at the end; the new primary's agent then adopts it on its own
//! lease. A key held by another live primary is refused: the automatic
//! mode keeps that one.

use super::agent::Leader;
use super::etcd::Etcd;
use super::{FailoverConfig, FailoverError, Progress, Result};

/// The leader key as this command took it.
pub struct Claim {
    etcd: Etcd,
    key: String,
    revision: i64,
    node: String,
}

/// Takes the leader key for `target` (`from`: the primary a switchover
/// replaces); `None` when the automatic mode is off.
pub fn claim(
    cfg: &FailoverConfig,
    target: &str,
    from: Option<&str>,
    progress: &Progress,
) -> Result<Option<Claim>> {
    if !cfg.auto.enabled {
        return Ok(None);
    }
    let etcd = Etcd::new(&cfg.auto.etcd, cfg.auto.etcd_timeout);
    let key = cfg.auto.key("leader");
    let value = serde_json::to_string(&Leader {
        node: target.to_string(),
        timeline: None,
        promoted: false,
    })
    .unwrap_or_default();
    let refuse = |what: String| {
        FailoverError::stuck(
            what,
            "nothing was changed",
            format!(
                "run `biblioteca-failover status`; a dead primary's key expires within {}s of its last renewal",
                cfg.auto.ttl.as_secs()
            ),
        )
    };
    let expected = match etcd.get(&key)? {
        None => 0,
        Some(kv) => match Leader::parse(&kv) {
            Some(l) if l.node == target => {
                progress.step(format!("the leader key already names {target} (resuming)"));
                return Ok(Some(Claim {
                    etcd,
                    key,
                    revision: kv.mod_revision,
                    node: target.to_string(),
                }));
            }
            Some(l) if Some(l.node.as_str()) == from => kv.mod_revision,
            Some(l) => {
                return Err(refuse(format!(
                    "the leader key names {} (its agent renews it: the automatic mode keeps it primary); use switchover, or stop it and its agent",
                    l.node
                )))
            }
            None => return Err(refuse(format!("unreadable leader key {key}"))),
        },
    };
    match etcd.put_if(&key, expected, &value, 0)? {
        Some(revision) => {
            progress.step(format!(
                "took the leader key for {target} (etcd revision {revision}): no agent promotes another node"
            ));
            Ok(Some(Claim {
                etcd,
                key,
                revision,
                node: target.to_string(),
            }))
        }
        None => Err(refuse(
            "the leader key changed while taking it (an agent's election?)".into(),
        )),
    }
}

impl Claim {
    /// The promotion is done: the storage managers' agents may follow.
    pub fn done(&self, timeline: Option<u32>) -> Result<()> {
        let value = serde_json::to_string(&Leader {
            node: self.node.clone(),
            timeline,
            promoted: true,
        })
        .unwrap_or_default();
        match self.etcd.put_if(&self.key, self.revision, &value, 0)? {
            Some(_) => Ok(()),
            // The new primary's agent adopted the key first: it marks it.
            None => Ok(()),
        }
    }
}
