//! Files of requests: one `OPERACION ISBN USUARIO` per line.
//!
//! Fields are whitespace separated; `#` starts a comment (whole line or the
//! rest of one) and blank lines are skipped. Operations may be written in full
//! or in the short forms `PRES`, `DEVO`, `RENO`, `CONS` (any case); `consulta`
//! may omit the user. A malformed line is reported with its number and counted
//! as an error, and the rest of the file is still sent. [`send`] runs a parsed
//! file through a [`Client`] and tallies the outcome.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::pirate::{Client, ClientError};
use crate::stats::{self, Latencies};
use biblioteca_protocol::{normalize_usuario, validate_isbn, Operacion, Peticion, Respuesta};

/// Label under which requests without a reply are counted.
pub const NO_REPLY: &str = "SinRespuesta";
/// Label under which malformed lines are counted.
pub const INVALID_LINE: &str = "LineaInvalida";

/// A well-formed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// 1-based line number in the file.
    pub number: usize,
    pub request: Peticion,
}

/// A line that could not be turned into a request, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {number}: {reason}")]
pub struct InvalidLine {
    pub number: usize,
    pub reason: String,
}

/// Every non-blank, non-comment line of `text`, parsed, in file order.
pub fn parse(text: &str) -> Vec<Result<Line, InvalidLine>> {
    text.lines()
        .enumerate()
        .filter_map(|(i, raw)| {
            let content = raw.split('#').next().unwrap_or_default();
            let fields: Vec<&str> = content.split_whitespace().collect();
            if fields.is_empty() {
                return None;
            }
            let number = i + 1;
            Some(
                parse_fields(&fields)
                    .map(|request| Line { number, request })
                    .map_err(|reason| InvalidLine { number, reason }),
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
    let (isbn, user) = match (fields.get(1), fields.get(2), fields.len()) {
        (Some(isbn), Some(user), 3) => (*isbn, *user),
        (Some(isbn), None, 2) if operacion == Operacion::Consulta => (*isbn, ""),
        _ => {
            return Err(format!(
                "expected OPERACION ISBN USUARIO, found {} field(s)",
                fields.len()
            ))
        }
    };
    validate_isbn(isbn).map_err(|e| e.0)?;
    let usuario = if user.is_empty() {
        String::new()
    } else {
        normalize_usuario(user).map_err(|e| e.0)?
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
pub enum Event<'a> {
    Reply {
        line: &'a Line,
        reply: &'a Respuesta,
        latency: Duration,
    },
    Failure {
        line: &'a Line,
        error: &'a ClientError,
    },
    Invalid(&'a InvalidLine),
}

/// Totals of a file run.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Requests sent (malformed lines are not sent).
    pub sent: usize,
    pub ok: usize,
    /// Failures by error code, plus [`NO_REPLY`] and [`INVALID_LINE`].
    pub errors: BTreeMap<String, usize>,
    /// Latencies of the requests that got a reply.
    pub latencies: Latencies,
}

/// The balance as printed with `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct TallyJson {
    pub sent: usize,
    pub ok: usize,
    pub errors: BTreeMap<String, usize>,
    pub latency_ms: Option<stats::Summary>,
}

impl Tally {
    pub fn total_errors(&self) -> usize {
        self.errors.values().sum()
    }

    fn error(&mut self, label: &str) {
        *self.errors.entry(label.to_string()).or_default() += 1;
    }

    pub fn to_json(&mut self) -> TallyJson {
        TallyJson {
            sent: self.sent,
            ok: self.ok,
            errors: self.errors.clone(),
            latency_ms: self.latencies.summary(),
        }
    }

    /// Two lines: counts, then latency.
    pub fn text(&mut self) -> String {
        let errors = if self.errors.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                self.errors
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let latency = match self.latencies.summary() {
            Some(r) => r.to_string(),
            None => "latency ms: no replies".to_string(),
        };
        format!(
            "sent {}, ok {}, errors {}{}\n{}",
            self.sent,
            self.ok,
            self.total_errors(),
            errors,
            latency
        )
    }
}

/// Sends every well-formed line in order, one at a time, and tallies.
pub fn send(
    client: &mut Client,
    lines: &[Result<Line, InvalidLine>],
    mut on_event: impl FnMut(Event<'_>),
) -> Tally {
    let mut balance = Tally::default();
    for entry in lines {
        let line = match entry {
            Ok(l) => l,
            Err(bad) => {
                balance.error(INVALID_LINE);
                on_event(Event::Invalid(bad));
                continue;
            }
        };
        balance.sent += 1;
        let started = Instant::now();
        match client.request(&line.request) {
            Ok(reply) => {
                let latency = started.elapsed();
                balance.latencies.push(latency);
                if reply.exito {
                    balance.ok += 1;
                } else {
                    let code = reply.error.map(|c| c.as_str()).unwrap_or("SinCodigo");
                    balance.error(code);
                }
                on_event(Event::Reply {
                    line,
                    reply: &reply,
                    latency,
                });
            }
            Err(error) => {
                balance.error(NO_REPLY);
                on_event(Event::Failure {
                    line,
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
            .map(|l| (l.number, l.request.operacion, l.request.usuario.as_str()))
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
            .map(|e| (e.number, e.reason.clone()))
            .collect();
        assert_eq!(bad.len(), 5, "{bad:?}");
        assert_eq!(bad[0].0, 9);
        assert!(bad[0].1.contains("unknown operation"));
        assert_eq!(bad[1].0, 10);
        assert!(bad[1].1.contains("OPERACION ISBN USUARIO"));
        assert!(bad[2].1.contains("not an ISBN"));
        assert!(bad[3].1.contains("found 4"));
        assert!(bad[4].1.contains("usuario"));
        assert!(InvalidLine {
            number: 9,
            reason: "x".into()
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
        let mut b = send(&mut client, &lines, |e| {
            seen.push(match e {
                Event::Reply { line, .. } => line.number,
                Event::Failure { line, .. } => line.number,
                Event::Invalid(bad) => bad.number,
            })
        });
        server.join().unwrap();
        assert_eq!(seen, vec![1, 2, 3, 4]);
        assert_eq!((b.sent, b.ok, b.total_errors()), (3, 1, 3));
        assert_eq!(b.errors.get("PrestamoNoEncontrado"), Some(&2));
        assert_eq!(b.errors.get(INVALID_LINE), Some(&1));
        assert_eq!(b.latencies.len(), 3);
        assert!(b.text().contains("p50"));
    }

    #[test]
    fn empty_and_comment_only_files_have_no_lines() {
        assert!(parse("").is_empty());
        assert!(parse("# only\n   \n\t# more\n").is_empty());
    }

    #[test]
    fn balance_text_lists_errors_by_code() {
        let mut b = Tally {
            sent: 3,
            ok: 1,
            ..Tally::default()
        };
        b.error("PrestamoActivo");
        b.error(NO_REPLY);
        b.error(INVALID_LINE);
        b.latencies.push_ms(2.0);
        b.latencies.push_ms(4.0);
        let text = b.text();
        assert!(
            text.starts_with(
                "sent 3, ok 1, errors 3 (LineaInvalida 1, PrestamoActivo 1, SinRespuesta 1)"
            ),
            "{text}"
        );
        assert!(text.contains("mean 3.00"), "{text}");
        let j = serde_json::to_value(b.to_json()).unwrap();
        assert_eq!(j["errors"]["PrestamoActivo"], 1);
        assert_eq!(j["latency_ms"]["p50"], 2.0);
    }
}
