//! Recording a role change in the storage manager's roles drop-in
//! ([`biblioteca_protocol::config_roles`]) instead of its main configuration, which the
//! deployment owns and puts back on every run.
//!
//! The drop-in always lists every node's role (the main file's roles with
//! the earlier drop-in and this change applied), so it reads the same
//! whatever the main file says later. The write is crash-safe: the merged
//! configuration is validated first, then the text goes to a temporary file
//! in the same directory, is fsynced and renamed over the drop-in (then the
//! directory is fsynced), so the storage manager reads the old or the new
//! roles, never half of them. The main file is never written.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{FailoverError, Result};
use biblioteca_protocol::config::{NodeRole, StorageConfig, Validate};
use biblioteca_protocol::config_roles::{self, RolesFile};

/// Applies `changes` to the roles the storage manager reads from `main` (and
/// its current drop-in) and writes the drop-in. A node made primary demotes
/// any other primary to `fenced` (exactly one primary is an invariant of
/// [`StorageConfig`]). Returns the drop-in's path.
pub fn record(main: &Path, changes: &[(&str, NodeRole)]) -> Result<PathBuf> {
    let fail = |reason: String| FailoverError::StorageConfig {
        path: main.display().to_string(),
        reason,
    };
    let mut cfg = config_roles::parse_main(main).map_err(|e| fail(e.to_string()))?;
    let path = config_roles::path_for(&cfg, main);
    if let Some(current) = config_roles::read(&path).map_err(|e| fail(e.to_string()))? {
        config_roles::apply(&mut cfg, &current);
    }
    let roles = merged_roles(&cfg, changes).map_err(fail)?;
    config_roles::apply(&mut cfg, &roles);
    cfg.validate()
        .map_err(|e| fail(format!("the new roles would be invalid: {e}")))?;
    let text = render(&roles, main).map_err(fail)?;
    write_atomically(&path, text.as_bytes())
        .map_err(|e| fail(format!("cannot write {}: {e}", path.display())))?;
    Ok(path)
}

/// Every node's role in `cfg` with `changes` applied.
pub fn merged_roles(
    cfg: &StorageConfig,
    changes: &[(&str, NodeRole)],
) -> Result<RolesFile, String> {
    let mut roles = RolesFile {
        roles: cfg
            .database
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.role))
            .collect(),
    };
    let promoted: Vec<&str> = changes
        .iter()
        .filter(|(_, r)| *r == NodeRole::Primary)
        .map(|(n, _)| *n)
        .collect();
    if !promoted.is_empty() {
        for (name, role) in roles.roles.iter_mut() {
            if *role == NodeRole::Primary && !promoted.contains(&name.as_str()) {
                *role = NodeRole::Fenced;
            }
        }
    }
    for (name, role) in changes {
        let slot = roles
            .roles
            .get_mut(*name)
            .ok_or_else(|| format!("no node named {name:?} in [[database.nodes]]"))?;
        *slot = *role;
    }
    Ok(roles)
}

fn render(roles: &RolesFile, main: &Path) -> Result<String, String> {
    let body = toml::to_string(roles).map_err(|e| format!("cannot serialize: {e}"))?;
    Ok(format!(
        "# Written by biblioteca-failover: the nodes' current roles.\n\
         # They override the roles in {main}, which the deployment owns.\n\
         # Once the deployment names the same roles, this file may be deleted\n\
         # (then reload the storage manager).\n{body}",
        main = main.display()
    ))
}

/// Temp file in the same directory, fsync, rename, fsync the directory. The
/// file is world-readable (roles are no secret) and owned like its
/// directory, so the storage manager (a dynamic user) can read and the
/// next run of this tool can replace it.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
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
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        if let Ok(meta) = std::fs::metadata(dir) {
            // Best effort: only root may give a file away.
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

#[cfg(test)]
mod tests {
    use super::*;

    const MAIN: &str = r#"# The operator's comment stays.
bind = "tcp://*:5570"
workers = 4
state_dir = "STATE"

[[database.nodes]]
name = "primary"
conninfo = "host=127.0.0.1 port=55432 user=app dbname=library"
role = "primary"

[[database.nodes]]
name = "standby"
conninfo = "host=127.0.0.1 port=55433 user=app dbname=library"
role = "standby"
"#;

    fn setup(tag: &str) -> (PathBuf, PathBuf, String) {
        let dir = std::env::temp_dir().join(format!("fo-roles-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("state")).unwrap();
        let main = dir.join("almacenamiento.toml");
        let text = MAIN.replace("STATE", &dir.join("state").display().to_string());
        std::fs::write(&main, &text).unwrap();
        (dir, main, text)
    }

    #[test]
    fn promotion_fences_the_old_primary_and_leaves_the_main_file_alone() {
        let (dir, main, text) = setup("promote");
        let path = record(&main, &[("standby", NodeRole::Primary)]).unwrap();
        assert_eq!(path, dir.join("state").join(config_roles::FILE_NAME));
        assert_eq!(std::fs::read_to_string(&main).unwrap(), text);
        let loaded = config_roles::load_storage(&main).unwrap();
        assert_eq!(loaded.config.database.primary().unwrap().name, "standby");
        assert_eq!(loaded.config.database.nodes[0].role, NodeRole::Fenced);
        assert_eq!(loaded.config.workers, 4);
        // A later change starts from the drop-in's roles.
        record(&main, &[("primary", NodeRole::Standby)]).unwrap();
        let loaded = config_roles::load_storage(&main).unwrap();
        assert_eq!(loaded.config.database.primary().unwrap().name, "standby");
        assert_eq!(loaded.config.database.nodes[0].role, NodeRole::Standby);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unknown_node_changes_nothing() {
        let (dir, main, _) = setup("ghost");
        assert!(record(&main, &[("ghost", NodeRole::Primary)]).is_err());
        assert!(!dir.join("state").join(config_roles::FILE_NAME).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
