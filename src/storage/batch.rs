//! Queued writes, of one book or several, run as one transaction (one
//! statement, one commit, one synchronous-standby round trip) and answered
//! together.
//!
//! The dispatcher ([`dispatch`](super::dispatch)) guarantees that no other
//! batch of the same books runs meanwhile and hands each book's writes in
//! arrival order; the batch function (migration 0007) runs them by book, in
//! that order, so concurrent batches take their row locks in one order and
//! cannot deadlock. A business refusal is an outcome like a success (stored
//! under its id, committed with the rest). Every reply is sent only after the
//! statement returned, i.e. after the commit was confirmed by the
//! synchronous standby. When the batch fails nothing of it was applied (it
//! rolled back), or, if the connection died around the commit, it was
//! applied whole with every outcome stored under its id; either way running
//! the requests again under the same ids applies each exactly once, and each
//! gets the answer it would have got alone:
//!
//! - connection lost (closed, failed, or the backend terminated): the whole
//!   batch again on another connection, up to [`LOST_CONNECTION_TRIES`]
//!   times, then `AlmacenamientoNoDisponible`;
//! - the database asks for a retry (serialization failure, deadlock, a race
//!   on the one-active-loan index): each request on its own, with the single
//!   write path's retries and race handling;
//! - any other error of a batch of several books (a statement or lock
//!   timeout on one book's row): each book's writes again as a batch of
//!   their own, so one book's trouble is not the others' answer;
//! - the node is fenced, read-only or down: `AlmacenamientoNoDisponible` for
//!   all, the node demoted like for a single write; the client's retry under
//!   the same id is safe.

use postgres::error::SqlState;

use super::failure::{classify, db_reason, new_id, unavailable, Failure};
use super::ops::{self, TxError};
use super::Shared;
use biblioteca_protocol::{CodigoError, Peticion, Respuesta};

/// Tries of a batch whose connection was lost. A terminated backend's
/// connection may only be known dead (and dropped by the pool) after the
/// next use, so one extra try is not always enough.
const LOST_CONNECTION_TRIES: u32 = 3;

/// Runs `ps` (writes, each book's in arrival order) in one transaction; one
/// reply per request, same order.
pub fn write_batch(shared: &Shared, ps: Vec<Peticion>) -> Vec<Vec<u8>> {
    let ids: Vec<String> = ps
        .iter()
        .map(|p| p.id.clone().unwrap_or_else(new_id))
        .collect();
    run(shared, &ps, &ids)
}

/// Each book's writes as a batch of their own, replies back in place.
fn by_book(shared: &Shared, ps: &[Peticion], ids: &[String]) -> Vec<Vec<u8>> {
    let mut books: Vec<&str> = ps.iter().map(|p| p.isbn.as_str()).collect();
    books.sort_unstable();
    books.dedup();
    let mut replies = vec![Vec::new(); ps.len()];
    for book in books {
        let at: Vec<usize> = (0..ps.len()).filter(|&i| ps[i].isbn == book).collect();
        let sub: Vec<Peticion> = at.iter().map(|&i| ps[i].clone()).collect();
        let sub_ids: Vec<String> = at.iter().map(|&i| ids[i].clone()).collect();
        for (i, r) in at.into_iter().zip(run(shared, &sub, &sub_ids)) {
            replies[i] = r;
        }
    }
    replies
}

fn run(shared: &Shared, ps: &[Peticion], ids: &[String]) -> Vec<Vec<u8>> {
    let all_unavailable = |why: &str| -> Vec<Vec<u8>> {
        ps.iter()
            .zip(ids)
            .map(|(p, id)| unavailable(p.operacion.as_str(), Some(id), why))
            .collect()
    };
    let backend = shared.backend();
    let Some((idx, node)) = backend.writer() else {
        shared.request_recheck();
        return all_unavailable("no writable database node");
    };
    let mut tries = 0;
    loop {
        tries += 1;
        let mut conn = match node.pool.get() {
            Ok(c) => c,
            Err(e) => {
                shared.request_recheck();
                tracing::warn!(node = %node.cfg.name, error = %e, "no database connection for a batch");
                return all_unavailable(&format!("no connection to node {}", node.cfg.name));
            }
        };
        let e = match ops::apply_batch(&mut conn, ps, ids, shared.fencing.newest()) {
            Ok(outcomes) => {
                // Committed: recorded (in degraded mode) before any reply leaves.
                for _ in &outcomes {
                    shared.replication.note_write();
                }
                return outcomes
                    .into_iter()
                    .zip(ps.iter().zip(ids))
                    .map(|(o, (p, id))| reply(o, p, id, &node.cfg.name))
                    .collect();
            }
            Err(TxError::Fenced(why)) => {
                backend.demote(idx, &why, why.contains("timeline"));
                shared.request_recheck();
                return all_unavailable(&why);
            }
            Err(TxError::IdReused(why) | TxError::Unexpected(why)) => {
                tracing::error!(node = %node.cfg.name, error = %why, "batch function answered something unexpected");
                return all_unavailable("unexpected answer from the database");
            }
            Err(TxError::Db(e)) => e,
        };
        drop(conn);
        let lost =
            e.is_closed() || e.code().is_none() || e.code() == Some(&SqlState::ADMIN_SHUTDOWN);
        match classify(&e) {
            Failure::Retry | Failure::ActiveLoanRace => {
                tracing::debug!(requests = ps.len(), error = %e, "batch rolled back; running its requests one by one");
                return ps
                    .iter()
                    .zip(ids)
                    .map(|(p, id)| super::write::write_as(shared, p, id.clone()))
                    .collect();
            }
            Failure::ReadOnly => {
                backend.demote(idx, "node is in recovery (read-only)", false);
                shared.request_recheck();
                return all_unavailable("the write node is read-only");
            }
            Failure::Unavailable { .. } if lost && tries < LOST_CONNECTION_TRIES => {
                // A pooled connection the server closed, or a backend
                // terminated under the batch: again on another one.
                tracing::warn!(requests = ps.len(), node = %node.cfg.name, error = %e, "connection lost during a batch; running it again on a fresh connection");
            }
            Failure::Unavailable { node_down: false }
                if !lost && ps.iter().any(|p| p.isbn != ps[0].isbn) =>
            {
                tracing::debug!(requests = ps.len(), error = %e, "batch of several books failed; running each book's writes on their own");
                return by_book(shared, ps, ids);
            }
            Failure::Unavailable { node_down } => {
                if node_down {
                    shared.request_recheck();
                }
                tracing::warn!(requests = ps.len(), node = %node.cfg.name, error = %e, "batch failed");
                return all_unavailable(&db_reason(&e));
            }
        }
    }
}

/// One request's reply from its outcome in a committed batch.
fn reply(outcome: Result<Vec<u8>, TxError>, p: &Peticion, id: &str, node: &str) -> Vec<u8> {
    let op = p.operacion.as_str();
    match outcome {
        Ok(bytes) => bytes,
        Err(TxError::IdReused(msg)) => Respuesta::error(op, CodigoError::PeticionInvalida, msg)
            .with_id(Some(id.to_string()))
            .to_bytes(),
        Err(e) => {
            tracing::error!(id, node, error = %e, "write function answered something unexpected");
            unavailable(op, Some(id), "unexpected answer from the database")
        }
    }
}
