//! One accepted request → one reply: which node answers it, how often a
//! transaction is retried, and how database failures become
//! `AlmacenamientoNoDisponible` (transient, never stored) instead of hangs.
//!
//! Writes go only to the node [`Backend::writer`] names; `consulta` and
//! `resultado` fall back to a reachable standby when the writer cannot answer,
//! and such a `consulta` says `posiblemente_desactualizado: true`.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postgres::error::SqlState;
use serde_json::Value;

use super::nodes::{Backend, Node};
use super::ops::{self, TxError};
use super::Shared;
use biblioteca_protocol::{CodigoError, Entrada, Operacion, Peticion, Respuesta};

/// Tries of one write when the database asks for a retry (serialization
/// failure, deadlock, a lost race on the one-active-loan index).
const ATTEMPTS: u32 = 4;

/// Index that allows one ACTIVO loan per (isbn, usuario); see migration 0001.
const ACTIVE_LOAN_INDEX: &str = "prestamos_un_activo";

/// The book a request writes (its writes are batched per book by
/// [`dispatch`](super::dispatch)); `None` for reads.
pub fn write_book(entrada: &Entrada) -> Option<&str> {
    match entrada {
        Entrada::Operacion(p) if p.operacion != Operacion::Consulta => Some(&p.isbn),
        _ => None,
    }
}

/// The replies to what the dispatcher handed one worker, in order: one
/// request, or a batch of one book's writes ([`batch`](super::batch)). A bug
/// must not take the worker (and its future requests) down with it.
pub fn handle_batch(shared: &Shared, mut entradas: Vec<Entrada>) -> Vec<Vec<u8>> {
    let labels: Vec<(&'static str, Option<String>)> = entradas
        .iter()
        .map(|e| match e {
            Entrada::Operacion(p) => (p.operacion.as_str(), p.id.clone()),
            Entrada::Resultado { id } => ("resultado", Some(id.clone())),
            Entrada::Status => ("status", None),
        })
        .collect();
    let run = std::panic::AssertUnwindSafe(|| {
        if entradas.len() == 1 {
            return entradas
                .pop()
                .map(|e| vec![handle(shared, e)])
                .unwrap_or_default();
        }
        let writes: Vec<Peticion> = entradas
            .iter()
            .filter_map(|e| match e {
                Entrada::Operacion(p) if p.operacion != Operacion::Consulta => Some(p.clone()),
                _ => None,
            })
            .collect();
        if writes.len() == entradas.len() {
            super::batch::write_batch(shared, writes)
        } else {
            entradas.into_iter().map(|e| handle(shared, e)).collect()
        }
    });
    std::panic::catch_unwind(run).unwrap_or_else(|_| {
        tracing::error!(requests = labels.len(), "request handler panicked");
        labels
            .into_iter()
            .map(|(op, id)| {
                Respuesta::error(
                    op,
                    CodigoError::AlmacenamientoNoDisponible,
                    "internal error",
                )
                .with_id(id)
                .to_bytes()
            })
            .collect()
    })
}

/// The reply to one request that passed validation.
pub fn handle(shared: &Shared, entrada: Entrada) -> Vec<u8> {
    match entrada {
        Entrada::Operacion(p) if p.operacion == Operacion::Consulta => consulta(shared, &p),
        Entrada::Operacion(p) => write(shared, p),
        Entrada::Resultado { id } => resultado(shared, &id),
        Entrada::Status => super::server::status_reply(shared),
    }
}

/// A request id for writes that came without one.
pub fn new_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    format!("s-{:016x}", h.finish())
}

pub(super) fn unavailable(op: &str, id: Option<&str>, why: impl std::fmt::Display) -> Vec<u8> {
    Respuesta::error(
        op,
        CodigoError::AlmacenamientoNoDisponible,
        format!("the database cannot serve this request right now ({why}); retrying with the same id is safe"),
    )
    .with_id(id.map(str::to_string))
    .to_bytes()
}

/// How to react to a database error.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Failure {
    /// Run the whole transaction again.
    Retry,
    /// Lost the race on the one-active-loan index: retrying sees the loan.
    ActiveLoanRace,
    /// The node refuses writes: it is in recovery.
    ReadOnly,
    /// Connection lost, node shutting down, timeouts: transient, tell the client.
    Unavailable { node_down: bool },
}

