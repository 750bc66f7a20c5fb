//! One readable line per reply, for people at a terminal.
//!
//! `--json` prints the wire reply instead; this module only decides how a
//! [`Respuesta`] reads as text: a mark, the operation, the message, the error
//! code and a short summary of `datos`.

use serde_json::Value;

use biblioteca_protocol::Respuesta;

/// Longest `datos` summary before it is cut with an ellipsis.
const MAX_DATOS: usize = 160;

/// `✓ prestamo: message [k=v, ..] (id ..)` or `✗ prestamo: Code: message (id ..)`.
pub fn linea(r: &Respuesta) -> String {
    let mut out = String::new();
    out.push_str(if r.exito { "✓ " } else { "✗ " });
    if !r.operacion.is_empty() {
        out.push_str(&r.operacion);
        out.push_str(": ");
    }
    if let Some(code) = r.error {
        out.push_str(code.as_str());
        out.push_str(": ");
    }
    out.push_str(&r.mensaje);
    let datos = datos(&r.datos);
    if !datos.is_empty() {
        out.push_str(" [");
        out.push_str(&datos);
        out.push(']');
    }
    if let Some(id) = &r.id {
        out.push_str(" (id ");
        out.push_str(id);
        out.push(')');
    }
    out
}

/// `k=v` pairs for an object (nested values as compact JSON), cut to a bound.
pub fn datos(v: &Value) -> String {
    let text = match v {
        Value::Null => String::new(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", escalar(v)))
            .collect::<Vec<_>>()
            .join(", "),
        other => escalar(other),
    };
    cortar(&text, MAX_DATOS)
}

fn escalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn cortar(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut cut: String = s.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use biblioteca_protocol::CodigoError;
    use serde_json::json;

    #[test]
    fn success_and_failure_lines() {
        let ok = Respuesta::ok(
            "prestamo",
            "Préstamo registrado",
            json!({"isbn": "978-0134685991", "ejemplares": 2}),
        )
        .with_id(Some("s-1".into()));
        assert_eq!(
            linea(&ok),
            "✓ prestamo: Préstamo registrado [ejemplares=2, isbn=978-0134685991] (id s-1)"
        );
        let err = Respuesta::error("devolucion", CodigoError::PrestamoNoEncontrado, "no loan");
        assert_eq!(linea(&err), "✗ devolucion: PrestamoNoEncontrado: no loan");
    }

    #[test]
    fn long_datos_are_cut() {
        let long = json!({"x": "y".repeat(500)});
        let s = datos(&long);
        assert_eq!(s.chars().count(), MAX_DATOS);
        assert!(s.ends_with('…'));
        assert_eq!(datos(&json!([1, 2])), "[1,2]");
    }
}
