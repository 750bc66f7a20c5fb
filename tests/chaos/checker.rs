//! Replays the recorded history against the database once the faults are over.
//!
//! First every request the client gave up on is resolved at the storage
//! manager: a `resultado` lookup that finds a stored outcome means it was
//! applied (once); `SolicitudDesconocida` only means "not applied yet", so
//! the id is then burnt with a tombstone (a `devolucion` of a book that does
//! not exist, stored under that id): once the tombstone is stored the
//! original can never apply, and if the original won the race the tombstone
//! is refused as a reused id and the next lookup finds it. Then the database
//! is read and every invariant is checked; each violation is one line of text.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use biblioteca_client::pirate::Client;
use biblioteca_cluster::Node;
use biblioteca_protocol::config::ClientConfig;
use biblioteca_protocol::{CodigoError, Operacion, Peticion, Respuesta};
use serde_json::json;

use crate::workload::{Entry, Outcome};

/// Not in any catalogue; a well-formed ISBN so the request is stored.
pub const TOMBSTONE_ISBN: &str = "979-0000000000";
const TOMBSTONE_USER: &str = "chaos-tombstone";
/// Lookups (and tombstones) per id before giving up on resolving it.
const RESOLVE_TRIES: u32 = 40;
/// All resolutions together: a wedged storage manager fails the test, not hangs it.
const RESOLVE_MAX: Duration = Duration::from_secs(60);

/// What finally happened to a request.
#[derive(Debug, Clone)]
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

fn storage_client(endpoint: &str) -> Client {
    Client::new(ClientConfig {
        endpoints: vec![endpoint.to_string()],
        timeout: Duration::from_millis(2000),
        retries: 1,
        curve: None,
    })
    .unwrap()
}

/// Resolves every entry; lookups go straight to the storage manager.
pub fn resolve(storage: &str, history: &[Entry]) -> Vec<Resolution> {
    let mut client = storage_client(storage);
    let deadline = Instant::now() + RESOLVE_MAX;
    history
        .iter()
        .map(|e| match &e.outcome {
            _ if e.op == Operacion::Consulta => Resolution::Read,
            Outcome::Definitive(r) => Resolution::Told(r.clone()),
            Outcome::Unknown { .. } => resolve_one(&mut client, e, deadline),
        })
        .collect()
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

/// One `solicitudes` row.
#[derive(Debug, Clone)]
struct Stored {
    operacion: String,
    isbn: String,
    usuario: String,
    exito: bool,
    error: String,
}

/// One `prestamos` row.
#[derive(Debug, Clone)]
struct Loan {
    usuario: String,
    isbn: String,
    activo: bool,
    renovaciones: i64,
    solicitud: String,
}

fn rows(node: &Node, query: &str) -> Vec<Vec<String>> {
    let out = node
        .sql(query)
        .unwrap_or_else(|e| panic!("SQL on {}: {query}: {e}", node.name));
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('|').map(str::to_string).collect())
        .collect()
}

/// Copies of each book that exist at all (available + on loan).
pub fn copies(node: &Node) -> HashMap<String, i64> {
    rows(
        node,
        "SELECT l.isbn, l.ejemplares + (SELECT count(*) FROM prestamos p \
         WHERE p.isbn = l.isbn AND p.estado = 'ACTIVO') FROM libros l",
    )
    .into_iter()
    .map(|r| (r[0].clone(), r[1].parse().unwrap()))
    .collect()
}

fn code(r: &Respuesta) -> String {
    r.error.map(|c| c.to_string()).unwrap_or_default()
}

