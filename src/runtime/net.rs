//! Small ZeroMQ helpers shared by every socket thread.
//!
//! Sockets are created here with the options every service wants (bounded
//! linger, a hard frame-size cap at the protocol's largest legal frame,
//! explicit high-water marks), and ROUTER envelopes are split here so every
//! front-end treats REQ and DEALER peers the same way: `[identity.., "", body]`.
//! Every wait and every receive goes through [`poll`] and [`try_recv`]: a
//! signal interrupting them (EINTR) means "try again", never an error, and a
//! message is read frame by frame with at most [`MAX_FRAMES`] kept.

use std::time::Duration;

use biblioteca_protocol::MAX_WIRE_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("zeromq: {0}")]
    Zmq(#[from] zmq::Error),
    #[error("cannot {action} {endpoint}: {source}")]
    Endpoint {
        action: &'static str,
        endpoint: String,
        source: zmq::Error,
    },
}

/// Why a service that owns ZeroMQ sockets (load manager, actor) stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("zeromq: {0}")]
    Zmq(#[from] zmq::Error),
    #[error(transparent)]
    Security(#[from] crate::security::SecurityError),
}

/// Default high-water mark: deep enough for bursts, bounded so memory is too.
pub const HWM: i32 = 10_000;

/// Receive high-water mark, per peer, of a socket anyone may connect to
/// (the front-end, the storage manager, the back-channel). A client keeps
/// one request in flight (REQ) or a few (DEALER); the load manager and the
/// actors, the busiest peers, queue the rest on their side and are told
/// "busy" when that is full. So one peer holds at most this many frames of
/// at most [`MAX_WIRE_BYTES`] in our memory.
pub const CLIENT_RCVHWM: i32 = 256;

/// Frames kept of one message. The longest legal message is a request
/// through a ROUTER (`[identity, "", body]`) or a worker's reply
/// (`[worker, job, reply]`); a few more leave room for routing hops. The
/// frames beyond are read and dropped, so a peer cannot make us hold a
/// message of thousands of frames.
pub const MAX_FRAMES: usize = 8;

/// A socket with linger, size cap and high-water marks set.
pub fn socket(ctx: &zmq::Context, kind: zmq::SocketType) -> Result<zmq::Socket, NetError> {
    let s = ctx.socket(kind)?;
    s.set_linger(200)?;
    s.set_maxmsgsize(MAX_WIRE_BYTES)?;
    s.set_sndhwm(HWM)?;
    s.set_rcvhwm(HWM)?;
    Ok(s)
}

/// A socket that accepts connections from anyone: [`socket`] with the
/// receive high-water mark sized for clients ([`CLIENT_RCVHWM`]).
pub fn client_facing(ctx: &zmq::Context, kind: zmq::SocketType) -> Result<zmq::Socket, NetError> {
    let s = socket(ctx, kind)?;
    s.set_rcvhwm(CLIENT_RCVHWM)?;
    Ok(s)
}

/// ZMTP heartbeats on every TCP connection, both ends: a peer that went
/// silent (a cut link, a frozen host) is dropped after 3 s instead of when
/// TCP gives up (minutes), and, on the connecting side, a connect that hangs
/// on an unanswered SYN is abandoned after 2 s and tried afresh, so a healed
/// link carries traffic again within about 2 s instead of at the next SYN
/// retransmission (which backs off to 16-32 s). docs/failover.md, "Network
/// faults".
fn liveness(s: &zmq::Socket, endpoint: &str) -> Result<(), NetError> {
    if endpoint.starts_with("tcp://") {
        s.set_heartbeat_ivl(HEARTBEAT_IVL_MS)?;
        s.set_heartbeat_timeout(HEARTBEAT_TIMEOUT_MS)?;
        s.set_connect_timeout(CONNECT_TIMEOUT_MS)?;
    }
    Ok(())
}

pub const HEARTBEAT_IVL_MS: i32 = 1000;
pub const HEARTBEAT_TIMEOUT_MS: i32 = 3000;
pub const CONNECT_TIMEOUT_MS: i32 = 2000;

pub fn bind(s: &zmq::Socket, endpoint: &str) -> Result<(), NetError> {
    liveness(s, endpoint)?;
    s.bind(endpoint).map_err(|source| NetError::Endpoint {
        action: "bind",
        endpoint: endpoint.to_string(),
        source,
    })
}

pub fn connect(s: &zmq::Socket, endpoint: &str) -> Result<(), NetError> {
    liveness(s, endpoint)?;
    s.connect(endpoint).map_err(|source| NetError::Endpoint {
        action: "connect",
        endpoint: endpoint.to_string(),
        source,
    })
}

/// `zmq::poll`, where a signal interrupting the wait is not an error: the
/// items then report nothing ready and the caller's loop simply goes round.
pub fn poll(items: &mut [zmq::PollItem<'_>], timeout_ms: i64) -> Result<usize, NetError> {
    match zmq::poll(items, timeout_ms) {
        Ok(n) => Ok(usize::try_from(n).unwrap_or(0)),
        Err(zmq::Error::EINTR) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Waits up to `timeout` for `s` to become readable.
pub fn readable(s: &zmq::Socket, timeout: Duration) -> Result<bool, NetError> {
    let mut items = [s.as_poll_item(zmq::POLLIN)];
    poll(&mut items, timeout.as_millis().min(i64::MAX as u128) as i64)?;
    Ok(items[0].is_readable())
}

/// One frame, retried when a signal interrupts the call.
fn recv_frame(s: &zmq::Socket, msg: &mut zmq::Message, flags: i32) -> Result<bool, NetError> {
    loop {
        match s.recv(msg, flags) {
            Ok(()) => return Ok(true),
            Err(zmq::Error::EINTR) => continue,
            Err(zmq::Error::EAGAIN) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one multipart message without blocking; `None` when there is
/// none. Frames past [`MAX_FRAMES`] are read and dropped (the message then
/// has more frames than any legal one, so it is still refused as such).
pub fn try_recv(s: &zmq::Socket) -> Result<Option<Vec<Vec<u8>>>, NetError> {
    try_recv_up_to(s, MAX_FRAMES)
}

/// [`try_recv`] keeping up to `max_frames` frames: for a process's own
/// `inproc://` sockets, whose messages may be longer than a peer's (a batch
/// of replies) and come from no stranger.
pub fn try_recv_up_to(
    s: &zmq::Socket,
    max_frames: usize,
) -> Result<Option<Vec<Vec<u8>>>, NetError> {
    let mut msg = zmq::Message::new();
    if !recv_frame(s, &mut msg, zmq::DONTWAIT)? {
        return Ok(None);
    }
    let mut frames = vec![msg.to_vec()];
    let mut dropped = 0usize;
    // The rest of a message arrives with its first frame: no waiting here.
    while msg.get_more() {
        if !recv_frame(s, &mut msg, zmq::DONTWAIT)? {
            break;
        }
        if frames.len() < max_frames {
            frames.push(msg.to_vec());
        } else {
            dropped += 1;
        }
    }
    if dropped > 0 {
        tracing::debug!(
            kept = frames.len(),
            dropped,
            "message with too many frames truncated"
        );
    }
    Ok(Some(frames))
}

/// Waits up to `timeout` for one message on `s`; `None` when none came.
pub fn recv_within(s: &zmq::Socket, timeout: Duration) -> Result<Option<Vec<Vec<u8>>>, NetError> {
    let until = std::time::Instant::now() + timeout;
    loop {
        if let Some(frames) = try_recv(s)? {
            return Ok(Some(frames));
        }
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || !readable(s, left)? {
            return Ok(None);
        }
    }
}

/// A message received on a ROUTER socket: who sent it and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Routing frames, up to and including the empty delimiter.
    pub route: Vec<Vec<u8>>,
    /// Frames after the delimiter.
    pub body: Vec<Vec<u8>>,
}

impl Envelope {
    /// Splits `[id.., "", body..]`; `None` when there is no delimiter (a peer
    /// that speaks neither REQ nor our DEALER convention).
    pub fn split(mut frames: Vec<Vec<u8>>) -> Option<Envelope> {
        let pos = frames.iter().position(|f| f.is_empty())?;
        let body = frames.split_off(pos + 1);
        Some(Envelope {
            route: frames,
            body,
        })
    }

    /// The single body frame, or `None` when the message had zero or several.
    pub fn single_body(&self) -> Option<&[u8]> {
        match self.body.as_slice() {
            [one] => Some(one.as_slice()),
            _ => None,
        }
    }

    /// Sends `reply` back along this envelope's route.
    pub fn reply(&self, s: &zmq::Socket, reply: &[u8]) -> Result<(), NetError> {
        let mut frames: Vec<&[u8]> = self.route.iter().map(Vec::as_slice).collect();
        frames.push(reply);
        s.send_multipart(frames, 0)?;
        Ok(())
    }
}

/// Sends one body frame from a DEALER as a REQ would (`["", body]`).
pub fn send_as_req(s: &zmq::Socket, body: &[u8]) -> Result<(), NetError> {
    s.send_multipart([&b""[..], body], 0)?;
    Ok(())
}

/// Strips the empty delimiter a ROUTER put before a reply to a DEALER.
pub fn reply_body(frames: Vec<Vec<u8>>) -> Option<Vec<u8>> {
    let mut it = frames.into_iter();
    match (it.next(), it.next(), it.next()) {
        (Some(empty), Some(body), None) if empty.is_empty() => Some(body),
        _ => None,
    }
}

/// Decodes what a ROUTER (the storage manager) sent back to our DEALER;
/// anything without the `["", reply]` shape or with a malformed reply is
/// logged and dropped, since there is nobody to answer.
pub fn decode_reply(frames: Vec<Vec<u8>>) -> Option<biblioteca_protocol::Respuesta> {
    let Some(body) = reply_body(frames) else {
        tracing::warn!("storage reply without the [\"\", reply] shape dropped");
        return None;
    };
    match biblioteca_protocol::Respuesta::from_bytes(&body) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(error = %e, "malformed storage reply dropped");
            None
        }
    }
}

/// [`decode_reply`] for a message that may carry several replies
/// (`["", "lote", reply, ...]`, see [`biblioteca_protocol::batch`]); what is
/// malformed is logged and dropped.
pub fn decode_replies(frames: Vec<Vec<u8>>) -> Vec<biblioteca_protocol::Respuesta> {
    let body = match frames.split_first() {
        Some((empty, rest)) if empty.is_empty() => rest,
        _ => {
            tracing::warn!("storage reply without the [\"\", reply] shape dropped");
            return Vec::new();
        }
    };
    let bodies = match biblioteca_protocol::batch::batch_body(body) {
        Some(many) => many,
        None if body.len() == 1 => body,
        None => {
            tracing::warn!("storage reply without the [\"\", reply] shape dropped");
            return Vec::new();
        }
    };
    bodies
        .iter()
        .filter_map(|b| match biblioteca_protocol::Respuesta::from_bytes(b) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "malformed storage reply dropped");
                None
            }
        })
        .collect()
}

/// Sends `items` to `s` after `head` (the framing), at most
/// [`MAX_PER_MESSAGE`](biblioteca_protocol::batch::MAX_PER_MESSAGE) per
/// message; with `DONTWAIT`. Returns, for each message, how many items it
/// carried and whether it was queued.
pub fn send_batched(
    s: &zmq::Socket,
    head: &[&[u8]],
    items: &[&[u8]],
) -> Vec<(usize, Result<(), zmq::Error>)> {
    items
        .chunks(biblioteca_protocol::batch::MAX_PER_MESSAGE)
        .map(|chunk| {
            let frames: Vec<&[u8]> = head.iter().chain(chunk).copied().collect();
            (chunk.len(), s.send_multipart(frames, zmq::DONTWAIT))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_split_at_the_delimiter() {
        let e = Envelope::split(vec![b"id".to_vec(), vec![], b"x".to_vec()]).unwrap();
        assert_eq!(e.route, vec![b"id".to_vec(), vec![]]);
        assert_eq!(e.single_body(), Some(&b"x"[..]));
        assert!(Envelope::split(vec![b"id".to_vec(), b"x".to_vec()]).is_none());
        let two =
            Envelope::split(vec![b"id".to_vec(), vec![], b"x".to_vec(), b"y".to_vec()]).unwrap();
        assert_eq!(two.single_body(), None);
        assert_eq!(reply_body(vec![vec![], b"r".to_vec()]), Some(b"r".to_vec()));
        assert_eq!(reply_body(vec![b"r".to_vec()]), None);
    }
}
