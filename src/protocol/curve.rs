//! The `[curve]` section of each service's configuration, as written.
//!
//! Every key reference (`allow` entries, `*_key` fields) is a public key
//! file, a directory of `*.key` files, or the 40-character Z85 key itself;
//! `secret_key_file` is this process's own key pair. Loading the keys is
//! the runtime's business (`biblioteca_runtime::security::curve`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `biblioteca-almacenamiento`: who may use the storage manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageCurve {
    pub secret_key_file: PathBuf,
    /// The load manager's and the actors' public keys (and an operator's,
    /// for `biblioteca-failover`'s status requests).
    #[serde(default)]
    pub allow: Vec<String>,
}

/// `biblioteca-carga`: its own key, who may use each of its endpoints, and
/// the storage manager's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadManagerCurve {
    pub secret_key_file: PathBuf,
    /// Clients allowed on `frontend`.
    #[serde(default)]
    pub clients_allow: Vec<String>,
    /// Actors allowed on `publisher` and `backchannel`.
    #[serde(default)]
    pub actors_allow: Vec<String>,
    /// The storage manager's public key (for `consulta`).
    pub storage_key: String,
}

/// `biblioteca-actor`: its own key and the servers' keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActorCurve {
    pub secret_key_file: PathBuf,
    /// The load manager's public key (`subscribe` and `report`).
    pub carga_key: String,
    /// The storage manager's public key.
    pub storage_key: String,
}

/// `biblioteca-solicitante`: its own key and the load manager's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCurve {
    pub secret_key_file: PathBuf,
    /// The load manager's public key (every configured endpoint).
    pub carga_key: String,
    /// The storage manager's public key, for an operator's `status` table
    /// (this client's key must then be on the storage manager's allow list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_key: Option<String>,
}

/// `biblioteca-failover` (an operator's tool): its own key, allowed on the
/// storage manager, and the storage manager's key, for `status` requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorCurve {
    pub secret_key_file: PathBuf,
    /// The storage manager's public key.
    pub storage_key: String,
}
