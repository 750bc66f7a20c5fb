//! Resolves every request whose outcome the client never learnt, once the
//! faults are over.
//!
//! Lookups go to the storage manager (the in-process suites) or through the
//! load manager (the lab, where only it admits the client's CURVE key): a
//! `resultado` lookup that finds a stored outcome means it was
//! applied (once); `SolicitudDesconocida` only means "not applied yet", so
//! the id is then burnt with a tombstone (a `devolucion` of a book that does
//! not exist, stored under that id): once the tombstone is stored the
//! original can never apply, and if the original won the race the tombstone
//! is refused as a reused id and the next lookup finds it.

use std::time::{Duration, Instant};

use biblioteca_client::pirate::{Client, ClientError};
use biblioteca_protocol::config::ClientConfig;
use biblioteca_protocol::curve::ClientCurve;
use biblioteca_protocol::{CodigoError, Operacion, Peticion, Respuesta};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::workload::{Entry, Outcome};

/// Not in any catalogue; a well-formed ISBN so the request is stored.
pub const TOMBSTONE_ISBN: &str = "979-0000000000";
const TOMBSTONE_USER: &str = "history-tombstone";
/// Lookups (and tombstones) per id before giving up on resolving it.
const RESOLVE_TRIES: u32 = 40;
/// All resolutions together: a wedged storage manager fails the test, not hangs it.
const RESOLVE_MAX: Duration = Duration::from_secs(120);

/// What finally happened to a request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Resolution {
    /// The client got a definitive reply.
    Told(Respuesta),
    /// Unknown to the client; the lookup found this stored outcome.
    Applied(Respuesta),
    /// Unknown to the client; never applied (its id now holds a tombstone).
    NotApplied,
    /// A `consulta`: nothing to resolve.
    Read,
    /// Could not be resolved (a violation).
    Unresolved(String),
}

impl Resolution {
    /// One line: how it ended.
    pub fn brief(&self) -> String {
        let short = |r: &Respuesta| if r.exito { "ok".to_string() } else { code(r) };
        match self {
            Resolution::Told(r) => format!("told {}", short(r)),
            Resolution::Applied(r) => format!("unknown, applied: {}", short(r)),
            Resolution::NotApplied => "unknown, never applied".into(),
            Resolution::Read => "read".into(),
            Resolution::Unresolved(why) => format!("UNRESOLVED: {why}"),
        }
    }

    /// The outcome stored under the id, when the request was applied.
    pub fn stored(&self) -> Option<&Respuesta> {
        match self {
            Resolution::Told(r) | Resolution::Applied(r) => Some(r),
            _ => None,
        }
    }
}

/// Resolves every entry, asking `endpoints` (a storage manager, or load
/// managers with the client's `curve` key).
pub fn resolve(
    endpoints: &[String],
    curve: Option<ClientCurve>,
    history: &[Entry],
) -> Result<Vec<Resolution>, ClientError> {
    let mut client = Client::new(ClientConfig {
        endpoints: endpoints.to_vec(),
        timeout: Duration::from_millis(2000),
        retries: 1,
        curve,
    })?;
    let deadline = Instant::now() + RESOLVE_MAX;
    Ok(history
        .iter()
        .map(|e| match &e.outcome {
            _ if e.op == Operacion::Consulta => Resolution::Read,
            Outcome::Definitive(r) => Resolution::Told(r.clone()),
            Outcome::Unknown { .. } => resolve_one(&mut client, e, deadline),
        })
        .collect())
}

fn resolve_one(client: &mut Client, e: &Entry, deadline: Instant) -> Resolution {
    let lookup = json!({"operacion": "resultado", "id": e.id}).to_string();
    let tombstone = Peticion {
        operacion: Operacion::Devolucion,
        isbn: TOMBSTONE_ISBN.into(),
        usuario: TOMBSTONE_USER.into(),
        id: Some(e.id.clone()),
    };
    let mut last = String::from("the resolution deadline had passed");
    for _ in 0..RESOLVE_TRIES {
        if Instant::now() >= deadline {
            break;
        }
        match client.raw(lookup.as_bytes()) {
            Ok(r) if r.error == Some(CodigoError::SolicitudDesconocida) => {
                match client.request(&tombstone) {
                    Ok(t) if t.error == Some(CodigoError::LibroNoEncontrado) => {
                        return Resolution::NotApplied
                    }
                    // The original was stored in between: look it up again.
                    Ok(t) if t.error == Some(CodigoError::PeticionInvalida) => continue,
                    Ok(t) => last = format!("tombstone answered {}", t.mensaje),
                    Err(err) => last = err.to_string(),
                }
            }
            Ok(r) if r.error.is_none_or(CodigoError::is_definitive) => {
                return Resolution::Applied(r)
            }
            Ok(r) => last = r.mensaje,
            Err(err) => last = err.to_string(),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Resolution::Unresolved(last)
}

pub(crate) fn code(r: &Respuesta) -> String {
    r.error.map(|c| c.to_string()).unwrap_or_default()
}
