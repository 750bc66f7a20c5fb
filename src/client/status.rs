//! `status`: one health table for every service the client can reach.
//!
//! Each service is asked `{"operacion":"status"}` on its own thread with its
//! own single-try client, so the whole table takes at most one timeout and an
//! unreachable service shows as down instead of hanging the command. The
//! services' `data` fields are read leniently (several spellings accepted) so
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
pub struct Service {
    pub name: String,
    pub endpoint: String,
}

/// The name of the storage manager's row: it is asked with the storage
/// manager's CURVE key, every other row with the load manager's.
pub const ALMACENAMIENTO: &str = "almacenamiento";

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusRow {
    pub service: String,
    pub endpoint: String,
    pub up: bool,
    pub uptime: Option<String>,
    pub served: Option<String>,
    pub in_flight: Option<String>,
    pub actors: Option<String>,
    pub db_node: Option<String>,
    /// Why the service is down, or its message when it answered.
    pub note: String,
}

/// Asks every service in parallel; rows come back in the order given.
pub fn query(ctx: &zmq::Context, services: &[Service], timeout: Duration) -> Vec<StatusRow> {
    query_with(ctx, services, timeout, None)
}

/// [`query`] with the client's CURVE keys (`[curve]` of its configuration).
pub fn query_with(
    ctx: &zmq::Context,
    services: &[Service],
    timeout: Duration,
    curve: Option<&ClientCurve>,
) -> Vec<StatusRow> {
    let handles: Vec<_> = services
        .iter()
        .cloned()
        .map(|s| {
            let ctx = ctx.clone();
            let curve = curve.cloned();
            let handle = std::thread::Builder::new()
                .name(format!("status-{}", s.name))
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
            row(&s, result)
        })
        .collect()
}

fn ask(
    ctx: zmq::Context,
    s: &Service,
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
    let mut client = if s.name == ALMACENAMIENTO {
        client.towards_storage()?
    } else {
        client
    };
    client.raw(br#"{"operacion":"status"}"#)
}

/// Turns one service's answer (or silence) into a row.
pub fn row(s: &Service, result: Result<Respuesta, ClientError>) -> StatusRow {
    let mut row = StatusRow {
        service: s.name.clone(),
        endpoint: s.endpoint.clone(),
        up: false,
        uptime: None,
        served: None,
        in_flight: None,
        actors: None,
        db_node: None,
        note: String::new(),
    };
    match result {
        Err(ClientError::NoReply { .. }) => row.note = "no reply".into(),
        Err(e) => row.note = e.to_string(),
        Ok(r) => {
            let d = &r.datos;
            row.up = r.exito;
            row.uptime = field(d, &["uptime_s", "uptime_secs", "uptime"]).map(|v| match v {
                Value::Number(n) => n.as_f64().map(duration).unwrap_or_else(|| n.to_string()),
                other => text(other),
            });
            row.served = field(
                d,
                &["atendidas", "served", "peticiones", "requests", "servidas"],
            )
            .map(text);
            row.in_flight = field(d, &["en_curso", "en_vuelo", "in_flight"]).map(text);
            row.actors = field(d, &["actores", "actors"]).map(actors);
            row.db_node = field(d, &["nodo", "db_node", "node", "primario", "database"]).map(text);
            // The storage manager's degraded mode: commits no standby confirms.
            if d.pointer("/replicacion/estado").and_then(Value::as_str) == Some("degradada") {
                row.db_node = Some(format!("{} (degradada)", row.db_node.unwrap_or_default()));
            }
            row.note = r.mensaje;
        }
    }
    row
}

fn field<'a>(d: &'a Value, names: &[&str]) -> Option<&'a Value> {
    names
        .iter()
        .find_map(|n| d.get(*n))
        .filter(|v| !v.is_null())
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", text(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

/// Actors as `prestamo:2 devolucion:1`, whatever shape the service used.
fn actors(v: &Value) -> String {
    match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| match v {
                Value::Array(a) => format!("{k}:{}", a.len()),
                Value::Object(o) if o.contains_key("vivos") => {
                    format!("{k}:{}", o.get("vivos").map(text).unwrap_or_default())
                }
                other => format!("{k}:{}", text(other)),
            })
            .collect::<Vec<_>>()
            .join(" "),
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(" "),
        other => text(other),
    }
}

/// `3d04h`, `1h02m`, `5m07s`, `42s`.
pub fn duration(secs: f64) -> String {
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
pub fn table(rows: &[StatusRow]) -> String {
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
    let rows: Vec<[String; 9]> = rows
        .iter()
        .map(|f| {
            [
                f.service.clone(),
                f.endpoint.clone(),
                if f.up { "up" } else { "down" }.to_string(),
                f.uptime.clone().unwrap_or_else(dash),
                f.served.clone().unwrap_or_else(dash),
                f.in_flight.clone().unwrap_or_else(dash),
                f.actors.clone().unwrap_or_else(dash),
                f.db_node.clone().unwrap_or_else(dash),
                f.note.clone(),
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

    fn svc(n: &str, ep: &str) -> Service {
        Service {
            name: n.into(),
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
        let f = row(&svc("carga", "tcp://x:1"), Ok(r));
        assert!(f.up);
        assert_eq!(f.uptime.as_deref(), Some("1h02m"));
        assert_eq!(f.served.as_deref(), Some("10"));
        assert_eq!(f.in_flight.as_deref(), Some("2"));
        assert_eq!(
            f.actors.as_deref(),
            Some("devolucion:3 prestamo:2 renovacion:0")
        );
        let down = row(
            &svc("almacenamiento", "tcp://y:2"),
            Err(ClientError::NoReply {
                endpoints: "tcp://y:2".into(),
                tries: 1,
            }),
        );
        assert!(!down.up);
        let t = table(&[f, down]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("SERVICE"));
        assert!(lines[2].contains("down") && lines[2].contains("no reply"));
        assert_eq!(duration(42.0), "42s");
        assert_eq!(duration(90_000.0), "1d01h");
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
        let rows = query(
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
