//! The SQL of every operation, each write in ONE transaction together with its
//! request id.
//!
//! [`apply_write`] first claims the request id in `solicitudes` (`INSERT .. ON
//! CONFLICT DO NOTHING`, which waits for a concurrent transaction holding the
//! same id); when the id is already there the stored reply is returned and
//! nothing changes. Otherwise the operation runs and its reply (success or a
//! definitive business error) is stored under the id before the commit, so an
//! outcome exists exactly when its effect does. Locks are always taken in the
//! order solicitudes → libros → prestamos so concurrent requests cannot deadlock.
//!
//! The hot loan/return path uses the `*_typed` calls: parameter types given
//! up front let each statement go out as ONE round trip (Parse, Bind, Execute,
//! Sync together) instead of a prepare round trip followed by an execute one;
//! under synchronous replication round trips are most of a request's cost
//! (see docs/benchmark.md).

use postgres::types::Type;
use postgres::{GenericClient, Transaction};
use serde_json::json;

use crate::protocol::{CodigoError, Operacion, Peticion, Respuesta};

/// Loan period and renewal rules.
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
}

/// `(in_recovery, timeline)` checked inside every write transaction, so a
/// node that became unfit since the last probe never receives a write.
fn check_writable(tx: &mut Transaction<'_>, newest_timeline: u32) -> Result<u32, TxError> {
    let row = tx.query_typed_one(super::nodes::PROBE_SQL, &[])?;
    let in_recovery: bool = row.get(0);
    let timeline: i32 = row.get(1);
    let timeline = u32::try_from(timeline).unwrap_or(0);
    if in_recovery {
        return Err(TxError::Fenced("node is in recovery".into()));
    }
    if timeline < newest_timeline {
        return Err(TxError::Fenced(format!(
            "node is on timeline {timeline}, older than the newest seen ({newest_timeline})"
        )));
    }
    Ok(timeline)
}

/// Runs one write request exactly once under `id`; returns the reply bytes.
pub fn apply_write(
    client: &mut postgres::Client,
    p: &Peticion,
    id: &str,
    newest_timeline: u32,
) -> Result<Vec<u8>, TxError> {
    let op = p.operacion.as_str();
    let mut tx = client.transaction()?;
    check_writable(&mut tx, newest_timeline)?;
    let claimed = tx.query_typed_opt(
        "INSERT INTO solicitudes (id, operacion, isbn, usuario) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (id) DO NOTHING RETURNING id",
        &[
            (&id, Type::TEXT),
            (&op, Type::TEXT),
            (&p.isbn, Type::TEXT),
            (&p.usuario, Type::TEXT),
        ],
    )?;
    if claimed.is_none() {
        let row = tx.query_opt(
            "SELECT operacion, isbn, usuario, respuesta::text FROM solicitudes WHERE id = $1",
            &[&id],
        )?;
        tx.rollback()?;
        let Some(row) = row else {
            return Err(TxError::Fenced(format!(
                "request id {id} vanished while being read"
            )));
        };
        let (s_op, s_isbn, s_usuario): (String, String, String) =
            (row.get(0), row.get(1), row.get(2));
        if s_op != op || s_isbn != p.isbn || s_usuario != p.usuario {
            return Err(TxError::IdReused(format!(
                "id {id:?} was already used for {s_op} of {s_isbn} by {s_usuario}; use a new id for a different request"
            )));
        }
        let stored: Option<String> = row.get(3);
        tracing::debug!(id, op, "repeated request id: replaying the stored outcome");
        return Ok(replay(stored.as_deref().unwrap_or("")));
    }
    let reply = match p.operacion {
        Operacion::Prestamo => prestamo(&mut tx, p, id)?,
        Operacion::Devolucion => devolucion(&mut tx, p)?,
        Operacion::Renovacion => renovacion(&mut tx, p)?,
        Operacion::Consulta => consulta(&mut tx, p)?,
    }
    .with_id(Some(id.to_string()));
    let bytes = reply.to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    tx.execute_typed(
        "UPDATE solicitudes SET respuesta = $2::text::jsonb WHERE id = $1",
        &[(&id, Type::TEXT), (&text, Type::TEXT)],
    )?;
    tx.commit()?;
    Ok(bytes)
}

