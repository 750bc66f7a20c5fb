//! One host's CURVE keys for the whole stack (the demo's `--seguro` and the
//! tests): a key pair per service — the storage manager, the load manager,
//! one per actor operation (its instances share it), one client and one
//! operator (`biblioteca-failover`) — in one directory, and the `[curve]`
//! section of each service that wires them together: clients only to the
//! load manager; the load manager, the actors and the operator to the
//! storage manager; only actors on the publisher and the back-channel.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::curve::{ActorCurve, ClientCurve, LoadManagerCurve, OperatorCurve, StorageCurve};
use super::keys::{self, KeyPair};
use super::SecurityError;
use biblioteca_protocol::Operacion;

pub const STORAGE: &str = "almacenamiento";
pub const CARGA: &str = "carga";
pub const CLIENT: &str = "cliente";
pub const OPERATOR: &str = "operador";

/// The key pair name of the actors serving `op`.
pub fn actor_name(op: Operacion) -> String {
    format!("actor-{op}")
}

/// A directory holding every key pair of one stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKeys {
    pub dir: PathBuf,
}

impl HostKeys {
    /// Creates the key pairs that do not exist yet in `dir` (mode 0700).
    pub fn generate(dir: &Path) -> Result<HostKeys, SecurityError> {
        std::fs::create_dir_all(dir).map_err(keys::io(dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(keys::io(dir))?;
        let me = HostKeys {
            dir: dir.to_path_buf(),
        };
        for name in me.names() {
            if !me.secret(&name).exists() {
                KeyPair::generate()?.save(dir, &name, true)?;
            }
        }
        Ok(me)
    }

    fn names(&self) -> Vec<String> {
        let mut names = vec![
            STORAGE.to_string(),
            CARGA.to_string(),
            CLIENT.to_string(),
            OPERATOR.to_string(),
        ];
        names.extend(Operacion::WRITES.iter().map(|op| actor_name(*op)));
        names
    }

    pub fn public(&self, name: &str) -> PathBuf {
        keys::paths(&self.dir, name).0
    }

    pub fn secret(&self, name: &str) -> PathBuf {
        keys::paths(&self.dir, name).1
    }

    fn public_ref(&self, name: &str) -> String {
        self.public(name).display().to_string()
    }

    fn actors(&self) -> Vec<String> {
        Operacion::WRITES
            .iter()
            .map(|op| self.public_ref(&actor_name(*op)))
            .collect()
    }

    pub fn storage_curve(&self) -> StorageCurve {
        let mut allow = vec![self.public_ref(CARGA)];
        allow.extend(self.actors());
        allow.push(self.public_ref(OPERATOR));
        StorageCurve {
            secret_key_file: self.secret(STORAGE),
            allow,
        }
    }

    pub fn load_manager_curve(&self) -> LoadManagerCurve {
        LoadManagerCurve {
            secret_key_file: self.secret(CARGA),
            clients_allow: vec![self.public_ref(CLIENT)],
            actors_allow: self.actors(),
            storage_key: self.public_ref(STORAGE),
        }
    }

    pub fn actor_curve(&self, op: Operacion) -> ActorCurve {
        ActorCurve {
            secret_key_file: self.secret(&actor_name(op)),
            carga_key: self.public_ref(CARGA),
            storage_key: self.public_ref(STORAGE),
        }
    }

    pub fn operator_curve(&self) -> OperatorCurve {
        OperatorCurve {
            secret_key_file: self.secret(OPERATOR),
            storage_key: self.public_ref(STORAGE),
        }
    }

    pub fn client_curve(&self) -> ClientCurve {
        ClientCurve {
            secret_key_file: self.secret(CLIENT),
            carga_key: self.public_ref(CARGA),
            storage_key: None,
        }
    }
}
