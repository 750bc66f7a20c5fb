//! What the failover tool asks PostgreSQL: connecting with a deadline, one
//! probe per node (role, timeline, WAL positions, lag) and the handful of
//! administrative statements a role change needs.
//!
//! WAL positions are read as text and parsed into [`Lsn`] so comparisons and
//! byte distances are plain integer arithmetic.

use serde::Serialize;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::{FailoverError, FailoverNode, Result};

/// A WAL position (`pg_lsn`), e.g. `0/3000148`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl FromStr for Lsn {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Lsn, String> {
        let (hi, lo) = s.split_once('/').ok_or_else(|| format!("bad LSN {s:?}"))?;
        let hi = u64::from_str_radix(hi, 16).map_err(|_| format!("bad LSN {s:?}"))?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| format!("bad LSN {s:?}"))?;
        Ok(Lsn((hi << 32) | lo))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl Lsn {
    /// Bytes from `self` forward to `other` (0 when `other` is not ahead).
    pub fn behind(self, other: Lsn) -> u64 {
        other.0.saturating_sub(self.0)
    }
}

fn lsn(text: Option<String>) -> Option<Lsn> {
    text.and_then(|t| t.parse().ok())
}

/// Opens an administrative session, bounded by `timeout` for the connect,
/// with the node's `password_file` unless the conninfo names a password.
/// The whole handshake is bounded too, not only the TCP connect: a host
/// that accepts connections and never answers is an error, not a hang.
pub fn connect(node: &FailoverNode, timeout: Duration) -> Result<postgres::Client> {
    let mut cfg: postgres::Config =
        node.conninfo
            .parse()
            .map_err(|e: postgres::Error| FailoverError::Db {
                node: node.name.clone(),
                source: e,
            })?;
    if cfg.get_password().is_none() {
        if let Some(p) = node.password()? {
            cfg.password(p);
        }
    }
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(timeout);
    }
    if cfg.get_application_name().is_none() {
        cfg.application_name("biblioteca-failover");
    }
    let deadline = cfg.get_connect_timeout().copied().unwrap_or(timeout);
    let (tx, rx) = std::sync::mpsc::channel();
    // Left behind on a timeout, blocked on the silent host until we exit.
    std::thread::Builder::new()
        .name("pg-connect".into())
        .spawn(move || {
            let _ = tx.send(cfg.connect(postgres::NoTls));
        })
        .map_err(|e| FailoverError::Command {
            command: format!("connect to node {}", node.name),
            reason: e.to_string(),
        })?;
    match rx.recv_timeout(deadline + Duration::from_secs(1)) {
        Ok(result) => result.map_err(FailoverError::db(&node.name)),
        Err(_) => Err(biblioteca_cluster::ClusterError::Timeout {
            what: format!(
                "node {}: connecting and logging in (the host took the connection but never answered)",
                node.name
            ),
            secs: deadline.as_secs() + 1,
        }
        .into()),
    }
}

/// What a node is right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Standby,
    Down,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
            Role::Down => "down",
        })
    }
}

/// One row of a primary's `pg_stat_replication`.
#[derive(Debug, Clone, Serialize)]
pub struct Replica {
    pub application_name: String,
    pub state: String,
    pub sync_state: String,
    pub flush_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
}

/// A node as seen by one probe.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub name: String,
    pub role: Role,
    /// Why the node could not be probed.
    pub error: Option<String>,
    pub timeline: Option<u32>,
    /// Primary: `pg_current_wal_lsn()`; standby: `pg_last_wal_replay_lsn()`.
    pub lsn: Option<Lsn>,
    /// Primary only: `pg_current_wal_flush_lsn()`.
    pub flush_lsn: Option<Lsn>,
    /// Standby only.
    pub receive_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
    /// Standby only: `now() - pg_last_xact_replay_timestamp()`.
    pub replay_age_secs: Option<f64>,
    pub replay_paused: bool,
    pub synchronous_standby_names: Option<String>,
    /// Primary only.
    pub replicas: Vec<Replica>,
}

