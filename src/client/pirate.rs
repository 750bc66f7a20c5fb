//! The Lazy Pirate client: reliable request-reply over a REQ socket.
//!
//! A REQ socket that missed its reply is stuck (it refuses to send again), so
//! after each deadline the socket is closed and a new one is opened, connected
//! to the next configured endpoint. Every write carries an id (assigned here
//! when the caller gave none) and every retry resends the same id, so the
//! storage manager's exactly-once table turns a retry of an applied request
//! into the stored reply instead of a second application. When every try went
//! unanswered the outcome is unknown, and the error says how to find it out.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use biblioteca_protocol::config::{ClientConfig, Validate};
use biblioteca_protocol::{Peticion, Respuesta};
use biblioteca_runtime::net::{self, NetError};
use biblioteca_runtime::security::{self, Curve, Peer};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid client configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("zeromq: {0}")]
    Zmq(#[from] zmq::Error),
    #[error("malformed reply from {endpoint}: {reason}")]
    MalformedReply { endpoint: String, reason: String },
    /// Every try timed out: the request may or may not have been applied.
    #[error(
        "no reply to request {id} after {tries} {}: its outcome is UNKNOWN (it may or may \
         not have been applied); check it with `biblioteca-solicitante resultado {id}` or with \
         a `consulta` of the book",
        tries_word(*.tries)
    )]
    Unknown { id: String, tries: u32 },
    /// Every try of a request without id (e.g. `status`) timed out.
    #[error("no reply from {endpoints} after {tries} {}", tries_word(*.tries))]
    NoReply { endpoints: String, tries: u32 },
}

fn tries_word(n: u32) -> &'static str {
    if n == 1 {
        "try"
    } else {
        "tries"
    }
}

impl ClientError {
    /// Whether the request may have been applied without the caller hearing of it.
    pub fn is_unknown_outcome(&self) -> bool {
        matches!(self, ClientError::Unknown { .. })
    }

    /// The request id whose outcome is unknown, if that is what happened.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            ClientError::Unknown { id, .. } => Some(id),
            _ => None,
        }
    }
}

/// A fresh client request id: `s-` and 16 hex digits.
pub fn new_request_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // RandomState is seeded randomly per process (and differs per instance),
    // mixing in time, pid and a counter keeps ids distinct across processes.
    let mut h = RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("s-{:016x}", h.finish())
}

/// The request as it goes on the wire. A `consulta` without user omits the
/// field: the protocol rejects an empty `user`.
pub fn encode(p: &Peticion) -> Vec<u8> {
    if !p.usuario.is_empty() {
        return p.to_bytes();
    }
    match serde_json::to_value(p) {
        Ok(Value::Object(mut obj)) => {
            obj.remove("usuario");
            serde_json::to_vec(&obj).unwrap_or_default()
        }
        _ => p.to_bytes(),
    }
}

/// A request on its way: what to resend, which try this is, and until when
/// to wait for the reply.
#[derive(Debug, Clone)]
pub struct InFlight {
    frame: Vec<u8>,
    attempt: u32,
    deadline: Instant,
}

impl InFlight {
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

/// A synchronous Lazy Pirate client; its socket never leaves the owning thread.
pub struct Client {
    ctx: zmq::Context,
    endpoints: Vec<String>,
    timeout: Duration,
    retries: u32,
    current: usize,
    socket: Option<zmq::Socket>,
    curve: Curve,
    /// Whose CURVE key the endpoints have (the load manager, unless asked).
    peer: Peer,
}

impl Client {
    pub fn new(config: ClientConfig) -> Result<Client, ClientError> {
        Client::with_context(zmq::Context::new(), config)
    }

    /// A client on a shared context (many clients in one process, e.g. the load generator).
    pub fn with_context(ctx: zmq::Context, config: ClientConfig) -> Result<Client, ClientError> {
        config
            .validate()
            .map_err(|e| ClientError::Config(e.to_string()))?;
        let curve = security::client(config.curve.as_ref())
            .map_err(|e| ClientError::Config(e.to_string()))?;
        Ok(Client {
            curve,
            ctx,
            endpoints: config.endpoints,
            timeout: config.timeout,
            retries: config.retries,
            current: 0,
            socket: None,
            peer: Peer::LoadManager,
        })
    }