/// The reply stored under an id, re-serialized through [`Respuesta`] so it is
/// byte-identical to the first reply (jsonb reorders keys; `Respuesta` and
/// `serde_json::Map`, a sorted map, put them back in one canonical order).
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
    let row = client.query_opt(
        "SELECT respuesta::text FROM solicitudes WHERE id = $1 AND respuesta IS NOT NULL",
        &[&id],
    )?;
    Ok(row.map(|r| replay(&r.get::<_, String>(0))))
}

fn err(p: &Peticion, codigo: CodigoError, mensaje: String) -> Respuesta {
    Respuesta::error(p.operacion.as_str(), codigo, mensaje)
}

fn libro_no_encontrado(p: &Peticion) -> Respuesta {
    err(
        p,
        CodigoError::LibroNoEncontrado,
        format!("no book with isbn {} in the catalogue", p.isbn),
    )
}

fn prestamo(
    tx: &mut Transaction<'_>,
    p: &Peticion,
    id: &str,
) -> Result<Respuesta, postgres::Error> {
    let Some(libro) = tx.query_typed_opt(
        "SELECT titulo, ejemplares FROM libros WHERE isbn = $1 FOR UPDATE",
        &[(&p.isbn, Type::TEXT)],
    )?
    else {
        return Ok(libro_no_encontrado(p));
    };
    let titulo: String = libro.get(0);
    let ejemplares: i32 = libro.get(1);
    let activo = tx.query_typed_opt(
        "SELECT id FROM prestamos WHERE isbn = $1 AND usuario = $2 AND estado = 'ACTIVO'",
        &[(&p.isbn, Type::TEXT), (&p.usuario, Type::TEXT)],
    )?;
    if activo.is_some() {
        return Ok(err(
            p,
            CodigoError::PrestamoActivo,
            format!("{} already has '{titulo}' ({}) on loan", p.usuario, p.isbn),
        ));
    }
    if ejemplares <= 0 {
        return Ok(err(
            p,
            CodigoError::SinEjemplaresDisponibles,
            format!("no copies of '{titulo}' ({}) are available", p.isbn),
        ));
    }
    let quedan: i32 = tx
        .query_typed_one(
            "UPDATE libros SET ejemplares = ejemplares - 1 WHERE isbn = $1 RETURNING ejemplares",
            &[(&p.isbn, Type::TEXT)],
        )?
        .get(0);
    let row = tx.query_typed_one(
        "INSERT INTO prestamos (isbn, usuario, fecha_prestamo, fecha_devolucion, estado, renovaciones, solicitud) \
         VALUES ($1, $2, now(), CURRENT_DATE + $3::int, 'ACTIVO', 0, $4) \
         RETURNING id, to_char(fecha_devolucion, 'YYYY-MM-DD')",
        &[
            (&p.isbn, Type::TEXT),
            (&p.usuario, Type::TEXT),
            (&DIAS_PRESTAMO, Type::INT4),
            (&id, Type::TEXT),
        ],
    )?;
    let prestamo_id: i32 = row.get(0);
    let fecha: String = row.get(1);
    Ok(Respuesta::ok(
        p.operacion.as_str(),
        format!(
            "loan registered: '{titulo}' for {} until {fecha} ({quedan} copies left)",
            p.usuario
        ),
        json!({
            "isbn": p.isbn,
            "usuario": p.usuario,
            "titulo": titulo,
            "fecha_devolucion": fecha,
            "ejemplares_disponibles": quedan,
            "prestamo_id": prestamo_id,
        }),
    ))
}