impl Probe {
    pub fn reachable(&self) -> bool {
        self.role != Role::Down
    }

    pub fn down(name: &str, error: String) -> Probe {
        Probe {
            name: name.to_string(),
            role: Role::Down,
            error: Some(error),
            timeline: None,
            lsn: None,
            flush_lsn: None,
            receive_lsn: None,
            replay_lsn: None,
            replay_age_secs: None,
            replay_paused: false,
            synchronous_standby_names: None,
            replicas: Vec::new(),
        }
    }
}

/// Probes a node; an unreachable node is a [`Role::Down`] probe, not an error.
pub fn probe(node: &FailoverNode, timeout: Duration) -> Probe {
    let result = connect(node, timeout).and_then(|mut c| probe_with(&mut c, &node.name));
    match result {
        Ok(p) => p,
        Err(e) => Probe::down(&node.name, short_error(&e)),
    }
}

/// The server's message for a database error, else the error and its causes.
pub fn describe_error(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return db.message().to_string();
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    text
}

/// The first line of an error, with the database's own message when there is one.
pub fn short_error(e: &FailoverError) -> String {
    if let FailoverError::Db { source, .. } = e {
        return describe_error(source);
    }
    e.to_string().lines().next().unwrap_or_default().to_string()
}

pub fn probe_with(c: &mut postgres::Client, name: &str) -> Result<Probe> {
    let db = FailoverError::db(name);
    let row = c
        .query_one(
            "SELECT pg_is_in_recovery(),
                    (SELECT timeline_id FROM pg_control_checkpoint()),
                    CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END,
                    CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,
                    CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_flush_lsn()::text END,
                    pg_last_wal_receive_lsn()::text,
                    pg_last_wal_replay_lsn()::text,
                    EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8,
                    CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END,
                    current_setting('synchronous_standby_names'),
                    (SELECT received_tli FROM pg_stat_wal_receiver)",
            &[],
        )
        .map_err(db)?;
    let in_recovery: bool = row.get(0);
    let checkpoint_tli: Option<i32> = row.get(1);
    let walfile: Option<String> = row.get(2);
    let received_tli: Option<i32> = row.get(10);
    let timeline = if in_recovery {
        checkpoint_tli.max(received_tli).map(|t| t as u32)
    } else {
        walfile
            .as_deref()
            .and_then(|w| w.get(..8))
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .or(checkpoint_tli.map(|t| t as u32))
    };
    let current = lsn(row.get(3));
    let replay = lsn(row.get(6));
    let mut p = Probe {
        name: name.to_string(),
        role: if in_recovery {
            Role::Standby
        } else {
            Role::Primary
        },
        error: None,
        timeline,
        lsn: if in_recovery { replay } else { current },
        flush_lsn: lsn(row.get(4)),
        receive_lsn: lsn(row.get(5)),
        replay_lsn: replay,
        replay_age_secs: if in_recovery { row.get(7) } else { None },
        replay_paused: row.get(8),
        synchronous_standby_names: row.get(9),
        replicas: Vec::new(),
    };
    if !in_recovery {
        p.replicas = replicas(c, name)?;
    }
    Ok(p)
}

/// The primary's `pg_stat_replication`.
pub fn replicas(c: &mut postgres::Client, name: &str) -> Result<Vec<Replica>> {
    let rows = c
        .query(
            "SELECT coalesce(application_name, ''), coalesce(state, ''), coalesce(sync_state, ''),
                    flush_lsn::text, replay_lsn::text
               FROM pg_stat_replication",
            &[],
        )
        .map_err(FailoverError::db(name))?;
    Ok(rows
        .iter()
        .map(|r| Replica {
            application_name: r.get(0),
            state: r.get(1),
            sync_state: r.get(2),
            flush_lsn: lsn(r.get(3)),
            replay_lsn: lsn(r.get(4)),
        })
        .collect())
}

