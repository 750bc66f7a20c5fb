//! Checks a resolved history against the database: every acknowledged
//! write is there exactly once with the reply the client got, nothing never
//! applied left a trace, each user's operations replay through a model of a
//! loan, and no copy appeared or vanished. In the lab the snapshot of the
//! final primary is checked, and the snapshots of the nodes that were primary
//! before it tell an acknowledged write lost with a demoted primary apart
//! from one never written. Each violation is one line of text with a kind.

use std::collections::{HashMap, HashSet};

use biblioteca_protocol::{CodigoError, Operacion, Respuesta};

use crate::resolve::{code, Resolution, TOMBSTONE_ISBN};
use crate::snapshot::{Loan, Snapshot};
use crate::workload::Entry;

/// What a violation is, for the counts of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An acknowledged write missing from the final primary.
    Lost,
    /// A write applied more than once.
    Duplicated,
    /// An unknown outcome that no lookup could settle.
    Unresolved,
    /// Copies of a book appeared or vanished.
    Copies,
    /// Anything else the invariants forbid.
    Other,
}

#[derive(Debug, Clone)]
pub struct Violation {
    pub kind: Kind,
    pub text: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.text)
    }
}

/// Violations of one kind, as text.
struct Found(Vec<Violation>);

impl Found {
    fn push(&mut self, kind: Kind, text: String) {
        self.0.push(Violation { kind, text });
    }
}

/// Every invariant against `node`, the final primary's rows; `old` are the
/// snapshots of nodes that were primary earlier (named). Only ids and users
/// starting with `prefix` are looked at; `initial` is the copies per book
/// before the workload.
pub fn check(
    node: &Snapshot,
    old: &[(String, Snapshot)],
    prefix: &str,
    history: &[Entry],
    resolved: &[Resolution],
    initial: &HashMap<String, i64>,
) -> Vec<Violation> {
    let mut v = Found(Vec::new());
    let solicitudes: HashMap<&String, _> = node
        .solicitudes
        .iter()
        .filter(|(id, _)| id.starts_with(prefix))
        .collect();
    let loans: Vec<&Loan> = node
        .loans
        .iter()
        .filter(|l| l.solicitud.starts_with(prefix) || l.usuario.starts_with(prefix))
        .collect();
    let mut loans_by_request: HashMap<&str, Vec<&Loan>> = HashMap::new();
    for l in &loans {
        loans_by_request.entry(&l.solicitud).or_default().push(l);
    }

    let ids: HashSet<&str> = history.iter().map(|e| e.id.as_str()).collect();
    for (e, res) in history.iter().zip(resolved) {
        if e.op == Operacion::Consulta {
            continue;
        }
        let row = solicitudes.get(&e.id);
        let loans_of = loans_by_request.get(e.id.as_str()).map_or(0, Vec::len);
        match res {
            Resolution::Unresolved(why) => v.push(
                Kind::Unresolved,
                format!(
                    "{}: unknown outcome could not be resolved by lookup ({why})",
                    e.id
                ),
            ),
            Resolution::NotApplied => {
                if row.map(|s| s.isbn.as_str()) != Some(TOMBSTONE_ISBN) {
                    v.push(
                        Kind::Other,
                        format!(
                            "{}: resolved as never applied, but solicitudes holds {row:?}",
                            e.id
                        ),
                    );
                }
                if loans_of != 0 {
                    v.push(
                        Kind::Duplicated,
                        format!(
                            "{}: never applied, yet {loans_of} loan(s) carry its id",
                            e.id
                        ),
                    );
                }
            }
            Resolution::Told(r) | Resolution::Applied(r) => {
                told(&mut v, e, r, row.copied(), loans_of, &loans_by_request, old);
            }
            Resolution::Read => {}
        }
    }
    check_transient_texts(history, &mut v);
    for id in solicitudes.keys() {
        if !ids.contains(id.as_str()) {
            v.push(
                Kind::Other,
                format!("solicitudes holds id {id} that no client sent"),
            );
        }
    }
    for (id, ls) in &loans_by_request {
        if !ids.contains(id) {
            v.push(
                Kind::Other,
                format!(
                    "{} loan(s) carry request id {id:?} that no client sent",
                    ls.len()
                ),
            );
        }
    }
    check_users(history, resolved, &loans, prefix, &mut v);
    for (isbn, before) in initial {
        let after = node.copies.get(isbn).copied().unwrap_or(-1);
        if after != *before {
            v.push(
                Kind::Copies,
                format!("book {isbn}: {before} copies before, now available + on loan = {after}"),
            );
        }
    }
    v.0
}

