//! The `[auto]` table of the failover config: the opt-in automatic mode
//! (`biblioteca-failover agent`), its etcd endpoints and timings. Absent or
//! `enabled = false`, nothing changes: promotion stays manual.

use serde::{Deserialize, Serialize};
use std::time::Duration;

use biblioteca_protocol::config::ConfigError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutoConfig {
    /// The switch: false (the default) keeps promotion manual.
    pub enabled: bool,
    /// `http://host:port` of every etcd member (client URLs).
    pub etcd: Vec<String>,
    /// Key prefix of this cluster in etcd.
    pub prefix: String,
    /// This host's database node (a name in `[[nodes]]`); unset on a host
    /// that only runs a storage manager: the agent then only re-points it.
    pub node: Option<String>,
    /// Lifetime of the leader key without renewal: how long a dead primary
    /// goes unnoticed at most.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// One pass of the agent's loop (lease renewal, probes).
    #[serde(with = "humantime_serde")]
    pub loop_wait: Duration,
    /// Each etcd request, per member.
    #[serde(with = "humantime_serde")]
    pub etcd_timeout: Duration,
    /// How long a candidate waits for the other standbys' reports once the
    /// minimum needed for the proof is in, so the most advanced one wins.
    #[serde(with = "humantime_serde")]
    pub settle: Duration,
}

impl Default for AutoConfig {
    fn default() -> Self {
        AutoConfig {
            enabled: false,
            etcd: Vec::new(),
            prefix: "/biblioteca".into(),
            node: None,
            ttl: Duration::from_secs(5),
            loop_wait: Duration::from_secs(1),
            etcd_timeout: Duration::from_millis(1000),
            settle: Duration::from_millis(500),
        }
    }
}

impl AutoConfig {
    pub fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.prefix.trim_end_matches('/'))
    }

    /// The old primary fences itself this long after its last renewal was
    /// sent: before etcd can expire the lease (which counts from when it
    /// received that renewal), so before any standby can be promoted.
    pub fn fence_after(&self) -> Duration {
        self.ttl
            .saturating_sub(self.loop_wait.max(Duration::from_millis(500)))
    }

    pub fn validate(&self, node_names: &[&str]) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(format!("[auto] {m}")));
        if !self.enabled {
            return Ok(());
        }
        if self.etcd.is_empty() {
            return invalid("etcd must list the etcd members' client URLs".into());
        }
        if let Some(bad) = self.etcd.iter().find(|e| !e.starts_with("http://")) {
            return invalid(format!("etcd endpoint {bad:?} must be http://host:port"));
        }
        if let Some(n) = &self.node {
            if !node_names.contains(&n.as_str()) {
                return invalid(format!("node {n:?} is not one of [[nodes]]"));
            }
        }
        // etcd's minimum lease is 1.5 election timeouts (2 s by default);
        // three renewals per TTL ride out one lost renewal.
        if self.ttl < Duration::from_secs(2) || self.loop_wait * 3 > self.ttl {
            return invalid("ttl must be at least 2s and at least 3 times loop_wait".into());
        }
        if self.etcd_timeout.is_zero() || self.etcd_timeout >= self.ttl {
            return invalid("etcd_timeout must be positive and below ttl".into());
        }
        if !self.prefix.starts_with('/') {
            return invalid("prefix must start with '/'".into());
        }
        Ok(())
    }
}