pub(super) fn classify(e: &postgres::Error) -> Failure {
    let Some(code) = e.code() else {
        // No SQLSTATE: the connection itself failed.
        return Failure::Unavailable { node_down: true };
    };
    if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED {
        Failure::Retry
    } else if *code == SqlState::UNIQUE_VIOLATION {
        let on_loans = e
            .as_db_error()
            .and_then(|d| d.constraint())
            .is_some_and(|c| c == ACTIVE_LOAN_INDEX);
        if on_loans {
            Failure::ActiveLoanRace
        } else {
            Failure::Retry
        }
    } else if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
        Failure::ReadOnly
    } else {
        let class = code.code().get(..2).unwrap_or("");
        // 08: connection exception, 57: operator intervention (shutdown),
        // 53: insufficient resources.
        Failure::Unavailable {
            node_down: matches!(class, "08" | "57" | "53") && *code != SqlState::QUERY_CANCELED,
        }
    }
}

fn write(shared: &Shared, p: Peticion) -> Vec<u8> {
    let id = p.id.clone().unwrap_or_else(new_id);
    write_as(shared, &p, id)
}

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

/// The part of a database error worth showing a client.
pub(super) fn db_reason(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) if d.code() == &SqlState::QUERY_CANCELED => "statement timeout".into(),
        Some(d) if d.code() == &SqlState::LOCK_NOT_AVAILABLE => "lock timeout".into(),
        Some(d) => d.message().to_string(),
        None if e.is_closed() => "connection closed".into(),
        None => "connection failed".into(),
    }
}

/// Runs `f` on the writer, then on each readable standby; `Ok((value,
/// from_standby, node))` from the first node that answers.
fn read_anywhere<T>(
    shared: &Shared,
    backend: &Backend,
    mut f: impl FnMut(&mut postgres::Client) -> Result<Option<T>, postgres::Error>,
) -> Result<Option<(T, bool, String)>, String> {
    let mut why = String::from("no reachable database node");
    let mut try_node = |node: &Node, standby: bool| -> Option<Option<(T, bool, String)>> {
        let mut conn = match node.pool.get() {
            Ok(c) => c,
            Err(e) => {
                shared.request_recheck();
                why = format!("no connection to node {}: {e}", node.cfg.name);
                return None;
            }
        };
        match f(&mut conn) {
            Ok(v) => Some(v.map(|v| (v, standby, node.cfg.name.clone()))),
            Err(e) => {
                if classify(&e) == (Failure::Unavailable { node_down: true }) {
                    shared.request_recheck();
                }
                why = format!("node {}: {}", node.cfg.name, db_reason(&e));
                None
            }
        }
    };
    if let Some((_, node)) = backend.writer() {
        if let Some(found) = try_node(node, false) {
            return Ok(found);
        }
    }
    for node in backend.readable_standbys() {
        // A standby's "not found" is not authoritative for lookups; `f`
        // decides by returning None, and we keep looking.
        if let Some(Some(found)) = try_node(node, true) {
            return Ok(Some(found));
        }
    }
    Err(why)
}

fn consulta(shared: &Shared, p: &Peticion) -> Vec<u8> {
    let op = p.operacion.as_str();
    let backend = shared.backend();
    let result = read_anywhere(shared, &backend, |c| ops::consulta(c, p).map(Some));
    match result {
        Ok(Some((mut r, standby, nodo))) => {
            if let Value::Object(m) = &mut r.datos {
                m.insert("posiblemente_desactualizado".into(), Value::Bool(standby));
                m.insert("nodo".into(), Value::String(nodo.clone()));
            }
            if standby {
                r.mensaje = format!(
                    "{} (served by standby {nodo} while the primary is unreachable: possibly out of date)",
                    r.mensaje
                );
            }
            r.with_id(p.id.clone()).to_bytes()
        }
        Ok(None) => unavailable(op, p.id.as_deref(), "no node answered"),
        Err(why) => unavailable(op, p.id.as_deref(), why),
    }
}

fn resultado(shared: &Shared, id: &str) -> Vec<u8> {
    let backend = shared.backend();
    let writer_up = backend.writer().is_some();
    // On the writer "not stored" is an answer; on a standby it may be lag.
    let result = read_anywhere(shared, &backend, |c| {
        let stored = ops::stored_reply(c, id)?;
        Ok(match stored {
            Some(bytes) => Some(Some(bytes)),
            None if writer_up => Some(None),
            None => None,
        })
    });
    match result {
        Ok(Some((Some(bytes), _, _))) => bytes,
        Ok(Some((None, false, _))) => Respuesta::error(
            "resultado",
            CodigoError::SolicitudDesconocida,
            format!("no outcome is stored for id {id}: the request was not applied (yet)"),
        )
        .with_id(Some(id.to_string()))
        .to_bytes(),
        Ok(_) => unavailable(
            "resultado",
            Some(id),
            "only a standby answered and it has no outcome for this id",
        ),
        Err(why) => unavailable("resultado", Some(id), why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert!(biblioteca_protocol::validate_id(&a).is_ok());
        assert_eq!(a.len(), 18);
    }
}