fn devolucion(tx: &mut Transaction<'_>, p: &Peticion) -> Result<Respuesta, postgres::Error> {
    let Some(libro) = tx.query_typed_opt(
        "SELECT titulo FROM libros WHERE isbn = $1 FOR UPDATE",
        &[(&p.isbn, Type::TEXT)],
    )?
    else {
        return Ok(libro_no_encontrado(p));
    };
    let titulo: String = libro.get(0);
    let Some(prestamo) = tx.query_typed_opt(
        "SELECT id FROM prestamos WHERE isbn = $1 AND usuario = $2 AND estado = 'ACTIVO' FOR UPDATE",
        &[(&p.isbn, Type::TEXT), (&p.usuario, Type::TEXT)],
    )?
    else {
        return Ok(sin_prestamo(p, &titulo));
    };
    let prestamo_id: i32 = prestamo.get(0);
    tx.execute_typed(
        "UPDATE prestamos SET estado = 'DEVUELTO', fecha_entrega = now() WHERE id = $1",
        &[(&prestamo_id, Type::INT4)],
    )?;
    let quedan: i32 = tx
        .query_typed_one(
            "UPDATE libros SET ejemplares = ejemplares + 1 WHERE isbn = $1 RETURNING ejemplares",
            &[(&p.isbn, Type::TEXT)],
        )?
        .get(0);
    Ok(Respuesta::ok(
        p.operacion.as_str(),
        format!(
            "return registered: '{titulo}' from {} ({quedan} copies available)",
            p.usuario
        ),
        json!({
            "isbn": p.isbn,
            "usuario": p.usuario,
            "titulo": titulo,
            "prestamo_id": prestamo_id,
            "ejemplares_disponibles": quedan,
        }),
    ))
}

fn sin_prestamo(p: &Peticion, titulo: &str) -> Respuesta {
    err(
        p,
        CodigoError::PrestamoNoEncontrado,
        format!(
            "{} has no active loan of '{titulo}' ({})",
            p.usuario, p.isbn
        ),
    )
}

fn renovacion(tx: &mut Transaction<'_>, p: &Peticion) -> Result<Respuesta, postgres::Error> {
    let Some(libro) = tx.query_opt("SELECT titulo FROM libros WHERE isbn = $1", &[&p.isbn])? else {
        return Ok(libro_no_encontrado(p));
    };
    let titulo: String = libro.get(0);
    let Some(prestamo) = tx.query_opt(
        "SELECT id, renovaciones, to_char(fecha_devolucion, 'YYYY-MM-DD') FROM prestamos \
         WHERE isbn = $1 AND usuario = $2 AND estado = 'ACTIVO' FOR UPDATE",
        &[&p.isbn, &p.usuario],
    )?
    else {
        return Ok(sin_prestamo(p, &titulo));
    };
    let prestamo_id: i32 = prestamo.get(0);
    let renovaciones: i32 = prestamo.get(1);
    if renovaciones >= MAX_RENOVACIONES {
        let fecha: String = prestamo.get(2);
        return Ok(err(
            p,
            CodigoError::LimiteRenovaciones,
            format!(
                "the loan of '{titulo}' to {} was already renewed {renovaciones} times (the maximum); it is due {fecha}",
                p.usuario
            ),
        ));
    }
    let row = tx.query_one(
        "UPDATE prestamos SET fecha_devolucion = fecha_devolucion + $2::int, renovaciones = renovaciones + 1 \
         WHERE id = $1 RETURNING to_char(fecha_devolucion, 'YYYY-MM-DD'), renovaciones",
        &[&prestamo_id, &DIAS_RENOVACION],
    )?;
    let fecha: String = row.get(0);
    let renovaciones: i32 = row.get(1);
    let restantes = MAX_RENOVACIONES - renovaciones;
    Ok(Respuesta::ok(
        p.operacion.as_str(),
        format!(
            "loan of '{titulo}' to {} renewed until {fecha} ({restantes} renewals left)",
            p.usuario
        ),
        json!({
            "isbn": p.isbn,
            "usuario": p.usuario,
            "titulo": titulo,
            "prestamo_id": prestamo_id,
            "fecha_devolucion": fecha,
            "renovaciones": renovaciones,
            "renovaciones_restantes": restantes,
        }),
    ))
}

/// Availability of a book; read-only, runs on any node.
pub fn consulta(
    client: &mut impl GenericClient,
    p: &Peticion,
) -> Result<Respuesta, postgres::Error> {
    let Some(row) = client.query_opt(
        "SELECT l.titulo, l.autor, l.ejemplares, \
                (SELECT count(*) FROM prestamos WHERE isbn = l.isbn AND estado = 'ACTIVO'), \
                EXISTS (SELECT 1 FROM prestamos WHERE isbn = l.isbn AND usuario = $2 AND estado = 'ACTIVO') \
         FROM libros l WHERE l.isbn = $1",
        &[&p.isbn, &p.usuario],
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
}
