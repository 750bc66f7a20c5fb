//! `biblioteca-failover agent`: the opt-in automatic mode, one agent per
//! database host (and one beside each storage manager).
//!
//! The consensus is etcd's, never ours: the primary's agent holds the
//! leader key `PREFIX/leader` on a lease it renews every `loop_wait`; the
//! key expires `ttl` after the primary's host died. Each pass of the loop
//! looks at the local PostgreSQL and acts:
//! - primary and leader: renew, keep the sync record ([`super::sync_record`]);
//! - primary but another node holds the key: a stale primary, fenced
//!   (`pg_ctl stop -m fast`, so its open sessions stop committing);
//! - primary and etcd out of reach for `ttl - loop_wait` since the last
//!   renewal: fenced before etcd can expire the lease, unless every other
//!   node still streams from it (the failsafe: a standby stops its WAL
//!   receiver before it can be promoted, so while all stream none has been,
//!   and a primary does not stop because etcd lost quorum alone);
//! - standby and no leader key: an election ([`super::election`]);
//! - standby and a leader: follow it.
//!
//! The fencing token is the leader key's revision with the new timeline in
//! its value: the storage managers' agents act only on a revision newer
//! than the one they applied, and the storage manager itself refuses a node
//! on an older timeline than it has seen.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::election::Election;
use super::etcd::{Etcd, EtcdError, Kv};
use super::local::Local;
use super::pg::{self, Probe, Role};
use super::{AutoConfig, FailoverConfig, FailoverError, FailoverNode, Progress, Result};
use biblioteca_protocol::config::ReplicationMode;

/// The leader key's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leader {
    pub node: String,
    pub timeline: Option<u32>,
    /// False while the winner of an election is still promoting.
    pub promoted: bool,
}

impl Leader {
    pub fn parse(kv: &Kv) -> Option<Leader> {
        serde_json::from_str(&kv.value).ok()
    }
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// The agent's state across passes.
pub struct Agent<'a> {
    pub cfg: &'a FailoverConfig,
    pub auto: &'a AutoConfig,
    pub etcd: Etcd,
    pub me: Option<&'a FailoverNode>,
    pub lease: i64,
    last_renewed: Option<Instant>,
    down_since: Option<Instant>,
    pub election: Election,
    /// The leader revision the storage manager was last re-pointed for.
    applied_revision: i64,
    pub progress: Progress,
    last_note: String,
}

