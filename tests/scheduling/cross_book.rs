//! Batches of several books: one transaction for what is ready whatever the
//! book, a refusal inside it changing nothing for the others, and one lock
//! order for concurrent batches (no deadlock).

use serde_json::{json, Value};

use crate::cases::{
    add_book, loan, lock_book, num, queued_behind_a_blocker, replies, session, Almacen,
};
use crate::common::{assert_err, assert_ok, eventually, sql, World};
use std::time::Duration;

fn op(operacion: &str, isbn: &str, usuario: &str, id: &str) -> Value {
    json!({"operacion": operacion, "isbn": isbn, "usuario": usuario, "id": id})
}

/// Distinct transactions that wrote the stored outcomes of `ids`.
fn transactions(w: &World, ids: &[String]) -> i64 {
    let list = ids
        .iter()
        .map(|i| format!("'{i}'"))
        .collect::<Vec<_>>()
        .join(",");
    num(
        w,
        &format!("SELECT count(DISTINCT xmin::text) FROM solicitudes WHERE id IN ({list})"),
    )
}

pub fn refusals_inside_a_cross_book_batch(w: &mut World) {
    let a = Almacen::start(w, 1);
    let last = add_book(w, "one-copy", 1);
    let plenty = add_book(w, "many-copies", 10);
    let renewed = add_book(w, "renewed", 5);
    let nothing = add_book(w, "no-loan", 5);
    let bodies = vec![
        op("prestamo", &last, "x1", &format!("xb-{last}-1")),
        op("prestamo", &renewed, "r", &format!("xb-{renewed}-0")),
        op("prestamo", &last, "x2", &format!("xb-{last}-2")),
        op("prestamo", &plenty, "p1", &format!("xb-{plenty}-1")),
        op("renovacion", &renewed, "r", &format!("xb-{renewed}-1")),
        op("devolucion", &nothing, "nobody", &format!("xb-{nothing}-1")),
        op("renovacion", &renewed, "r", &format!("xb-{renewed}-2")),
        op("prestamo", &plenty, "p2", &format!("xb-{plenty}-2")),
        op("renovacion", &renewed, "r", &format!("xb-{renewed}-3")),
    ];
    let ids: Vec<String> = bodies
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    let r = replies_of(queued_behind_a_blocker(w, &a, bodies.clone()));
    // Every reply is the one of its own request, whatever order they ran in.
    for (v, b) in r.iter().zip(&bodies) {
        assert_eq!(v["id"], b["id"], "a reply went to another request: {v}");
        assert_eq!(v["operacion"], b["operacion"], "{v}");
    }
    assert_ok(&r[0], "the first loan of the last copy");
    assert_err(&r[2], "SinEjemplaresDisponibles", "the second loan of it");
    assert_ok(&r[1], "the loan that is renewed");
    assert_ok(&r[4], "the first renewal");
    assert_ok(&r[6], "the second renewal");
    assert_err(&r[8], "LimiteRenovaciones", "the third renewal");
    assert_err(&r[5], "PrestamoNoEncontrado", "a return without a loan");
    assert_ok(&r[3], "a loan of another book next to the refusals");
    assert_ok(&r[7], "a loan of another book next to the refusals");
    assert_eq!(
        transactions(w, &ids),
        1,
        "the four books' writes were not one transaction"
    );
    let copies = |isbn: &str| {
        num(
            w,
            &format!("SELECT ejemplares FROM libros WHERE isbn = '{isbn}'"),
        )
    };
    assert_eq!(
        (
            copies(&last),
            copies(&plenty),
            copies(&renewed),
            copies(&nothing)
        ),
        (0, 8, 4, 5)
    );
    // Refusals are outcomes stored under their ids: a retry replays them.
    let again = replies_of(replies(bodies.into_iter().map(|b| a.send(b)).collect()));
    assert_eq!(again, r, "a retry under the same ids changed a reply");
}

fn replies_of(r: Vec<(Value, std::time::Instant)>) -> Vec<Value> {
    r.into_iter().map(|(v, _)| v).collect()
}

