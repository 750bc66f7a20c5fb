//! Re-pointing the storage manager: asking which node it serves from,
//! recording the new roles in its roles drop-in ([`super::roles_file`]; its
//! main TOML belongs to the deployment and is never written), telling it to
//! reload, and waiting until it reports the new node ([`repoint`] does all
//! four after a promotion).

use serde_json::Value;
use std::time::{Duration, Instant};

use super::roles_file;
use super::{FailoverConfig, FailoverError, Progress, ReloadMethod, Result, StorageTarget};
use biblioteca_protocol::config::NodeRole;
use biblioteca_runtime::net;
use biblioteca_runtime::security::Load;
use biblioteca_runtime::security::{Curve, Peer};

/// What the storage manager says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageStatus {
    /// The node it currently writes to (`datos.nodo`), if any.
    pub writer: Option<String>,
    /// The whole reply, for `status --json`.
    pub raw: Value,
}

/// One `{"operacion":"status"}` round trip on a fresh plaintext REQ
/// socket; `None` when nothing answers within `timeout`.
pub fn query_status(endpoint: &str, timeout: Duration) -> Result<Option<StorageStatus>> {
    query_status_with(endpoint, &Curve::plaintext(), timeout)
}

/// [`query_status`] as the target's configured CURVE client, if any.
pub fn query_target(target: &StorageTarget, timeout: Duration) -> Result<Option<StorageStatus>> {
    let curve = match &target.curve {
        Some(c) => c.load()?,
        None => Curve::plaintext(),
    };
    query_status_with(&target.endpoint, &curve, timeout)
}

/// [`query_status`] with `curve` as the client of the storage manager (a
/// CURVE server drops a plaintext or unknown peer without an answer).
pub fn query_status_with(
    endpoint: &str,
    curve: &Curve,
    timeout: Duration,
) -> Result<Option<StorageStatus>> {
    let ctx = zmq::Context::new();
    let s = net::socket(&ctx, zmq::REQ)?;
    s.set_linger(0).map_err(net::NetError::from)?;
    curve
        .connect_to(&s, Peer::Storage)
        .map_err(net::NetError::from)?;
    net::connect(&s, endpoint)?;
    s.send(&br#"{"operacion":"status"}"#[..], 0)
        .map_err(net::NetError::from)?;
    let Some(frame) = net::recv_within(&s, timeout)?.and_then(|mut f| f.pop()) else {
        return Ok(None);
    };
    let raw: Value = serde_json::from_slice(&frame).unwrap_or(Value::Null);
    let writer = raw
        .pointer("/datos/nodo")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(Some(StorageStatus { writer, raw }))
}

/// Tells the storage manager to re-read its config.
pub fn reload(target: &StorageTarget) -> Result<String> {
    match target.reload {
        ReloadMethod::None => Ok("reload = \"none\": reload the storage manager yourself".into()),
        ReloadMethod::Systemd => {
            let command = format!("systemctl reload {}", target.unit);
            biblioteca_cluster::pg::run_command(
                std::process::Command::new("systemctl")
                    .arg("reload")
                    .arg(&target.unit),
            )?;
            Ok(format!("ran `{command}`"))
        }
        ReloadMethod::Pid => {
            let pid = match (target.pid, &target.pid_file) {
                (Some(pid), _) => pid,
                (None, Some(file)) => std::fs::read_to_string(file)
                    .ok()
                    .and_then(|t| t.trim().parse::<i32>().ok())
                    .ok_or_else(|| FailoverError::Command {
                        command: format!("read pid from {}", file.display()),
                        reason: "missing or not a number".into(),
                    })?,
                (None, None) => {
                    return Err(FailoverError::Command {
                        command: "SIGHUP".into(),
                        reason: "neither storage.pid nor storage.pid_file is set".into(),
                    })
                }
            };
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGHUP,
            )
            .map_err(|e| FailoverError::Command {
                command: format!("kill -HUP {pid}"),
                reason: e.to_string(),
            })?;
            Ok(format!("sent SIGHUP to pid {pid}"))
        }
    }
}

/// Waits until the storage manager reports `datos.nodo == node`.
pub fn wait_serving(target: &StorageTarget, node: &str, progress: &Progress) -> Result<()> {
    let deadline = Instant::now() + target.switch_wait;
    let timeout = target.status_timeout;
    loop {
        let last = match query_target(target, timeout) {
            Ok(Some(s)) if s.writer.as_deref() == Some(node) => {
                progress.step(format!("storage manager now serves from {node}"));
                return Ok(());
            }
            Ok(Some(s)) => format!(
                "it reports node {}",
                s.writer.as_deref().unwrap_or("(none)")
            ),
            Ok(None) => format!("no answer from {}", target.endpoint),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(FailoverError::stuck(
                format!(
                    "the storage manager did not switch to {node} within {}s",
                    target.switch_wait.as_secs()
                ),
                format!("the database side is done; {last}"),
                "check the storage manager's log (journalctl -u biblioteca-almacenamiento) and its config, reload it, then run `biblioteca-failover status`",
            ));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Records the storage manager's roles (new primary, old fenced), reloads
/// it and waits until it serves from `new`.
pub fn repoint(
    cfg: &FailoverConfig,
    new: &str,
    old: Option<&str>,
    progress: &Progress,
) -> Result<()> {
    let target = &cfg.storage;
    match &target.config {
        Some(path) => {
            let mut changes = vec![(new, NodeRole::Primary)];
            if let Some(o) = old {
                changes.push((o, NodeRole::Fenced));
            }
            let written = roles_file::record(path, &changes).map_err(|e| {
                FailoverError::stuck(
                    format!("cannot record the new roles for the storage manager: {e}"),
                    format!("the database side is done: {new} is the primary"),
                    format!("write [roles] {new} = \"primary\" (and the old primary \"fenced\") to the roles file under the storage manager's state_dir, as `status` names it, and reload the storage manager"),
                )
            })?;
            progress.step(format!(
                "roles file {} now names {new} primary{} (over {})",
                written.display(),
                old.map(|o| format!(", {o} fenced")).unwrap_or_default(),
                path.display()
            ));
        }
        None => {
            progress.warn("no storage.config set: the storage manager's roles were not recorded")
        }
    }
    let how = reload(target).map_err(|e| {
        FailoverError::stuck(
            format!("cannot reload the storage manager: {e}"),
            format!("{new} is the primary and the config names it; the storage manager has not re-read it"),
            "reload it by hand (systemctl reload biblioteca-almacenamiento, or kill -HUP its pid)",
        )
    })?;
    progress.step(format!("storage manager reload: {how}"));
    progress.step(format!(
        "waiting up to {}s for the storage manager ({}) to serve from {new}",
        target.switch_wait.as_secs(),
        target.endpoint
    ));
    wait_serving(target, new, progress)
}

/// One node's role in the storage manager's roles file, then a reload (no wait:
/// the node it writes to does not change).
pub fn set_role_and_reload(
    cfg: &FailoverConfig,
    node: &str,
    role: NodeRole,
    progress: &Progress,
) -> Result<()> {
    if let Some(path) = &cfg.storage.config {
        let written = roles_file::record(path, &[(node, role)])?;
        progress.step(format!(
            "roles file {}: {node} is now {}",
            written.display(),
            role.as_str()
        ));
    }
    let how = reload(&cfg.storage)?;
    progress.step(format!("storage manager reload: {how}"));
    Ok(())
}
