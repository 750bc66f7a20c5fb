//! The SQL of every operation, each write in ONE transaction together with its
//! request id.
//!
//! A write is one call of its PL/pgSQL function (`biblioteca_prestamo`,
//! `biblioteca_devolucion`, `biblioteca_renovacion`; migration 0004) in
//! autocommit, i.e. ONE round trip: under synchronous replication round
//! trips were most of a request's cost (see docs/benchmark.md). The function
//! checks that the node may take writes (not in recovery, timeline not older
//! than the newest seen), then claims the request id in `solicitudes`
//! (`INSERT .. ON CONFLICT DO NOTHING`, which waits for a concurrent
//! transaction holding the same id); when the id is already there the stored
//! reply comes back and nothing changes. Otherwise the operation runs and its
//! reply (success or a definitive business error) is stored under the id in
//! the same transaction, so an outcome exists exactly when its effect does.
//! Locks are always taken in the order solicitudes → libros → prestamos so
//! concurrent requests cannot deadlock.

use postgres::types::{ToSql, Type};
use postgres::GenericClient;
use serde::Deserialize;
use serde_json::{json, Value};

use super::connection::Connection;
use biblioteca_protocol::{CodigoError, Operacion, Peticion, Respuesta};

/// Loan period and renewal rules, passed to the write functions.
const DIAS_PRESTAMO: i32 = 14;
const DIAS_RENOVACION: i32 = 7;
const MAX_RENOVACIONES: i32 = 2;

/// Why a write transaction did not produce a reply.
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    #[error(transparent)]
    Db(#[from] postgres::Error),
    /// The node must not take writes (in recovery, or on a stale timeline).
    #[error("{0}")]
    Fenced(String),
    /// The id was used before for a different request.
    #[error("{0}")]
    IdReused(String),
    /// The write function answered something this binary cannot read (a
    /// schema from another version); nothing to retry on this node.
    #[error("unexpected answer from the database: {0}")]
    Unexpected(String),
}

/// The envelope every write function returns (see migration 0004).
#[derive(Debug, Deserialize)]
#[serde(tag = "resultado", rename_all = "lowercase")]
enum Salida {
    /// Applied now; `respuesta` is stored under the id.
    Aplicada { respuesta: Value },
    /// The id was claimed before: what it was used for, and its reply.
    Repetida {
        operacion: String,
        isbn: String,
        usuario: String,
        respuesta: Option<Value>,
    },
    /// The node must not take writes.
    Cercada { motivo: String },
}

/// The write functions' calls and parameter types (id, isbn, usuario,
/// newest timeline, then the operation's rules).
const PRESTAMO: (&str, &[Type]) = (
    "SELECT biblioteca_prestamo($1, $2, $3, $4, $5)::text",
    &[Type::TEXT, Type::TEXT, Type::TEXT, Type::INT4, Type::INT4],
);
const DEVOLUCION: (&str, &[Type]) = (
    "SELECT biblioteca_devolucion($1, $2, $3, $4)::text",
    &[Type::TEXT, Type::TEXT, Type::TEXT, Type::INT4],
);
const RENOVACION: (&str, &[Type]) = (
    "SELECT biblioteca_renovacion($1, $2, $3, $4, $5, $6)::text",
    &[
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::INT4,
        Type::INT4,
        Type::INT4,
    ],
);

/// Runs one write request exactly once under `id`; returns the reply bytes.
pub fn apply_write(
    conn: &mut Connection,
    p: &Peticion,
    id: &str,
    newest_timeline: u32,
) -> Result<Vec<u8>, TxError> {
    // A timeline beyond i32 cannot exist; saturating keeps the check strict.
    let timeline = i32::try_from(newest_timeline).unwrap_or(i32::MAX);
    let comunes: [&(dyn ToSql + Sync); 4] = [&id, &p.isbn, &p.usuario, &timeline];
    let ((sql, types), extra): (_, &[&(dyn ToSql + Sync)]) = match p.operacion {
        Operacion::Prestamo => (PRESTAMO, &[&DIAS_PRESTAMO]),
        Operacion::Devolucion => (DEVOLUCION, &[]),
        Operacion::Renovacion => (RENOVACION, &[&DIAS_RENOVACION, &MAX_RENOVACIONES]),
        // Not a write; the handler never sends it here, but answering it is
        // cheap and keeps this function total.
        Operacion::Consulta => {
            return Ok(consulta(&mut **conn, p)?
                .with_id(Some(id.to_string()))
                .to_bytes())
        }
    };
    let params: Vec<&(dyn ToSql + Sync)> = comunes.iter().chain(extra).copied().collect();
    // One statement in autocommit: Bind, Execute and Sync of a statement
    // prepared once per connection go out together, and the implicit
    // transaction commits at the Sync.
    let stmt = conn.preparada(sql, types)?;
    let text: String = conn.query_one(&stmt, &params)?.get(0);
    let salida: Salida =
        serde_json::from_str(&text).map_err(|e| TxError::Unexpected(format!("{e}: {text}")))?;
    outcome(salida, p, id)
}