/// A request with a stored outcome (told to the client or found by lookup).
fn told(
    v: &mut Found,
    e: &Entry,
    r: &Respuesta,
    row: Option<&crate::snapshot::Stored>,
    loans_of: usize,
    loans_by_request: &HashMap<&str, Vec<&Loan>>,
    old: &[(String, Snapshot)],
) {
    if r.id.as_deref() != Some(e.id.as_str()) {
        v.push(
            Kind::Other,
            format!("{}: reply carries id {:?}", e.id, r.id),
        );
    }
    if r.error == Some(CodigoError::PeticionInvalida) {
        v.push(
            Kind::Other,
            format!("{}: rejected as invalid: {}", e.id, r.mensaje),
        );
        return;
    }
    let Some(s) = row else {
        // Where an id absent from the final primary can still be found.
        let old: Vec<&str> = old
            .iter()
            .filter(|(_, s)| s.solicitudes.contains_key(&e.id))
            .map(|(n, _)| n.as_str())
            .collect();
        let where_ = if old.is_empty() {
            "on no node".to_string()
        } else {
            format!("only on {} (demoted primary)", old.join(", "))
        };
        v.push(
            Kind::Lost,
            format!(
                "{}: acknowledged {} ({}) but absent from the final primary: {where_}",
                e.id,
                e.op,
                if r.exito { "ok".to_string() } else { code(r) }
            ),
        );
        return;
    };
    if s.operacion != e.op.as_str() || s.isbn != e.isbn || s.usuario != e.usuario {
        v.push(
            Kind::Other,
            format!(
                "{}: stored as {s:?}, sent as {} {} {}",
                e.id, e.op, e.isbn, e.usuario
            ),
        );
    }
    if s.exito != r.exito || s.error != code(r) {
        v.push(
            Kind::Other,
            format!(
                "{}: client was told exito={} {}, database stored exito={} {}",
                e.id,
                r.exito,
                code(r),
                s.exito,
                s.error
            ),
        );
    }
    let want = usize::from(e.op == Operacion::Prestamo && r.exito);
    if loans_of != want {
        let kind = if loans_of > want {
            Kind::Duplicated
        } else {
            Kind::Lost
        };
        v.push(
            kind,
            format!(
                "{}: {} {} loan row(s) carry its id, expected {want}",
                e.id, e.op, loans_of
            ),
        );
    }
    if let Some(l) = loans_by_request.get(e.id.as_str()).and_then(|l| l.first()) {
        if l.usuario != e.usuario || l.isbn != e.isbn {
            v.push(Kind::Other, format!("{}: its loan is {l:?}", e.id));
        }
    }
}

/// Replies that refused a request (it was never published) may say "retry";
/// every other transient reply to a write was sent while the request was
/// still being worked on, so it must say the outcome is unknown and how to
/// find it out, never read as a failure.
fn check_transient_texts(history: &[Entry], v: &mut Found) {
    const REFUSALS: [&str; 3] = ["no live", "is stopping", "busy"];
    for e in history.iter().filter(|e| e.op.is_write()) {
        for text in &e.transient_texts {
            let refusal = REFUSALS.iter().any(|r| text.contains(r));
            let says_unknown = text.contains("UNKNOWN") && text.contains("resultado");
            if !(refusal || says_unknown) {
                v.push(
                    Kind::Other,
                    format!(
                        "{}: transient reply does not say the outcome is unknown: {text}",
                        e.id
                    ),
                );
            }
        }
    }
}

