//! The single-write path: one request in its own transaction, retried as
//! the database asks (serialization failure, deadlock, a lost race on the
//! one-active-loan index, a pooled connection the server closed).

use std::time::Duration;

use super::failure::{classify, db_reason, unavailable, Failure};
use super::ops::{self, TxError};
use super::Shared;
use biblioteca_protocol::{CodigoError, Peticion, Respuesta};

/// Tries of one write when the database asks for a retry (serialization
/// failure, deadlock, a lost race on the one-active-loan index).
const ATTEMPTS: u32 = 4;

/// Runs write `p` under `id` (its own, or one generated for it), retrying
/// as the database asks.
pub(super) fn write_as(shared: &Shared, p: &Peticion, id: String) -> Vec<u8> {
    let op = p.operacion.as_str();
    let backend = shared.backend();
    let Some((idx, node)) = backend.writer() else {
        shared.request_recheck();
        return unavailable(op, Some(&id), "no writable database node");
    };
    let mut last = String::new();
    let mut lost_race = false;
    for attempt in 1..=ATTEMPTS {
        let mut conn = match node.pool.get() {
            Ok(c) => c,
            Err(e) => {
                shared.request_recheck();
                tracing::warn!(node = %node.cfg.name, error = %e, "no database connection for a write");
                return unavailable(
                    op,
                    Some(&id),
                    format!("no connection to node {}", node.cfg.name),
                );
            }
        };
        match ops::apply_write(&mut conn, p, &id, shared.fencing.newest()) {
            Ok(bytes) => {
                shared.replication.note_write();
                return bytes;
            }
            Err(TxError::IdReused(msg)) => {
                return Respuesta::error(op, CodigoError::PeticionInvalida, msg)
                    .with_id(Some(id))
                    .to_bytes()
            }
            Err(TxError::Unexpected(why)) => {
                tracing::error!(id, node = %node.cfg.name, error = %why, "write function answered something unexpected");
                return unavailable(op, Some(&id), "unexpected answer from the database");
            }
            Err(TxError::Fenced(why)) => {
                backend.demote(idx, &why, why.contains("timeline"));
                shared.request_recheck();
                return unavailable(op, Some(&id), why);
            }
            Err(TxError::Db(e)) => match classify(&e) {
                Failure::Retry | Failure::ActiveLoanRace => {
                    lost_race = classify(&e) == Failure::ActiveLoanRace;
                    last = e.to_string();
                    tracing::debug!(id, attempt, error = %e, "retrying transaction");
                    std::thread::sleep(Duration::from_millis(u64::from(attempt) * 3));
                }
                Failure::ReadOnly => {
                    backend.demote(idx, "node is in recovery (read-only)", false);
                    shared.request_recheck();
                    return unavailable(op, Some(&id), "the write node is read-only");
                }
                // A pooled connection the server closed (restart, idle
                // kill) is not tested on checkout, to save a round trip per
                // request: r2d2 discards it, and the retry takes a fresh
                // one. Safe even if the commit went through: the id is
                // stored in that same transaction.
                Failure::Unavailable { .. } if e.is_closed() && attempt < ATTEMPTS => {
                    last = e.to_string();
                    tracing::debug!(
                        id,
                        attempt,
                        "connection was closed; retrying on a fresh one"
                    );
                }
                Failure::Unavailable { node_down } => {
                    if node_down {
                        shared.request_recheck();
                    }
                    tracing::warn!(id, node = %node.cfg.name, error = %e, "write failed");
                    return unavailable(op, Some(&id), db_reason(&e));
                }
            },
        }
    }
    if lost_race {
        return Respuesta::error(
            op,
            CodigoError::PrestamoActivo,
            format!("{} already has {} on loan", p.usuario, p.isbn),
        )
        .with_id(Some(id))
        .to_bytes();
    }
    tracing::warn!(id, error = %last, "transaction kept failing");
    unavailable(op, Some(&id), format!("gave up after {ATTEMPTS} attempts"))
}
