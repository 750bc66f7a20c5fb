//! `promote`: turn a standby into the primary after the primary failed.
//!
//! Order matters. Nothing changes until the target is known to hold every
//! committed transaction (or the operator accepted losing some). The old
//! primary, if still up and managed here, is stopped before the promotion so
//! two primaries never take writes. After `pg_promote` the new primary's
//! synchronous standby list is cleared first (its standby is gone, so every
//! commit would wait forever), then a test write proves it accepts writes,
//! then the storage manager is re-pointed and the command returns only once
//! the storage manager reports it serves from the new primary.

use std::time::{Duration, Instant};

use super::local::Local;
use super::pg::{self, Lsn, Probe, Role};
use super::status::probe_all;
use super::storage;
use super::{FailoverConfig, FailoverError, FailoverNode, Progress, Result};

#[derive(Debug, Clone, Default)]
pub struct PromoteOptions {
    /// The standby to promote; default: the only reachable standby.
    pub node: Option<String>,
    /// Promote even when the standby has not replayed everything the old
    /// primary flushed.
    pub allow_data_loss: bool,
}

#[derive(Debug, Clone)]
pub struct PromoteOutcome {
    pub new_primary: String,
    pub old_primary: Option<String>,
    pub timeline: Option<u32>,
    pub before: pg::Counts,
    pub after: pg::Counts,
    pub total_secs: f64,
}

/// The table the test write goes to; the storage migrations may create it too.
const EVENTS_DDL: &str = "CREATE TABLE IF NOT EXISTS eventos_failover (
    id bigserial PRIMARY KEY,
    momento timestamptz NOT NULL DEFAULT now(),
    nodo_anterior text,
    nodo_nuevo text NOT NULL,
    timeline integer
)";

pub fn promote(
    cfg: &FailoverConfig,
    opts: &PromoteOptions,
    progress: &Progress,
) -> Result<PromoteOutcome> {
    progress.step(format!("probing nodes {}", cfg.names()));
    let probes = probe_all(cfg);
    for p in &probes {
        progress.step(describe(p));
    }
    let target = pick_target(cfg, &probes, opts.node.as_deref())?;
    let old = old_primary(cfg, &probes, &target.name);
    match &old {
        Some(o) => progress.step(format!("promoting {} in place of {}", target.name, o.name)),
        None => progress.step(format!(
            "promoting {} (no former primary identified)",
            target.name
        )),
    }
    let already = find(&probes, &target.name).is_some_and(|p| p.role == Role::Primary);
    if already {
        progress.warn(format!(
            "{} is already a primary (a previous promote stopped half-way?); resuming with the remaining steps",
            target.name
        ));
    } else {
        let old_alive = old
            .and_then(|o| find(&probes, &o.name))
            .is_some_and(|p| p.role == Role::Primary);
        if !old_alive {
            super::quorum::verify(cfg, &probes, &target.name, opts.allow_data_loss, progress)?;
        }
        check_no_data_loss(
            cfg,
            target,
            old.map(|o| (o, find(&probes, &o.name))),
            opts,
            progress,
        )?;
    }
    if let Some(o) = old {
        fence_old_primary(cfg, o, find(&probes, &o.name), progress)?;
    }
    let claim = super::manual::claim(cfg, &target.name, None, progress)?;
    let outcome = finish_promotion(cfg, target, old.map(|o| o.name.as_str()), already, progress)?;
    if let Some(c) = claim {
        c.done(outcome.timeline)?;
    }
    Ok(outcome)
}

fn find<'a>(probes: &'a [Probe], name: &str) -> Option<&'a Probe> {
    probes.iter().find(|p| p.name == name)
}

fn describe(p: &Probe) -> String {
    match p.role {
        Role::Down => format!(
            "  {}: down ({})",
            p.name,
            p.error.as_deref().unwrap_or("no answer")
        ),
        Role::Primary => format!(
            "  {}: primary, timeline {}, flushed up to {}",
            p.name,
            p.timeline.map_or("?".into(), |t| t.to_string()),
            p.flush_lsn.map_or("?".into(), |l| l.to_string())
        ),
        Role::Standby => format!(
            "  {}: standby, timeline {}, received {}, replayed {}{}",
            p.name,
            p.timeline.map_or("?".into(), |t| t.to_string()),
            p.receive_lsn.map_or("-".into(), |l| l.to_string()),
            p.replay_lsn.map_or("-".into(), |l| l.to_string()),
            if p.replay_paused {
                " (replay paused)"
            } else {
                ""
            }
        ),
    }
}

