//! What the dispatcher handed one worker → its replies: a read, a single
//! write ([`write`](super::write)) or a batch of writes
//! ([`batch`](super::batch)); database failures become
//! `AlmacenamientoNoDisponible` ([`failure`](super::failure)) instead of hangs.
//!
//! Writes go only to the node [`Backend::writer`] names; `consulta` and
//! `resultado` fall back to a reachable standby when the writer cannot answer,
//! and such a `consulta` says `posiblemente_desactualizado: true`.

use serde_json::Value;

use super::failure::{classify, db_reason, new_id, unavailable, Failure};
use super::nodes::{Backend, Node};
use super::ops;
use super::write::write_as;
use super::Shared;
use biblioteca_protocol::{CodigoError, Entrada, Operacion, Peticion, Respuesta};

/// The book a request writes (its writes are batched per book by
/// [`dispatch`](super::dispatch)); `None` for reads.
pub fn write_book(entrada: &Entrada) -> Option<&str> {
    match entrada {
        Entrada::Operacion(p) if p.operacion != Operacion::Consulta => Some(&p.isbn),
        _ => None,
    }
}

/// The replies to what the dispatcher handed one worker, in order: one
/// request, or a batch of writes of one or several books
/// ([`batch`](super::batch)). A bug
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
        Entrada::Status => super::status::status_reply(shared),
    }
}

fn write(shared: &Shared, p: Peticion) -> Vec<u8> {
    let id = p.id.clone().unwrap_or_else(new_id);
    write_as(shared, &p, id)
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