impl<'a> Agent<'a> {
    pub fn new(cfg: &'a FailoverConfig, node: Option<&str>) -> Result<Agent<'a>> {
        let auto = &cfg.auto;
        if !auto.enabled {
            return Err(FailoverError::stuck(
                "the automatic mode is off",
                "nothing was started",
                "set [auto] enabled = true (and etcd, node) in the failover config",
            ));
        }
        let name = node.or(auto.node.as_deref());
        let me = match name {
            Some(n) => Some(cfg.node(n).ok_or_else(|| {
                FailoverError::stuck(
                    format!("no node named {n:?} in [[nodes]]"),
                    "nothing was started",
                    format!("pick one of: {}", cfg.names()),
                )
            })?),
            None => None,
        };
        if me.is_none() && cfg.storage.config.is_none() {
            return Err(FailoverError::stuck(
                "the agent has nothing to do: no [auto] node and no storage.config",
                "nothing was started",
                "set [auto] node on a database host, storage.config beside a storage manager",
            ));
        }
        refuse_degraded_mode(cfg)?;
        Ok(Agent {
            cfg,
            auto,
            etcd: Etcd::new(&auto.etcd, auto.etcd_timeout),
            me,
            lease: 0,
            last_renewed: None,
            down_since: None,
            election: Election::default(),
            applied_revision: 0,
            progress: Progress::new(Box::new(|line| tracing::info!("{line}"))),
            last_note: String::new(),
        })
    }

    /// Logs `msg` once until a different note replaces it.
    pub fn note(&mut self, msg: String) {
        if msg != self.last_note {
            tracing::warn!("{msg}");
            self.last_note = msg;
        }
    }

    /// Runs passes until the process is stopped.
    pub fn run(&mut self) -> Result<()> {
        biblioteca_runtime::notify::ready("agent running");
        loop {
            let started = Instant::now();
            self.tick();
            biblioteca_runtime::notify::watchdog();
            let wait = self.auto.loop_wait.saturating_sub(started.elapsed());
            std::thread::sleep(wait);
        }
    }

    /// One pass. Errors are logged: the loop, not a restart, retries.
    pub fn tick(&mut self) {
        let etcd_ok = self.renew();
        if let Some(me) = self.me {
            let probe = pg::probe(me, self.cfg.connect_timeout());
            let result = match probe.role {
                Role::Primary => self.primary_tick(me, &probe, etcd_ok),
                Role::Standby if etcd_ok => self.standby_tick(me, &probe),
                Role::Standby => Ok(()),
                Role::Down => self.down_tick(me, etcd_ok),
            };
            if let Err(e) = result {
                self.note(format!("{}: {}", me.name, pg::short_error(&e)));
            }
            if probe.role != Role::Down {
                self.down_since = None;
            }
        }
        // Beside a storage manager only: a database host's agent leaves it
        // to that one (one writer of the roles file).
        if self.me.is_none() && self.cfg.storage.config.is_some() && etcd_ok {
            if let Err(e) = self.storage_tick() {
                self.note(format!("storage manager: {}", pg::short_error(&e)));
            }
        }
    }

    /// Keeps this agent's lease; whether etcd answered.
    fn renew(&mut self) -> bool {
        let sent = Instant::now();
        if self.lease != 0 {
            match self.etcd.keepalive(self.lease) {
                Ok(true) => {
                    self.last_renewed = Some(sent);
                    return true;
                }
                Ok(false) => {
                    tracing::warn!(lease = self.lease, "lease expired");
                    self.lease = 0;
                }
                Err(e) => {
                    self.note(e.to_string());
                    return false;
                }
            }
        }
        match self.etcd.grant(self.auto.ttl) {
            Ok(id) => {
                self.lease = id;
                self.last_renewed = Some(sent);
                true
            }
            Err(e) => {
                self.note(e.to_string());
                false
            }
        }
    }

    pub fn leader(&self) -> std::result::Result<Option<(Kv, Option<Leader>)>, EtcdError> {
        Ok(self.etcd.get(&self.auto.key("leader"))?.map(|kv| {
            let l = Leader::parse(&kv);
            (kv, l)
        }))
    }

    fn primary_tick(&mut self, me: &FailoverNode, probe: &Probe, etcd_ok: bool) -> Result<()> {
        if !etcd_ok {
            let since = self.last_renewed.map_or(Duration::MAX, |t| t.elapsed());
            if since < self.auto.fence_after() {
                return Ok(());
            }
            let others = self.cfg.nodes.len() - 1;
            let streaming = probe
                .replicas
                .iter()
                .filter(|r| r.state == "streaming")
                .count();
            if streaming >= others {
                self.note(format!(
                    "etcd out of reach for {:.1}s but all {others} standbys stream from {}: no standby can have been promoted; staying primary (failsafe)",
                    since.as_secs_f64(),
                    me.name
                ));
                return Ok(());
            }
            return self.fence(
                me,
                &format!(
                    "etcd out of reach for {:.1}s and only {streaming} of {others} standbys stream from it",
                    since.as_secs_f64()
                ),
            );
        }
        let key = self.auto.key("leader");
        let value = Leader {
            node: me.name.clone(),
            timeline: probe.timeline,
            promoted: true,
        };
        match self.leader()? {
            None => {
                if self
                    .etcd
                    .put_if(&key, 0, &json(&value), self.lease)?
                    .is_some()
                {
                    tracing::info!(node = %me.name, "took the leader key");
                }
            }
            Some((kv, Some(l))) if l.node == me.name => {
                let mut revision = kv.mod_revision;
                if kv.lease != self.lease || l != value {
                    // This agent restarted (a new lease), or the
                    // promotion finished: the same leader, updated.
                    match self
                        .etcd
                        .put_if(&key, kv.mod_revision, &json(&value), self.lease)?
                    {
                        Some(r) => revision = r,
                        None => return Ok(()),
                    }
                }
                super::sync_record::maintain(self, me, probe, revision)?;
            }
            Some((_, l)) => {
                let holder = l.map_or_else(|| "(unreadable)".to_string(), |l| l.node);
                return self.fence(
                    me,
                    &format!("{holder} holds the leader key: this is a stale primary"),
                );
            }
        }
        Ok(())
    }

    /// Stops the local primary at once: a fast shutdown ends its sessions,
    /// so none keeps committing (a smart one would let them).
    fn fence(&mut self, me: &FailoverNode, why: &str) -> Result<()> {
        tracing::error!(node = %me.name, "fencing: {why}; pg_ctl stop -m fast");
        Local::new(self.cfg)?.stop(me)?;
        tracing::error!(node = %me.name, "fenced: stopped; `biblioteca-failover rejoin --node {}` turns it into a standby", me.name);
        Ok(())
    }

    fn standby_tick(&mut self, me: &FailoverNode, probe: &Probe) -> Result<()> {
        let member = serde_json::json!({
            "role": "standby",
            "timeline": probe.timeline,
            "lsn": super::quorum::received(probe).map(|l| l.to_string()),
        });
        self.etcd.put(
            &self.auto.key(&format!("members/{}", me.name)),
            &member.to_string(),
            self.lease,
        )?;
        match self.leader()? {
            None => Election::step(self, me, probe),
            Some((kv, Some(l))) if l.node == me.name => {
                if kv.lease == self.lease {
                    // Won the election but the promotion stopped half-way.
                    Election::promote(self, me, None)
                } else {
                    self.note(format!(
                        "the leader key names {} (an operator's promote): waiting for it",
                        me.name
                    ));
                    Ok(())
                }
            }
            Some((_, Some(l))) => {
                self.election.follow(self.cfg, me, &l)?;
                if let Some(last) = self.election.leader_seen(&l.node) {
                    tracing::info!(leader = %l.node, previous = %last, "following the new leader");
                }
                Ok(())
            }
            Some((_, None)) => Ok(()),
        }
    }

    /// PostgreSQL is down with this agent alive. The agent does not start
    /// it (its unit's restart policy does): a restart in place within
    /// `ttl` keeps the primary; after that the leader key is released so a
    /// standby takes over, and a primary that comes back later finds
    /// another leader and is fenced.
    fn down_tick(&mut self, me: &FailoverNode, etcd_ok: bool) -> Result<()> {
        let since = *self.down_since.get_or_insert_with(Instant::now);
        if !etcd_ok || since.elapsed() < self.auto.ttl {
            return Ok(());
        }
        if let Some((kv, Some(l))) = self.leader()? {
            if l.node == me.name && self.etcd.delete_if(&kv.key, kv.mod_revision)? {
                tracing::error!(node = %me.name, "PostgreSQL down for {:.1}s: leader key released for a standby to take over", since.elapsed().as_secs_f64());
            }
        }
        Ok(())
    }

    /// Beside a storage manager: re-point it when a newer leader has
    /// finished its promotion (the same roles file and reload as a manual
    /// promote).
    fn storage_tick(&mut self) -> Result<()> {
        let Some((kv, Some(l))) = self.leader()? else {
            return Ok(());
        };
        if !l.promoted || kv.mod_revision <= self.applied_revision {
            return Ok(());
        }
        let Some(path) = self.cfg.storage.config.as_deref() else {
            return Ok(());
        };
        let current = biblioteca_protocol::config_roles::load_storage(path)
            .map_err(|e| FailoverError::StorageConfig {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?
            .config
            .database
            .primary()
            .map(|n| n.name.clone());
        if current.as_deref() != Some(l.node.as_str()) {
            tracing::info!(leader = %l.node, revision = kv.mod_revision, "re-pointing the storage manager");
            super::storage::repoint(self.cfg, &l.node, current.as_deref(), &self.progress)?;
        }
        self.applied_revision = kv.mod_revision;
        Ok(())
    }
}

/// `disponible` acknowledges writes no standby holds; an automatic
/// promotion would lose them without anyone deciding to. Refused.
fn refuse_degraded_mode(cfg: &FailoverConfig) -> Result<()> {
    let Some(path) = cfg.storage.config.as_deref() else {
        return Ok(());
    };
    let storage = biblioteca_protocol::config_roles::load_storage(path).map_err(|e| {
        FailoverError::StorageConfig {
            path: path.display().to_string(),
            reason: e.to_string(),
        }
    })?;
    if storage.config.replicacion == ReplicationMode::Disponible {
        return Err(FailoverError::stuck(
            "the storage manager runs replicacion = \"disponible\": automatic failover would silently lose the writes it acknowledges without a standby",
            "nothing was started",
            "set replicacion = \"estricta\" for automatic failover, or keep promotion manual",
        ));
    }
    Ok(())
}

/// `biblioteca-failover agent`.
pub fn run(cfg: &FailoverConfig, node: Option<&str>) -> Result<()> {
    Agent::new(cfg, node)?.run()
}