fn pick_target<'a>(
    cfg: &'a FailoverConfig,
    probes: &[Probe],
    wanted: Option<&str>,
) -> Result<&'a FailoverNode> {
    if let Some(name) = wanted {
        let node = cfg.node(name).ok_or_else(|| {
            FailoverError::stuck(
                format!("no node named {name:?} in the failover config"),
                "nothing was changed",
                format!("pick one of: {}", cfg.names()),
            )
        })?;
        let p = find(probes, name);
        if p.is_none_or(|p| !p.reachable()) {
            return Err(FailoverError::stuck(
                format!("cannot promote {name}: it is unreachable"),
                format!(
                    "nothing was changed ({})",
                    p.and_then(|p| p.error.clone()).unwrap_or_default()
                ),
                format!("start {name} (it must come up as a standby), then run promote again"),
            ));
        }
        return Ok(node);
    }
    match super::quorum::best_standby(probes) {
        Some(best) => cfg.node(&best.name).ok_or_else(|| {
            FailoverError::stuck("probe named an unknown node", "nothing was changed", "report a bug")
        }),
        None => Err(FailoverError::stuck(
            "no reachable standby to promote",
            "nothing was changed",
            "run `biblioteca-failover status`; start the standby, or if a previous promote stopped half-way, run promote --node NAME",
        )),
    }
}

/// The primary being replaced: a reachable primary other than the target,
/// else the storage manager's configured primary, else the only other node.
fn old_primary<'a>(
    cfg: &'a FailoverConfig,
    probes: &[Probe],
    target: &str,
) -> Option<&'a FailoverNode> {
    if let Some(p) = probes
        .iter()
        .find(|p| p.role == Role::Primary && p.name != target)
    {
        return cfg.node(&p.name);
    }
    let configured = cfg
        .storage
        .config
        .as_deref()
        .and_then(|path| biblioteca_protocol::config_roles::load_storage(path).ok())
        .and_then(|s| s.config.database.primary().map(|n| n.name.clone()))
        .filter(|n| n != target);
    if let Some(name) = configured {
        if let Some(n) = cfg.node(&name) {
            return Some(n);
        }
    }
    let others: Vec<&FailoverNode> = cfg.nodes.iter().filter(|n| n.name != target).collect();
    match others.as_slice() {
        [one] => Some(one),
        _ => None,
    }
}

