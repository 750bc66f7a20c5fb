//! A standby's side of an automatic failover: what its agent does while
//! the leader key is absent, and how it follows the leader afterwards.
//!
//! The proof that the winner holds every acknowledged commit: each
//! candidate first stops its WAL receiver (so the old primary, if it still
//! runs, can no longer collect acknowledgements from it), then reports its
//! timeline and the WAL it received under `PREFIX/candidates/NODE`. With
//! the sync record's `ANY k` over the set S, once `|S| - k + 1` members of S
//! have reported, at least one of them holds each acknowledged commit and
//! the most advanced report holds them all. Only that candidate may take
//! the leader key, by a compare-and-swap on its absence (etcd's
//! transaction, so two candidates never both win), and only then runs
//! `pg_promote`. A candidate whose old primary still answers as a primary
//! waits up to `ttl` for it to fence itself.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::agent::{Agent, Leader};
use super::pg::{self, Lsn, Probe, Role};
use super::sync_record;
use super::{FailoverConfig, FailoverError, FailoverNode, Result};

/// A candidate's report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub node: String,
    pub timeline: Option<u32>,
    pub lsn: Option<String>,
}

impl Report {
    fn position(&self) -> (Option<u32>, Option<Lsn>) {
        (
            self.timeline,
            self.lsn.as_deref().and_then(|l| l.parse().ok()),
        )
    }
}

#[derive(Debug, Default)]
pub struct Election {
    /// `primary_conninfo` before this agent stopped the WAL receiver.
    saved_conninfo: Option<String>,
    started: Option<Instant>,
    enough_since: Option<Instant>,
    last_leader: Option<String>,
}

impl Election {
    /// Records the leader seen; returns the previous one when it changed.
    pub fn leader_seen(&mut self, node: &str) -> Option<String> {
        let previous = self.last_leader.replace(node.to_string());
        previous.filter(|p| p != node)
    }

    /// One pass without a leader key.
    pub fn step(agent: &mut Agent<'_>, me: &FailoverNode, probe: &Probe) -> Result<()> {
        let record = sync_record::read(agent)?;
        if record.is_none() && agent.election.last_leader.is_none() {
            // A cluster coming up: the primary's agent takes the key first.
            agent.note(
                "no leader key and no sync record yet: waiting for the primary's agent".into(),
            );
            return Ok(());
        }
        let started = *agent.election.started.get_or_insert_with(|| {
            tracing::warn!(
                last_leader = agent.election.last_leader.as_deref().unwrap_or("?"),
                "no leader key: election"
            );
            Instant::now()
        });
        let mut probe = probe.clone();
        if agent.election.saved_conninfo.is_none() {
            agent.election.saved_conninfo = Some(stop_receiver(agent.cfg, me)?);
            probe = pg::probe(me, agent.cfg.connect_timeout());
            if probe.role != Role::Standby {
                return Ok(());
            }
        }
        let report = Report {
            node: me.name.clone(),
            timeline: probe.timeline,
            lsn: super::quorum::received(&probe).map(|l| l.to_string()),
        };
        let prefix = agent.auto.key("candidates/");
        agent.etcd.put(
            &format!("{prefix}{}", me.name),
            &serde_json::to_string(&report).unwrap_or_default(),
            agent.lease,
        )?;
        let old = record
            .as_ref()
            .map(|r| r.primary.clone())
            .or_else(|| agent.election.last_leader.clone());
        let (set, k) = match &record {
            Some(r) => (r.standbys.clone(), r.quorum),
            None => (
                agent
                    .cfg
                    .nodes
                    .iter()
                    .filter(|n| Some(&n.name) != old.as_ref())
                    .map(|n| n.name.clone())
                    .collect(),
                agent.cfg.quorum,
            ),
        };
        if set.is_empty() || k == 0 {
            agent.note(format!("no automatic promotion: the sync record says {} ran without synchronous standbys, so no standby is known to hold every acknowledged write; decide by hand (`biblioteca-failover promote`, perhaps --allow-data-loss)", old.as_deref().unwrap_or("the old primary")));
            return Ok(());
        }
        if !set.contains(&me.name) {
            agent.note(format!(
                "{} is not in the synchronous set {set:?}: not a candidate",
                me.name
            ));
            return Ok(());
        }
        let reports: Vec<Report> = agent
            .etcd
            .list(&prefix)?
            .iter()
            .filter_map(|kv| serde_json::from_str::<Report>(&kv.value).ok())
            .filter(|r| set.contains(&r.node))
            .collect();
        let needed = set.len().saturating_sub(k) + 1;
        if reports.len() < needed {
            agent.note(format!(
                "no automatic promotion yet: {} of the {} synchronous standbys {set:?} reported, ANY {k} needs {needed} to prove the most advanced holds every acknowledged write",
                reports.len(),
                set.len()
            ));
            return Ok(());
        }
        let enough = *agent.election.enough_since.get_or_insert_with(Instant::now);
        if reports.len() < set.len() && enough.elapsed() < agent.auto.settle {
            return Ok(());
        }
        let order = |name: &str| agent.cfg.nodes.iter().position(|n| n.name == name);
        let best = reports
            .iter()
            .fold(None, |best: Option<&Report>, r| match best {
                Some(b)
                    if b.position() > r.position()
                        || (b.position() == r.position() && order(&b.node) <= order(&r.node)) =>
                {
                    Some(b)
                }
                _ => Some(r),
            });
        if best.is_none_or(|b| b.node != me.name) {
            return Ok(());
        }
        if let Some(o) = old.as_deref().filter(|o| *o != me.name) {
            if let Some(node) = agent.cfg.node(o) {
                let p = pg::probe(
                    node,
                    agent.cfg.connect_timeout().min(Duration::from_secs(1)),
                );
                if p.role == Role::Primary && started.elapsed() < agent.auto.ttl {
                    agent.note(format!(
                        "{o} still answers as a primary: waiting for it to fence itself"
                    ));
                    return Ok(());
                }
            }
        }
        let leader = Leader {
            node: me.name.clone(),
            timeline: probe.timeline.map(|t| t + 1),
            promoted: false,
        };
        let key = agent.auto.key("leader");
        let value = serde_json::to_string(&leader).unwrap_or_default();
        let Some(revision) = agent.etcd.put_if(&key, 0, &value, agent.lease)? else {
            return Ok(());
        };
        tracing::warn!(node = %me.name, revision, reports = reports.len(), "won the election (leader key revision {revision}): promoting");
        Election::promote(agent, me, old.as_deref())
    }

