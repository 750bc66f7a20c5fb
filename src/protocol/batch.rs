//! The multi-request form of the internal hops (docs/protocol.md, "Several
//! requests in one message"): a service that has several requests or
//! replies ready for the same peer sends them as one ZeroMQ message, one
//! JSON document per frame, so the peer wakes up once for all of them.
//!
//! - load manager → actors (PUB): `[topic, request, request, ...]`;
//! - actor → storage manager (DEALER → ROUTER): `["", "lote", request, ...]`,
//!   and the replies come back as `["", "lote", reply, ...]` (any subset, in
//!   any order: each carries its id);
//! - actor → load manager (PUSH → PULL): one report per frame.
//!
//! The `lote` frame marks the storage manager's form, whose socket also
//! answers peers that send a single request (a message with two request
//! frames and no mark is still `PeticionInvalida`). Clients never see any of
//! this: the client-facing protocol is unchanged.

/// The frame after the delimiter that marks several requests or replies.
pub const BATCH_MARK: &[u8] = b"lote";

/// Most requests (or replies, or reports) one message carries; a sender
/// splits longer runs. A receiver reads at most this many plus its framing.
pub const MAX_PER_MESSAGE: usize = 32;

/// The requests of a `["", "lote", ...]` body (after the delimiter), or
/// `None` when the body is not in that form.
pub fn batch_body(body: &[Vec<u8>]) -> Option<&[Vec<u8>]> {
    match body {
        [mark, rest @ ..] if mark.as_slice() == BATCH_MARK && !rest.is_empty() => Some(rest),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_marked_body_with_requests_is_a_batch() {
        let b = |v: &[&str]| v.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
        assert_eq!(
            batch_body(&b(&["lote", "a", "b"])),
            Some(&b(&["a", "b"])[..])
        );
        assert_eq!(batch_body(&b(&["lote", "a"])), Some(&b(&["a"])[..]));
        assert_eq!(batch_body(&b(&["lote"])), None);
        assert_eq!(batch_body(&b(&["a", "b"])), None);
        assert_eq!(batch_body(&b(&[])), None);
    }
}
