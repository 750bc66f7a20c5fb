//! Every kind of bad input on every socket: each gets `PeticionInvalida` with
//! a reason where a reply route exists, nothing reaches the database, and all
//! services keep answering.

use std::io::Write;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{assert_ok, dealer_exchange, request_raw, sql, World};

const ISBN: &str = "978-0134685991";

/// Counts and sums that any accidental write would change.
fn snapshot(w: &World) -> String {
    sql(
        w.primary(),
        "SELECT (SELECT count(*) FROM libros), (SELECT sum(ejemplares) FROM libros), \
                (SELECT count(*) FROM prestamos), \
                (SELECT count(*) FROM prestamos WHERE estado = 'ACTIVO'), \
                (SELECT coalesce(sum(renovaciones), 0) FROM prestamos), \
                (SELECT count(*) FROM solicitudes)",
    )
}

fn bad_frames() -> Vec<(String, Vec<u8>)> {
    let j = |v: Value| v.to_string().into_bytes();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("not JSON", b"not json".to_vec()),
        ("empty frame", Vec::new()),
        (
            "truncated JSON",
            br#"{"operacion":"prestamo","isbn":"#.to_vec(),
        ),
        ("JSON array", b"[1,2]".to_vec()),
        ("JSON string", br#""prestamo""#.to_vec()),
        ("JSON null", b"null".to_vec()),
        ("deep nesting", "[".repeat(5000).into_bytes()),
        (
            "operacion a number",
            j(json!({"operacion": 5, "isbn": ISBN, "usuario": "u"})),
        ),
        (
            "isbn a number",
            j(json!({"operacion": "prestamo", "isbn": 9780134685991u64, "usuario": "u"})),
        ),
        (
            "usuario a list",
            j(json!({"operacion": "prestamo", "isbn": ISBN, "usuario": ["u"]})),
        ),
        (
            "usuario an object",
            j(json!({"operacion": "consulta", "isbn": ISBN, "usuario": {"a": 1}})),
        ),
        (
            "id a number",
            j(json!({"operacion": "prestamo", "isbn": ISBN, "usuario": "u", "id": 7})),
        ),
        (
            "missing operacion",
            j(json!({"isbn": ISBN, "usuario": "u"})),
        ),
        (
            "missing isbn",
            j(json!({"operacion": "prestamo", "usuario": "u"})),
        ),
        (
            "missing usuario",
            j(json!({"operacion": "prestamo", "isbn": ISBN})),
        ),
        (
            "null usuario",
            j(json!({"operacion": "devolucion", "isbn": ISBN, "usuario": null})),
        ),
        (
            "empty operacion",
            j(json!({"operacion": "", "isbn": ISBN, "usuario": "u"})),
        ),
        (
            "empty isbn",
            j(json!({"operacion": "prestamo", "isbn": "", "usuario": "u"})),
        ),
        (
            "blank usuario",
            j(json!({"operacion": "renovacion", "isbn": ISBN, "usuario": "   "})),
        ),
        (
            "unknown operacion",
            j(json!({"operacion": "robo", "isbn": ISBN, "usuario": "u"})),
        ),
        (
            "upper-case operacion",
            j(json!({"operacion": "PRESTAMO", "isbn": ISBN, "usuario": "u"})),
        ),
        ("resultado without id", j(json!({"operacion": "resultado"}))),
        (
            "isbn letters",
            j(json!({"operacion": "prestamo", "isbn": "abc", "usuario": "u"})),
        ),
        (
            "isbn 14 digits",
            j(json!({"operacion": "prestamo", "isbn": "978-01346859911", "usuario": "u"})),
        ),
        (
            "isbn with spaces",
            j(json!({"operacion": "consulta", "isbn": "978 0134685991"})),
        ),
        (
            "usuario with space",
            j(json!({"operacion": "prestamo", "isbn": ISBN, "usuario": "a b"})),
        ),
        (
            "usuario SQL",
            j(
                json!({"operacion": "prestamo", "isbn": ISBN, "usuario": "x'; DROP TABLE libros; --"}),
            ),
        ),
        (
            "usuario too long",
            j(json!({"operacion": "prestamo", "isbn": ISBN, "usuario": "u".repeat(65)})),
        ),
        (
            "usuario NUL",
            j(json!({"operacion": "prestamo", "isbn": ISBN, "usuario": "u\u{0}"})),
        ),
        (
            "id too long",
            j(json!({"operacion": "prestamo", "isbn": ISBN, "usuario": "u", "id": "i".repeat(65)})),
        ),
        (
            "id with space",
            j(json!({"operacion": "prestamo", "isbn": ISBN, "usuario": "u", "id": "a b"})),
        ),
        ("non-UTF-8", vec![0xff, 0xfe, 0xfd, b'{', b'}']),
        (
            "UTF-8 inside JSON broken",
            b"{\"operacion\":\"prestamo\",\"isbn\":\"\xc3\x28\"}".to_vec(),
        ),
    ];
    let mut big = json!({"operacion": "prestamo", "isbn": ISBN, "usuario": "grande"});
    big["relleno"] = json!("x".repeat(20 * 1024));
    cases.push(("frame over 16 KiB", j(big)));
    cases.into_iter().map(|(n, f)| (n.to_string(), f)).collect()
}

