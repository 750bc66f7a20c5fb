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
use std::sync::Arc;

pub use biblioteca_protocol::curve::{
    ActorCurve, ClientCurve, LoadManagerCurve, OperatorCurve, StorageCurve,
};

use super::keys::{self, KeyPair, PublicKey};
use super::zap::AllowList;
use super::{Peer, SecurityError};

/// Loading a `[curve]` section: its key files read, its key references
/// resolved.
pub trait Load {
    type Output;
    fn load(&self) -> Result<Self::Output, SecurityError>;
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

impl Load for StorageCurve {
    type Output = (Curve, AllowList);

    fn load(&self) -> Result<(Curve, AllowList), SecurityError> {
        let pair = KeyPair::load(&self.secret_key_file)?;
        let allow = allow_list(&[(super::DOMAIN_STORAGE, &self.allow)])?;
        Ok((Curve::new(pair, HashMap::new()), allow))
    }
}

impl Load for LoadManagerCurve {
    type Output = (Curve, AllowList);

    fn load(&self) -> Result<(Curve, AllowList), SecurityError> {
        let pair = KeyPair::load(&self.secret_key_file)?;
        let allow = allow_list(&[
            (super::DOMAIN_CLIENTS, &self.clients_allow),
            (super::DOMAIN_ACTORS, &self.actors_allow),
        ])?;
        let servers = [(Peer::Storage, keys::resolve_one(&self.storage_key)?)].into();
        Ok((Curve::new(pair, servers), allow))
    }
}

impl Load for ActorCurve {
    type Output = Curve;

    fn load(&self) -> Result<Curve, SecurityError> {
        let pair = KeyPair::load(&self.secret_key_file)?;
        let servers = [
            (Peer::LoadManager, keys::resolve_one(&self.carga_key)?),
            (Peer::Storage, keys::resolve_one(&self.storage_key)?),
        ]
        .into();
        Ok(Curve::new(pair, servers))
    }
}

impl Load for OperatorCurve {
    type Output = Curve;

    fn load(&self) -> Result<Curve, SecurityError> {
        let pair = KeyPair::load(&self.secret_key_file)?;
        let servers = [(Peer::Storage, keys::resolve_one(&self.storage_key)?)].into();
        Ok(Curve::new(pair, servers))
    }
}

impl Load for ClientCurve {
    type Output = Curve;

    fn load(&self) -> Result<Curve, SecurityError> {
        let pair = KeyPair::load(&self.secret_key_file)?;
        let mut servers: HashMap<Peer, PublicKey> =
            [(Peer::LoadManager, keys::resolve_one(&self.carga_key)?)].into();
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
        self.keys
            .as_ref()
            .is_none_or(|k| k.servers.contains_key(&peer))
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
