//! The shape's ceiling: a load manager and an actor that do nothing but
//! forward, in front of the real storage manager.
//!
//! The ratio target asks how close the pipeline can come to the
//! database alone. The transport floor ([`super::floor`]) answers for the
//! ZeroMQ hops with no database behind them; this answers for the whole
//! shape with the real database work. `biblioteca-esqueleto` runs one
//! [`Stage`] per process (like the services: separate processes, their own
//! ZeroMQ context and I/O thread, the same scheduling policy):
//!
//! - [`Stage::LoadManager`]: a ROUTER for clients, a PUB towards the actor and a
//!   PULL for the actor's replies, one thread; a request is re-sent as it
//!   came (topic frame first), a reply is re-sent to its client. No parsing,
//!   no validation, no bookkeeping, no log line, no re-publication.
//! - [`Stage::Actor`]: a SUB, a DEALER to the storage manager and a PUSH
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
const TOPIC: &[u8] = b"w";
const POLL_MS: i64 = 100;
/// Messages taken from one socket before looking at the other.
const BURST: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum SkeletonError {
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
pub struct SkeletonConfig {
    /// The same policy the services run under.
    #[serde(default)]
    pub scheduling: Scheduling,
    pub stage: Stage,
}

/// Which part of the pipeline this process stands in for, and its endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Stage {
    /// Binds `frontend` (clients' REQ), `publish` (PUB) and `results`
    /// (PULL).
    LoadManager {
        frontend: String,
        publish: String,
        results: String,
    },
    /// Connects to the load manager's `publish` and `results` and to the
    /// storage manager's `storage`.
    Actor {
        publish: String,
        results: String,
        storage_ep: String,
    },
}

impl SkeletonConfig {
    pub fn parse(path: &Path) -> Result<SkeletonConfig, SkeletonError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SkeletonError::Io {
            path: shown.clone(),
            source,
        })?;
        Self::parse_str(&text, &shown)
    }

    pub fn parse_str(text: &str, origin: &str) -> Result<SkeletonConfig, SkeletonError> {
        toml::from_str(text).map_err(|source| SkeletonError::Toml {
            path: origin.to_string(),
            source,
        })
    }
}