    /// The same client talking to the storage manager (its CURVE key):
    /// an error when CURVE is on and that key is not configured.
    pub fn towards_storage(mut self) -> Result<Client, ClientError> {
        if !self.curve.knows(Peer::Storage) {
            return Err(ClientError::Config(
                "CURVE is on: asking the storage manager needs its key (curve.storage_key, \
                 --storage-key) and this client's key on its allow list"
                    .into(),
            ));
        }
        self.peer = Peer::Storage;
        Ok(self)
    }

    /// The endpoint the next try goes to.
    pub fn endpoint(&self) -> &str {
        self.endpoints
            .get(self.current)
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// Sends a business request; an id is assigned first when it has none, so
    /// that retries are safe.
    pub fn request(&mut self, p: &Peticion) -> Result<Respuesta, ClientError> {
        let mut p = p.clone();
        let id = p.id.get_or_insert_with(new_request_id).clone();
        match self.exchange(&encode(&p))? {
            Some(r) => Ok(r),
            None => Err(ClientError::Unknown {
                id,
                tries: self.retries,
            }),
        }
    }

    /// Sends a frame as is (`status`, `result`, hand-written JSON).
    pub fn raw(&mut self, frame: &[u8]) -> Result<Respuesta, ClientError> {
        match self.exchange(frame)? {
            Some(r) => Ok(r),
            None => Err(match id_of(frame) {
                Some(id) => ClientError::Unknown {
                    id,
                    tries: self.retries,
                },
                None => ClientError::NoReply {
                    endpoints: self.endpoints.join(", "),
                    tries: self.retries,
                },
            }),
        }
    }

    /// Up to `retries` tries; `None` when none was answered. The blocking
    /// form of [`Client::begin`], [`Client::receive`] and [`Client::expire`].
    fn exchange(&mut self, frame: &[u8]) -> Result<Option<Respuesta>, ClientError> {
        let mut f = self.begin(frame.to_vec())?;
        loop {
            let wait = f.deadline.saturating_duration_since(Instant::now());
            let readable = match &self.socket {
                Some(s) => net::readable(s, wait).map_err(|e| self.broken(e.into()))?,
                None => false,
            };
            if readable {
                if let Some(r) = self.receive()? {
                    return Ok(Some(r));
                }
            } else if Instant::now() >= f.deadline && !self.expire(&mut f)? {
                return Ok(None);
            }
        }
    }

    /// Sends `frame` (try 1 of `retries`) without waiting for the reply:
    /// poll [`Client::socket`], then call [`Client::receive`] when it is
    /// readable or [`Client::expire`] once the deadline has passed. This is
    /// how one thread drives many clients (the load generator).
    pub fn begin(&mut self, frame: Vec<u8>) -> Result<InFlight, ClientError> {
        let mut f = InFlight {
            frame,
            attempt: 1,
            deadline: Instant::now(),
        };
        self.send_try(&mut f)?;
        Ok(f)
    }

    /// The socket the reply arrives on (none between a failed send and the
    /// next try).
    pub fn socket(&self) -> Option<&zmq::Socket> {
        self.socket.as_ref()
    }

    /// The reply, if it has arrived.
    pub fn receive(&mut self) -> Result<Option<Respuesta>, ClientError> {
        let Some(socket) = &self.socket else {
            return Ok(None);
        };
        let bytes = match net::try_recv(socket) {
            Ok(Some(mut frames)) => frames.pop().unwrap_or_default(),
            Ok(None) => return Ok(None),
            Err(e) => return Err(self.broken(e.into())),
        };
        Respuesta::from_bytes(&bytes)
            .map(Some)
            .map_err(|e| ClientError::MalformedReply {
                endpoint: self.endpoint().to_string(),
                reason: e.0,
            })
    }

    /// The try's deadline passed without a reply. A REQ socket that missed its
    /// reply cannot send again, so the request goes again, with the same id,
    /// on a fresh socket to the next endpoint: `true`. `false`: that was the
    /// last try and the outcome is unknown.
    pub fn expire(&mut self, f: &mut InFlight) -> Result<bool, ClientError> {
        let endpoint = self.endpoint().to_string();
        self.socket = None;
        self.current = (self.current + 1) % self.endpoints.len();
        if f.attempt >= self.retries {
            tracing::debug!(endpoint = %endpoint, attempt = f.attempt, "no reply in time; giving up");
            return Ok(false);
        }
        tracing::warn!(
            endpoint = %endpoint,
            attempt = f.attempt,
            of = self.retries,
            timeout_ms = self.timeout.as_millis() as u64,
            next = %self.endpoint(),
            "no reply in time; retrying on a fresh socket"
        );
        f.attempt += 1;
        self.send_try(f)?;
        Ok(true)
    }

    fn send_try(&mut self, f: &mut InFlight) -> Result<(), ClientError> {
        f.deadline = Instant::now() + self.timeout;
        let socket = match self.socket.take() {
            Some(s) => s,
            None => self.open()?,
        };
        let socket = self.socket.insert(socket);
        match socket.send(&f.frame, 0) {
            Ok(()) => Ok(()),
            // Not even queued (no peer within the send timeout): this try is
            // over at once.
            Err(zmq::Error::EAGAIN) => {
                f.deadline = Instant::now();
                Ok(())
            }
            Err(e) => Err(self.broken(e.into())),
        }
    }

    /// A socket that failed mid-exchange is in an unknown state: drop it.
    fn broken(&mut self, e: ClientError) -> ClientError {
        self.socket = None;
        e
    }

    fn open(&self) -> Result<zmq::Socket, ClientError> {
        let s = net::socket(&self.ctx, zmq::REQ)?;
        // The abandoned request is resent on the new socket; never block exit on it.
        s.set_linger(0)?;
        s.set_sndtimeo(self.timeout.as_millis().min(i32::MAX as u128) as i32)?;
        self.curve.connect_to(&s, self.peer)?;
        net::connect(&s, self.endpoint())?;
        Ok(s)
    }
}

fn id_of(frame: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(frame)
        .ok()?
        .get("id")?
        .as_str()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use biblioteca_protocol::{parse_entrada, Entrada, Operacion};
    use biblioteca_runtime::net::Envelope;
    use std::sync::mpsc;
    use std::thread;

    /// What the test server saw: the sender's routing identity and the request.
    type Seen = (Vec<u8>, Peticion);

    /// A ROUTER on `endpoint` that ignores the first `ignore` requests and
    /// answers the rest with the request's id, until `answer` replies are sent.
    fn server(endpoint: &'static str, ignore: usize, answer: usize) -> mpsc::Receiver<Seen> {
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        thread::spawn(move || {
            let ctx = zmq::Context::new();
            let s = net::socket(&ctx, zmq::ROUTER).unwrap();
            s.set_linger(0).unwrap();
            net::bind(&s, endpoint).unwrap();
            ready_tx.send(()).unwrap();
            let mut seen = 0;
            let mut answered = 0;
            loop {
                if !net::readable(&s, Duration::from_secs(5)).unwrap() {
                    return;
                }
                let env = Envelope::split(s.recv_multipart(0).unwrap()).unwrap();
                let Entrada::Operacion(p) = parse_entrada(env.single_body().unwrap()).unwrap()
                else {
                    panic!("not an operation")
                };
                let _ = tx.send((env.route[0].clone(), p.clone()));
                seen += 1;
                if seen <= ignore {
                    continue;
                }
                let r = Respuesta::ok(p.operacion.as_str(), "ok", Value::Null).with_id(p.id);
                env.reply(&s, &r.to_bytes()).unwrap();
                answered += 1;
                if answered >= answer {
                    return;
                }
            }
        });
        ready_rx.recv().unwrap();
        rx
    }

    fn config(endpoints: &[&str], retries: u32) -> ClientConfig {
        ClientConfig {
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            timeout: Duration::from_millis(300),
            retries,
            curve: None,
        }
    }

    fn prestamo() -> Peticion {
        Peticion {
            operacion: Operacion::Prestamo,
            isbn: "978-0134685991".into(),
            usuario: "u1".into(),
            id: None,
        }
    }

    #[test]
    fn ids_look_right_and_differ() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 18);
        assert!(a.starts_with("s-") && a[2..].chars().all(|c| c.is_ascii_hexdigit()));
        assert!(biblioteca_protocol::validate_id(&a).is_ok());
    }

