//! The roles drop-in: a small TOML file owned by `biblioteca-failover`, read
//! after the storage manager's main configuration and overriding only the
//! nodes' roles.
//!
//! Deployments (a NixOS generation, an ansible template) own the main file
//! and put it back on every run; what the failover tool decided lives in
//! `state_dir/roles.toml`, which neither writes, so the next deployment does
//! not bring a dead primary back. [`load_storage`] is how the storage manager
//! (start, SIGHUP, `--check-config`) and the failover tool read a storage
//! configuration; it records which file set the roles in
//! [`StorageConfig::roles_from`].

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::{ConfigError, NodeRole, StorageConfig, Validate};

/// The drop-in's name inside the storage manager's `state_dir`.
pub const FILE_NAME: &str = "roles.toml";

/// The drop-in's contents: node name to role.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolesFile {
    pub roles: BTreeMap<String, NodeRole>,
}

/// A storage configuration with the drop-in applied.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: StorageConfig,
    /// Names in the drop-in that the main file no longer lists (ignored).
    pub unknown: Vec<String>,
}

/// Where the drop-in of a configuration read from `main` lives:
/// `state_dir/roles.toml`, or `<main without .toml>.roles.toml` beside the
/// main file when it sets no `state_dir`.
pub fn path_for(cfg: &StorageConfig, main: &Path) -> PathBuf {
    match &cfg.state_dir {
        Some(dir) => dir.join(FILE_NAME),
        None => {
            let stem = main
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            main.with_file_name(format!("{stem}.{FILE_NAME}"))
        }
    }
}

/// The drop-in at `path`; `None` when there is none.
pub fn read(path: &Path) -> Result<Option<RolesFile>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text)
            .map(Some)
            .map_err(|e| ConfigError::Invalid(format!("roles file {}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Sets the roles the drop-in names; returns the names `cfg` does not list.
pub fn apply(cfg: &mut StorageConfig, roles: &RolesFile) -> Vec<String> {
    let mut unknown = Vec::new();
    for (name, role) in &roles.roles {
        match cfg.database.nodes.iter_mut().find(|n| &n.name == name) {
            Some(node) => node.role = *role,
            None => unknown.push(name.clone()),
        }
    }
    unknown
}

/// The main file, parsed but not validated (roles may still change).
pub fn parse_main(main: &Path) -> Result<StorageConfig, ConfigError> {
    let text = std::fs::read_to_string(main).map_err(|source| ConfigError::Read {
        path: main.to_path_buf(),
        source,
    })?;
    Ok(toml::from_str(&text)?)
}

/// Reads `main`, applies its drop-in when there is one, then validates the
/// result (an invalid combination names the drop-in).
pub fn load_storage(main: &Path) -> Result<Loaded, ConfigError> {
    let mut config = parse_main(main)?;
    let drop_in = path_for(&config, main);
    let mut unknown = Vec::new();
    config.roles_from = Some(main.to_path_buf());
    if let Some(roles) = read(&drop_in)? {
        unknown = apply(&mut config, &roles);
        config.roles_from = Some(drop_in.clone());
    }
    config.validate().map_err(|e| match &config.roles_from {
        Some(from) if from == &drop_in => ConfigError::Invalid(format!(
            "{e} (roles from {}; delete it to use the roles of {})",
            drop_in.display(),
            main.display()
        )),
        _ => e,
    })?;
    Ok(Loaded { config, unknown })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIN: &str = r#"
# The operator's comment.
workers = 4
state_dir = "STATE"

[[database.nodes]]
name = "db1"
conninfo = "host=127.0.0.1 port=55432 user=app dbname=library"
role = "primary"

[[database.nodes]]
name = "db2"
conninfo = "host=127.0.0.1 port=55433 user=app dbname=library"
role = "standby"
"#;

    fn setup(tag: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("config-roles-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("state")).unwrap();
        let main = dir.join("almacenamiento.toml");
        let text = MAIN.replace("STATE", &dir.join("state").display().to_string());
        std::fs::write(&main, text).unwrap();
        (dir, main)
    }

    #[test]
    fn without_a_drop_in_the_main_file_sets_the_roles() {
        let (dir, main) = setup("none");
        let loaded = load_storage(&main).unwrap();
        assert_eq!(loaded.config.database.primary().unwrap().name, "db1");
        assert_eq!(loaded.config.roles_from.as_deref(), Some(main.as_path()));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_drop_in_overrides_only_roles() {
        let (dir, main) = setup("over");
        let drop_in = dir.join("state").join(FILE_NAME);
        std::fs::write(
            &drop_in,
            "[roles]\ndb1 = \"fenced\"\ndb2 = \"primary\"\ngone = \"standby\"\n",
        )
        .unwrap();
        let loaded = load_storage(&main).unwrap();
        assert_eq!(loaded.config.database.primary().unwrap().name, "db2");
        assert_eq!(loaded.config.database.nodes[0].role, NodeRole::Fenced);
        assert_eq!(loaded.config.workers, 4);
        assert_eq!(loaded.unknown, vec!["gone".to_string()]);
        assert_eq!(loaded.config.roles_from.as_deref(), Some(drop_in.as_path()));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_invalid_combination_names_the_drop_in() {
        let (dir, main) = setup("bad");
        let drop_in = dir.join("state").join(FILE_NAME);
        std::fs::write(&drop_in, "[roles]\ndb2 = \"primary\"\n").unwrap();
        let err = load_storage(&main).unwrap_err().to_string();
        assert!(err.contains("exactly one primary"), "{err}");
        assert!(err.contains(&drop_in.display().to_string()), "{err}");
        std::fs::write(&drop_in, "[roles]\ndb2 = \"boss\"\n").unwrap();
        assert!(load_storage(&main).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn without_state_dir_the_drop_in_sits_beside_the_main_file() {
        let cfg = StorageConfig::default();
        let p = path_for(&cfg, Path::new("/etc/biblioteca/almacenamiento.toml"));
        assert_eq!(p, Path::new("/etc/biblioteca/almacenamiento.roles.toml"));
    }
}
