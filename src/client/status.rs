//! `status`: one health table for every service the client can reach.
//!
//! Each service is asked `{"operacion":"status"}` on its own thread with its
//! own single-try client, so the whole table takes at most one timeout and an
//! unreachable service shows as down instead of hanging the command. The
//! services' `datos` fields are read leniently (several spellings accepted) so
//! the table keeps working while their status replies evolve.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::pirate::{Client, ClientError};
use biblioteca_protocol::config::ClientConfig;
use biblioteca_protocol::Respuesta;
use biblioteca_runtime::security::ClientCurve;

/// A service to ask: a display name and its endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Servicio {
    pub nombre: String,
    pub endpoint: String,
}

/// The name of the storage manager's row: it is asked with the storage
/// manager's CURVE key, every other row with the load manager's.
pub const ALMACENAMIENTO: &str = "almacenamiento";

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fila {
    pub servicio: String,
    pub endpoint: String,
    pub up: bool,
    pub uptime: Option<String>,
    pub served: Option<String>,
    pub in_flight: Option<String>,
    pub actors: Option<String>,
    pub db_node: Option<String>,
    /// Why the service is down, or its message when it answered.
    pub nota: String,
}

/// Asks every service in parallel; rows come back in the order given.
pub fn consultar(ctx: &zmq::Context, servicios: &[Servicio], timeout: Duration) -> Vec<Fila> {
    consultar_con(ctx, servicios, timeout, None)
}

/// [`consultar`] with the client's CURVE keys (`[curve]` of its configuration).
pub fn consultar_con(
    ctx: &zmq::Context,
    servicios: &[Servicio],
    timeout: Duration,
    curve: Option<&ClientCurve>,
) -> Vec<Fila> {
    let handles: Vec<_> = servicios
        .iter()
        .cloned()
        .map(|s| {
            let ctx = ctx.clone();
            let curve = curve.cloned();
            let handle = std::thread::Builder::new()
                .name(format!("status-{}", s.nombre))
                .spawn({
                    let s = s.clone();
                    move || ask(ctx, &s, timeout, curve)
                });
            (s, handle)
        })
        .collect();
    handles
        .into_iter()
        .map(|(s, handle)| {
            let result = match handle {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err(ClientError::Config("status thread failed".into()))),
                Err(e) => Err(ClientError::Config(format!("cannot start thread: {e}"))),
            };
            fila(&s, result)
        })
        .collect()
}

fn ask(
    ctx: zmq::Context,
    s: &Servicio,
    timeout: Duration,
    curve: Option<ClientCurve>,
) -> Result<Respuesta, ClientError> {
    let config = ClientConfig {
        endpoints: vec![s.endpoint.clone()],
        timeout: timeout.max(Duration::from_millis(1)),
        retries: 1,
        curve,
    };
    let client = Client::with_context(ctx, config)?;
    let mut client = if s.nombre == ALMACENAMIENTO {
        client.towards_storage()?
    } else {
        client
    };
    client.raw(br#"{"operacion":"status"}"#)
}

/// Turns one service's answer (or silence) into a row.
pub fn fila(s: &Servicio, result: Result<Respuesta, ClientError>) -> Fila {
    let mut row = Fila {
        servicio: s.nombre.clone(),
        endpoint: s.endpoint.clone(),
        up: false,
        uptime: None,
        served: None,
        in_flight: None,
        actors: None,
        db_node: None,
        nota: String::new(),
    };
    match result {
        Err(ClientError::NoReply { .. }) => row.nota = "no reply".into(),
        Err(e) => row.nota = e.to_string(),
        Ok(r) => {
            let d = &r.datos;
            row.up = r.exito;
            row.uptime = campo(d, &["uptime_s", "uptime_secs", "uptime"]).map(|v| match v {
                Value::Number(n) => n.as_f64().map(duracion).unwrap_or_else(|| n.to_string()),
                other => texto(other),
            });
            row.served = campo(
                d,
                &["atendidas", "served", "peticiones", "requests", "servidas"],
            )
            .map(texto);
            row.in_flight = campo(d, &["en_curso", "en_vuelo", "in_flight"]).map(texto);
            row.actors = campo(d, &["actores", "actors"]).map(actores);
            row.db_node = campo(d, &["nodo", "db_node", "node", "primario", "database"]).map(texto);
            row.nota = r.mensaje;
        }
    }
    row
}

fn campo<'a>(d: &'a Value, names: &[&str]) -> Option<&'a Value> {
    names
        .iter()
        .find_map(|n| d.get(*n))
        .filter(|v| !v.is_null())
}

