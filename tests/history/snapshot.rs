//! What the checker reads of one database node: the stored outcomes, the
//! loans and each book's copies, as `psql -tA` prints them (fields split by
//! `|`), from a live node or from files a script wrote before that node was
//! rejoined (a rejoin rewinds it and erases the evidence).

use std::collections::HashMap;
use std::path::Path;

/// Every stored outcome: id, operation, isbn, user, exito, error code.
pub const SOLICITUDES_SQL: &str = "SELECT id, operacion, isbn, usuario, \
     coalesce(respuesta->>'exito', 'null'), coalesce(respuesta->>'error', '') FROM solicitudes";
/// Every loan: user, isbn, state, renewals, the request that made it.
pub const PRESTAMOS_SQL: &str =
    "SELECT usuario, isbn, estado, renovaciones, coalesce(solicitud, '') FROM prestamos";
/// Copies of each book that exist at all (available + on loan).
pub const COPIES_SQL: &str = "SELECT l.isbn, l.ejemplares + (SELECT count(*) FROM prestamos p \
     WHERE p.isbn = l.isbn AND p.estado = 'ACTIVO') FROM libros l";

/// The three files of a snapshot directory, with the query of each.
pub const FILES: [(&str, &str); 3] = [
    ("solicitudes", SOLICITUDES_SQL),
    ("prestamos", PRESTAMOS_SQL),
    ("copies", COPIES_SQL),
];

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("reading {what}: {reason}")]
    Read { what: String, reason: String },
    #[error("{what}: malformed row {row:?}")]
    Row { what: String, row: String },
}

/// One `solicitudes` row.
#[derive(Debug, Clone)]
pub struct Stored {
    pub operacion: String,
    pub isbn: String,
    pub usuario: String,
    pub exito: bool,
    pub error: String,
}

/// One `prestamos` row.
#[derive(Debug, Clone)]
pub struct Loan {
    pub usuario: String,
    pub isbn: String,
    pub activo: bool,
    pub renovaciones: i64,
    pub solicitud: String,
}

/// One node's rows.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub solicitudes: HashMap<String, Stored>,
    pub loans: Vec<Loan>,
    pub copies: HashMap<String, i64>,
}

fn split(what: &str, text: &str, fields: usize) -> Result<Vec<Vec<String>>, SnapshotError> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let r: Vec<String> = l.split('|').map(str::to_string).collect();
            if r.len() == fields {
                Ok(r)
            } else {
                Err(SnapshotError::Row {
                    what: what.into(),
                    row: l.into(),
                })
            }
        })
        .collect()
}

fn int(what: &str, s: &str) -> Result<i64, SnapshotError> {
    s.trim().parse().map_err(|_| SnapshotError::Row {
        what: what.into(),
        row: s.into(),
    })
}

/// Copies per book from [`COPIES_SQL`]'s output.
pub fn parse_copies(text: &str) -> Result<HashMap<String, i64>, SnapshotError> {
    split("copies", text, 2)?
        .into_iter()
        .map(|r| Ok((r[0].clone(), int("copies", &r[1])?)))
        .collect()
}

impl Snapshot {
    /// Runs the three queries through `query` (which returns `psql -tA` text).
    pub fn read<E: std::fmt::Display>(
        mut query: impl FnMut(&str) -> Result<String, E>,
    ) -> Result<Snapshot, SnapshotError> {
        let mut texts = Vec::new();
        for (name, sql) in FILES {
            texts.push(query(sql).map_err(|e| SnapshotError::Read {
                what: name.into(),
                reason: e.to_string(),
            })?);
        }
        Snapshot::parse(&texts[0], &texts[1], &texts[2])
    }

    /// Reads the files `solicitudes`, `prestamos` and `copies` in `dir`.
    pub fn load(dir: &Path) -> Result<Snapshot, SnapshotError> {
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f)).map_err(|e| SnapshotError::Read {
                what: dir.join(f).display().to_string(),
                reason: e.to_string(),
            })
        };
        Snapshot::parse(&read("solicitudes")?, &read("prestamos")?, &read("copies")?)
    }

    pub fn parse(
        solicitudes: &str,
        prestamos: &str,
        copies: &str,
    ) -> Result<Snapshot, SnapshotError> {
        let solicitudes = split("solicitudes", solicitudes, 6)?
            .into_iter()
            .map(|r| {
                let s = Stored {
                    operacion: r[1].clone(),
                    isbn: r[2].clone(),
                    usuario: r[3].clone(),
                    exito: r[4] == "true",
                    error: r[5].clone(),
                };
                (r[0].clone(), s)
            })
            .collect();
        let loans = split("prestamos", prestamos, 5)?
            .into_iter()
            .map(|r| {
                Ok(Loan {
                    usuario: r[0].clone(),
                    isbn: r[1].clone(),
                    activo: r[2] == "ACTIVO",
                    renovaciones: int("prestamos", &r[3])?,
                    solicitud: r[4].clone(),
                })
            })
            .collect::<Result<_, SnapshotError>>()?;
        Ok(Snapshot {
            solicitudes,
            loans,
            copies: parse_copies(copies)?,
        })
    }
}