fn expect_invalida(raw: Option<Vec<u8>>, what: &str) {
    let raw = raw.unwrap_or_else(|| panic!("{what}: no reply"));
    let v: Value = serde_json::from_slice(&raw).unwrap_or_else(|e| {
        panic!(
            "{what}: reply is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&raw)
        )
    });
    assert_eq!(v["exito"], json!(false), "{what}: {v}");
    assert_eq!(v["error"], json!("PeticionInvalida"), "{what}: {v}");
    let reason = v["mensaje"].as_str().unwrap_or("");
    assert!(!reason.trim().is_empty(), "{what}: no reason given: {v}");
}

/// Connects, writes bytes that are not ZMTP, and hangs up.
fn raw_tcp_garbage(port: u16) {
    if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\xff\x00\x01garbage");
        let _ = s.write_all(&[0xffu8; 4096]);
    }
}

fn all_answer(w: &World, when: &str) {
    let t = Duration::from_secs(10);
    for (name, ep) in [
        ("load manager", w.frontend()),
        ("storage manager", w.storage()),
    ] {
        let raw = request_raw(&w.ctx, &ep, br#"{"operacion":"status"}"#, t)
            .unwrap_or_else(|| panic!("{name} does not answer status {when}"));
        let v: Value = serde_json::from_slice(&raw).unwrap();
        assert_ok(&v, &format!("{name} status {when}"));
    }
    assert_ok(&w.op("consulta", ISBN, "u"), &format!("consulta {when}"));
}

pub fn bad_input_everywhere(w: &mut World) {
    let before = snapshot(w);
    let t = Duration::from_secs(10);
    let short = Duration::from_millis(700);

    for (what, frame) in bad_frames() {
        // REQ to the load manager and straight to the storage manager.
        expect_invalida(
            request_raw(&w.ctx, &w.frontend(), &frame, t),
            &format!("load manager, {what}"),
        );
        expect_invalida(
            request_raw(&w.ctx, &w.storage(), &frame, t),
            &format!("storage manager, {what}"),
        );
    }

    let valid =
        json!({"operacion": "prestamo", "isbn": ISBN, "usuario": "extra_frames"}).to_string();
    for (name, ep) in [
        ("load manager", w.frontend()),
        ("storage manager", w.storage()),
    ] {
        // A DEALER speaking the REQ envelope but with two body frames.
        let reply = dealer_exchange(&w.ctx, &ep, &[b"", valid.as_bytes(), valid.as_bytes()], t)
            .unwrap_or_else(|| panic!("{name}: no reply to two body frames"));
        assert_eq!(reply.len(), 2, "{name}: reply envelope {reply:?}");
        assert!(reply[0].is_empty(), "{name}: reply envelope {reply:?}");
        expect_invalida(Some(reply[1].clone()), &format!("{name}, two body frames"));
        // An empty body after the delimiter.
        let reply = dealer_exchange(&w.ctx, &ep, &[b"", b""], t)
            .unwrap_or_else(|| panic!("{name}: no reply to an empty body"));
        expect_invalida(reply.last().cloned(), &format!("{name}, empty body"));
        // No delimiter at all: no reply route; must simply be dropped.
        let _ = dealer_exchange(&w.ctx, &ep, &[valid.as_bytes()], short);
        let _ = dealer_exchange(&w.ctx, &ep, &[b"a", b"b", b"c"], short);
    }

    // Garbage on the back-channel: nobody answers, nobody may crash.
    let push = w.ctx.socket(zmq::PUSH).unwrap();
    push.set_linger(1000).unwrap();
    push.connect(&w.stack.ports().backchannel_endpoint())
        .unwrap();
    let fake_ok = json!({"tipo": "resultado", "respuesta":
        {"exito": true, "operacion": "prestamo", "mensaje": "fake", "id": "no-such-request"}});
    let garbage: Vec<Vec<u8>> = vec![
        b"garbage".to_vec(),
        Vec::new(),
        vec![0xff, 0xfe],
        br#"{"tipo":"resultado"}"#.to_vec(),
        br#"{"tipo":"latido","operacion":"robo","actor":"x"}"#.to_vec(),
        br#"{"tipo":"latido","operacion":"consulta","actor":"x"}"#.to_vec(),
        fake_ok.to_string().into_bytes(),
        "[".repeat(5000).into_bytes(),
        vec![b'x'; 100 * 1024],
    ];
    for g in &garbage {
        push.send(g.as_slice(), 0).unwrap();
    }
    push.send_multipart([&b"a"[..], b"b", b""], 0).unwrap();
    drop(push);

    // Bytes that are not ZeroMQ at all, on every port.
    let ports = w.stack.ports();
    for port in [
        ports.frontend,
        ports.publisher,
        ports.backchannel,
        ports.storage,
    ] {
        raw_tcp_garbage(port);
    }
    std::thread::sleep(Duration::from_millis(500));

    assert_eq!(snapshot(w), before, "bad input changed the database");
    all_answer(w, "after bad input");
    assert!(w.stack.storage.is_running(), "storage manager died");
    assert!(w.stack.carga.is_running(), "load manager died");
    for (op, a) in w.stack.actors.iter_mut() {
        assert!(a.is_running(), "actor {op} died");
    }
    // The actors still work end to end.
    let isbn = "978-0135957059";
    assert_ok(
        &w.op("prestamo", isbn, "sigue_vivo"),
        "loan after bad input",
    );
    assert_ok(
        &w.op("renovacion", isbn, "sigue_vivo"),
        "renewal after bad input",
    );
    assert_ok(
        &w.op("devolucion", isbn, "sigue_vivo"),
        "return after bad input",
    );
}