pub fn in_recovery(c: &mut postgres::Client, name: &str) -> Result<bool> {
    let row = c
        .query_one("SELECT pg_is_in_recovery()", &[])
        .map_err(FailoverError::db(name))?;
    Ok(row.get(0))
}

/// Row counts of the tables the guide compares before and after a failover;
/// `None` for a table that does not exist (yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub libros: Option<i64>,
    pub prestamos: Option<i64>,
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: Option<i64>| v.map_or_else(|| "n/a".to_string(), |v| v.to_string());
        write!(
            f,
            "libros {}, prestamos {}",
            show(self.libros),
            show(self.prestamos)
        )
    }
}

pub fn counts(c: &mut postgres::Client, name: &str) -> Result<Counts> {
    let mut one = |table: &str| -> Result<Option<i64>> {
        let exists: bool = c
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .map_err(FailoverError::db(name))?
            .get(0);
        if !exists {
            return Ok(None);
        }
        let n: i64 = c
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .map_err(FailoverError::db(name))?
            .get(0);
        Ok(Some(n))
    };
    Ok(Counts {
        libros: one("libros")?,
        prestamos: one("prestamos")?,
    })
}

/// Sets `synchronous_standby_names` persistently and reloads; `""` turns
/// synchronous replication off.
pub fn set_sync_standbys(c: &mut postgres::Client, name: &str, names: &str) -> Result<()> {
    let quoted = names.replace('\'', "''");
    alter_system(c, name, &format!("synchronous_standby_names = '{quoted}'"))
}

/// `ALTER SYSTEM SET <setting>` then a reload; separate statements, since
/// ALTER SYSTEM refuses to run inside the implicit transaction of a batch.
pub fn alter_system(c: &mut postgres::Client, name: &str, setting: &str) -> Result<()> {
    c.batch_execute(&format!("ALTER SYSTEM SET {setting}"))
        .map_err(FailoverError::db(name))?;
    c.batch_execute("SELECT pg_reload_conf()")
        .map_err(FailoverError::db(name))
}

/// The `synchronous_standby_names` of a primary whose standbys are
/// `standbys`: all of them under quorum `ANY k`, or the one by name.
pub fn sync_names(standbys: &[&str], quorum: usize) -> String {
    biblioteca_cluster::synchronous_standby_names(standbys, quorum)
}

/// The physical replication slot a standby called `node` streams from.
pub fn slot_name(node: &str) -> String {
    node.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Makes a physical slot with WAL reserved from now: an inactive leftover
/// (from an earlier role) is dropped first, since its position may belong
/// to another timeline. Returns false when the slot exists and is in use.
pub fn ensure_slot(c: &mut postgres::Client, name: &str, slot: &str) -> Result<bool> {
    let active: Option<bool> = c
        .query_opt(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .map_err(FailoverError::db(name))?
        .map(|r| r.get(0));
    match active {
        Some(true) => return Ok(false),
        Some(false) => {
            c.execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                .map_err(FailoverError::db(name))?;
        }
        None => {}
    }
    c.execute(
        "SELECT pg_create_physical_replication_slot($1, true)",
        &[&slot],
    )
    .map_err(FailoverError::db(name))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trip_and_distance() {
        let a: Lsn = "0/3000148".parse().unwrap();
        let b: Lsn = "1/0".parse().unwrap();
        assert_eq!(a.to_string(), "0/3000148");
        assert_eq!(b.0, 1 << 32);
        assert!(a < b);
        assert_eq!(a.behind(b), (1 << 32) - 0x3000148);
        assert_eq!(b.behind(a), 0);
        assert!("nope".parse::<Lsn>().is_err());
    }

    #[test]
    fn slot_names_are_legal() {
        assert_eq!(slot_name("Standby-2"), "standby_2");
    }
}
