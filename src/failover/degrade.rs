//! `degrade` and `restore`: the degraded mode by hand, for planned work on
//! the standbys, in either `replicacion` mode.
//!
//! The storage manager owns the switch and its record (see
//! `storage::replication`), so the tool only asks: `degrade` creates
//! `state_dir/replicacion.degradar` and waits until the storage manager's
//! status says `degradada`; `restore` removes it and waits for `sincrona`,
//! which comes once enough standbys stream and have replayed everything.
//! The tool therefore runs on the storage manager's host (like every
//! command that rewrites its config).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::storage::query_target;
use super::{FailoverConfig, FailoverError, Progress, Result};
use biblioteca_protocol::config::{StorageConfig, DEGRADAR_FILE};

fn request_file(cfg: &FailoverConfig) -> Result<PathBuf> {
    let path = cfg.storage.config.as_deref().ok_or_else(|| {
        FailoverError::stuck(
            "no [storage] config in the failover config",
            "nothing was changed",
            "set storage.config to the storage manager's TOML and run this on its host",
        )
    })?;
    let storage: StorageConfig = biblioteca_protocol::config::parse(path)?;
    let dir = storage.state_dir.ok_or_else(|| {
        FailoverError::stuck(
            format!("{} has no state_dir", path.display()),
            "nothing was changed",
            "set state_dir in the storage manager's config (the degraded mode is recorded there) and restart it",
        )
    })?;
    Ok(dir.join(DEGRADAR_FILE))
}

/// The storage manager's `replicacion.estado`, if it answers.
fn estado(cfg: &FailoverConfig) -> Option<(String, Value)> {
    let timeout = cfg.storage.status_timeout;
    let status = query_target(&cfg.storage, timeout).ok().flatten()?;
    let r = status.raw.pointer("/datos/replicacion")?.clone();
    let e = r.get("estado")?.as_str()?.to_string();
    Some((e, r))
}

fn wait_for(cfg: &FailoverConfig, want: &str, wait: Duration) -> Option<Value> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some((e, r)) = estado(cfg) {
            if e == want {
                return Some(r);
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn degrade(cfg: &FailoverConfig, progress: &Progress) -> Result<()> {
    if cfg.auto.enabled {
        // Writes acknowledged without a standby would be lost by the next
        // automatic promotion, and the sync record would not know.
        return Err(FailoverError::stuck(
            "degrade is refused in the automatic mode ([auto] enabled)",
            "nothing was changed",
            "turn the automatic mode off (stop the agents, [auto] enabled = false) for planned work without standbys",
        ));
    }
    let file = request_file(cfg)?;
    std::fs::write(&file, "requested by biblioteca-failover degrade\n").map_err(|e| {
        FailoverError::Command {
            command: format!("write {}", file.display()),
            reason: e.to_string(),
        }
    })?;
    progress.step(format!(
        "asked the storage manager to switch synchronous replication off ({})",
        file.display()
    ));
    match wait_for(cfg, "degradada", cfg.storage.switch_wait) {
        Some(r) => {
            progress.step(format!(
                "replication is degradada: {} commits without waiting for a standby (standbys confirmed up to {}); run `biblioteca-failover restore` when they are back",
                r.get("primario").and_then(Value::as_str).unwrap_or("the primary"),
                r.get("standby_lsn").and_then(Value::as_str).unwrap_or("?")
            ));
            Ok(())
        }
        None => Err(FailoverError::stuck(
            format!(
                "the storage manager did not report degradada within {:?}",
                cfg.storage.switch_wait
            ),
            format!("the request {} is in place", file.display()),
            "check `journalctl -u biblioteca-almacenamiento` (is replication synchronous at all? may its role ALTER SYSTEM?); `restore` withdraws the request",
        )),
    }
}

pub fn restore(cfg: &FailoverConfig, progress: &Progress) -> Result<()> {
    let file = request_file(cfg)?;
    match std::fs::remove_file(&file) {
        Ok(()) => progress.step(format!("withdrew the degrade request {}", file.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            progress.step("no degrade request was in place")
        }
        Err(e) => {
            return Err(FailoverError::Command {
                command: format!("remove {}", file.display()),
                reason: e.to_string(),
            })
        }
    }
    progress.step(
        "waiting for the standbys to stream and replay everything; then synchronous replication is switched back on",
    );
    match wait_for(cfg, "sincrona", cfg.storage.switch_wait.max(Duration::from_secs(60))) {
        Some(_) => {
            progress.step("replication is sincrona again");
            Ok(())
        }
        None => Err(FailoverError::stuck(
            "replication is still degradada",
            "the request is withdrawn; the storage manager switches synchronous replication back on once enough standbys stream and have caught up",
            "run `biblioteca-failover status`: start the missing standbys (or `rejoin` them)",
        )),
    }
}