/// Serves `cfg`'s stage until `shutdown`.
pub fn run(cfg: &SkeletonConfig, shutdown: &Shutdown) -> Result<(), SkeletonError> {
    sched::apply_or_warn(cfg.scheduling);
    let ctx = zmq::Context::new();
    match &cfg.stage {
        Stage::LoadManager {
            frontend,
            publish,
            results,
        } => {
            let router = net::socket(&ctx, zmq::ROUTER)?;
            net::bind(&router, frontend)?;
            let publ = net::socket(&ctx, zmq::PUB)?;
            net::bind(&publ, publish)?;
            let pull = net::socket(&ctx, zmq::PULL)?;
            net::bind(&pull, results)?;
            notify::ready(&format!("skeleton load manager on {frontend}"));
            // Requests: [client, "", body] -> [topic, client, "", body].
            // Replies: [client, "", body], sent as they came.
            forward(
                (&router, &publ, |f: Vec<Vec<u8>>| {
                    let mut out = Vec::with_capacity(f.len() + 1);
                    out.push(TOPIC.to_vec());
                    out.extend(f);
                    Some(out)
                }),
                (&pull, &router, Some),
                shutdown,
            )
        }
        Stage::Actor {
            publish,
            results,
            storage_ep,
        } => {
            let sub = net::socket(&ctx, zmq::SUB)?;
            sub.set_subscribe(TOPIC).map_err(NetError::from)?;
            net::connect(&sub, publish)?;
            let dealer = net::socket(&ctx, zmq::DEALER)?;
            net::connect(&dealer, storage_ep)?;
            let push = net::socket(&ctx, zmq::PUSH)?;
            net::connect(&push, results)?;
            notify::ready(&format!("skeleton actor for {publish}"));
            // [topic, client, "", body] -> [client, "", body]: the storage
            // ROUTER adds this DEALER's identity and keeps `client` as part
            // of the route, so its reply comes back as [client, "", reply].
            forward(
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
pub struct Skeleton {
    pub load_manager: Service,
    pub actor: Service,
    frontend: String,
}

impl Skeleton {
    /// Starts the skeleton load manager and actor (`biblioteca-esqueleto`
    /// from `bin_dir`, or next to this executable) on free ports, in front
    /// of the storage manager at `storage_ep`; configs and logs go to `dir`.
    pub fn start(
        dir: &Path,
        bin_dir: Option<&Path>,
        storage_ep: &str,
        scheduling: Scheduling,
    ) -> Result<Skeleton, LaunchError> {
        let binary = find_binary("biblioteca-esqueleto", bin_dir)?;
        let tcp =
            || -> Result<String, LaunchError> { Ok(format!("tcp://127.0.0.1:{}", free_port()?)) };
        let (frontend, publish, results) = (tcp()?, tcp()?, tcp()?);
        let start = |name: &str, stage: Stage| -> Result<Service, LaunchError> {
            let cfg = SkeletonConfig { scheduling, stage };
            let toml = toml::to_string(&cfg).map_err(|e| LaunchError::Io {
                path: dir.join(format!("{name}.toml")),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?;
            Service::start(ServiceSpec::new(name, &binary, toml, dir))
        };
        let load_manager = start(
            "esqueleto-carga",
            Stage::LoadManager {
                frontend: frontend.clone(),
                publish: publish.clone(),
                results: results.clone(),
            },
        )?;
        let actor = start(
            "esqueleto-actor",
            Stage::Actor {
                publish,
                results,
                storage_ep: storage_ep.to_string(),
            },
        )?;
        Ok(Skeleton {
            load_manager,
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
type Leg<'a, F> = (&'a zmq::Socket, &'a zmq::Socket, F);

/// Forwards both ways until `shutdown`. Sends never block: a full peer drops
/// the message (the client's retry covers it, as in the real services).
fn forward<F, G>(
    outbound: Leg<'_, F>,
    inbound: Leg<'_, G>,
    shutdown: &Shutdown,
) -> Result<(), SkeletonError>
where
    F: Fn(Vec<Vec<u8>>) -> Option<Vec<Vec<u8>>>,
    G: Fn(Vec<Vec<u8>>) -> Option<Vec<Vec<u8>>>,
{
    while !shutdown.is_triggered() {
        let mut items = [
            outbound.0.as_poll_item(zmq::POLLIN),
            inbound.0.as_poll_item(zmq::POLLIN),
        ];
        net::poll(&mut items, POLL_MS)?;
        pass(&inbound)?;
        pass(&outbound)?;
    }
    // Let queued replies leave before the context closes.
    std::thread::sleep(Duration::from_millis(50));
    Ok(())
}

fn pass<F>(leg: &Leg<'_, F>) -> Result<(), SkeletonError>
where
    F: Fn(Vec<Vec<u8>>) -> Option<Vec<Vec<u8>>>,
{
    let (of, a, rewrite) = leg;
    for _ in 0..BURST {
        let Some(frames) = net::try_recv(of)? else {
            break;
        };
        if let Some(out) = rewrite(frames) {
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
        let cfg = SkeletonConfig {
            scheduling: Scheduling::Normal,
            stage: Stage::Actor {
                publish: "tcp://127.0.0.1:1".into(),
                results: "tcp://127.0.0.1:2".into(),
                storage_ep: "tcp://127.0.0.1:3".into(),
            },
        };
        let text = toml::to_string(&cfg).expect("toml");
        assert_eq!(SkeletonConfig::parse_str(&text, "t").expect("parse"), cfg);
        let bad = text.replace("storage_ep", "storage_endpoint");
        assert!(SkeletonConfig::parse_str(&bad, "t").is_err());
    }

    /// Both stages, each on its own thread and context, in front of a ROUTER
    /// that plays the storage manager: a REQ client gets its reply, and the
    /// "storage manager" sees the route the real one would reply along.
    #[test]
    fn a_request_makes_the_round_trip_through_both_stages() {
        let (frontend, publish, results, storage_ep) = (tcp(), tcp(), tcp(), tcp());
        let sd = Shutdown::new();
        let ctx = zmq::Context::new();
        let storage = net::socket(&ctx, zmq::ROUTER).expect("router");
        net::bind(&storage, &storage_ep).expect("bind");
        let load_manager = SkeletonConfig {
            scheduling: Scheduling::Normal,
            stage: Stage::LoadManager {
                frontend: frontend.clone(),
                publish: publish.clone(),
                results: results.clone(),
            },
        };
        let actor = SkeletonConfig {
            scheduling: Scheduling::Normal,
            stage: Stage::Actor {
                publish,
                results,
                storage_ep,
            },
        };
        let threads: Vec<_> = [load_manager, actor]
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
        let mut seen = None;
        for _ in 0..30 {
            req.send("hola", 0).expect("send");
            let mut items = [storage.as_poll_item(zmq::POLLIN)];
            zmq::poll(&mut items, 300).expect("poll");
            if let Some(f) = net::try_recv(&storage).expect("recv") {
                seen = Some(f);
                break;
            }
            req = net::socket(&ctx, zmq::REQ).expect("req");
            net::connect(&req, &frontend).expect("connect");
            req.set_rcvtimeo(2000).expect("timeout");
        }
        let mut f = seen.expect("the storage side never saw the request");
        // [dealer, client, "", body]
        assert_eq!(f.len(), 4, "{f:?}");
        assert_eq!(f[2], b"");
        assert_eq!(f[3], b"hola");
        f[3] = b"adios".to_vec();
        storage.send_multipart(f, 0).expect("reply");
        let reply = req.recv_bytes(0).expect("reply reached the client");
        assert_eq!(reply, b"adios");
        sd.trigger();
        for h in threads {
            h.join().expect("thread").expect("stage");
        }
    }
}
