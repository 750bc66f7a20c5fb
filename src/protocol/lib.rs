//! The wire protocol and the configuration types shared by every binary.
//!
//! Nothing here does I/O beyond parsing: the messages (this module), each
//! process's TOML configuration ([`config`], with its `[curve]` sections in
//! [`curve`], and the failover tool's roles drop-in over the storage
//! manager's in [`config_roles`]) and the generated catalogue's ISBNs ([`catalogue`]).
//!
//! Clients, the load manager, the actors and the storage manager all speak one
//! JSON request shape ([`Peticion`]) and one JSON reply shape ([`Respuesta`]);
//! the back-channel from actors to the load manager carries [`Informe`]s. This
//! module owns parsing and validation so that every socket rejects malformed
//! input the same way, with `PeticionInvalida` and a message saying what is
//! wrong. `docs/protocol.md` describes the same messages for humans.

pub mod batch;
pub mod catalogue;
pub mod config;
pub mod config_roles;
pub mod curve;
pub mod metrics_config;
pub mod scheduling;
pub mod sync_names;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// Largest request frame accepted; larger frames get `PeticionInvalida`.
pub const MAX_FRAME_BYTES: usize = 16 * 1024;
/// Largest reply or report frame (a reply carries data besides the request).
pub const MAX_REPLY_BYTES: usize = 4 * MAX_FRAME_BYTES;
/// Hard cap handed to libzmq (`ZMQ_MAXMSGSIZE`), the largest legal frame on
/// any socket: a peer sending a larger one is disconnected before it is read.
/// Requests between [`MAX_FRAME_BYTES`] and this get `PeticionInvalida`.
pub const MAX_WIRE_BYTES: i64 = MAX_REPLY_BYTES as i64;
const MAX_USUARIO: usize = 64;
const MAX_ID: usize = 64;

/// The business operations of the library.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operacion {
    Prestamo,
    Devolucion,
    Renovacion,
    Consulta,
}

impl Operacion {
    pub const ALL: [Operacion; 4] = [
        Operacion::Prestamo,
        Operacion::Devolucion,
        Operacion::Renovacion,
        Operacion::Consulta,
    ];
    /// Operations executed by actors (published on their topic).
    pub const WRITES: [Operacion; 3] = [
        Operacion::Prestamo,
        Operacion::Devolucion,
        Operacion::Renovacion,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Operacion::Prestamo => "prestamo",
            Operacion::Devolucion => "devolucion",
            Operacion::Renovacion => "renovacion",
            Operacion::Consulta => "consulta",
        }
    }

    /// The wire name, exactly.
    pub fn from_wire(s: &str) -> Option<Operacion> {
        Operacion::ALL.into_iter().find(|op| op.as_str() == s)
    }

    /// Accepts the wire names and the short forms of request files (their
    /// first four letters), in any case.
    pub fn parse(s: &str) -> Option<Operacion> {
        let s = s.to_ascii_lowercase();
        Operacion::ALL
            .into_iter()
            .find(|op| op.as_str() == s || op.as_str().get(..4) == Some(s.as_str()))
    }

    pub fn is_write(self) -> bool {
        self != Operacion::Consulta
    }
}

