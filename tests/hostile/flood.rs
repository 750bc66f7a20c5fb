//! Anonymous clients flood every socket a stranger can reach (the load
//! manager's front-end and back-channel, the storage manager's ROUTER) with
//! junk for 30 s: frames far over the protocol's size limit, messages of
//! thousands of frames, and hundreds of connections that send, close and
//! never read their replies. Every service stays under 50 MB, a legitimate
//! client keeps being answered (p99 under 50 ms), and the database does not
//! change.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{field, request, sql, World};

const FLOOD: Duration = Duration::from_secs(30);
const RSS_LIMIT_KB: u64 = 50 * 1024;
const P99_LIMIT: Duration = Duration::from_millis(50);
/// A frame sixteen times the protocol's largest legal message.
const HUGE: usize = 1024 * 1024;
const FRAMES: usize = 5000;

/// Everything the flood could have touched, as one string.
fn database_fingerprint(w: &World) -> String {
    sql(
        w.primary(),
        "SELECT (SELECT md5(coalesce(string_agg(l::text, ',' ORDER BY l::text), '')) FROM libros l) || \
                (SELECT md5(coalesce(string_agg(p::text, ',' ORDER BY p::text), '')) FROM prestamos p) || \
                (SELECT md5(coalesce(string_agg(s::text, ',' ORDER BY s::text), '')) FROM solicitudes s)",
    )
}

fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Sends junk on one socket kind until `stop`: huge frames, then messages of
/// thousands of tiny frames, alternately; counts the bytes libzmq accepted.
fn junk(endpoint: String, kind: zmq::SocketType, stop: Arc<AtomicBool>, bytes: Arc<AtomicU64>) {
    let ctx = zmq::Context::new();
    let s = ctx.socket(kind).unwrap();
    s.set_linger(0).unwrap();
    s.set_sndhwm(4).unwrap();
    s.connect(&endpoint).unwrap();
    let huge = vec![0xA5u8; HUGE];
    let tiny: Vec<&[u8]> = (0..FRAMES).map(|_| &b"junk"[..]).collect();
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let sent = if round.is_multiple_of(2) {
            s.send(&huge[..], zmq::DONTWAIT).map(|()| HUGE)
        } else {
            s.send_multipart(tiny.iter().copied(), zmq::DONTWAIT)
                .map(|()| 4 * FRAMES)
        };
        match sent {
            Ok(n) => {
                bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            // Queue full or peer gone (disconnected for the oversized
            // frame; libzmq reconnects): try again shortly.
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
        round += 1;
    }
}

/// Connections that open, send a request-shaped junk message, and close
/// without reading the reply, hundreds at a time.
fn churn(endpoint: String, stop: Arc<AtomicBool>, opened: Arc<AtomicU64>) {
    let ctx = zmq::Context::new();
    while !stop.load(Ordering::Relaxed) {
        let sockets: Vec<zmq::Socket> = (0..200)
            .filter_map(|_| {
                let s = ctx.socket(zmq::REQ).ok()?;
                s.set_linger(0).ok()?;
                s.connect(&endpoint).ok()?;
                s.send(
                    &br#"{"operacion":"prestamo","isbn":"no","usuario":"x"}"#[..],
                    zmq::DONTWAIT,
                )
                .ok()?;
                Some(s)
            })
            .collect();
        opened.fetch_add(sockets.len() as u64, Ordering::Relaxed);
        // Held open a while, then dropped unread: 200 at once, ~400 new
        // connections a second per endpoint.
        std::thread::sleep(Duration::from_millis(500));
        drop(sockets);
    }
}

pub fn a_flood_of_junk_changes_nothing(w: &mut World) {
    let before = database_fingerprint(w);
    let pids: Vec<(String, u32)> = w
        .stack
        .services()
        .filter_map(|s| Some((s.name().to_string(), s.pid()?)))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let bytes = Arc::new(AtomicU64::new(0));
    let opened = Arc::new(AtomicU64::new(0));
    let backchannel = w.stack.ports().backchannel_endpoint();
    let mut flooders = Vec::new();
    for (endpoint, kind) in [
        (w.frontend(), zmq::DEALER),
        (w.storage(), zmq::DEALER),
        (backchannel, zmq::PUSH),
    ] {
        let (stop, bytes) = (Arc::clone(&stop), Arc::clone(&bytes));
        flooders.push(std::thread::spawn(move || {
            junk(endpoint, kind, stop, bytes)
        }));
    }
    for endpoint in [w.frontend(), w.storage()] {
        let (stop, opened) = (Arc::clone(&stop), Arc::clone(&opened));
        flooders.push(std::thread::spawn(move || churn(endpoint, stop, opened)));
    }

    // The legitimate client and the memory sampler, for the flood's length.
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut peak: Vec<u64> = vec![0; pids.len()];
    let body = json!({"operacion": "consulta", "isbn": crate::common::ISBNS[0]}).to_string();
    while started.elapsed() < FLOOD {
        let t = Instant::now();
        let reply = request(
            &w.ctx,
            &w.frontend(),
            body.as_bytes(),
            Duration::from_secs(5),
        )
        .unwrap_or_else(|| {
            panic!(
                "a legitimate consulta went unanswered during the flood\n{}",
                w.log_tails(20)
            )
        });
        latencies.push(t.elapsed());
        assert_eq!(
            field(&reply, "exito"),
            &json!(true),
            "consulta during the flood: {reply}"
        );
        for (i, (name, pid)) in pids.iter().enumerate() {
            let kb = rss_kb(*pid)
                .unwrap_or_else(|| panic!("{name} (pid {pid}) is gone during the flood"));
            peak[i] = peak[i].max(kb);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.join().expect("a flooder thread failed");
    }

    latencies.sort();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    eprintln!(
        "flood: {:.0} MiB of junk accepted by libzmq, {} junk connections, {} consultas answered, p99 {:.1} ms",
        bytes.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0),
        opened.load(Ordering::Relaxed),
        latencies.len(),
        p99.as_secs_f64() * 1000.0
    );
    for ((name, _), kb) in pids.iter().zip(&peak) {
        eprintln!("flood: {name} peak RSS {:.1} MB", *kb as f64 / 1024.0);
        assert!(
            *kb < RSS_LIMIT_KB,
            "{name} reached {kb} kB of RSS during the flood"
        );
    }
    assert!(bytes.load(Ordering::Relaxed) > 0, "the flood sent nothing");
    assert!(
        latencies.len() > 100,
        "only {} consultas in {FLOOD:?}",
        latencies.len()
    );
    assert!(
        p99 < P99_LIMIT,
        "p99 of legitimate consultas during the flood: {p99:?}"
    );
    assert_eq!(
        database_fingerprint(w),
        before,
        "the flood changed the database"
    );
}
