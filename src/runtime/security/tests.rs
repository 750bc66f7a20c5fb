//! CURVE and ZAP end to end over real TCP sockets in one process.

use std::collections::HashMap;
use std::time::Duration;

use super::zap::{AllowList, Handler};
use super::*;

/// A ROUTER echo server guarded by `allow` on domain "storage"; returns its endpoint.
fn server(ctx: &zmq::Context, pair: &KeyPair, allow: AllowList) -> (Handler, zmq::Socket, String) {
    let zap = Handler::start(ctx, allow).unwrap();
    let curve = Curve::new(pair.clone(), HashMap::new());
    let s = ctx.socket(zmq::ROUTER).unwrap();
    s.set_linger(0).unwrap();
    curve.serve(&s, DOMAIN_STORAGE).unwrap();
    s.bind("tcp://127.0.0.1:*").unwrap();
    let ep = s.get_last_endpoint().unwrap().unwrap();
    (zap, s, ep)
}

/// Sends one message from a DEALER with `curve` and reports whether the
/// server received it within the timeout.
fn reaches(ctx: &zmq::Context, curve: &Curve, router: &zmq::Socket, ep: &str) -> bool {
    let c = ctx.socket(zmq::DEALER).unwrap();
    c.set_linger(0).unwrap();
    curve.connect_to(&c, Peer::Storage).unwrap();
    c.connect(ep).unwrap();
    c.send("hola", zmq::DONTWAIT).ok();
    router.poll(zmq::POLLIN, 1500).unwrap() > 0 && router.recv_multipart(0).is_ok()
}

#[test]
fn only_allowed_keys_get_through() {
    assert_eq!(zmq::has("curve"), Some(true), "libzmq without CURVE");
    let ctx = zmq::Context::new();
    let server_pair = KeyPair::generate().unwrap();
    let good = KeyPair::generate().unwrap();
    let stranger = KeyPair::generate().unwrap();
    let allow: AllowList = [(
        DOMAIN_STORAGE.to_string(),
        [good.public].into_iter().collect(),
    )]
    .into();
    let (_zap, router, ep) = server(&ctx, &server_pair, allow);
    let servers = |pair: &KeyPair| {
        Curve::new(
            pair.clone(),
            [(Peer::Storage, server_pair.public)].into_iter().collect(),
        )
    };
    assert!(
        !reaches(&ctx, &Curve::plaintext(), &router, &ep),
        "plaintext got in"
    );
    assert!(
        !reaches(&ctx, &servers(&stranger), &router, &ep),
        "unknown key got in"
    );
    // Right key, but believing in the wrong server key: the handshake fails.
    let fooled = Curve::new(
        good.clone(),
        [(Peer::Storage, stranger.public)].into_iter().collect(),
    );
    assert!(
        !reaches(&ctx, &fooled, &router, &ep),
        "wrong server key got in"
    );
    assert!(
        reaches(&ctx, &servers(&good), &router, &ep),
        "allowed key refused"
    );
    std::thread::sleep(Duration::from_millis(10));
}
