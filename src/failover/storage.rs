//! Re-pointing the storage manager: asking which node it serves from,
//! rewriting the roles in its TOML without losing anything else in the file,
//! telling it to reload, and waiting until it reports the new node
//! ([`repoint`] does all four after a promotion).
//!
//! The rewrite is crash-safe: the new text is validated as a
//! [`StorageConfig`] first, the old file is kept as `*.bak`, and the new one
//! is written to a temporary file in the same directory, fsynced and renamed
//! over the original (then the directory is fsynced), so a reader sees
//! either the old or the new file, never half of one.

use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{FailoverConfig, FailoverError, Progress, ReloadMethod, Result, StorageTarget};
use biblioteca_protocol::config::{parse_reader, NodeRole, StorageConfig};
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

/// Sets the named nodes' roles in the storage manager's TOML. A node made
/// primary demotes any other primary to `fenced` (exactly one primary is an
/// invariant of [`StorageConfig`]). Returns the backup's path.
pub fn set_roles(path: &Path, changes: &[(&str, NodeRole)]) -> Result<PathBuf> {
    let fail = |reason: String| FailoverError::StorageConfig {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let new_text = rewrite_roles(&text, changes).map_err(fail)?;
    parse_reader::<StorageConfig, _>(new_text.as_bytes())
        .map_err(|e| fail(format!("the rewritten file would be invalid: {e}")))?;
    let backup = sibling(path, ".bak");
    write_atomically(&backup, text.as_bytes(), path)
        .map_err(|e| fail(format!("cannot write backup {}: {e}", backup.display())))?;
    write_atomically(path, new_text.as_bytes(), path).map_err(|e| fail(e.to_string()))?;
    Ok(backup)
}

/// The TOML text with roles changed; unknown keys are kept.
pub fn rewrite_roles(text: &str, changes: &[(&str, NodeRole)]) -> Result<String, String> {
    let mut table: toml::Table = text.parse().map_err(|e| format!("invalid TOML: {e}"))?;
    let nodes = table
        .get_mut("database")
        .and_then(|d| d.as_table_mut())
        .and_then(|d| d.get_mut("nodes"))
        .and_then(|n| n.as_array_mut())
        .ok_or("no [[database.nodes]] list")?;
    let promoted: Vec<&str> = changes
        .iter()
        .filter(|(_, r)| *r == NodeRole::Primary)
        .map(|(n, _)| *n)
        .collect();
    for (name, role) in changes {
        let found = nodes
            .iter_mut()
            .filter_map(|n| n.as_table_mut())
            .find(|n| n.get("name").and_then(|v| v.as_str()) == Some(name));
        let node = found.ok_or_else(|| format!("no node named {name:?} in [[database.nodes]]"))?;
        node.insert("role".into(), toml::Value::String(role.as_str().into()));
    }
    if !promoted.is_empty() {
        for n in nodes.iter_mut().filter_map(|n| n.as_table_mut()) {
            let name = n.get("name").and_then(|v| v.as_str()).unwrap_or_default();
            let primary = n.get("role").and_then(|v| v.as_str()) == Some("primary");
            if primary && !promoted.contains(&name) {
                n.insert("role".into(), toml::Value::String("fenced".into()));
            }
        }
    }
    toml::to_string(&table).map_err(|e| format!("cannot serialize: {e}"))
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Temp file in the same directory, fsync, rename, fsync the directory.
/// Permissions and owner are copied from `like`.
fn write_atomically(path: &Path, bytes: &[u8], like: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path.file_name().map(|f| f.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        file_name.unwrap_or_default(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        if let Ok(meta) = std::fs::metadata(like) {
            f.set_permissions(meta.permissions())?;
            // Keep the owner so a service running as another user can still read it.
            let _ = std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()));
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
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

/// Rewrites the storage manager's roles (new primary, old fenced), reloads
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
            let backup = set_roles(path, &changes).map_err(|e| {
                FailoverError::stuck(
                    format!("cannot update the storage manager's config: {e}"),
                    format!("the database side is done: {new} is the primary"),
                    format!("set role = \"primary\" for {new} (and \"fenced\" for the old primary) in {} by hand and reload the storage manager", path.display()),
                )
            })?;
            progress.step(format!(
                "storage config {} now names {new} primary{} (backup {})",
                path.display(),
                old.map(|o| format!(", {o} fenced")).unwrap_or_default(),
                backup.display()
            ));
        }
        None => {
            progress.warn("no storage.config set: the storage manager's config was not changed")
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

/// One node's role in the storage manager's TOML, then a reload (no wait:
/// the node it writes to does not change).
pub fn set_role_and_reload(
    cfg: &FailoverConfig,
    node: &str,
    role: NodeRole,
    progress: &Progress,
) -> Result<()> {
    if let Some(path) = &cfg.storage.config {
        set_roles(path, &[(node, role)])?;
        progress.step(format!(
            "storage config {}: {node} is now {}",
            path.display(),
            role.as_str()
        ));
    }
    let how = reload(&cfg.storage)?;
    progress.step(format!("storage manager reload: {how}"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = r#"
bind = "tcp://*:5570"
workers = 4

[database]
pool_size = 4

[[database.nodes]]
name = "primary"
conninfo = "host=127.0.0.1 port=55432 user=app dbname=library"
role = "primary"

[[database.nodes]]
name = "standby"
conninfo = "host=127.0.0.1 port=55433 user=app dbname=library"
role = "standby"
"#;

    #[test]
    fn promotion_fences_the_old_primary_and_keeps_other_keys() {
        let out = rewrite_roles(CFG, &[("standby", NodeRole::Primary)]).unwrap();
        let cfg: StorageConfig = parse_reader(out.as_bytes()).unwrap();
        assert_eq!(cfg.workers, 4);
        assert_eq!(cfg.database.pool_size, 4);
        assert_eq!(cfg.database.primary().unwrap().name, "standby");
        assert_eq!(cfg.database.nodes[0].role, NodeRole::Fenced);
        assert!(rewrite_roles(CFG, &[("ghost", NodeRole::Primary)]).is_err());
    }

    #[test]
    fn atomic_rewrite_keeps_a_backup() {
        let dir = std::env::temp_dir().join(format!("fo-storage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("almacenamiento.toml");
        std::fs::write(&path, CFG).unwrap();
        let backup = set_roles(&path, &[("standby", NodeRole::Primary)]).unwrap();
        assert_eq!(std::fs::read_to_string(&backup).unwrap(), CFG);
        let now: StorageConfig = biblioteca_protocol::config::parse(&path).unwrap();
        assert_eq!(now.database.primary().unwrap().name, "standby");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
