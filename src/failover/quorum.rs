//! What `promote` must know before it changes anything when the old
//! primary is gone: which standby holds the most WAL, whether enough
//! standbys answered to be sure it holds every acknowledged commit, and
//! whether the storage manager acknowledged writes while synchronous
//! replication was off (the degraded mode).
//!
//! With `ANY k` over `n` standbys an acknowledged commit is on at least `k`
//! of them. If `r` standbys answer and `r >= n - k + 1`, at least one of
//! them has it, and the one that received the most WAL has everything any
//! of them has. With fewer, the commit may live only on unreachable nodes.
//!
//! The degraded-mode record lives in the storage manager's `state_dir` on
//! the application host (it survives the primary): read from the file when
//! this host has the storage config, else from the storage manager's status.

use super::pg::{Lsn, Probe, Role};
use super::storage::query_target;
use super::{FailoverConfig, FailoverError, Progress, Result};
use biblioteca_protocol::config::{
    ReplicationRecord, ReplicationState, StorageConfig, REPLICACION_FILE,
};

/// The position a standby is judged by: what it received, else replayed.
pub fn received(p: &Probe) -> Option<Lsn> {
    p.receive_lsn.max(p.replay_lsn)
}

/// The reachable standby that received the most WAL; on a tie the first
/// in configuration order, so the choice is predictable.
pub fn best_standby(probes: &[Probe]) -> Option<&Probe> {
    probes
        .iter()
        .filter(|p| p.role == Role::Standby)
        .fold(None, |best: Option<&Probe>, p| match best {
            Some(b) if received(b) >= received(p) => Some(b),
            _ => Some(p),
        })
}

/// Refuses (unless `allow`) when the reachable standbys cannot prove the
/// target holds every quorum-acknowledged commit. `standbys`: how many
/// standbys the old primary had (every configured node but it).
pub fn check(
    quorum: usize,
    probes: &[Probe],
    target: &str,
    standbys: usize,
) -> std::result::Result<String, String> {
    let k = quorum.clamp(1, standbys.max(1));
    let reachable: Vec<&Probe> = probes.iter().filter(|p| p.role == Role::Standby).collect();
    let needed = standbys.saturating_sub(k) + 1;
    if reachable.len() < needed {
        return Err(format!(
            "only {} of {standbys} standbys answer; with a quorum of {k} an acknowledged commit may be only on the {} that do not",
            reachable.len(),
            standbys - reachable.len()
        ));
    }
    let shown = |l: Option<Lsn>| l.map_or_else(|| "?".to_string(), |l| l.to_string());
    let mine = probes.iter().find(|p| p.name == target).and_then(received);
    if let Some(best) = best_standby(probes).filter(|b| b.name != target) {
        if received(best) > mine {
            return Err(format!(
                "{} received more WAL ({}) than {target} ({})",
                best.name,
                shown(received(best)),
                shown(mine)
            ));
        }
    }
    Ok(format!(
        "{} of {standbys} standbys answer (quorum {k} needs {needed}); {target} received the most WAL ({})",
        reachable.len(),
        shown(mine)
    ))
}

