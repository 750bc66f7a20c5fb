//! Property tests of the request parser every socket uses: no input makes it
//! panic, whatever it refuses comes back as `PeticionInvalida`, and every
//! valid request survives serialisation and parsing unchanged (user names in
//! their NFC form).

use biblioteca_protocol::{
    parse_entrada, CodigoError, Entrada, Operacion, Peticion, Respuesta, MAX_FRAME_BYTES,
};
use proptest::prelude::*;
use unicode_normalization::UnicodeNormalization;

/// Frames shaped like requests, with fields of any type and value, so the
/// parser's later checks are reached, not just the JSON syntax error.
fn request_like() -> impl Strategy<Value = Vec<u8>> {
    let value = prop_oneof![
        Just("null".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        "\\PC{0,80}".prop_map(|s| serde_json::json!(s).to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
    ];
    let key = prop_oneof![
        Just("operacion"),
        Just("isbn"),
        Just("usuario"),
        Just("id"),
        Just("otro"),
    ];
    let op = prop_oneof![
        Just("prestamo"),
        Just("devolucion"),
        Just("renovacion"),
        Just("consulta"),
        Just("status"),
        Just("resultado"),
        Just("robo"),
    ];
    (op, proptest::collection::vec((key, value), 0..6)).prop_map(|(op, fields)| {
        let mut text = format!("{{\"operacion\":\"{op}\"");
        for (k, v) in fields {
            text.push_str(&format!(",\"{k}\":{v}"));
        }
        text.push('}');
        text.into_bytes()
    })
}

fn isbn() -> impl Strategy<Value = String> {
    prop_oneof![
        "97[89][0-9]{10}",
        "97[89]-[0-9]{10}",
        "[0-9]{9}[0-9X]",
        "[0-9]-[0-9]{3}-[0-9]{5}-[0-9X]",
    ]
}

fn operacion() -> impl Strategy<Value = Operacion> {
    prop_oneof![
        Just(Operacion::Prestamo),
        Just(Operacion::Devolucion),
        Just(Operacion::Renovacion),
        Just(Operacion::Consulta),
    ]
}

/// A valid request; user names of up to 21 characters stay within the limit
/// whatever NFC does to them (it at most triples a character).
fn peticion() -> impl Strategy<Value = Peticion> {
    let usuario = "[\\p{L}\\p{Nd}_.@-]{1,21}";
    let id = proptest::option::of("[A-Za-z0-9_.:-]{1,64}");
    (operacion(), isbn(), usuario, id, any::<bool>()).prop_map(
        |(operacion, isbn, usuario, id, sin_usuario)| Peticion {
            operacion,
            isbn,
            usuario: if sin_usuario && operacion == Operacion::Consulta {
                String::new()
            } else {
                usuario
            },
            id,
        },
    )
}

fn refused_as_invalid(frame: &[u8]) -> Result<(), TestCaseError> {
    match parse_entrada(frame) {
        Ok(_) => Ok(()),
        Err(why) => {
            prop_assert!(!why.0.is_empty());
            let r = Respuesta::from_bytes(&Respuesta::invalida(frame, &why).to_bytes())
                .map_err(|e| TestCaseError::fail(e.0))?;
            prop_assert!(!r.exito);
            prop_assert_eq!(r.error, Some(CodigoError::PeticionInvalida));
            Ok(())
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_are_a_request_or_peticion_invalida(
        frame in proptest::collection::vec(any::<u8>(), 0..(MAX_FRAME_BYTES + 64))
    ) {
        refused_as_invalid(&frame)?;
    }

    #[test]
    fn request_shaped_frames_are_a_request_or_peticion_invalida(frame in request_like()) {
        refused_as_invalid(&frame)?;
    }

    #[test]
    fn valid_requests_round_trip(p in peticion()) {
        let parsed = parse_entrada(&p.to_bytes());
        let want = Peticion { usuario: p.usuario.nfc().collect(), ..p };
        prop_assert_eq!(parsed.clone(), Ok(Entrada::Operacion(want)));
        let Ok(Entrada::Operacion(q)) = parsed else { unreachable!() };
        prop_assert_eq!(parse_entrada(&q.to_bytes()), Ok(Entrada::Operacion(q)));
    }

    #[test]
    fn status_and_resultado_round_trip(id in "[A-Za-z0-9_.:-]{1,64}") {
        let frame = serde_json::json!({"operacion": "resultado", "id": id}).to_string();
        prop_assert_eq!(parse_entrada(frame.as_bytes()), Ok(Entrada::Resultado { id }));
        prop_assert_eq!(parse_entrada(br#"{"operacion":"status"}"#), Ok(Entrada::Status));
    }
}
