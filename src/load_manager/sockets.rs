//! The load manager's four sockets and the options each one needs: a
//! ROUTER for clients, a PUB to the actors, a PULL for their reports and a
//! DEALER to the storage manager. They are opened here, on the broker
//! thread, and never leave it.

use super::LoadManagerError;
use biblioteca_protocol::config::LoadManagerConfig;
use biblioteca_runtime::net;
use biblioteca_runtime::security::{self, Curve, Peer};

/// Requests queued towards the storage manager: a storage manager that is
/// down or not keeping up costs at most this many stale messages; beyond it
/// `consulta` fails at once.
const STORAGE_HWM: i32 = 1000;

pub(super) struct Sockets {
    pub(super) frontend: zmq::Socket,
    pub(super) publisher: zmq::Socket,
    pub(super) backchannel: zmq::Socket,
    pub(super) storage: zmq::Socket,
}

impl Sockets {
    pub(super) fn open(
        ctx: &zmq::Context,
        cfg: &LoadManagerConfig,
        curve: &Curve,
    ) -> Result<Sockets, LoadManagerError> {
        // ROUTER and PUB never block on send (they drop), so net::HWM bounds
        // memory per peer without ever stalling the loop. Anyone may connect
        // to the front-end and the back-channel: their receive side is sized
        // for clients.
        let frontend = net::client_facing(ctx, zmq::ROUTER)?;
        curve.serve(&frontend, security::DOMAIN_CLIENTS)?;
        net::bind(&frontend, &cfg.frontend)?;
        let publisher = net::socket(ctx, zmq::PUB)?;
        curve.serve(&publisher, security::DOMAIN_ACTORS)?;
        net::bind(&publisher, &cfg.publisher)?;
        let backchannel = net::client_facing(ctx, zmq::PULL)?;
        curve.serve(&backchannel, security::DOMAIN_ACTORS)?;
        net::bind(&backchannel, &cfg.backchannel)?;
        let storage = net::socket(ctx, zmq::DEALER)?;
        storage.set_sndhwm(STORAGE_HWM)?;
        // A storage manager that vanished without closing TCP: heartbeats
        // from net::connect.
        curve.connect_to(&storage, Peer::Storage)?;
        net::connect(&storage, &cfg.storage)?;
        Ok(Sockets {
            frontend,
            publisher,
            backchannel,
            storage,
        })
    }
}
