//! The shape's ceiling: a load manager and an actor that do nothing but
//! forward, in front of the real storage manager.
//!
//! The ratio target asks how close the pipeline can come to the
//! database alone. The transport floor ([`super::suelo`]) answers for the
//! ZeroMQ hops with no database behind them; this answers for the whole
//! shape with the real database work. `biblioteca-esqueleto` runs one
//! [`Etapa`] per process (like the services: separate processes, their own
//! ZeroMQ context and I/O thread, the same scheduling policy):
//!
//! - [`Etapa::Carga`]: a ROUTER for clients, a PUB towards the actor and a
//!   PULL for the actor's replies, one thread; a request is re-sent as it
//!   came (topic frame first), a reply is re-sent to its client. No parsing,
//!   no validation, no bookkeeping, no log line, no re-publication.
//! - [`Etapa::Actor`]: a SUB, a DEALER to the storage manager and a PUSH
//!   back, one thread; frames go through untouched.
//!
//! The storage manager is the real one: its structure (a ROUTER thread
//! handing jobs to database workers) is what the shape requires of any
//! implementation, and its own user-space work was about 2 % of the CPU in
//! every profile. A request makes the same six TCP hops as through the real
//! services, and the same database call. One forwarding actor serves every
//! operation (the real layout has one per operation), which only gives it
//! more batching: the skeleton's throughput is an upper bound for any load
//! manager and actors of this shape on this machine, in front of this
//! storage manager.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use biblioteca_runtime::net::{self, NetError};
use biblioteca_runtime::notify;
use biblioteca_runtime::sched::{self, Scheduling};
use biblioteca_runtime::shutdown::Shutdown;
use biblioteca_stack::launch::{find_binary, free_port, LaunchError, Service, ServiceSpec};

/// The only topic the skeleton publishes under.
const TEMA: &[u8] = b"w";
const POLL_MS: i64 = 100;
/// Messages taken from one socket before looking at the other.
const RAFAGA: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum EsqueletoError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Toml {
        path: String,
        source: toml::de::Error,
    },
    #[error(transparent)]
    Net(#[from] NetError),
}

/// One skeleton process's configuration (`biblioteca-esqueleto --config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EsqueletoConfig {
    /// The same policy the services run under.
    #[serde(default)]
    pub scheduling: Scheduling,
    pub etapa: Etapa,
}

/// Which part of the pipeline this process stands in for, and its endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "tipo", rename_all = "lowercase", deny_unknown_fields)]
pub enum Etapa {
    /// Binds `frontend` (clients' REQ), `publica` (PUB) and `resultados`
    /// (PULL).
    Carga {
        frontend: String,
        publica: String,
        resultados: String,
    },
    /// Connects to the load manager's `publica` and `resultados` and to the
    /// storage manager's `almacen`.
    Actor {
        publica: String,
        resultados: String,
        almacen: String,
    },
}

impl EsqueletoConfig {
    pub fn parse(path: &Path) -> Result<EsqueletoConfig, EsqueletoError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| EsqueletoError::Io {
            path: shown.clone(),
            source,
        })?;
        Self::parse_str(&text, &shown)
    }

    pub fn parse_str(text: &str, origin: &str) -> Result<EsqueletoConfig, EsqueletoError> {
        toml::from_str(text).map_err(|source| EsqueletoError::Toml {
            path: origin.to_string(),
            source,
        })
    }
}