/// Two storage managers (as while a failover re-points them) run batches of
/// the same two books, queued in opposite orders, at the same time: both
/// take the books' locks in one order, so neither is rolled back by a
/// deadlock and each stays one transaction.
pub fn concurrent_cross_book_batches_do_not_deadlock(w: &mut World) {
    let a1 = Almacen::start(w, 1);
    let a2 = Almacen::start(w, 1);
    let x = add_book(w, "lock-x", 10);
    let y = add_book(w, "lock-y", 10);
    let (b1, b2) = (add_book(w, "blocker-1", 5), add_book(w, "blocker-2", 5));
    let deadlocks_before = deadlocks(w);
    let mut sessions: Vec<postgres::Client> = (0..4).map(|_| session(w)).collect();
    let mut it = sessions.iter_mut();
    let (s1, s2, sx, sy) = (
        it.next().unwrap(),
        it.next().unwrap(),
        it.next().unwrap(),
        it.next().unwrap(),
    );
    let (t1, t2) = (lock_book(s1, &b1), lock_book(s2, &b2));
    let (tx, ty) = (lock_book(sx, &x), lock_book(sy, &y));
    let first1 = a1.send(loan(&b1, "blk", &format!("dl-{b1}")));
    let first2 = a2.send(loan(&b2, "blk", &format!("dl-{b2}")));
    let waiters = |like: &str| {
        num(
            w,
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' \
                 AND wait_event_type = 'Lock' AND query LIKE '{like}'"
            ),
        )
    };
    assert!(eventually(Duration::from_secs(15), || waiters(
        "%biblioteca_prestamo%"
    ) >= 2));
    let one: Vec<Value> = (0..3)
        .flat_map(|i| {
            [
                loan(&x, &format!("a{i}"), &format!("dl1-{x}-{i}")),
                loan(&y, &format!("a{i}"), &format!("dl1-{y}-{i}")),
            ]
        })
        .collect();
    let two: Vec<Value> = (0..3)
        .flat_map(|i| {
            [
                loan(&y, &format!("b{i}"), &format!("dl2-{y}-{i}")),
                loan(&x, &format!("b{i}"), &format!("dl2-{x}-{i}")),
            ]
        })
        .collect();
    let h1: Vec<_> = one.iter().map(|b| a1.send(b.clone())).collect();
    let h2: Vec<_> = two.iter().map(|b| a2.send(b.clone())).collect();
    a1.wait_in_flight(1 + one.len() as u64);
    a2.wait_in_flight(1 + two.len() as u64);
    t1.commit().unwrap();
    t2.commit().unwrap();
    assert_ok(&first1.join().unwrap().0, "storage manager 1's blocker");
    assert_ok(&first2.join().unwrap().0, "storage manager 2's blocker");
    assert!(
        eventually(Duration::from_secs(15), || waiters("%biblioteca_lote%")
            >= 2),
        "both batches should wait for the books' locks"
    );
    // Queued in opposite orders: without one lock order, the first batch
    // would take x and wait for y while the second takes y and waits for x.
    tx.commit().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    ty.commit().unwrap();
    for (v, _) in replies(h1).into_iter().chain(replies(h2)) {
        assert_ok(&v, "a loan of the concurrent batches");
    }
    let ids = |bodies: &[Value]| -> Vec<String> {
        bodies
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        transactions(w, &ids(&one)),
        1,
        "batch 1 was rolled back and split"
    );
    assert_eq!(
        transactions(w, &ids(&two)),
        1,
        "batch 2 was rolled back and split"
    );
    assert_eq!(
        deadlocks(w),
        deadlocks_before,
        "PostgreSQL detected a deadlock"
    );
    let copies = |isbn: &str| {
        num(
            w,
            &format!("SELECT ejemplares FROM libros WHERE isbn = '{isbn}'"),
        )
    };
    assert_eq!((copies(&x), copies(&y)), (4, 4));
}

fn deadlocks(w: &World) -> i64 {
    // Statistics reach the shared counters within a second of the event.
    std::thread::sleep(Duration::from_millis(1100));
    sql(
        w.primary(),
        "SELECT deadlocks FROM pg_stat_database WHERE datname = 'library'",
    )
    .parse()
    .unwrap()
}

/// Requests for different books arriving in one message (as an actor sends
/// what it had ready, `["", "lote", request, ...]`) with an idle worker:
/// nothing waits, yet they share one transaction, and the replies come back
/// in one message too. Two request frames without the mark stay invalid.
pub fn requests_arriving_together_share_a_transaction(w: &mut World) {
    let a = Almacen::start(w, 4);
    let books: Vec<String> = (0..3)
        .map(|i| add_book(w, &format!("together-{i}"), 5))
        .collect();
    let bodies: Vec<Value> = books
        .iter()
        .map(|b| loan(b, "juntos", &format!("tog-{b}")))
        .collect();
    let ids: Vec<String> = bodies
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    let s = a.ctx.socket(zmq::DEALER).unwrap();
    s.set_linger(0).unwrap();
    s.set_rcvtimeo(30_000).unwrap();
    s.connect(&a.endpoint).unwrap();
    let bytes: Vec<Vec<u8>> = bodies
        .iter()
        .map(|b| serde_json::to_vec(b).unwrap())
        .collect();
    let mut frames: Vec<&[u8]> = vec![b"", b"lote"];
    frames.extend(bytes.iter().map(Vec::as_slice));
    s.send_multipart(frames, 0).unwrap();
    let reply = s.recv_multipart(0).expect("a reply");
    assert_eq!(reply[0], b"", "{reply:?}");
    assert_eq!(
        reply[1], b"lote",
        "the replies were not sent together: {reply:?}"
    );
    let mut got: Vec<Value> = reply[2..]
        .iter()
        .map(|f| serde_json::from_slice(f).unwrap())
        .collect();
    got.sort_by_key(|v| v["id"].as_str().unwrap().to_string());
    assert_eq!(got.len(), 3, "{got:?}");
    for (v, id) in got.iter().zip(&ids) {
        assert_eq!(v["id"], json!(id));
        assert_ok(v, "a loan of the message");
    }
    assert_eq!(
        transactions(w, &ids),
        1,
        "three books arriving together, not one transaction"
    );
    // Without the mark, two request frames are still one invalid message.
    s.send_multipart([&b""[..], &bytes[0], &bytes[1]], 0)
        .unwrap();
    let reply = s.recv_multipart(0).expect("a reply");
    assert_eq!(reply.len(), 2, "{reply:?}");
    let v: Value = serde_json::from_slice(&reply[1]).unwrap();
    assert_err(
        &v,
        "PeticionInvalida",
        "two request frames without the mark",
    );
}