/// The storage manager's degraded-mode record: `Err` when neither its file
/// nor its status can be read.
pub fn degraded_record(cfg: &FailoverConfig) -> std::result::Result<ReplicationRecord, String> {
    let from_file = cfg
        .storage
        .config
        .as_deref()
        .and_then(|p| biblioteca_protocol::config::parse::<StorageConfig>(p).ok())
        .and_then(|s| s.state_dir)
        .map(|d| d.join(REPLICACION_FILE));
    if let Some(path) = from_file {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                return serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ReplicationRecord::default())
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    let timeout = cfg.storage.status_timeout;
    match query_target(&cfg.storage, timeout) {
        Ok(Some(s)) => match s.raw.pointer("/datos/replicacion") {
            Some(v) => {
                let mut r: ReplicationRecord =
                    serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
                r.escrituras = v
                    .get("escrituras_degradadas")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(r.escrituras);
                Ok(r)
            }
            None => Err("the storage manager's status has no replicacion".into()),
        },
        Ok(None) => Err("the storage manager does not answer".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// What promoting `target` (which received up to `has`) would lose
/// according to the degraded-mode record; `None` when nothing.
pub fn degraded_loss(r: &ReplicationRecord, target: &str, has: Option<Lsn>) -> Option<String> {
    if r.estado != ReplicationState::Degradada || r.escrituras == 0 {
        return None;
    }
    let primary_at: Option<Lsn> = r.primario_lsn.as_deref().and_then(|l| l.parse().ok());
    let bytes = match (has, primary_at) {
        (Some(h), Some(p)) if h < p => format!(", {} bytes of WAL or more", h.behind(p)),
        _ => String::new(),
    };
    Some(format!(
        "at least {} writes acknowledged by {} in degraded mode ({} since {}) after the standbys' last confirmed position {}; {target} has up to {}, the old primary wrote at least up to {}{bytes}",
        r.escrituras,
        r.primario.as_deref().unwrap_or("the old primary"),
        r.motivo.as_deref().unwrap_or("?"),
        r.desde_unix.map_or_else(|| "?".to_string(), |t| format!("unix time {t}")),
        r.standby_lsn.as_deref().unwrap_or("?"),
        has.map_or_else(|| "?".to_string(), |l| l.to_string()),
        r.primario_lsn.as_deref().unwrap_or("?"),
    ))
}

/// Both checks for a promotion without the old primary: refuses (one
/// line: why, and what `--allow-data-loss` would lose) or, with `allow`,
/// reports what is lost and goes on.
pub fn verify(
    cfg: &FailoverConfig,
    probes: &[Probe],
    target: &str,
    allow: bool,
    progress: &Progress,
) -> Result<()> {
    // The storage config's standbys (a fenced former primary is none); else
    // every node but the old primary.
    let standbys = cfg
        .storage
        .config
        .as_deref()
        .and_then(|p| biblioteca_protocol::config::parse::<StorageConfig>(p).ok())
        .map(|s| s.database.standbys().count())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| cfg.nodes.len().saturating_sub(1));
    // In the automatic mode the sync record in etcd says which standbys
    // commits waited for, even after one of them died.
    let record = super::sync_record::read_with(cfg)?;
    let (quorum, probes, standbys): (usize, Vec<Probe>, usize) = match &record {
        Some(r) if r.quorum > 0 => {
            progress.step(format!(
                "sync record in etcd: {} waited for ANY {} of {:?}",
                r.primary, r.quorum, r.standbys
            ));
            (
                r.quorum,
                probes
                    .iter()
                    .filter(|p| r.standbys.contains(&p.name))
                    .cloned()
                    .collect(),
                r.standbys.len(),
            )
        }
        _ => (cfg.quorum, probes.to_vec(), standbys),
    };
    let probes = probes.as_slice();
    match check(quorum, probes, target, standbys) {
        Ok(fine) => progress.step(fine),
        Err(why) if allow => progress.warn(format!(
            "{why}; promoting {target} anyway (--allow-data-loss): commits acknowledged only by the missing standbys are LOST"
        )),
        Err(why) => {
            return Err(refuse(
                target,
                why,
                "the commits acknowledged only by the standbys that do not answer",
            ))
        }
    }
    let has = probes.iter().find(|p| p.name == target).and_then(received);
    match degraded_record(cfg) {
        Ok(r) => match degraded_loss(&r, target, has) {
            None if r.estado == ReplicationState::Degradada => progress.step(
                "the storage manager ran degraded but acknowledged no write since: nothing is missing",
            ),
            None => progress.step(
                "the storage manager's record: replication was synchronous, no write acknowledged without a standby",
            ),
            Some(loss) if allow => {
                progress.warn(format!("promoting anyway (--allow-data-loss); LOST: {loss}"))
            }
            Some(loss) => {
                return Err(refuse(
                    target,
                    "writes were acknowledged in degraded mode after the standby's last confirmed position".into(),
                    &loss,
                ))
            }
        },
        // Run away from the storage manager (its host cut off or down, the
        // tool on the database side): with `replicacion = "disponible"` it
        // may have acknowledged writes that only the old primary has, and
        // nothing here can tell. Refused, as any other possible loss.
        Err(why) if allow => progress.warn(format!(
            "cannot read the storage manager's degraded-mode record ({why}); promoting {target} anyway (--allow-data-loss): writes it acknowledged in degraded mode, if any, are LOST"
        )),
        Err(why) => {
            return Err(refuse(
                target,
                format!("cannot read the storage manager's degraded-mode record ({why}), so writes acknowledged without a standby (replicacion = \"disponible\") cannot be ruled out"),
                "any write the storage manager acknowledged in degraded mode (none if it runs replicacion = \"estricta\")",
            ))
        }
    }
    Ok(())
}

/// Refusal in the tool's usual shape.
pub fn refuse(target: &str, why: String, lose: &str) -> FailoverError {
    FailoverError::stuck(
        format!("refusing to promote {target}: {why}; --allow-data-loss would lose {lose}"),
        "nothing was changed",
        "bring the missing nodes back (or wait) and run promote again, or accept the loss with --allow-data-loss",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standby(name: &str, lsn: u64) -> Probe {
        let mut p = Probe::down(name, String::new());
        p.role = Role::Standby;
        p.error = None;
        p.receive_lsn = Some(Lsn(lsn));
        p.replay_lsn = Some(Lsn(lsn));
        p
    }

    #[test]
    fn quorum_arithmetic() {
        let two = [standby("s1", 100), standby("s2", 200)];
        // ANY 1 of 3 standbys: all 3 must answer.
        assert!(check(1, &two, "s2", 3).is_err());
        // ANY 2 of 3: two answering is enough.
        assert!(check(2, &two, "s2", 3).is_ok());
        // ANY 1 of 2: both answer, the most advanced is chosen.
        assert!(check(1, &two, "s2", 2).is_ok());
        let err = check(1, &two, "s1", 2).unwrap_err();
        assert!(err.contains("s2 received more WAL"), "{err}");
        // One of two answers with ANY 1: the other may hold the commit.
        assert!(check(1, &two[..1], "s1", 2).is_err());
        assert!(check(1, &two[..1], "s1", 1).is_ok());
        let tie = [standby("s1", 100), standby("s2", 100)];
        assert_eq!(best_standby(&tie).map(|p| p.name.as_str()), Some("s1"));
    }

    #[test]
    fn degraded_writes_are_reported() {
        let mut r = ReplicationRecord::default();
        assert!(degraded_loss(&r, "standby", None).is_none());
        r.estado = ReplicationState::Degradada;
        assert!(
            degraded_loss(&r, "standby", None).is_none(),
            "degraded but nothing acknowledged: nothing lost"
        );
        r.escrituras = 3;
        r.primario_lsn = Some("0/3000100".into());
        let text = degraded_loss(&r, "standby", Some(Lsn(0x3000000))).unwrap();
        assert!(text.starts_with("at least 3 writes acknowledged"), "{text}");
        assert!(text.contains("256 bytes"), "{text}");
    }
}