    #[test]
    fn consulta_without_user_omits_the_field() {
        let p = Peticion {
            operacion: Operacion::Consulta,
            isbn: "978-0134685991".into(),
            usuario: String::new(),
            id: None,
        };
        let frame = encode(&p);
        assert!(!String::from_utf8_lossy(&frame).contains("usuario"));
        assert!(parse_entrada(&frame).is_ok());
    }

    #[test]
    fn resends_the_same_id_on_a_fresh_socket() {
        let ep = "tcp://127.0.0.1:27431";
        let seen = server(ep, 1, 1);
        let mut c = Client::new(config(&[ep], 3)).unwrap();
        let r = c.request(&prestamo()).unwrap();
        assert!(r.exito);
        let (who1, first) = seen.recv().unwrap();
        let (who2, second) = seen.recv().unwrap();
        let id = first.id.clone().unwrap();
        assert!(id.starts_with("s-"));
        assert_eq!(second.id.as_deref(), Some(id.as_str()), "same id on retry");
        assert_ne!(who1, who2, "retry must come from a new socket");
        assert_eq!(r.id.as_deref(), Some(id.as_str()));
    }

    #[test]
    fn keeps_a_caller_id_and_moves_to_the_next_endpoint() {
        let silent = "tcp://127.0.0.1:27432";
        let live = "tcp://127.0.0.1:27433";
        let ignored = server(silent, usize::MAX, 0);
        let seen = server(live, 0, 2);
        let mut c = Client::new(config(&[silent, live], 2)).unwrap();
        let mut p = prestamo();
        p.id = Some("mine-1".into());
        let r = c.request(&p).unwrap();
        assert_eq!(r.id.as_deref(), Some("mine-1"));
        assert_eq!(ignored.recv().unwrap().1.id.as_deref(), Some("mine-1"));
        assert_eq!(seen.recv().unwrap().1.id.as_deref(), Some("mine-1"));
        // The client stays on the endpoint that answered.
        assert_eq!(c.endpoint(), live);
        c.request(&prestamo()).unwrap();
        assert!(seen.recv().is_ok());
    }