fn texto(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", texto(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

/// Actors as `prestamo:2 devolucion:1`, whatever shape the service used.
fn actores(v: &Value) -> String {
    match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| match v {
                Value::Array(a) => format!("{k}:{}", a.len()),
                Value::Object(o) if o.contains_key("vivos") => {
                    format!("{k}:{}", o.get("vivos").map(texto).unwrap_or_default())
                }
                other => format!("{k}:{}", texto(other)),
            })
            .collect::<Vec<_>>()
            .join(" "),
        Value::Array(a) => a.iter().map(texto).collect::<Vec<_>>().join(" "),
        other => texto(other),
    }
}

/// `3d04h`, `1h02m`, `5m07s`, `42s`.
pub fn duracion(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// The rows as an aligned text table.
pub fn tabla(filas: &[Fila]) -> String {
    let header = [
        "SERVICE",
        "ENDPOINT",
        "STATE",
        "UPTIME",
        "SERVED",
        "IN FLIGHT",
        "ACTORS SEEN",
        "DB NODE",
        "NOTE",
    ];
    let dash = || "-".to_string();
    let rows: Vec<[String; 9]> = filas
        .iter()
        .map(|f| {
            [
                f.servicio.clone(),
                f.endpoint.clone(),
                if f.up { "up" } else { "down" }.to_string(),
                f.uptime.clone().unwrap_or_else(dash),
                f.served.clone().unwrap_or_else(dash),
                f.in_flight.clone().unwrap_or_else(dash),
                f.actors.clone().unwrap_or_else(dash),
                f.db_node.clone().unwrap_or_else(dash),
                f.nota.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let render = |cells: Vec<&str>| {
        let line: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        line.join("  ").trim_end().to_string()
    };
    let mut out = vec![render(header.to_vec())];
    for row in &rows {
        out.push(render(row.iter().map(String::as_str).collect()));
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use biblioteca_runtime::net;
    use serde_json::json;

    fn svc(n: &str, ep: &str) -> Servicio {
        Servicio {
            nombre: n.into(),
            endpoint: ep.into(),
        }
    }

    #[test]
    fn rows_from_replies_and_silence() {
        let r = Respuesta::ok(
            "status",
            "ok",
            json!({"uptime_s": 3725, "atendidas": 10, "en_curso": 2,
                   "actores": {"prestamo": 2, "devolucion": ["a", "b", "c"],
                               "renovacion": {"vivos": 0, "ultimo_latido_ms": null}}}),
        );
        let f = fila(&svc("carga", "tcp://x:1"), Ok(r));
        assert!(f.up);
        assert_eq!(f.uptime.as_deref(), Some("1h02m"));
        assert_eq!(f.served.as_deref(), Some("10"));
        assert_eq!(f.in_flight.as_deref(), Some("2"));
        assert_eq!(
            f.actors.as_deref(),
            Some("devolucion:3 prestamo:2 renovacion:0")
        );
        let down = fila(
            &svc("almacenamiento", "tcp://y:2"),
            Err(ClientError::NoReply {
                endpoints: "tcp://y:2".into(),
                tries: 1,
            }),
        );
        assert!(!down.up);
        let t = tabla(&[f, down]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("SERVICE"));
        assert!(lines[2].contains("down") && lines[2].contains("no reply"));
        assert_eq!(duracion(42.0), "42s");
        assert_eq!(duracion(90_000.0), "1d01h");
    }

    #[test]
    fn unreachable_services_are_down_within_the_timeout() {
        let live = "tcp://127.0.0.1:27441";
        let ctx = zmq::Context::new();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let server = {
            let ctx = ctx.clone();
            std::thread::spawn(move || {
                let s = net::socket(&ctx, zmq::ROUTER).unwrap();
                net::bind(&s, live).unwrap();
                ready_tx.send(()).unwrap();
                let env = net::Envelope::split(s.recv_multipart(0).unwrap()).unwrap();
                let r = Respuesta::ok("status", "ok", json!({"nodo": "primary"}));
                env.reply(&s, &r.to_bytes()).unwrap();
            })
        };
        ready_rx.recv().unwrap();
        let started = std::time::Instant::now();
        let rows = consultar(
            &ctx,
            &[
                svc("carga", "tcp://127.0.0.1:27442"),
                svc("almacenamiento", live),
            ],
            Duration::from_millis(400),
        );
        assert!(started.elapsed() < Duration::from_millis(1500));
        assert!(!rows[0].up);
        assert!(rows[1].up);
        assert_eq!(rows[1].db_node.as_deref(), Some("primary"));
        server.join().unwrap();
    }
}