/// Serves `cfg`'s stage until `shutdown`.
pub fn run(cfg: &EsqueletoConfig, shutdown: &Shutdown) -> Result<(), EsqueletoError> {
    sched::apply_or_warn(cfg.scheduling);
    let ctx = zmq::Context::new();
    match &cfg.etapa {
        Etapa::Carga {
            frontend,
            publica,
            resultados,
        } => {
            let router = net::socket(&ctx, zmq::ROUTER)?;
            net::bind(&router, frontend)?;
            let publ = net::socket(&ctx, zmq::PUB)?;
            net::bind(&publ, publica)?;
            let pull = net::socket(&ctx, zmq::PULL)?;
            net::bind(&pull, resultados)?;
            notify::ready(&format!("skeleton load manager on {frontend}"));
            // Requests: [client, "", body] -> [topic, client, "", body].
            // Replies: [client, "", body], sent as they came.
            reenviar(
                (&router, &publ, |f: Vec<Vec<u8>>| {
                    let mut out = Vec::with_capacity(f.len() + 1);
                    out.push(TEMA.to_vec());
                    out.extend(f);
                    Some(out)
                }),
                (&pull, &router, Some),
                shutdown,
            )
        }
        Etapa::Actor {
            publica,
            resultados,
            almacen,
        } => {
            let sub = net::socket(&ctx, zmq::SUB)?;
            sub.set_subscribe(TEMA).map_err(NetError::from)?;
            net::connect(&sub, publica)?;
            let dealer = net::socket(&ctx, zmq::DEALER)?;
            net::connect(&dealer, almacen)?;
            let push = net::socket(&ctx, zmq::PUSH)?;
            net::connect(&push, resultados)?;
            notify::ready(&format!("skeleton actor for {publica}"));
            // [topic, client, "", body] -> [client, "", body]: the storage
            // ROUTER adds this DEALER's identity and keeps `client` as part
            // of the route, so its reply comes back as [client, "", reply].
            reenviar(
                (&sub, &dealer, |mut f: Vec<Vec<u8>>| {
                    (f.len() > 1).then(|| f.split_off(1))
                }),
                (&dealer, &push, Some),
                shutdown,
            )
        }
    }
}

/// The two skeleton processes of a benchmark run. Dropping it stops them.
#[derive(Debug)]
pub struct Esqueleto {
    pub carga: Service,
    pub actor: Service,
    frontend: String,
}

