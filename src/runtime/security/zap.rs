//! The ZAP handler (ZeroMQ RFC 27): who may complete a CURVE handshake.
//!
//! libzmq asks `inproc://zeromq.zap.01` of the server socket's context about
//! every CURVE handshake; one thread per process owns that REP socket and
//! answers from an allow-list of client public keys per ZAP domain (each
//! server socket names its domain). Anything else — an unknown domain, a
//! mechanism other than CURVE, a key not on the list, a malformed request —
//! is refused, and the refused (public) key is logged, once a minute per key.
//!
//! The handler must be bound before any CURVE server socket of the context:
//! without it libzmq would accept every key (encryption without
//! authentication). [`Handler`] is therefore started first and kept for the
//! life of the sockets; dropping it stops and joins the thread, so the
//! context can terminate.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::keys::PublicKey;
use super::SecurityError;

/// Where libzmq looks for the handler.
pub const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";
const POLL: Duration = Duration::from_millis(100);
/// A refused key is logged at most this often (a refused peer retries).
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Client keys allowed per ZAP domain.
pub type AllowList = HashMap<String, HashSet<PublicKey>>;

/// The running handler thread; drop it after the sockets it guards.
#[derive(Debug)]
pub struct Handler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Handler {
    /// Binds the ZAP endpoint in `ctx` and answers from `allow` until dropped.
    pub fn start(ctx: &zmq::Context, allow: AllowList) -> Result<Handler, SecurityError> {
        let stop = Arc::new(AtomicBool::new(false));
        let (bound_tx, bound_rx) = mpsc::channel();
        let thread = {
            let (ctx, stop) = (ctx.clone(), stop.clone());
            crate::shutdown::spawn("zap", move || serve(&ctx, &allow, &stop, &bound_tx))
                .map_err(SecurityError::Thread)?
        };
        let handler = Handler {
            stop,
            thread: Some(thread),
        };
        match bound_rx.recv() {
            Ok(Ok(())) => Ok(handler),
            Ok(Err(e)) => Err(SecurityError::Zap(e)),
            Err(_) => Err(SecurityError::Zap(zmq::Error::ETERM)),
        }
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    ctx: &zmq::Context,
    allow: &AllowList,
    stop: &AtomicBool,
    bound: &mpsc::Sender<Result<(), zmq::Error>>,
) {
    let socket = match open(ctx) {
        Ok(s) => {
            let _ = bound.send(Ok(()));
            s
        }
        Err(e) => {
            let _ = bound.send(Err(e));
            return;
        }
    };
    let mut logged: HashMap<(String, PublicKey), Instant> = HashMap::new();
    while !stop.load(Ordering::SeqCst) {
        let frames = match crate::net::readable(&socket, POLL)
            .and_then(|_| crate::net::try_recv(&socket))
        {
            Ok(Some(f)) => f,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(error = %e, "ZAP handler stopped: CURVE clients can no longer be admitted");
                return;
            }
        };
        let decision = decide(&frames, allow);
        if let Verdict::Refused { domain, key, why } = &decision.verdict {
            note_refusal(&mut logged, domain, key, why, &frames);
        }
        if let Err(e) = socket.send_multipart(decision.reply(), 0) {
            tracing::warn!(error = %e, "cannot answer a ZAP request");
        }
    }
}

fn open(ctx: &zmq::Context) -> Result<zmq::Socket, zmq::Error> {
    let s = ctx.socket(zmq::REP)?;
    s.set_linger(0)?;
    s.bind(ZAP_ENDPOINT)?;
    Ok(s)
}

