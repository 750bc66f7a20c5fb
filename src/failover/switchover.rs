//! `switchover`: planned role swap with both nodes up; nothing is lost.
//!
//! Writes are held first. When this host manages the primary it is stopped
//! with `pg_ctl stop -m fast`: PostgreSQL then sends every WAL record up to
//! the shutdown checkpoint to connected standbys before exiting, so once the
//! standby replayed past that checkpoint it holds everything. Otherwise the
//! primary is made read-only (`default_transaction_read_only`), running
//! write transactions get a few seconds to finish, and the standby must
//! replay up to the primary's final flush position. Then the standby is
//! promoted through the same steps as `promote` and the old primary is
//! rejoined as its standby. Clients see a short outage, retried with the
//! same request ids (applied exactly once by the storage manager).

use std::time::{Duration, Instant};

use super::local::Local;
use super::pg::{self, Lsn, Role};
use super::promote::finish_promotion;
use super::rejoin::rejoin;
use super::status::probe_all;
use super::{FailoverConfig, FailoverError, FailoverNode, Progress, Result};

pub fn switchover(cfg: &FailoverConfig, wanted: Option<&str>, progress: &Progress) -> Result<()> {
    progress.step(format!("probing nodes {}", cfg.names()));
    let probes = probe_all(cfg);
    let primary = match probes
        .iter()
        .filter(|p| p.role == Role::Primary)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [one] => one.name.clone(),
        other => {
            return Err(FailoverError::stuck(
                format!(
                    "a switchover needs exactly one running primary, found {}",
                    other.len()
                ),
                "nothing was changed",
                "run `biblioteca-failover status`; after a failure use promote instead",
            ))
        }
    };
    let mut standbys: Vec<&pg::Probe> = probes
        .iter()
        .filter(|p| p.role == Role::Standby)
        .filter(|p| wanted.is_none_or(|w| w == p.name))
        .collect();
    // Several: the one that replayed the most waits the least.
    standbys.sort_by_key(|p| std::cmp::Reverse(p.replay_lsn));
    let target = match standbys.as_slice() {
        [first, ..] => first.name.clone(),
        [] => {
            return Err(FailoverError::stuck(
                match wanted {
                    Some(w) => format!("{w} is not a reachable standby"),
                    None => "no reachable standby".to_string(),
                },
                "nothing was changed",
                "run `biblioteca-failover status`",
            ))
        }
    };
    let (Some(old), Some(new)) = (cfg.node(&primary), cfg.node(&target)) else {
        return Err(FailoverError::stuck(
            "probe named an unknown node",
            "nothing was changed",
            "report a bug",
        ));
    };
    let streams = probes.iter().find(|p| p.name == primary).is_some_and(|p| {
        p.replicas
            .iter()
            .any(|r| r.application_name == target && r.state == "streaming")
    });
    if !streams {
        return Err(FailoverError::stuck(
            format!("{target} is not streaming from {primary}"),
            "nothing was changed",
            "wait until `biblioteca-failover status` shows it streaming, then retry",
        ));
    }
    progress.step(format!("switching over from {primary} to {target}"));
    let needed = if old.managed() {
        hold_by_stopping(cfg, old, progress)?
    } else {
        hold_read_only(cfg, old, progress)?
    };
    wait_replayed(cfg, new, needed, progress)?;
    let claim = super::manual::claim(cfg, &target, Some(&primary), progress)?;
    let outcome = finish_promotion(cfg, new, Some(&primary), false, progress)?;
    if let Some(c) = claim {
        c.done(outcome.timeline)?;
    }
    if old.managed() {
        rejoin(cfg, &primary, progress)?;
    } else {
        progress.warn(format!(
            "{primary} is read-only and fenced; on its host run `biblioteca-failover rejoin --node {primary}` to make it a standby of {target}"
        ));
    }
    progress.step(format!(
        "switchover complete (total {:.1}s)",
        progress.elapsed_secs()
    ));
    Ok(())
}

/// Clean shutdown; the standby must replay past the shutdown checkpoint.
fn hold_by_stopping(cfg: &FailoverConfig, old: &FailoverNode, progress: &Progress) -> Result<Lsn> {
    let local = Local::new(cfg)?;
    progress.step(format!(
        "stopping {} cleanly (pg_ctl stop -m fast): its standby receives all WAL up to the shutdown checkpoint",
        old.name
    ));
    local.stop(old).map_err(|e| {
        FailoverError::stuck(
            format!("cannot stop {}: {}", old.name, pg::short_error(&e)),
            format!("{} may still be running as the primary", old.name),
            "run `biblioteca-failover status`; retry the switchover or start it again",
        )
    })?;
    let (state, checkpoint) = local.control_data(old)?;
    let Some(checkpoint) = checkpoint.filter(|_| state.contains("shut down")) else {
        return Err(FailoverError::stuck(
            format!("{} did not shut down cleanly (state {state:?})", old.name),
            format!("{} is stopped; no node is the primary", old.name),
            format!(
                "start {} again (pg_ctl start) and retry, or run promote",
                old.name
            ),
        ));
    };
    progress.step(format!(
        "{} stopped; shutdown checkpoint at {checkpoint}",
        old.name
    ));
    // Replay must pass the start of the checkpoint record, not just reach it.
    Ok(Lsn(checkpoint.0 + 1))
}

/// Read-only primary; returns the last position it flushed.
fn hold_read_only(cfg: &FailoverConfig, old: &FailoverNode, progress: &Progress) -> Result<Lsn> {
    let name = &old.name;
    let db = || FailoverError::db(name);
    let mut c = pg::connect(old, cfg.connect_timeout())?;
    progress.step(format!(
        "making {name} read-only (default_transaction_read_only = on)"
    ));
    pg::alter_system(&mut c, name, "default_transaction_read_only = on")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let writers: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()",
                &[],
            )
            .map_err(db())?
            .get(0);
        if writers == 0 {
            break;
        }
        if Instant::now() >= deadline {
            progress.warn(format!(
                "terminating {writers} write transactions still open on {name}"
            ));
            c.batch_execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()",
            )
            .map_err(db())?;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let text: String = c
        .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
        .map_err(db())?
        .get(0);
    let lsn: Lsn = text
        .parse()
        .map_err(|e: String| FailoverError::stuck(e, "writes are held", "report a bug"))?;
    progress.step(format!(
        "{name} holds no writes; last flushed position {lsn}"
    ));
    Ok(lsn)
}

fn wait_replayed(
    cfg: &FailoverConfig,
    new: &FailoverNode,
    needed: Lsn,
    progress: &Progress,
) -> Result<()> {
    let deadline = Instant::now() + cfg.catchup.max(Duration::from_secs(30));
    loop {
        let p = pg::probe(new, cfg.connect_timeout());
        let replay = p.replay_lsn;
        if replay.is_some_and(|r| r >= needed) {
            progress.step(format!(
                "{} replayed up to {}: it holds everything",
                new.name,
                replay.map_or("?".into(), |l| l.to_string())
            ));
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(FailoverError::stuck(
                format!(
                    "{} did not replay up to {needed} (at {}{})",
                    new.name,
                    replay.map_or("?".into(), |l| l.to_string()),
                    if p.replay_paused { ", replay paused" } else { "" }
                ),
                "writes are held on the old primary (stopped or read-only); nothing was promoted",
                "resume: start the old primary again (or ALTER SYSTEM RESET default_transaction_read_only; SELECT pg_reload_conf()), or run promote --allow-data-loss",
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