/// Every invariant, against the database on `node`; returns the violations.
pub fn check(
    node: &Node,
    history: &[Entry],
    resolved: &[Resolution],
    initial: &HashMap<String, i64>,
) -> Vec<String> {
    let mut v = Vec::new();
    let solicitudes: HashMap<String, Stored> = rows(
        node,
        "SELECT id, operacion, isbn, usuario, coalesce(respuesta->>'exito', 'null'), \
         coalesce(respuesta->>'error', '') FROM solicitudes",
    )
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
    let loans: Vec<Loan> = rows(
        node,
        "SELECT usuario, isbn, estado, renovaciones, coalesce(solicitud, '') FROM prestamos",
    )
    .into_iter()
    .map(|r| Loan {
        usuario: r[0].clone(),
        isbn: r[1].clone(),
        activo: r[2] == "ACTIVO",
        renovaciones: r[3].parse().unwrap(),
        solicitud: r[4].clone(),
    })
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
            Resolution::Unresolved(why) => v.push(format!(
                "{}: unknown outcome could not be resolved by lookup ({why})",
                e.id
            )),
            Resolution::NotApplied => {
                if row.map(|s| s.isbn.as_str()) != Some(TOMBSTONE_ISBN) {
                    v.push(format!(
                        "{}: resolved as never applied, but solicitudes holds {row:?}",
                        e.id
                    ));
                }
                if loans_of != 0 {
                    v.push(format!(
                        "{}: never applied, yet {loans_of} loan(s) carry its id",
                        e.id
                    ));
                }
            }
            Resolution::Told(r) | Resolution::Applied(r) => {
                if r.id.as_deref() != Some(e.id.as_str()) {
                    v.push(format!("{}: reply carries id {:?}", e.id, r.id));
                }
                if r.error == Some(CodigoError::PeticionInvalida) {
                    v.push(format!("{}: rejected as invalid: {}", e.id, r.mensaje));
                    continue;
                }
                let Some(s) = row else {
                    v.push(format!(
                        "{}: acknowledged {} ({}) but absent from solicitudes",
                        e.id,
                        e.op,
                        if r.exito { "ok".to_string() } else { code(r) }
                    ));
                    continue;
                };
                if s.operacion != e.op.as_str() || s.isbn != e.isbn || s.usuario != e.usuario {
                    v.push(format!(
                        "{}: stored as {s:?}, sent as {} {} {}",
                        e.id, e.op, e.isbn, e.usuario
                    ));
                }
                if s.exito != r.exito || s.error != code(r) {
                    v.push(format!(
                        "{}: client was told exito={} {}, database stored exito={} {}",
                        e.id,
                        r.exito,
                        code(r),
                        s.exito,
                        s.error
                    ));
                }
                let want = usize::from(e.op == Operacion::Prestamo && r.exito);
                if loans_of != want {
                    v.push(format!(
                        "{}: {} {} loan row(s) carry its id, expected {want}",
                        e.id, e.op, loans_of
                    ));
                }
                if let Some(l) = loans_by_request.get(e.id.as_str()).and_then(|l| l.first()) {
                    if l.usuario != e.usuario || l.isbn != e.isbn {
                        v.push(format!("{}: its loan is {l:?}", e.id));
                    }
                }
            }
            Resolution::Read => {}
        }
    }
    check_transient_texts(history, &mut v);
    for id in solicitudes.keys() {
        if !ids.contains(id.as_str()) {
            v.push(format!("solicitudes holds id {id} that no client sent"));
        }
    }
    for (id, ls) in &loans_by_request {
        if !ids.contains(id) {
            v.push(format!(
                "{} loan(s) carry request id {id:?} that no client sent",
                ls.len()
            ));
        }
    }
    check_users(history, resolved, &loans, &mut v);
    let now = copies(node);
    for (isbn, before) in initial {
        let after = now.get(isbn).copied().unwrap_or(-1);
        if after != *before {
            v.push(format!(
                "book {isbn}: {before} copies before, now available + on loan = {after}"
            ));
        }
    }
    v
}

/// Replies that refused a request (it was never published) may say "retry";
/// every other transient reply to a write was sent while the request was
/// still being worked on, so it must say the outcome is unknown and how to
/// find it out, never read as a failure.
fn check_transient_texts(history: &[Entry], v: &mut Vec<String>) {
    const REFUSALS: [&str; 3] = ["no live", "is stopping", "busy"];
    for e in history.iter().filter(|e| e.op.is_write()) {
        for text in &e.transient_texts {
            let refusal = REFUSALS.iter().any(|r| text.contains(r));
            let says_unknown = text.contains("UNKNOWN") && text.contains("resultado");
            if !(refusal || says_unknown) {
                v.push(format!(
                    "{}: transient reply does not say the outcome is unknown: {text}",
                    e.id
                ));
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
fn check_users(history: &[Entry], resolved: &[Resolution], loans: &[Loan], v: &mut Vec<String>) {
    let mut users: HashMap<&str, Vec<(&Entry, &Respuesta)>> = HashMap::new();
    for (e, res) in history.iter().zip(resolved) {
        if let Some(r) = res.stored().filter(|_| e.op != Operacion::Consulta) {
            users.entry(&e.usuario).or_default().push((e, r));
        }
    }
    let mut db: HashMap<&str, Vec<&Loan>> = HashMap::new();
    for l in loans.iter().filter(|l| l.usuario.starts_with("ch")) {
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
                v.push(format!(
                    "{usuario}: {} {} stored {got}, but after the user's earlier operations it must be {want}",
                    e.op, e.id
                ));
            }
            if let (Operacion::Renovacion, true, State::Active(n)) = (e.op, r.exito, next) {
                let said = r.datos.get("renovaciones").and_then(|x| x.as_i64());
                if said != Some(n) {
                    v.push(format!(
                        "{usuario}: renewal {} reported {said:?} renewals, model {n}",
                        e.id
                    ));
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
            v.push(format!(
                "{usuario}: loans in the database (active, renewals) {shape:?}, the history says {want:?}"
            ));
        }
    }
    for (usuario, rows) in db {
        v.push(format!(
            "{usuario}: {} loan(s) in the database but no applied loan in the history",
            rows.len()
        ));
    }
}
