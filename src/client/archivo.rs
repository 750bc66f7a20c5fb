//! Files of requests: one `OPERACION ISBN USUARIO` per line.
//!
//! Fields are whitespace separated; `#` starts a comment (whole line or the
//! rest of one) and blank lines are skipped. Operations may be written in full
//! or in the short forms `PRES`, `DEVO`, `RENO`, `CONS` (any case); `consulta`
//! may omit the user. A malformed line is reported with its number and counted
//! as an error, and the rest of the file is still sent. [`enviar`] runs a parsed
//! file through a [`Client`] and tallies the outcome.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::pirate::{Client, ClientError};
use crate::stats::{self, Latencias};
use biblioteca_protocol::{normalize_usuario, validate_isbn, Operacion, Peticion, Respuesta};

/// Label under which requests without a reply are counted.
pub const SIN_RESPUESTA: &str = "SinRespuesta";
/// Label under which malformed lines are counted.
pub const LINEA_INVALIDA: &str = "LineaInvalida";

/// A well-formed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linea {
    /// 1-based line number in the file.
    pub numero: usize,
    pub peticion: Peticion,
}

/// A line that could not be turned into a request, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {numero}: {motivo}")]
pub struct LineaInvalida {
    pub numero: usize,
    pub motivo: String,
}

/// Every non-blank, non-comment line of `text`, parsed, in file order.
pub fn parse(text: &str) -> Vec<Result<Linea, LineaInvalida>> {
    text.lines()
        .enumerate()
        .filter_map(|(i, raw)| {
            let content = raw.split('#').next().unwrap_or_default();
            let fields: Vec<&str> = content.split_whitespace().collect();
            if fields.is_empty() {
                return None;
            }
            let numero = i + 1;
            Some(
                parse_fields(&fields)
                    .map(|peticion| Linea { numero, peticion })
                    .map_err(|motivo| LineaInvalida { numero, motivo }),
            )
        })
        .collect()
}

fn parse_fields(fields: &[&str]) -> Result<Peticion, String> {
    let op_name = fields.first().copied().unwrap_or_default();
    let operacion = Operacion::parse(op_name).ok_or_else(|| {
        format!(
            "unknown operation {op_name:?}: expected prestamo, devolucion, renovacion, consulta \
             or PRES, DEVO, RENO, CONS"
        )
    })?;
    let (isbn, usuario) = match (fields.get(1), fields.get(2), fields.len()) {
        (Some(isbn), Some(usuario), 3) => (*isbn, *usuario),
        (Some(isbn), None, 2) if operacion == Operacion::Consulta => (*isbn, ""),
        _ => {
            return Err(format!(
                "expected OPERACION ISBN USUARIO, found {} field(s)",
                fields.len()
            ))
        }
    };
    validate_isbn(isbn).map_err(|e| e.0)?;
    let usuario = if usuario.is_empty() {
        String::new()
    } else {
        normalize_usuario(usuario).map_err(|e| e.0)?
    };
    Ok(Peticion {
        operacion,
        isbn: isbn.to_string(),
        usuario,
        id: None,
    })
}

/// What happened to one line, handed to the caller as it happens.
#[derive(Debug)]
pub enum Evento<'a> {
    Respuesta {
        linea: &'a Linea,
        respuesta: &'a Respuesta,
        latencia: Duration,
    },
    Fallo {
        linea: &'a Linea,
        error: &'a ClientError,
    },
    Invalida(&'a LineaInvalida),
}

/// Totals of a file run.
#[derive(Debug, Clone, Default)]
pub struct Balance {
    /// Requests sent (malformed lines are not sent).
    pub enviadas: usize,
    pub ok: usize,
    /// Failures by error code, plus [`SIN_RESPUESTA`] and [`LINEA_INVALIDA`].
    pub errores: BTreeMap<String, usize>,
    /// Latencies of the requests that got a reply.
    pub latencias: Latencias,
}