    /// `pg_promote` and the rest of the database side; the next pass marks
    /// the leader key promoted.
    pub fn promote(agent: &mut Agent<'_>, me: &FailoverNode, old: Option<&str>) -> Result<()> {
        super::promote::promote_database(agent.cfg, me, old, false, &agent.progress)?;
        agent.election = Election {
            last_leader: Some(me.name.clone()),
            ..Election::default()
        };
        let prefix = agent.auto.key("candidates/");
        for kv in agent.etcd.list(&prefix)? {
            agent.etcd.delete(&kv.key)?;
        }
        Ok(())
    }

    /// With a leader: stream from it (after an election, or when the leader
    /// changed), from a slot made for this standby on it.
    pub fn follow(
        &mut self,
        cfg: &FailoverConfig,
        me: &FailoverNode,
        leader: &Leader,
    ) -> Result<()> {
        self.started = None;
        self.enough_since = None;
        if !leader.promoted {
            return Ok(());
        }
        let Some(target) = cfg.node(&leader.node) else {
            return Ok(());
        };
        let mut c = pg::connect(me, cfg.connect_timeout())?;
        let current: String = c
            .query_one("SELECT current_setting('primary_conninfo')", &[])
            .map_err(FailoverError::db(&me.name))?
            .get(0);
        let base = self.saved_conninfo.clone().unwrap_or(current.clone());
        if !current.is_empty() && super::follow::same_server(&current, &target.conninfo) {
            self.saved_conninfo = None;
            return Ok(());
        }
        let slot = pg::slot_name(&me.name);
        let mut primary = pg::connect(target, cfg.connect_timeout())?;
        pg::ensure_slot(&mut primary, &target.name, &slot)?;
        let conninfo = super::follow::retarget(&base, &target.conninfo, &me.name);
        pg::alter_system(
            &mut c,
            &me.name,
            &format!("primary_conninfo = '{}'", conninfo.replace('\'', "''")),
        )?;
        pg::alter_system(&mut c, &me.name, &format!("primary_slot_name = '{slot}'"))?;
        tracing::info!(node = %me.name, leader = %leader.node, "streaming from the leader (primary_conninfo reloaded, slot {slot})");
        self.saved_conninfo = None;
        Ok(())
    }
}

/// Empties `primary_conninfo` (the WAL receiver stops) and waits until no
/// receiver runs; returns the old value.
fn stop_receiver(cfg: &FailoverConfig, me: &FailoverNode) -> Result<String> {
    let mut c = pg::connect(me, cfg.connect_timeout())?;
    let db = FailoverError::db(&me.name);
    let current: String = c
        .query_one("SELECT current_setting('primary_conninfo')", &[])
        .map_err(db)?
        .get(0);
    pg::alter_system(&mut c, &me.name, "primary_conninfo = ''")?;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let running: i64 = c
            .query_one("SELECT count(*) FROM pg_stat_wal_receiver", &[])
            .map_err(FailoverError::db(&me.name))?
            .get(0);
        if running == 0 {
            tracing::warn!(node = %me.name, "WAL receiver stopped for the election");
            return Ok(current);
        }
        if Instant::now() >= deadline {
            return Err(FailoverError::stuck(
                format!("{}'s WAL receiver did not stop", me.name),
                "primary_conninfo is empty; the election waits",
                "check the server log",
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