/// Polls the target until `caught_up(probe)` or the catch-up time is spent.
fn wait_replay<F>(cfg: &FailoverConfig, target: &FailoverNode, mut caught_up: F) -> Probe
where
    F: FnMut(&Probe) -> bool,
{
    let deadline = Instant::now() + cfg.catchup;
    loop {
        let p = pg::probe(target, cfg.connect_timeout());
        if caught_up(&p) || Instant::now() >= deadline {
            return p;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn check_no_data_loss(
    cfg: &FailoverConfig,
    target: &FailoverNode,
    old: Option<(&FailoverNode, Option<&Probe>)>,
    opts: &PromoteOptions,
    progress: &Progress,
) -> Result<()> {
    let old_alive = old.and_then(|(n, p)| p.filter(|p| p.role == Role::Primary).map(|_| n));
    let (needed, source): (Option<Lsn>, String) = match old_alive {
        Some(o) => {
            // Re-read: the primary may have flushed more since the first probe.
            let p = pg::probe(o, cfg.connect_timeout());
            (p.flush_lsn, format!("old primary {} flushed", o.name))
        }
        None => {
            progress.step(format!(
                "old primary unreachable: checking {} replayed all the WAL it received (with synchronous replication that includes every committed transaction)",
                target.name
            ));
            (None, format!("{} received", target.name))
        }
    };
    let p = wait_replay(cfg, target, |p| {
        match (p.replay_lsn, needed.or(p.receive_lsn)) {
            (Some(replay), Some(need)) => replay >= need,
            (Some(_), None) => true,
            _ => false,
        }
    });
    if p.role != Role::Standby {
        return Err(FailoverError::stuck(
            format!(
                "{} stopped being a reachable standby during the checks",
                target.name
            ),
            format!("it is now {} ({})", p.role, p.error.unwrap_or_default()),
            "run `biblioteca-failover status` and retry",
        ));
    }
    let need = needed.or(p.receive_lsn);
    let replay = p.replay_lsn;
    let behind = match (replay, need) {
        (Some(r), Some(n)) => r.behind(n),
        _ => 0,
    };
    let shown = |l: Option<Lsn>| l.map_or_else(|| "?".to_string(), |l| l.to_string());
    if behind == 0 {
        progress.step(format!(
            "{} replayed up to {}, {source} up to {}: nothing is lost",
            target.name,
            shown(replay),
            shown(need)
        ));
        return Ok(());
    }
    let state = format!(
        "{} replayed up to {} but {source} up to {} ({behind} bytes behind{})",
        target.name,
        shown(replay),
        shown(need),
        if p.replay_paused {
            "; its replay is PAUSED"
        } else {
            ""
        }
    );
    if opts.allow_data_loss {
        progress.warn(format!("{state}; promoting anyway (--allow-data-loss)"));
        return Ok(());
    }
    let next = if p.replay_paused {
        format!("resume replay on {} (SELECT pg_wal_replay_resume()) and run promote again, or accept the loss with --allow-data-loss", target.name)
    } else {
        "wait for the standby to catch up and run promote again, or accept the loss with --allow-data-loss".to_string()
    };
    Err(FailoverError::stuck(
        format!(
            "refusing to promote {}: it would lose committed data",
            target.name
        ),
        format!("{state}; nothing was changed"),
        next,
    ))
}

/// A former primary still running would accept writes from anyone still
/// pointed at it: stop it when this host manages it, else say so loudly.
fn fence_old_primary(
    cfg: &FailoverConfig,
    old: &FailoverNode,
    probe: Option<&Probe>,
    progress: &Progress,
) -> Result<()> {
    if probe.is_none_or(|p| p.role != Role::Primary) {
        return Ok(());
    }
    if !old.managed() {
        progress.warn(format!(
            "old primary {} is still running as a primary; the storage manager will fence it, but stop it on its host (or `rejoin --node {}` there)",
            old.name, old.name
        ));
        return Ok(());
    }
    progress.step(format!(
        "stopping old primary {} (pg_ctl stop -m fast) so it takes no more writes",
        old.name
    ));
    Local::new(cfg)?.stop(old).map_err(|e| {
        FailoverError::stuck(
            format!(
                "cannot stop old primary {}: {}",
                old.name,
                pg::short_error(&e)
            ),
            "nothing was promoted; the old primary may still take writes",
            format!("stop {} by hand and run promote again", old.name),
        )
    })?;
    progress.step(format!("old primary {} stopped", old.name));
    Ok(())
}

/// Creates `eventos_failover` when the storage migrations have not, owned
/// by the database's owner like the migrated tables (a later `migrate`
/// grants the application role its rows).
fn ensure_events_table(c: &mut postgres::Client, node: &str) -> Result<()> {
    let exists: bool = c
        .query_one("SELECT to_regclass('eventos_failover') IS NOT NULL", &[])
        .map_err(FailoverError::db(node))?
        .get(0);
    if exists {
        return Ok(());
    }
    let owner: String = c
        .query_one(
            "SELECT quote_ident(pg_get_userbyid(datdba)) FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .map_err(FailoverError::db(node))?
        .get(0);
    c.batch_execute(&format!(
        "{EVENTS_DDL}; ALTER TABLE eventos_failover OWNER TO {owner}"
    ))
    .map_err(FailoverError::db(node))
}

/// From `pg_promote` to the storage manager serving from the new primary.
/// With `already`, the target was promoted by an earlier run.
pub fn finish_promotion(
    cfg: &FailoverConfig,
    target: &FailoverNode,
    old: Option<&str>,
    already: bool,
    progress: &Progress,
) -> Result<PromoteOutcome> {
    let outcome = promote_database(cfg, target, old, already, progress)?;
    // Before the storage manager writes again: with standbys following,
    // the first acknowledged loans are on them too.
    super::follow::follow(cfg, target, old, progress)?;
    storage::repoint(cfg, &target.name, old, progress)?;
    let total_secs = progress.elapsed_secs();
    progress.step(format!(
        "promotion complete: {} is the primary on timeline {} (total {total_secs:.1}s)",
        target.name,
        outcome.timeline.map_or("?".into(), |t| t.to_string())
    ));
    Ok(PromoteOutcome {
        total_secs,
        ..outcome
    })
}

/// The database side of a promotion: `pg_promote`, synchronous standbys
/// cleared, a test write; the automatic mode's agents do the rest (the
/// other standbys follow the leader key, the storage managers too).
pub fn promote_database(
    cfg: &FailoverConfig,
    target: &FailoverNode,
    old: Option<&str>,
    already: bool,
    progress: &Progress,
) -> Result<PromoteOutcome> {
    let db = FailoverError::db(&target.name);
    let mut c = pg::connect(target, cfg.connect_timeout())?;
    let before = pg::counts(&mut c, &target.name)?;
    progress.step(format!("before: {before} (on {})", target.name));
    let started = Instant::now();
    if !already {
        progress.step(format!(
            "promoting {} (pg_promote, waiting up to {}s)",
            target.name,
            cfg.promote_timeout.as_secs()
        ));
        let secs = cfg.promote_timeout.as_secs().min(i32::MAX as u64) as i32;
        let done: bool = c
            .query_one("SELECT pg_promote(true, $1)", &[&secs])
            .map_err(FailoverError::db(&target.name))?
            .get(0);
        let deadline = Instant::now() + cfg.promote_timeout;
        while pg::in_recovery(&mut c, &target.name)? {
            if Instant::now() >= deadline {
                return Err(FailoverError::stuck(
                    format!(
                        "{} did not leave recovery within {}s (pg_promote returned {done})",
                        target.name,
                        cfg.promote_timeout.as_secs()
                    ),
                    "promotion was requested; the storage manager still points at the old primary",
                    format!(
                        "check {}'s server log, then run `promote --node {}` again",
                        target.name, target.name
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        progress.step(format!(
            "{} left recovery: it is a primary ({:.1}s)",
            target.name,
            started.elapsed().as_secs_f64()
        ));
    }
    let sync: String = c
        .query_one("SELECT current_setting('synchronous_standby_names')", &[])
        .map_err(FailoverError::db(&target.name))?
        .get(0);
    if !sync.is_empty() {
        progress.step(format!(
            "clearing synchronous_standby_names ({sync}) on {}: its standby is gone and commits would wait forever",
            target.name
        ));
        pg::set_sync_standbys(&mut c, &target.name, "")?;
        // pg_reload_conf only signals; wait until this session sees the new value.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now: String = c
                .query_one("SELECT current_setting('synchronous_standby_names')", &[])
                .map_err(FailoverError::db(&target.name))?
                .get(0);
            if now.is_empty() || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // The storage manager compares timelines from pg_control_checkpoint();
    // the end-of-recovery checkpoint may still be pending.
    c.batch_execute("CHECKPOINT")
        .map_err(FailoverError::db(&target.name))?;
    let timeline = pg::probe_with(&mut c, &target.name)?.timeline;
    let tl: Option<i32> = timeline.map(|t| t as i32);
    c.batch_execute("SET statement_timeout = '15s'")
        .map_err(FailoverError::db(&target.name))?;
    ensure_events_table(&mut c, &target.name)?;
    let id: i64 = c
        .query_one(
            "INSERT INTO eventos_failover (momento, nodo_anterior, nodo_nuevo, timeline)
             VALUES (now(), $1::text, $2::text, $3::int) RETURNING id::bigint",
            &[&old, &target.name, &tl],
        )
        .map_err(|e| {
            let source = db(e);
            FailoverError::stuck(
                format!("test write on {} failed: {}", target.name, pg::short_error(&source)),
                format!("{} is promoted but did not accept a write; the storage manager was not re-pointed", target.name),
                format!("fix the cause, then run `promote --node {}` again (it resumes)", target.name),
            )
        })?
        .get(0);
    progress.step(format!(
        "test write accepted on {} (eventos_failover id {id}, timeline {})",
        target.name,
        timeline.map_or("?".into(), |t| t.to_string())
    ));
    let after = pg::counts(&mut c, &target.name)?;
    let diff = |a: Option<i64>, b: Option<i64>| match (a, b) {
        (Some(a), Some(b)) => Some(a - b),
        _ => None,
    };
    let deltas = [
        diff(after.libros, before.libros),
        diff(after.prestamos, before.prestamos),
    ];
    let shown = |d: Option<i64>| d.map_or_else(|| "?".to_string(), |d| format!("{d:+}"));
    if after == before {
        progress.step(format!("after: {after}: all data preserved"));
    } else if deltas.iter().all(|d| d.is_some_and(|d| d >= 0)) {
        progress.step(format!(
            "after: {after}: all data preserved (libros {}, prestamos {}: WAL replayed while promoting)",
            shown(deltas[0]),
            shown(deltas[1])
        ));
    } else {
        progress.warn(format!(
            "after: {after}: ROWS MISSING compared with before (libros {}, prestamos {})",
            shown(deltas[0]),
            shown(deltas[1])
        ));
    }
    Ok(PromoteOutcome {
        new_primary: target.name.clone(),
        old_primary: old.map(str::to_string),
        timeline,
        before,
        after,
        total_secs: progress.elapsed_secs(),
    })
}
