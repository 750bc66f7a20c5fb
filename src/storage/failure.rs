//! What a database failure means for a request: retry, demote the node, or
//! tell the client `AlmacenamientoNoDisponible` (transient, never stored);
//! shared by the single-write path ([`write`](super::write)), batches
//! ([`batch`](super::batch)) and reads ([`handler`](super::handler)).

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use postgres::error::SqlState;

use biblioteca_protocol::{CodigoError, Respuesta};

/// Index that allows one ACTIVO loan per (isbn, usuario); see migration 0001.
const ACTIVE_LOAN_INDEX: &str = "prestamos_un_activo";

/// A request id for writes that came without one.
pub(super) fn new_id() -> String {
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

/// The transient error reply: nothing was stored, the same id may be retried.
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
