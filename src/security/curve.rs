//! The `[curve]` section of each service's configuration, and applying it to
//! sockets.
//!
//! Every key reference (`allow` entries, `*_key` fields) is a public key
//! file, a directory of `*.key` files, or the 40-character Z85 key itself
//! ([`keys::resolve`]); `secret_key_file` is this process's own key pair
//! ([`KeyPair::load`]). [`Curve`] is the loaded form a service hands to its
//! socket set-up: [`Curve::serve`] before a bind, [`Curve::connect_to`]
//! before a connect; both are no-ops when the section is absent (plaintext).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::keys::{self, KeyPair, PublicKey};
use super::zap::AllowList;
use super::{Peer, SecurityError};

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
pub struct CargaCurve {
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

fn allow_list(entries: &[(&str, &[String])]) -> Result<AllowList, SecurityError> {
    let mut allow = AllowList::new();
    for (domain, refs) in entries {
        let set = allow.entry((*domain).to_string()).or_default();
        for r in refs.iter() {
            set.extend(keys::resolve(r)?);
        }
    }
    Ok(allow)
}

impl StorageCurve {
    pub fn load(&self) -> Result<(Curve, AllowList), SecurityError> {
        let pair = KeyPair::load(&self.secret_key_file)?;
        let allow = allow_list(&[(super::DOMAIN_STORAGE, &self.allow)])?;
        Ok((Curve::new(pair, HashMap::new()), allow))
    }
}

impl CargaCurve {
    pub fn load(&self) -> Result<(Curve, AllowList), SecurityError> {
        let pair = KeyPair::load(&self.secret_key_file)?;
        let allow = allow_list(&[
            (super::DOMAIN_CLIENTS, &self.clients_allow),
            (super::DOMAIN_ACTORS, &self.actors_allow),
        ])?;
        let servers = [(Peer::Storage, keys::resolve_one(&self.storage_key)?)].into();
        Ok((Curve::new(pair, servers), allow))
    }
}

impl ActorCurve {
    pub fn load(&self) -> Result<Curve, SecurityError> {
        let pair = KeyPair::load(&self.secret_key_file)?;
        let servers = [
            (Peer::Carga, keys::resolve_one(&self.carga_key)?),
            (Peer::Storage, keys::resolve_one(&self.storage_key)?),
        ]
        .into();
        Ok(Curve::new(pair, servers))
    }
}

impl OperatorCurve {
    pub fn load(&self) -> Result<Curve, SecurityError> {
        let pair = KeyPair::load(&self.secret_key_file)?;
        let servers = [(Peer::Storage, keys::resolve_one(&self.storage_key)?)].into();
        Ok(Curve::new(pair, servers))
    }
}

impl ClientCurve {
    pub fn load(&self) -> Result<Curve, SecurityError> {
        let pair = KeyPair::load(&self.secret_key_file)?;
        let mut servers: HashMap<Peer, PublicKey> =
            [(Peer::Carga, keys::resolve_one(&self.carga_key)?)].into();
        if let Some(k) = &self.storage_key {
            servers.insert(Peer::Storage, keys::resolve_one(k)?);
        }
        Ok(Curve::new(pair, servers))
    }
}

#[derive(Debug)]
struct Keys {
    pair: KeyPair,
    servers: HashMap<Peer, PublicKey>,
}

/// A process's CURVE identity and the servers it knows; cheap to clone.
/// The default is plaintext.
#[derive(Debug, Clone, Default)]
pub struct Curve {
    keys: Option<Arc<Keys>>,
}

impl Curve {
    pub fn new(pair: KeyPair, servers: HashMap<Peer, PublicKey>) -> Curve {
        Curve {
            keys: Some(Arc::new(Keys { pair, servers })),
        }
    }

    pub fn plaintext() -> Curve {
        Curve::default()
    }

    pub fn is_on(&self) -> bool {
        self.keys.is_some()
    }

    /// Whether `peer`'s key is known (always so in plaintext).
    pub fn knows(&self, peer: Peer) -> bool {
        self.keys.as_ref().map_or(true, |k| k.servers.contains_key(&peer))
    }

    /// This process's public key, when CURVE is on.
    pub fn public_key(&self) -> Option<PublicKey> {
        self.keys.as_ref().map(|k| k.pair.public)
    }

    /// Makes `s` a CURVE server whose peers are checked against ZAP domain
    /// `domain`; call before `bind`.
    pub fn serve(&self, s: &zmq::Socket, domain: &str) -> Result<(), zmq::Error> {
        let Some(k) = &self.keys else {
            return Ok(());
        };
        s.set_curve_server(true)?;
        s.set_curve_secretkey(k.pair.secret_bytes())?;
        s.set_zap_domain(domain)
    }

    /// Makes `s` a CURVE client of `peer`; call before `connect`. A peer
    /// whose key was never configured is `EINVAL` (validation prevents it).
    pub fn connect_to(&self, s: &zmq::Socket, peer: Peer) -> Result<(), zmq::Error> {
        let Some(k) = &self.keys else {
            return Ok(());
        };
        let server = k.servers.get(&peer).ok_or(zmq::Error::EINVAL)?;
        s.set_curve_serverkey(&server.0)?;
        s.set_curve_publickey(&k.pair.public.0)?;
        s.set_curve_secretkey(k.pair.secret_bytes())
    }
}
