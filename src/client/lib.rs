//! The requesting side: everything `biblioteca-solicitante` does, as a library.
//!
//! [`Client`] is a synchronous Lazy Pirate client (one REQ socket owned by the
//! calling thread; a reply deadline, then a fresh socket, the same request id,
//! the next endpoint). Around it: request files ([`archivo`]), latency
//! summaries ([`stats`]), the health table ([`status`]), the one-line
//! rendering of replies ([`render`]) and the load generator ([`load`]). The
//! binary only parses arguments and prints what these modules return.

pub mod archivo;
pub mod load;
pub mod pirate;
pub mod render;
pub mod stats;
pub mod status;

pub use pirate::{new_request_id, Client, ClientError};
