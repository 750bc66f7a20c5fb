//! Who may talk to whom: CURVE encryption and authentication on every
//! ZeroMQ endpoint that crosses hosts, and the secrets behind it.
//!
//! Clients talk only to the load manager's front-end; only actors receive
//! its publications and report on its back-channel; only the load manager
//! and the actors talk to the storage manager. Each server socket names a
//! ZAP domain ([`DOMAIN_CLIENTS`], [`DOMAIN_ACTORS`], [`DOMAIN_STORAGE`])
//! whose allow-list of client public keys the process's ZAP handler
//! enforces. Everything is off unless a service's configuration has a
//! `[curve]` section.
//!
//! - [`keys`]: key pairs and public keys in Z85, their files.
//! - [`zap`]: the ZAP handler thread.
//! - [`curve`]: the `[curve]` configuration sections and [`Curve`], which
//!   the services apply to their sockets.
//! - [`secrets`]: generated passwords and files only their owner can read.
//! - [`provision`]: a whole host's keys and passwords (demo and tests).

pub mod curve;
pub mod keys;
pub mod provision;
pub mod secrets;
pub mod zap;

use std::path::PathBuf;

use biblioteca_protocol::config::ConfigError;

pub use curve::{
    ActorCurve, ClientCurve, Curve, Load, LoadManagerCurve, OperatorCurve, StorageCurve,
};
pub use keys::{KeyPair, PublicKey};

/// ZAP domain of the load manager's client front-end.
pub const DOMAIN_CLIENTS: &str = "clients";
/// ZAP domain of the load manager's publisher and back-channel.
pub const DOMAIN_ACTORS: &str = "actors";
/// ZAP domain of the storage manager's ROUTER.
pub const DOMAIN_STORAGE: &str = "storage";

/// A server a process connects to, for picking its public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    LoadManager,
    Storage,
}

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("this libzmq has no CURVE support")]
    NoCurve,
    #[error("zeromq: {0}")]
    Zmq(#[from] zmq::Error),
    #[error("cannot start the ZAP handler at inproc://zeromq.zap.01: {0}")]
    Zap(zmq::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secret file {path} is readable by others (mode {mode:o}); chmod 600 it")]
    Exposed { path: PathBuf, mode: u32 },
    #[error("key {origin}: {reason}")]
    BadKey { origin: String, reason: String },
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

/// Loads a server's keys and starts its ZAP handler on `ctx`; plaintext and
/// no handler when `cfg` is `None`. Keep the handler until the sockets close.
fn server(
    ctx: &zmq::Context,
    loaded: Option<(Curve, zap::AllowList)>,
) -> Result<(Curve, Option<zap::Handler>), SecurityError> {
    let Some((curve, allow)) = loaded else {
        return Ok((Curve::plaintext(), None));
    };
    for (domain, keys) in &allow {
        if keys.is_empty() {
            tracing::warn!(domain, "CURVE allow-list is empty: nobody can connect");
        }
    }
    let handler = zap::Handler::start(ctx, allow.clone())?;
    let mut domains: Vec<String> = allow
        .iter()
        .map(|(d, k)| format!("{d}: {} keys", k.len()))
        .collect();
    domains.sort();
    tracing::info!(
        public_key = curve
            .public_key()
            .map(|k| k.z85())
            .unwrap_or_default()
            .as_str(),
        allowed = domains.join(", ").as_str(),
        "CURVE on"
    );
    Ok((curve, Some(handler)))
}

/// The storage manager's CURVE set-up (see [`server`]).
pub fn storage(
    ctx: &zmq::Context,
    cfg: Option<&StorageCurve>,
) -> Result<(Curve, Option<zap::Handler>), SecurityError> {
    server(ctx, cfg.map(StorageCurve::load).transpose()?)
}

/// The load manager's CURVE set-up (see [`server`]).
pub fn load_manager(
    ctx: &zmq::Context,
    cfg: Option<&LoadManagerCurve>,
) -> Result<(Curve, Option<zap::Handler>), SecurityError> {
    server(ctx, cfg.map(LoadManagerCurve::load).transpose()?)
}

/// An actor's CURVE identity (it only connects).
pub fn actor(cfg: Option<&ActorCurve>) -> Result<Curve, SecurityError> {
    let curve = cfg.map(ActorCurve::load).transpose()?.unwrap_or_default();
    if let Some(k) = curve.public_key() {
        tracing::info!(public_key = k.z85().as_str(), "CURVE on");
    }
    Ok(curve)
}

/// A client's CURVE identity.
pub fn client(cfg: Option<&ClientCurve>) -> Result<Curve, SecurityError> {
    Ok(cfg.map(ClientCurve::load).transpose()?.unwrap_or_default())
}

/// For `--check-config`: a `[curve]` section, when there is one, whose
/// files and keys all load.
pub fn check<C: Load>(section: Option<&C>) -> Result<(), ConfigError> {
    match section {
        Some(c) => c
            .load()
            .map(|_| ())
            .map_err(|e| ConfigError::Invalid(format!("curve: {e}"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests;