impl fmt::Display for Operacion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error codes carried in `Respuesta::error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CodigoError {
    LibroNoEncontrado,
    SinEjemplaresDisponibles,
    PrestamoActivo,
    PrestamoNoEncontrado,
    LimiteRenovaciones,
    PeticionInvalida,
    ServicioNoDisponible,
    AlmacenamientoNoDisponible,
    /// Too much load: the request was not accepted; retrying later is safe.
    ServicioOcupado,
    /// `resultado` lookup: no outcome is stored under that id (the request
    /// was never applied, or is still in flight).
    SolicitudDesconocida,
}

impl CodigoError {
    pub fn as_str(self) -> &'static str {
        match self {
            CodigoError::LibroNoEncontrado => "LibroNoEncontrado",
            CodigoError::SinEjemplaresDisponibles => "SinEjemplaresDisponibles",
            CodigoError::PrestamoActivo => "PrestamoActivo",
            CodigoError::PrestamoNoEncontrado => "PrestamoNoEncontrado",
            CodigoError::LimiteRenovaciones => "LimiteRenovaciones",
            CodigoError::PeticionInvalida => "PeticionInvalida",
            CodigoError::ServicioNoDisponible => "ServicioNoDisponible",
            CodigoError::AlmacenamientoNoDisponible => "AlmacenamientoNoDisponible",
            CodigoError::ServicioOcupado => "ServicioOcupado",
            CodigoError::SolicitudDesconocida => "SolicitudDesconocida",
        }
    }

    /// Whether the outcome is final (stored under the request id) or a
    /// transient condition after which the same id may be applied later.
    pub fn is_definitive(self) -> bool {
        !matches!(
            self,
            CodigoError::ServicioNoDisponible
                | CodigoError::AlmacenamientoNoDisponible
                | CodigoError::ServicioOcupado
                | CodigoError::SolicitudDesconocida
        )
    }
}

impl fmt::Display for CodigoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated business request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peticion {
    pub operacion: Operacion,
    pub isbn: String,
    /// Empty for a `consulta` that names no user (the field is then left out).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub usuario: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl Peticion {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Anything a service socket may receive from a client-like peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entrada {
    /// A business operation.
    Operacion(Peticion),
    /// `{"operacion": "status"}`: the service reports its health.
    Status,
    /// `{"operacion": "resultado", "id": "..."}`: look up a stored outcome by request id.
    Resultado { id: String },
}

/// Why a frame could not be accepted; the text goes back to the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalida(pub String);

fn invalid<T>(msg: impl Into<String>) -> Result<T, Invalida> {
    Err(Invalida(msg.into()))
}

/// Parses and validates one request frame.
pub fn parse_entrada(frame: &[u8]) -> Result<Entrada, Invalida> {
    if frame.len() > MAX_FRAME_BYTES {
        return invalid(format!(
            "request of {} bytes exceeds the {} byte limit",
            frame.len(),
            MAX_FRAME_BYTES
        ));
    }
    let text = std::str::from_utf8(frame).or_else(|_| invalid("request is not valid UTF-8"))?;
    let value: Value = serde_json::from_str(text)
        .or_else(|e| invalid(format!("request is not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return invalid("request must be a JSON object");
    };
    let op_name = string_field(&obj, "operacion")?;
    match op_name {
        "status" => return Ok(Entrada::Status),
        "resultado" => {
            let id = string_field(&obj, "id")?;
            validate_id(id)?;
            return Ok(Entrada::Resultado { id: id.to_string() });
        }
        _ => {}
    }
    let Some(operacion) = Operacion::from_wire(op_name) else {
        return invalid(format!(
            "unknown operacion {:?}: expected prestamo, devolucion, renovacion or consulta",
            truncate(op_name)
        ));
    };
    let isbn = string_field(&obj, "isbn")?;
    validate_isbn(isbn)?;
    let usuario = if operacion == Operacion::Consulta && !obj.contains_key("usuario") {
        String::new()
    } else {
        normalize_usuario(string_field(&obj, "usuario")?)?
    };
    let id = match obj.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            validate_id(s)?;
            Some(s.clone())
        }
        Some(_) => return invalid("field \"id\" must be a string"),
    };
    Ok(Entrada::Operacion(Peticion {
        operacion,
        isbn: isbn.to_string(),
        usuario,
        id,
    }))
}

fn string_field<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a str, Invalida> {
    match obj.get(name) {
        None | Some(Value::Null) => invalid(format!("missing field \"{name}\"")),
        Some(Value::String(s)) if s.trim().is_empty() => {
            invalid(format!("field \"{name}\" is empty"))
        }
        Some(Value::String(s)) => Ok(s.as_str()),
        Some(_) => invalid(format!("field \"{name}\" must be a string")),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// ISBN-10 or ISBN-13, optionally hyphenated; the last character may be `X`.
pub fn validate_isbn(isbn: &str) -> Result<(), Invalida> {
    let bad = || {
        invalid(format!(
            "isbn {:?} is not an ISBN: expected 10 or 13 digits, optionally hyphenated",
            truncate(isbn)
        ))
    };
    if isbn.len() > 17 || isbn.starts_with('-') || isbn.ends_with('-') {
        return bad();
    }
    let mut digits = 0;
    let last = isbn.len().saturating_sub(1);
    for (i, c) in isbn.char_indices() {
        match c {
            '0'..='9' => digits += 1,
            'X' | 'x' if i == last => digits += 1,
            '-' => {}
            _ => return bad(),
        }
    }
    if digits == 10 || digits == 13 {
        Ok(())
    } else {
        bad()
    }
}

/// The user name in Unicode NFC, so `muñoz` typed precomposed or with a
/// combining tilde is one user: 1 to 64 characters, each a letter or digit
/// of any script, a combining mark after one, `_`, `-`, `.` or `@`.
pub fn normalize_usuario(usuario: &str) -> Result<String, Invalida> {
    let nfc: String = usuario.nfc().collect();
    let mut count = 0;
    let mut after_letter = false;
    let ok = nfc.chars().all(|c| {
        count += 1;
        let fits = if is_combining_mark(c) {
            after_letter
        } else {
            after_letter = c.is_alphanumeric();
            after_letter || matches!(c, '_' | '-' | '.' | '@')
        };
        fits && count <= MAX_USUARIO
    });
    if !ok || nfc.is_empty() {
        return invalid(format!(
            "usuario {:?} must be 1 to {MAX_USUARIO} characters of letters, digits, '_', '-', '.' or '@'",
            truncate(usuario)
        ));
    }
    Ok(nfc)
}

/// Whether [`normalize_usuario`] accepts `usuario`.
pub fn validate_usuario(usuario: &str) -> Result<(), Invalida> {
    normalize_usuario(usuario).map(|_| ())
}

/// 1 to 64 characters of letters, digits, `_`, `-`, `.` and `:`.
pub fn validate_id(id: &str) -> Result<(), Invalida> {
    if id.is_empty()
        || id.len() > MAX_ID
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
    {
        return invalid(format!(
            "id {:?} must be 1 to {MAX_ID} characters of letters, digits, '_', '-', '.' or ':'",
            truncate(id)
        ));
    }
    Ok(())
}

/// The reply to every request, on every socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Respuesta {
    pub exito: bool,
    pub operacion: String,
    pub mensaje: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<CodigoError>,
    #[serde(default, skip_serializing_if = "is_empty_datos")]
    pub datos: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

fn is_empty_datos(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

impl Respuesta {
    /// One word for logs: the error code, `ok`, or `error` for a failure
    /// without a code.
    pub fn outcome(&self) -> &'static str {
        match self.error {
            Some(code) => code.as_str(),
            None if self.exito => "ok",
            None => "error",
        }
    }

    pub fn ok(operacion: &str, mensaje: impl Into<String>, datos: Value) -> Respuesta {
        Respuesta {
            exito: true,
            operacion: operacion.to_string(),
            mensaje: mensaje.into(),
            error: None,
            datos,
            id: None,
        }
    }

    pub fn error(operacion: &str, codigo: CodigoError, mensaje: impl Into<String>) -> Respuesta {
        Respuesta {
            exito: false,
            operacion: operacion.to_string(),
            mensaje: mensaje.into(),
            error: Some(codigo),
            datos: Value::Null,
            id: None,
        }
    }

    /// `PeticionInvalida` for a frame that could not be parsed; the operation
    /// is echoed when the frame named a plausible one.
    pub fn invalida(frame: &[u8], why: &Invalida) -> Respuesta {
        let operacion = serde_json::from_slice::<Value>(frame)
            .ok()
            .and_then(|v| v.get("operacion").and_then(Value::as_str).map(truncate))
            .unwrap_or_default();
        let id = serde_json::from_slice::<Value>(frame)
            .ok()
            .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_string))
            .filter(|id| validate_id(id).is_ok());
        Respuesta::error(&operacion, CodigoError::PeticionInvalida, why.0.clone()).with_id(id)
    }

    pub fn with_id(mut self, id: Option<String>) -> Respuesta {
        self.id = id;
        self
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_bytes(frame: &[u8]) -> Result<Respuesta, Invalida> {
        if frame.len() > MAX_REPLY_BYTES {
            return invalid("reply too large");
        }
        serde_json::from_slice(frame).or_else(|e| invalid(format!("malformed reply: {e}")))
    }
}

/// What actors send on the back-channel to the load manager.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "tipo", rename_all = "lowercase")]
pub enum Informe {
    /// The outcome of one published request (its `id` is set).
    Resultado { respuesta: Respuesta },
    /// "I am alive and subscribed to this operation."
    Latido { operacion: Operacion, actor: String },
}

impl Informe {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_bytes(frame: &[u8]) -> Result<Informe, Invalida> {
        if frame.len() > MAX_REPLY_BYTES {
            return invalid("report too large");
        }
        serde_json::from_slice(frame).or_else(|e| invalid(format!("malformed report: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(frame: &str) -> Result<Entrada, Invalida> {
        parse_entrada(frame.as_bytes())
    }

    #[test]
    fn accepts_the_guides_requests() {
        let e =
            op(r#"{"operacion":"prestamo","isbn":"978-0134685991","usuario":"usuario_test_1"}"#)
                .unwrap();
        assert_eq!(
            e,
            Entrada::Operacion(Peticion {
                operacion: Operacion::Prestamo,
                isbn: "978-0134685991".into(),
                usuario: "usuario_test_1".into(),
                id: None
            })
        );
        assert!(op(r#"{"operacion":"consulta","isbn":"978-0134685991"}"#).is_ok());
        assert_eq!(op(r#"{"operacion":"status"}"#).unwrap(), Entrada::Status);
    }

    #[test]
    fn rejects_malformed_requests_with_a_reason() {
        let cases = [
            ("not json", "not valid JSON"),
            ("[1,2]", "JSON object"),
            (
                r#"{"isbn":"978-0134685991"}"#,
                "missing field \"operacion\"",
            ),
            (r#"{"operacion":5}"#, "must be a string"),
            (
                r#"{"operacion":"robo","isbn":"1","usuario":"u"}"#,
                "unknown operacion",
            ),
            (
                r#"{"operacion":"prestamo","isbn":"abc","usuario":"u"}"#,
                "not an ISBN",
            ),
            (
                r#"{"operacion":"prestamo","isbn":"978-0134685991","usuario":""}"#,
                "is empty",
            ),
            (
                r#"{"operacion":"prestamo","isbn":"978-0134685991","usuario":"a b"}"#,
                "usuario",
            ),
            (
                r#"{"operacion":"prestamo","isbn":"978-0134685991","usuario":"u","id":7}"#,
                "\"id\"",
            ),
        ];
        for (frame, want) in cases {
            let err = op(frame).unwrap_err();
            assert!(err.0.contains(want), "{frame}: {err}");
        }
        assert!(parse_entrada(&[0xff, 0xfe])
            .unwrap_err()
            .0
            .contains("UTF-8"));
        let big = format!(
            r#"{{"operacion":"prestamo","isbn":"{}"}}"#,
            "1".repeat(20_000)
        );
        assert!(parse_entrada(big.as_bytes())
            .unwrap_err()
            .0
            .contains("exceeds"));
    }

    #[test]
    fn user_names_of_any_script_in_one_normal_form() {
        for ok in [
            "muñoz",
            "joão",
            "usuário_ñandú",
            "usuario_test_1",
            "李明",
            "a.b@c-d",
        ] {
            assert!(validate_usuario(ok).is_ok(), "{ok}");
        }
        let nfd = "mun\u{303}oz";
        assert_eq!(normalize_usuario(nfd).unwrap(), "muñoz");
        assert_eq!(
            normalize_usuario(&"ñ".repeat(64)).unwrap().chars().count(),
            64
        );
        for bad in ["a b", "x/y", "\u{303}a", "tab\t", &"ñ".repeat(65)] {
            assert!(validate_usuario(bad).is_err(), "{bad}");
        }
        let e =
            op(r#"{"operacion":"prestamo","isbn":"978-0134685991","usuario":"jo\u0061\u0303o"}"#);
        match e.unwrap() {
            Entrada::Operacion(p) => assert_eq!(p.usuario, "joão"),
            other => panic!("{other:?}"),
        }
        let consulta = Peticion {
            operacion: Operacion::Consulta,
            isbn: "978-0134685991".into(),
            usuario: String::new(),
            id: None,
        };
        assert_eq!(
            parse_entrada(&consulta.to_bytes()).unwrap(),
            Entrada::Operacion(consulta)
        );
    }

    #[test]
    fn isbn_shapes() {
        for ok in [
            "978-0134685991",
            "0596007124",
            "0-596-00712-X",
            "9780134685991",
        ] {
            assert!(validate_isbn(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "123",
            "978-01346859911",
            "97801346859X1",
            "-9780134685991",
            "978_0134685991",
        ] {
            assert!(validate_isbn(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reply_round_trip_omits_empty_fields() {
        let r = Respuesta::ok("prestamo", "ok", Value::Null).with_id(Some("a".into()));
        let text = String::from_utf8(r.to_bytes()).unwrap();
        assert!(!text.contains("error") && !text.contains("datos"));
        assert_eq!(Respuesta::from_bytes(text.as_bytes()).unwrap(), r);
        let e = Respuesta::error("prestamo", CodigoError::PrestamoActivo, "x");
        assert!(String::from_utf8(e.to_bytes())
            .unwrap()
            .contains("\"error\":\"PrestamoActivo\""));
    }

    #[test]
    fn informe_round_trip() {
        let i = Informe::Latido {
            operacion: Operacion::Prestamo,
            actor: "a1".into(),
        };
        assert_eq!(Informe::from_bytes(&i.to_bytes()).unwrap(), i);
        assert!(Informe::from_bytes(b"{\"tipo\":\"nada\"}").is_err());
    }
}