/// The reply bytes of one write function's envelope.
fn outcome(salida: Salida, p: &Peticion, id: &str) -> Result<Vec<u8>, TxError> {
    let op = p.operacion.as_str();
    match salida {
        Salida::Aplicada { respuesta } => Ok(reply_bytes(respuesta)),
        Salida::Cercada { motivo } => Err(TxError::Fenced(motivo)),
        Salida::Repetida {
            operacion,
            isbn,
            usuario,
            respuesta,
        } => {
            if operacion != op || isbn != p.isbn || usuario != p.usuario {
                return Err(TxError::IdReused(format!(
                    "id {id:?} was already used for {operacion} of {isbn} by {usuario}; use a new id for a different request"
                )));
            }
            tracing::debug!(id, op, "repeated request id: replaying the stored outcome");
            Ok(respuesta.map(reply_bytes).unwrap_or_default())
        }
    }
}

/// The batch function's call (migrations 0005 and 0007): operations, ids, isbns,
/// users, the newest timeline, then every operation's rules.
const LOTE: (&str, &[Type]) = (
    "SELECT biblioteca_lote($1, $2, $3, $4, $5, $6, $7, $8)::text",
    &[
        Type::TEXT_ARRAY,
        Type::TEXT_ARRAY,
        Type::TEXT_ARRAY,
        Type::TEXT_ARRAY,
        Type::INT4,
        Type::INT4,
        Type::INT4,
        Type::INT4,
    ],
);

/// Runs write requests `ps` (under `ids`, same order) in ONE transaction and
/// ONE statement, by book and each book's in the order given (migration
/// 0007: one lock order for every batch), each exactly once by id as
/// [`apply_write`] does
/// (a later duplicate of an id in the batch replays the earlier one's
/// reply). Outer error: nothing is known to be applied — a database error
/// rolled the whole batch back, or the node must not write. Inner error: that
/// request's id was used for another request.
pub fn apply_batch(
    conn: &mut Connection,
    ps: &[Peticion],
    ids: &[String],
    newest_timeline: u32,
) -> Result<Vec<Result<Vec<u8>, TxError>>, TxError> {
    let timeline = i32::try_from(newest_timeline).unwrap_or(i32::MAX);
    let ops: Vec<&str> = ps.iter().map(|p| p.operacion.as_str()).collect();
    let isbns: Vec<&str> = ps.iter().map(|p| p.isbn.as_str()).collect();
    let usuarios: Vec<&str> = ps.iter().map(|p| p.usuario.as_str()).collect();
    let stmt = conn.preparada(LOTE.0, LOTE.1)?;
    let text: String = conn
        .query_one(
            &stmt,
            &[
                &ops,
                &ids,
                &isbns,
                &usuarios,
                &timeline,
                &DIAS_PRESTAMO,
                &DIAS_RENOVACION,
                &MAX_RENOVACIONES,
            ],
        )?
        .get(0);
    let salidas: Vec<Salida> =
        serde_json::from_str(&text).map_err(|e| TxError::Unexpected(format!("{e}: {text}")))?;
    // A fenced node answers one envelope for the whole batch (nothing done).
    if let Some(Salida::Cercada { motivo }) = salidas.first() {
        return Err(TxError::Fenced(motivo.clone()));
    }
    if salidas.len() != ps.len() {
        return Err(TxError::Unexpected(format!(
            "{} outcomes for {} requests",
            salidas.len(),
            ps.len()
        )));
    }
    Ok(salidas
        .into_iter()
        .zip(ps.iter().zip(ids))
        .map(|(s, (p, id))| outcome(s, p, id))
        .collect())
}

/// A reply from the database, serialized through [`Respuesta`] so the first
/// reply and every replay of it are byte-identical (jsonb reorders keys;
/// `Respuesta` and `serde_json::Map`, a sorted map, put them back in one
/// canonical order).
fn reply_bytes(v: Value) -> Vec<u8> {
    match Respuesta::deserialize(&v) {
        Ok(r) => r.to_bytes(),
        Err(_) => serde_json::to_vec(&v).unwrap_or_default(),
    }
}

/// A stored reply's text, canonicalized like [`reply_bytes`].
pub fn replay(stored: &str) -> Vec<u8> {
    match Respuesta::from_bytes(stored.as_bytes()) {
        Ok(r) => r.to_bytes(),
        Err(_) => stored.as_bytes().to_vec(),
    }
}

