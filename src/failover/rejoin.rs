//! `rejoin`: make a former primary a standby of the current primary.
//!
//! The former primary may hold WAL the new primary never saw (it kept
//! writing after the standby's last receipt, or crashed mid-commit), so it
//! cannot simply follow: `pg_rewind` winds its files back to the point where
//! the timelines forked and copies what changed since from the new primary.
//! When rewinding is impossible (no `wal_log_hints`/checksums, WAL gone), the
//! data directory is replaced by a fresh `pg_basebackup`. Either way the
//! node's own configuration files are put back and the standby settings are
//! written, then it is started and must stream before synchronous
//! replication is switched back on and the storage manager learns the role.

use std::time::{Duration, Instant};

use super::local::Local;
use super::pg::{self, Role};
use super::status::probe_all;
use super::storage::set_role_and_reload;
use super::{FailoverConfig, FailoverError, FailoverNode, Progress, Result};
use biblioteca_protocol::config::NodeRole;

pub fn rejoin(cfg: &FailoverConfig, name: &str, progress: &Progress) -> Result<()> {
    let old = cfg.node(name).ok_or_else(|| {
        FailoverError::stuck(
            format!("no node named {name:?} in the failover config"),
            "nothing was changed",
            format!("pick one of: {}", cfg.names()),
        )
    })?;
    let local = Local::new(cfg)?;
    local.node(old)?;
    progress.step(format!("probing nodes {}", cfg.names()));
    let probes = probe_all(cfg);
    let primaries: Vec<&pg::Probe> = probes
        .iter()
        .filter(|p| p.role == Role::Primary && p.name != name)
        .collect();
    let primary = match primaries.as_slice() {
        [one] => cfg.node(&one.name).ok_or_else(|| {
            FailoverError::stuck(
                "probe named an unknown node",
                "nothing was changed",
                "report a bug",
            )
        })?,
        [] => {
            return Err(FailoverError::stuck(
                format!("no reachable primary other than {name} to follow"),
                "nothing was changed",
                "promote a standby first (biblioteca-failover promote), then rejoin",
            ))
        }
        _ => {
            return Err(FailoverError::stuck(
                "several primaries are reachable",
                "nothing was changed",
                "stop all but one (run `biblioteca-failover status`) and retry",
            ))
        }
    };
    progress.step(format!(
        "{name} will become a standby of {}, the current primary",
        primary.name
    ));
    let slot = pg::slot_name(name);
    let already = streaming(cfg, primary, name)?;
    if already {
        progress.step(format!(
            "{name} already streams from {}; skipping the rewind",
            primary.name
        ));
    } else {
        rebuild(cfg, &local, old, primary, &slot, progress)?;
    }
    let mut c = pg::connect(primary, cfg.connect_timeout())?;
    if cfg.synchronous {
        progress.step(format!(
            "synchronous_standby_names = {} on {}: commits wait for {name} again",
            pg::sync_name(name),
            primary.name
        ));
        pg::set_sync_standbys(&mut c, &primary.name, &pg::sync_name(name))?;
    } else {
        progress.step("synchronous = false: replication stays asynchronous");
    }
    set_role_and_reload(cfg, name, NodeRole::Standby, progress).map_err(|e| {
        FailoverError::stuck(
            format!("cannot update the storage manager: {e}"),
            format!("{name} streams from {} as a standby", primary.name),
            format!("set role = \"standby\" for {name} in the storage config and reload it"),
        )
    })?;
    progress.step(format!(
        "rejoin complete: {name} is a standby of {} (total {:.1}s)",
        primary.name,
        progress.elapsed_secs()
    ));
    Ok(())
}

/// Whether the primary shows `name` streaming in `pg_stat_replication`.
fn streaming(cfg: &FailoverConfig, primary: &FailoverNode, name: &str) -> Result<bool> {
    let mut c = pg::connect(primary, cfg.connect_timeout())?;
    Ok(pg::replicas(&mut c, &primary.name)?
        .iter()
        .any(|r| r.application_name == name && r.state == "streaming"))
}

fn rebuild(
    cfg: &FailoverConfig,
    local: &Local,
    old: &FailoverNode,
    primary: &FailoverNode,
    slot: &str,
    progress: &Progress,
) -> Result<()> {
    let name = &old.name;
    if local.is_running(old).unwrap_or(true) {
        progress.step(format!("stopping {name} (pg_ctl stop -m fast)"));
        if let Err(e) = local.stop(old) {
            // A server killed with SIGKILL leaves postmaster.pid behind: nothing to stop.
            if local.is_running(old) == Some(true) {
                return Err(FailoverError::stuck(
                    format!("cannot stop {name}: {}", pg::short_error(&e)),
                    "nothing was changed",
                    format!("stop {name} by hand and run rejoin again"),
                ));
            }
        }
    }
    let mut c = pg::connect(primary, cfg.connect_timeout())?;
    progress.step(format!(
        "CHECKPOINT on {} so pg_rewind sees the new timeline",
        primary.name
    ));
    c.batch_execute("CHECKPOINT")
        .map_err(FailoverError::db(&primary.name))?;
    if pg::ensure_slot(&mut c, &primary.name, slot)? {
        progress.step(format!(
            "replication slot {slot} ready on {} (WAL reserved from now)",
            primary.name
        ));
    } else {
        progress.step(format!(
            "replication slot {slot} on {} is in use; keeping it",
            primary.name
        ));
    }
    let saved = local.save_conf(old)?;
    progress.step(format!("pg_rewind of {name} from {}", primary.name));
    match local.rewind(old, primary) {
        Ok(last) => progress.step(format!("pg_rewind: {last}")),
        Err(e) => {
            progress.warn(format!(
                "pg_rewind failed ({}); replacing {name}'s data with a fresh pg_basebackup",
                pg::short_error(&e).lines().last().unwrap_or_default()
            ));
            local.basebackup(old, primary).map_err(|e| {
                FailoverError::stuck(
                    format!("pg_basebackup of {name} failed: {}", pg::short_error(&e)),
                    format!("{name}'s data directory is incomplete; it must not be started as is"),
                    format!(
                        "fix the cause (disk, connectivity to {}) and run rejoin again",
                        primary.name
                    ),
                )
            })?;
            progress.step(format!(
                "pg_basebackup of {name} from {} done",
                primary.name
            ));
        }
    }
    local.restore_conf(&saved)?;
    local.configure_standby(old, primary, slot)?;
    progress.step(format!(
        "{name} configured as a standby (port {}, application_name {name}, slot {slot}, standby.signal)",
        super::local::port_of(&old.conninfo)
    ));
    progress.step(format!("starting {name}"));
    local.start(old).map_err(|e| {
        FailoverError::stuck(
            format!("{name} did not start: {}", pg::short_error(&e)),
            format!("{name} is rewound and configured as a standby but not running"),
            "read its server log, fix the cause, start it and run rejoin again",
        )
    })?;
    progress.step(format!(
        "waiting up to {}s for {name} to stream from {}",
        cfg.streaming_timeout.as_secs(),
        primary.name
    ));
    let deadline = Instant::now() + cfg.streaming_timeout;
    while !streaming(cfg, primary, name)? {
        if Instant::now() >= deadline {
            return Err(FailoverError::stuck(
                format!("{name} does not stream from {}", primary.name),
                format!("{name} runs as a standby but is not connected; synchronous replication was not re-enabled"),
                format!("read {name}'s server log (primary_conninfo, slot {slot}) and run rejoin again"),
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    progress.step(format!("{name} streams from {}", primary.name));
    Ok(())
}