/// The balance as printed with `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct BalanceJson {
    pub enviadas: usize,
    pub ok: usize,
    pub errores: BTreeMap<String, usize>,
    pub latencia_ms: Option<stats::Resumen>,
}

impl Balance {
    pub fn total_errores(&self) -> usize {
        self.errores.values().sum()
    }

    fn error(&mut self, label: &str) {
        *self.errores.entry(label.to_string()).or_default() += 1;
    }

    pub fn to_json(&mut self) -> BalanceJson {
        BalanceJson {
            enviadas: self.enviadas,
            ok: self.ok,
            errores: self.errores.clone(),
            latencia_ms: self.latencias.resumen(),
        }
    }

    /// Two lines: counts, then latency.
    pub fn texto(&mut self) -> String {
        let errores = if self.errores.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                self.errores
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let latencia = match self.latencias.resumen() {
            Some(r) => r.to_string(),
            None => "latency ms: no replies".to_string(),
        };
        format!(
            "sent {}, ok {}, errors {}{}\n{}",
            self.enviadas,
            self.ok,
            self.total_errores(),
            errores,
            latencia
        )
    }
}

/// Sends every well-formed line in order, one at a time, and tallies.
pub fn enviar(
    client: &mut Client,
    lineas: &[Result<Linea, LineaInvalida>],
    mut on_evento: impl FnMut(Evento<'_>),
) -> Balance {
    let mut balance = Balance::default();
    for entry in lineas {
        let linea = match entry {
            Ok(l) => l,
            Err(bad) => {
                balance.error(LINEA_INVALIDA);
                on_evento(Evento::Invalida(bad));
                continue;
            }
        };
        balance.enviadas += 1;
        let started = Instant::now();
        match client.request(&linea.peticion) {
            Ok(respuesta) => {
                let latencia = started.elapsed();
                balance.latencias.push(latencia);
                if respuesta.exito {
                    balance.ok += 1;
                } else {
                    let code = respuesta.error.map(|c| c.as_str()).unwrap_or("SinCodigo");
                    balance.error(code);
                }
                on_evento(Evento::Respuesta {
                    linea,
                    respuesta: &respuesta,
                    latencia,
                });
            }
            Err(error) => {
                balance.error(SIN_RESPUESTA);
                on_evento(Evento::Fallo {
                    linea,
                    error: &error,
                });
            }
        }
    }
    balance
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# a comment
PRES 978-0134685991 ana

prestamo 978-0135957059 luis   # trailing comment
  DEVO   978-0134685991 ana
reno 978-0134685991 ana
CONS 978-0134685991
consulta 978-0134685991 ana
robo 978-0134685991 ana
PRES 978-0134685991
PRES 12345 ana
PRES 978-0134685991 ana extra
DEVO 978-0134685991 a/b
";

    #[test]
    fn parses_full_and_short_forms_and_reports_bad_lines_by_number() {
        let parsed = parse(FILE);
        let ok: Vec<(usize, Operacion, &str)> = parsed
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|l| (l.numero, l.peticion.operacion, l.peticion.usuario.as_str()))
            .collect();
        assert_eq!(
            ok,
            vec![
                (2, Operacion::Prestamo, "ana"),
                (4, Operacion::Prestamo, "luis"),
                (5, Operacion::Devolucion, "ana"),
                (6, Operacion::Renovacion, "ana"),
                (7, Operacion::Consulta, ""),
                (8, Operacion::Consulta, "ana"),
            ]
        );
        let bad: Vec<(usize, String)> = parsed
            .iter()
            .filter_map(|r| r.as_ref().err())
            .map(|e| (e.numero, e.motivo.clone()))
            .collect();
        assert_eq!(bad.len(), 5, "{bad:?}");
        assert_eq!(bad[0].0, 9);
        assert!(bad[0].1.contains("unknown operation"));
        assert_eq!(bad[1].0, 10);
        assert!(bad[1].1.contains("OPERACION ISBN USUARIO"));
        assert!(bad[2].1.contains("not an ISBN"));
        assert!(bad[3].1.contains("found 4"));
        assert!(bad[4].1.contains("usuario"));
        assert!(LineaInvalida {
            numero: 9,
            motivo: "x".into()
        }
        .to_string()
        .starts_with("line 9:"));
    }

    #[test]
    fn sends_a_file_and_tallies_replies_and_bad_lines() {
        use biblioteca_protocol::config::ClientConfig;
        use biblioteca_protocol::{parse_entrada, CodigoError, Entrada};
        use biblioteca_runtime::net;

        let ep = "tcp://127.0.0.1:27451";
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            let ctx = zmq::Context::new();
            let s = net::socket(&ctx, zmq::ROUTER).unwrap();
            net::bind(&s, ep).unwrap();
            ready_tx.send(()).unwrap();
            // Loans succeed; everything else has no loan to act on.
            for _ in 0..3 {
                let env = net::Envelope::split(s.recv_multipart(0).unwrap()).unwrap();
                let Entrada::Operacion(p) = parse_entrada(env.single_body().unwrap()).unwrap()
                else {
                    panic!("not an operation")
                };
                let r = if p.operacion == Operacion::Prestamo {
                    Respuesta::ok("prestamo", "ok", serde_json::Value::Null)
                } else {
                    Respuesta::error(
                        p.operacion.as_str(),
                        CodigoError::PrestamoNoEncontrado,
                        "none",
                    )
                };
                env.reply(&s, &r.with_id(p.id).to_bytes()).unwrap();
            }
        });
        ready_rx.recv().unwrap();
        let mut client = Client::new(ClientConfig {
            endpoints: vec![ep.into()],
            timeout: Duration::from_secs(2),
            retries: 1,
            curve: None,
        })
        .unwrap();
        let lines = parse(
            "PRES 978-0134685991 ana\nbad line\nDEVO 978-0134685991 bob\nRENO 978-0134685991 bob\n",
        );
        let mut seen = Vec::new();
        let mut b = enviar(&mut client, &lines, |e| {
            seen.push(match e {
                Evento::Respuesta { linea, .. } => linea.numero,
                Evento::Fallo { linea, .. } => linea.numero,
                Evento::Invalida(bad) => bad.numero,
            })
        });
        server.join().unwrap();
        assert_eq!(seen, vec![1, 2, 3, 4]);
        assert_eq!((b.enviadas, b.ok, b.total_errores()), (3, 1, 3));
        assert_eq!(b.errores.get("PrestamoNoEncontrado"), Some(&2));
        assert_eq!(b.errores.get(LINEA_INVALIDA), Some(&1));
        assert_eq!(b.latencias.len(), 3);
        assert!(b.texto().contains("p50"));
    }

    #[test]
    fn empty_and_comment_only_files_have_no_lines() {
        assert!(parse("").is_empty());
        assert!(parse("# only\n   \n\t# more\n").is_empty());
    }

    #[test]
    fn balance_text_lists_errors_by_code() {
        let mut b = Balance {
            enviadas: 3,
            ok: 1,
            ..Balance::default()
        };
        b.error("PrestamoActivo");
        b.error(SIN_RESPUESTA);
        b.error(LINEA_INVALIDA);
        b.latencias.push_ms(2.0);
        b.latencias.push_ms(4.0);
        let text = b.texto();
        assert!(
            text.starts_with(
                "sent 3, ok 1, errors 3 (LineaInvalida 1, PrestamoActivo 1, SinRespuesta 1)"
            ),
            "{text}"
        );
        assert!(text.contains("mean 3.00"), "{text}");
        let j = serde_json::to_value(b.to_json()).unwrap();
        assert_eq!(j["errores"]["PrestamoActivo"], 1);
        assert_eq!(j["latencia_ms"]["p50"], 2.0);
    }
}