/// The stored reply of a request id, if any (`resultado` lookups).
pub fn stored_reply(
    client: &mut impl GenericClient,
    id: &str,
) -> Result<Option<Vec<u8>>, postgres::Error> {
    let row = client.query_typed_opt(
        "SELECT respuesta::text FROM solicitudes WHERE id = $1 AND respuesta IS NOT NULL",
        &[(&id, Type::TEXT)],
    )?;
    Ok(row.map(|r| replay(&r.get::<_, String>(0))))
}

fn libro_no_encontrado(p: &Peticion) -> Respuesta {
    Respuesta::error(
        p.operacion.as_str(),
        CodigoError::LibroNoEncontrado,
        format!("no book with isbn {} in the catalogue", p.isbn),
    )
}

/// Availability of a book; read-only, runs on any node.
pub fn consulta(
    client: &mut impl GenericClient,
    p: &Peticion,
) -> Result<Respuesta, postgres::Error> {
    let Some(row) = client.query_typed_opt(
        "SELECT l.titulo, l.autor, l.ejemplares, \
                (SELECT count(*) FROM prestamos WHERE isbn = l.isbn AND estado = 'ACTIVO'), \
                EXISTS (SELECT 1 FROM prestamos WHERE isbn = l.isbn AND usuario = $2 AND estado = 'ACTIVO') \
         FROM libros l WHERE l.isbn = $1",
        &[(&p.isbn, Type::TEXT), (&p.usuario, Type::TEXT)],
    )?
    else {
        return Ok(libro_no_encontrado(p));
    };
    let titulo: String = row.get(0);
    let autor: String = row.get(1);
    let ejemplares: i32 = row.get(2);
    let activos: i64 = row.get(3);
    let mut datos = json!({
        "isbn": p.isbn,
        "titulo": titulo,
        "autor": autor,
        "ejemplares_disponibles": ejemplares,
        "prestamos_activos": activos,
        "disponible": ejemplares > 0,
    });
    if !p.usuario.is_empty() {
        if let Some(m) = datos.as_object_mut() {
            m.insert("usuario".into(), json!(p.usuario));
            m.insert(
                "prestamo_activo_usuario".into(),
                json!(row.get::<_, bool>(4)),
            );
        }
    }
    let mensaje = if ejemplares > 0 {
        format!("'{titulo}' by {autor}: {ejemplares} copies available, {activos} on loan")
    } else {
        format!("'{titulo}' by {autor}: no copies available, {activos} on loan")
    };
    Ok(Respuesta::ok(p.operacion.as_str(), mensaje, datos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_is_byte_identical_after_a_jsonb_reordering() {
        let r = Respuesta::ok(
            "prestamo",
            "loan registered",
            json!({"isbn": "978-0134685991", "usuario": "u1", "titulo": "Effective Java",
                   "fecha_devolucion": "2030-01-01", "ejemplares_disponibles": 4, "prestamo_id": 7}),
        )
        .with_id(Some("c-1".into()));
        let first = r.to_bytes();
        // What jsonb gives back: keys ordered by length, then bytes.
        let jsonb = r#"{"id": "c-1", "datos": {"isbn": "978-0134685991", "titulo": "Effective Java", "usuario": "u1", "prestamo_id": 7, "fecha_devolucion": "2030-01-01", "ejemplares_disponibles": 4}, "exito": true, "mensaje": "loan registered", "operacion": "prestamo"}"#;
        assert_eq!(replay(jsonb), first);
        let e = Respuesta::error("renovacion", CodigoError::LimiteRenovaciones, "max")
            .with_id(Some("x".into()));
        let text = String::from_utf8(e.to_bytes()).unwrap();
        assert_eq!(replay(&text), e.to_bytes());
    }

    #[test]
    fn reads_every_write_function_envelope() {
        let aplicada: Salida = serde_json::from_str(
            r#"{"resultado": "aplicada", "respuesta": {"id": "c-1", "error": "PrestamoActivo", "exito": false, "mensaje": "m", "operacion": "prestamo"}}"#,
        )
        .unwrap();
        let Salida::Aplicada { respuesta } = aplicada else {
            panic!("{aplicada:?}")
        };
        let esperada = Respuesta::error("prestamo", CodigoError::PrestamoActivo, "m")
            .with_id(Some("c-1".into()));
        assert_eq!(reply_bytes(respuesta), esperada.to_bytes());
        let repetida: Salida = serde_json::from_str(
            r#"{"resultado": "repetida", "operacion": "prestamo", "isbn": "i", "usuario": "u", "respuesta": null}"#,
        )
        .unwrap();
        assert!(matches!(
            repetida,
            Salida::Repetida {
                respuesta: None,
                ..
            }
        ));
        let cercada: Salida =
            serde_json::from_str(r#"{"resultado": "cercada", "motivo": "node is in recovery"}"#)
                .unwrap();
        assert!(matches!(cercada, Salida::Cercada { motivo } if motivo.contains("recovery")));
    }
}