/// A user's loan in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    None,
    Active(i64),
    Returned(i64),
}

/// Replays each user's applied operations in order: every stored outcome
/// must be the one the model predicts (a request applied twice or lost
/// shows up here), and the user's loans in the database must be the model's.
fn check_users(
    history: &[Entry],
    resolved: &[Resolution],
    loans: &[&Loan],
    prefix: &str,
    v: &mut Found,
) {
    let mut users: HashMap<&str, Vec<(&Entry, &Respuesta)>> = HashMap::new();
    for (e, res) in history.iter().zip(resolved) {
        if let Some(r) = res.stored().filter(|_| e.op != Operacion::Consulta) {
            users.entry(&e.usuario).or_default().push((e, r));
        }
    }
    let mut db: HashMap<&str, Vec<&Loan>> = HashMap::new();
    for l in loans.iter().filter(|l| l.usuario.starts_with(prefix)) {
        db.entry(&l.usuario).or_default().push(l);
    }
    for (usuario, ops) in &users {
        let mut state = State::None;
        for (e, r) in ops {
            let got = if r.exito { "ok".to_string() } else { code(r) };
            let (want, next) = match (e.op, state) {
                (Operacion::Prestamo, State::Active(_)) => ("PrestamoActivo", state),
                (Operacion::Prestamo, _) if got == "SinEjemplaresDisponibles" => {
                    ("SinEjemplaresDisponibles", state)
                }
                (Operacion::Prestamo, _) => ("ok", State::Active(0)),
                (Operacion::Renovacion, State::Active(n)) if n >= 2 => {
                    ("LimiteRenovaciones", state)
                }
                (Operacion::Renovacion, State::Active(n)) => ("ok", State::Active(n + 1)),
                (Operacion::Devolucion, State::Active(n)) => ("ok", State::Returned(n)),
                (_, _) => ("PrestamoNoEncontrado", state),
            };
            if got != want {
                // A renewal or return refused as if an earlier one had
                // applied twice, or a loan refused as already active.
                let kind = match want {
                    "ok" => Kind::Duplicated,
                    _ => Kind::Other,
                };
                v.push(kind, format!(
                    "{usuario}: {} {} stored {got}, but after the user's earlier operations it must be {want}",
                    e.op, e.id
                ));
            }
            if let (Operacion::Renovacion, true, State::Active(n)) = (e.op, r.exito, next) {
                let said = r.datos.get("renovaciones").and_then(|x| x.as_i64());
                if said != Some(n) {
                    v.push(
                        Kind::Other,
                        format!(
                            "{usuario}: renewal {} reported {said:?} renewals, model {n}",
                            e.id
                        ),
                    );
                }
            }
            state = next;
        }
        let rows = db.remove(usuario).unwrap_or_default();
        let shape: Vec<(bool, i64)> = rows.iter().map(|l| (l.activo, l.renovaciones)).collect();
        let want: Vec<(bool, i64)> = match state {
            State::None => vec![],
            State::Active(n) => vec![(true, n)],
            State::Returned(n) => vec![(false, n)],
        };
        if shape != want {
            let more = shape.len() > want.len() || shape.iter().zip(&want).any(|(s, w)| s.1 > w.1);
            v.push(
                if more { Kind::Duplicated } else { Kind::Lost },
                format!(
                    "{usuario}: loans in the database (active, renewals) {shape:?}, the history says {want:?}"
                ),
            );
        }
    }
    for (usuario, rows) in db {
        v.push(
            Kind::Duplicated,
            format!(
                "{usuario}: {} loan(s) in the database but no applied loan in the history",
                rows.len()
            ),
        );
    }
}