fn note_refusal(
    logged: &mut HashMap<(String, PublicKey), Instant>,
    domain: &str,
    key: &Option<PublicKey>,
    why: &str,
    frames: &[Vec<u8>],
) {
    let address = frames
        .get(3)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .unwrap_or_default();
    let k = key.unwrap_or(PublicKey([0; 32]));
    let now = Instant::now();
    let due = logged
        .get(&(domain.to_string(), k))
        .is_none_or(|t| now.duration_since(*t) >= LOG_EVERY);
    if due {
        logged.insert((domain.to_string(), k), now);
        tracing::warn!(
            domain,
            address = address.as_str(),
            client_key = key.map(|k| k.z85()).unwrap_or_default().as_str(),
            reason = why,
            "connection refused"
        );
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Allowed(PublicKey),
    Refused {
        domain: String,
        key: Option<PublicKey>,
        why: &'static str,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Decision {
    request_id: Vec<u8>,
    verdict: Verdict,
}

impl Decision {
    /// `[version, request id, status code, status text, user id, metadata]`.
    fn reply(&self) -> Vec<Vec<u8>> {
        let (code, text, user) = match &self.verdict {
            Verdict::Allowed(k) => ("200", "OK", k.z85()),
            Verdict::Refused { why, .. } => ("400", *why, String::new()),
        };
        vec![
            b"1.0".to_vec(),
            self.request_id.clone(),
            code.as_bytes().to_vec(),
            text.as_bytes().to_vec(),
            user.into_bytes(),
            Vec::new(),
        ]
    }
}

/// Request frames: `[version, request id, domain, address, routing id,
/// mechanism, credentials..]`; for CURVE the credential is the client's
/// 32-byte public key.
fn decide(frames: &[Vec<u8>], allow: &AllowList) -> Decision {
    let request_id = frames.get(1).cloned().unwrap_or_default();
    let domain = frames
        .get(2)
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .unwrap_or_default();
    let key = frames
        .get(6)
        .and_then(|c| <[u8; 32]>::try_from(c.as_slice()).ok())
        .map(PublicKey);
    let refuse = |why| Verdict::Refused {
        domain: domain.clone(),
        key,
        why,
    };
    let verdict = if frames.len() < 6 || frames[0] != b"1.0" {
        refuse("malformed ZAP request")
    } else if frames[5] != b"CURVE" {
        refuse("only CURVE is accepted")
    } else {
        match (allow.get(&domain), key) {
            (None, _) => refuse("unknown ZAP domain"),
            (_, None) => refuse("no CURVE public key"),
            (Some(keys), Some(k)) if keys.contains(&k) => Verdict::Allowed(k),
            (Some(_), Some(_)) => refuse("key not on the allow-list"),
        }
    };
    Decision {
        request_id,
        verdict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(domain: &str, mechanism: &str, key: &[u8]) -> Vec<Vec<u8>> {
        vec![
            b"1.0".to_vec(),
            b"7".to_vec(),
            domain.as_bytes().to_vec(),
            b"127.0.0.1".to_vec(),
            Vec::new(),
            mechanism.as_bytes().to_vec(),
            key.to_vec(),
        ]
    }

    #[test]
    fn only_listed_curve_keys_of_known_domains_pass() {
        let good = PublicKey([1; 32]);
        let allow: AllowList = [("storage".to_string(), [good].into_iter().collect())].into();
        let ok = decide(&request("storage", "CURVE", &good.0), &allow);
        assert_eq!(ok.verdict, Verdict::Allowed(good));
        assert_eq!(ok.reply()[1], b"7".to_vec());
        assert_eq!(ok.reply()[2], b"200".to_vec());
        for (domain, mech, key) in [
            ("storage", "CURVE", [2u8; 32].as_slice()),
            ("clients", "CURVE", good.0.as_slice()),
            ("storage", "NULL", good.0.as_slice()),
            ("storage", "CURVE", &good.0[..5]),
        ] {
            let d = decide(&request(domain, mech, key), &allow);
            assert!(
                matches!(d.verdict, Verdict::Refused { .. }),
                "{domain} {mech}"
            );
            assert_eq!(d.reply()[2], b"400".to_vec());
        }
        let short = decide(&[b"1.0".to_vec()], &allow);
        assert!(matches!(short.verdict, Verdict::Refused { .. }));
    }
}