impl Esqueleto {
    /// Starts the skeleton load manager and actor (`biblioteca-esqueleto`
    /// from `bin_dir`, or next to this executable) on free ports, in front
    /// of the storage manager at `almacen`; configs and logs go to `dir`.
    pub fn arrancar(
        dir: &Path,
        bin_dir: Option<&Path>,
        almacen: &str,
        scheduling: Scheduling,
    ) -> Result<Esqueleto, LaunchError> {
        let binary = find_binary("biblioteca-esqueleto", bin_dir)?;
        let tcp =
            || -> Result<String, LaunchError> { Ok(format!("tcp://127.0.0.1:{}", free_port()?)) };
        let (frontend, publica, resultados) = (tcp()?, tcp()?, tcp()?);
        let start = |name: &str, etapa: Etapa| -> Result<Service, LaunchError> {
            let cfg = EsqueletoConfig { scheduling, etapa };
            let toml = toml::to_string(&cfg).map_err(|e| LaunchError::Io {
                path: dir.join(format!("{name}.toml")),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?;
            Service::start(ServiceSpec::new(name, &binary, toml, dir))
        };
        let carga = start(
            "esqueleto-carga",
            Etapa::Carga {
                frontend: frontend.clone(),
                publica: publica.clone(),
                resultados: resultados.clone(),
            },
        )?;
        let actor = start(
            "esqueleto-actor",
            Etapa::Actor {
                publica,
                resultados,
                almacen: almacen.to_string(),
            },
        )?;
        Ok(Esqueleto {
            carga,
            actor,
            frontend,
        })
    }

    /// Where clients send requests.
    pub fn frontend(&self) -> &str {
        &self.frontend
    }
}

/// From one socket to another, with a rewrite of the frames (`None`: drop).
type Tramo<'a, F> = (&'a zmq::Socket, &'a zmq::Socket, F);

/// Forwards both ways until `shutdown`. Sends never block: a full peer drops
/// the message (the client's retry covers it, as in the real services).
fn reenviar<F, G>(
    ida: Tramo<'_, F>,
    vuelta: Tramo<'_, G>,
    shutdown: &Shutdown,
) -> Result<(), EsqueletoError>
where
    F: Fn(Vec<Vec<u8>>) -> Option<Vec<Vec<u8>>>,
    G: Fn(Vec<Vec<u8>>) -> Option<Vec<Vec<u8>>>,
{
    while !shutdown.is_triggered() {
        let mut items = [
            ida.0.as_poll_item(zmq::POLLIN),
            vuelta.0.as_poll_item(zmq::POLLIN),
        ];
        net::poll(&mut items, POLL_MS)?;
        pasar(&vuelta)?;
        pasar(&ida)?;
    }
    // Let queued replies leave before the context closes.
    std::thread::sleep(Duration::from_millis(50));
    Ok(())
}

fn pasar<F>(tramo: &Tramo<'_, F>) -> Result<(), EsqueletoError>
where
    F: Fn(Vec<Vec<u8>>) -> Option<Vec<Vec<u8>>>,
{
    let (de, a, reescribir) = tramo;
    for _ in 0..RAFAGA {
        let Some(frames) = net::try_recv(de)? else {
            break;
        };
        if let Some(out) = reescribir(frames) {
            match a.send_multipart(out, zmq::DONTWAIT) {
                Ok(()) | Err(zmq::Error::EAGAIN) | Err(zmq::Error::EHOSTUNREACH) => {}
                Err(e) => return Err(NetError::from(e).into()),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use biblioteca_stack::launch::free_port;

    fn tcp() -> String {
        format!("tcp://127.0.0.1:{}", free_port().expect("port"))
    }

    #[test]
    fn config_round_trips_and_rejects_unknown_keys() {
        let cfg = EsqueletoConfig {
            scheduling: Scheduling::Normal,
            etapa: Etapa::Actor {
                publica: "tcp://127.0.0.1:1".into(),
                resultados: "tcp://127.0.0.1:2".into(),
                almacen: "tcp://127.0.0.1:3".into(),
            },
        };
        let text = toml::to_string(&cfg).expect("toml");
        assert_eq!(EsqueletoConfig::parse_str(&text, "t").expect("parse"), cfg);
        let bad = text.replace("almacen", "storage");
        assert!(EsqueletoConfig::parse_str(&bad, "t").is_err());
    }

    /// Both stages, each on its own thread and context, in front of a ROUTER
    /// that plays the storage manager: a REQ client gets its reply, and the
    /// "storage manager" sees the route the real one would reply along.
    #[test]
    fn a_request_makes_the_round_trip_through_both_stages() {
        let (frontend, publica, resultados, almacen) = (tcp(), tcp(), tcp(), tcp());
        let sd = Shutdown::new();
        let ctx = zmq::Context::new();
        let storage = net::socket(&ctx, zmq::ROUTER).expect("router");
        net::bind(&storage, &almacen).expect("bind");
        let carga = EsqueletoConfig {
            scheduling: Scheduling::Normal,
            etapa: Etapa::Carga {
                frontend: frontend.clone(),
                publica: publica.clone(),
                resultados: resultados.clone(),
            },
        };
        let actor = EsqueletoConfig {
            scheduling: Scheduling::Normal,
            etapa: Etapa::Actor {
                publica,
                resultados,
                almacen,
            },
        };
        let hilos: Vec<_> = [carga, actor]
            .into_iter()
            .map(|c| {
                let sd = sd.clone();
                std::thread::spawn(move || run(&c, &sd))
            })
            .collect();
        let req = net::socket(&ctx, zmq::REQ).expect("req");
        net::connect(&req, &frontend).expect("connect");
        req.set_rcvtimeo(2000).expect("timeout");
        // PUB drops until the SUB's subscription arrives: retry on a fresh
        // socket until one request makes it.
        let mut req = req;
        let mut visto = None;
        for _ in 0..30 {
            req.send("hola", 0).expect("send");
            let mut items = [storage.as_poll_item(zmq::POLLIN)];
            zmq::poll(&mut items, 300).expect("poll");
            if let Some(f) = net::try_recv(&storage).expect("recv") {
                visto = Some(f);
                break;
            }
            req = net::socket(&ctx, zmq::REQ).expect("req");
            net::connect(&req, &frontend).expect("connect");
            req.set_rcvtimeo(2000).expect("timeout");
        }
        let mut f = visto.expect("the storage side never saw the request");
        // [dealer, client, "", body]
        assert_eq!(f.len(), 4, "{f:?}");
        assert_eq!(f[2], b"");
        assert_eq!(f[3], b"hola");
        f[3] = b"adios".to_vec();
        storage.send_multipart(f, 0).expect("reply");
        let reply = req.recv_bytes(0).expect("reply reached the client");
        assert_eq!(reply, b"adios");
        sd.trigger();
        for h in hilos {
            h.join().expect("thread").expect("stage");
        }
    }
}