    #[test]
    fn gives_up_with_an_unknown_outcome_that_says_how_to_check() {
        let ep = "tcp://127.0.0.1:27434";
        let _seen = server(ep, usize::MAX, 0);
        let mut c = Client::new(config(&[ep, "tcp://127.0.0.1:27435"], 3)).unwrap();
        let started = std::time::Instant::now();
        let err = c.request(&prestamo()).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3));
        let ClientError::Unknown { id, tries } = &err else {
            panic!("{err}")
        };
        assert_eq!(*tries, 3);
        let text = err.to_string();
        assert!(text.contains("UNKNOWN"), "{text}");
        assert!(
            text.contains(&format!("biblioteca-solicitante resultado {id}")),
            "{text}"
        );
        let err = c.raw(br#"{"operacion":"status"}"#).unwrap_err();
        assert!(
            matches!(err, ClientError::NoReply { tries: 3, .. }),
            "{err}"
        );
    }

    #[test]
    fn malformed_replies_and_configs_are_errors_not_panics() {
        assert!(matches!(
            Client::new(config(&[], 1)),
            Err(ClientError::Config(_))
        ));
        let ep = "tcp://127.0.0.1:27436";
        let (ready_tx, ready_rx) = mpsc::channel();
        thread::spawn(move || {
            let ctx = zmq::Context::new();
            let s = net::socket(&ctx, zmq::ROUTER).unwrap();
            net::bind(&s, ep).unwrap();
            ready_tx.send(()).unwrap();
            let env = Envelope::split(s.recv_multipart(0).unwrap()).unwrap();
            env.reply(&s, b"not json").unwrap();
            thread::sleep(Duration::from_millis(300));
        });
        ready_rx.recv().unwrap();
        let mut c = Client::new(config(&[ep], 1)).unwrap();
        let err = c.request(&prestamo()).unwrap_err();
        assert!(matches!(err, ClientError::MalformedReply { .. }), "{err}");
    }
}
