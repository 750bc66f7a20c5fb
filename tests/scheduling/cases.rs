//! The cases; see main.rs.

use std::sync::atomic::{AtomicU16, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use biblioteca_stack::launch::{find_binary, free_port, Service, ServiceSpec};
use serde_json::{json, Value};

use crate::common::{assert_err, assert_ok, eventually, request, sql, World};

/// Distinguishes the books and storage managers of successive cases.
static CASE: AtomicU16 = AtomicU16::new(0);

/// A storage manager of its own with `workers` workers, on a free port.
pub(crate) struct Almacen {
    pub(crate) service: Service,
    pub(crate) endpoint: String,
    pub(crate) ctx: zmq::Context,
}

impl Almacen {
    pub(crate) fn start(w: &World, workers: usize) -> Almacen {
        let port = free_port().unwrap();
        let mut cfg = w.stack.spec().storage_config();
        cfg.bind = format!("tcp://127.0.0.1:{port}");
        cfg.workers = workers;
        cfg.state_dir = Some(w.dir.join(format!("state-{port}")));
        let spec = ServiceSpec::new(
            format!("almacenamiento-{port}"),
            find_binary("biblioteca-almacenamiento", None).unwrap(),
            toml::to_string(&cfg).unwrap(),
            w.stack.run_dir(),
        );
        let service = Service::start(spec).unwrap_or_else(|e| panic!("storage manager: {e}"));
        Almacen {
            service,
            endpoint: cfg.bind,
            ctx: zmq::Context::new(),
        }
    }

    /// Sends `body` from a thread of its own; the reply and when it came.
    pub(crate) fn send(&self, body: Value) -> JoinHandle<(Value, Instant)> {
        let (ctx, endpoint) = (self.ctx.clone(), self.endpoint.clone());
        std::thread::spawn(move || {
            let bytes = serde_json::to_vec(&body).unwrap();
            let r = request(&ctx, &endpoint, &bytes, Duration::from_secs(30))
                .unwrap_or_else(|| panic!("no reply to {body}"));
            (r, Instant::now())
        })
    }

    /// Sends `bodies` in this order over one connection (so they arrive in
    /// it) from a thread of its own; the replies in the same order.
    pub(crate) fn send_in_order(&self, bodies: Vec<Value>) -> JoinHandle<Vec<(Value, Instant)>> {
        let (ctx, endpoint) = (self.ctx.clone(), self.endpoint.clone());
        std::thread::spawn(move || {
            let s = ctx.socket(zmq::DEALER).unwrap();
            s.set_linger(0).unwrap();
            s.set_rcvtimeo(30_000).unwrap();
            s.connect(&endpoint).unwrap();
            for b in &bodies {
                let bytes = serde_json::to_vec(b).unwrap();
                s.send_multipart([&b""[..], &bytes], 0).unwrap();
            }
            let mut out: Vec<Option<(Value, Instant)>> = vec![None; bodies.len()];
            for _ in 0..bodies.len() {
                let frames = s.recv_multipart(0).expect("a reply to every request");
                let v: Value = serde_json::from_slice(frames.last().unwrap()).unwrap();
                // Replies come as batches end; a repeated id gets one each.
                let at = (0..bodies.len())
                    .find(|&i| out[i].is_none() && bodies[i]["id"] == v["id"])
                    .unwrap_or_else(|| panic!("a reply to no request: {v}"));
                out[at] = Some((v, Instant::now()));
            }
            out.into_iter().map(Option::unwrap).collect()
        })
    }

    /// Requests the front-end holds (queued or running).
    fn in_flight(&self) -> u64 {
        let r = request(
            &self.ctx,
            &self.endpoint,
            br#"{"operacion":"status"}"#,
            Duration::from_secs(5),
        )
        .expect("status reply");
        r["datos"]["en_curso"].as_u64().unwrap_or(0)
    }

    pub(crate) fn wait_in_flight(&self, n: u64) {
        assert!(
            eventually(Duration::from_secs(15), || self.in_flight() >= n),
            "the storage manager holds {} requests, expected {n}",
            self.in_flight()
        );
    }
}

/// A session of the test's own, to hold row locks.
pub(crate) fn session(w: &World) -> postgres::Client {
    postgres::Client::connect(&w.primary().conninfo("app", "library"), postgres::NoTls).unwrap()
}

/// Holds book `isbn`'s row lock until the returned transaction ends.
pub(crate) fn lock_book<'a>(c: &'a mut postgres::Client, isbn: &str) -> postgres::Transaction<'a> {
    let mut t = c.transaction().unwrap();
    t.execute("SELECT 1 FROM libros WHERE isbn = $1 FOR UPDATE", &[&isbn])
        .unwrap();
    t
}

/// A new book with `copies` copies; its ISBN is unique to the case.
pub(crate) fn add_book(w: &World, name: &str, copies: i64) -> String {
    let n = CASE.fetch_add(1, Ordering::SeqCst);
    let isbn = format!("978-88{n:04}{:04}", name.len());
    sql(
        w.primary(),
        &format!(
            "INSERT INTO libros (isbn, titulo, autor, ejemplares) \
             VALUES ('{isbn}', 'Lote {name}', 'scheduling', {copies})"
        ),
    );
    isbn
}

pub(crate) fn loan(isbn: &str, usuario: &str, id: &str) -> Value {
    json!({"operacion": "prestamo", "isbn": isbn, "usuario": usuario, "id": id})
}

pub(crate) fn num(w: &World, query: &str) -> i64 {
    sql(w.primary(), query)
        .parse()
        .unwrap_or_else(|e| panic!("{query}: {e}"))
}

/// Waits until a backend of the application waits for a row lock.
pub(crate) fn wait_for_lock_waiter(w: &World, query_like: &str) -> i64 {
    let q = format!(
        "SELECT coalesce(max(pid), 0) FROM pg_stat_activity \
         WHERE usename = 'app' AND wait_event_type = 'Lock' AND query LIKE '{query_like}'"
    );
    let mut pid = 0;
    assert!(
        eventually(Duration::from_secs(15), || {
            pid = num(w, &q);
            pid != 0
        }),
        "no backend is waiting for the lock with a query like {query_like}"
    );
    pid
}

/// Every request of `handles`, replies in send order.
pub(crate) fn replies(handles: Vec<JoinHandle<(Value, Instant)>>) -> Vec<(Value, Instant)> {
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Stalls the only worker on a blocker book's row lock, then queues
/// `bodies` behind it in order; returns the blocker's pending reply and theirs once
/// the lock is released.
pub(crate) fn queued_behind_a_blocker(
    w: &World,
    a: &Almacen,
    bodies: Vec<Value>,
) -> Vec<(Value, Instant)> {
    let blocker = add_book(w, "blocker", 10);
    let mut c = session(w);
    let t = lock_book(&mut c, &blocker);
    let first = a.send(loan(&blocker, "blocker", &format!("blk-{blocker}")));
    wait_for_lock_waiter(w, "%biblioteca_prestamo%");
    let n = bodies.len() as u64;
    let handle = a.send_in_order(bodies);
    a.wait_in_flight(1 + n);
    t.commit().unwrap();
    assert_ok(&first.join().unwrap().0, "the blocker's loan");
    handle.join().unwrap()
}

pub fn last_copy_and_duplicate_id_in_one_batch(w: &mut World) {
    let a = Almacen::start(w, 1);
    let last = add_book(w, "last", 1);
    let plenty = add_book(w, "plenty", 10);
    let mut bodies: Vec<Value> = (0..10)
        .map(|i| loan(&last, &format!("race-{i}"), &format!("race-{last}-{i}")))
        .collect();
    let dup = format!("dup-{plenty}");
    bodies.push(loan(&plenty, "twice", &dup));
    bodies.push(loan(&plenty, "twice", &dup));
    bodies.push(loan(&plenty, "other", &format!("other-{plenty}")));
    let r = queued_behind_a_blocker(w, &a, bodies);

    let race = &r[..10];
    let winners = race
        .iter()
        .filter(|(v, _)| v["exito"] == json!(true))
        .count();
    assert_eq!(winners, 1, "one winner of the last copy: {race:#?}");
    for (v, _) in race.iter().filter(|(v, _)| v["exito"] != json!(true)) {
        assert_err(v, "SinEjemplaresDisponibles", "the race's losers");
    }
    assert_eq!(
        num(
            w,
            &format!("SELECT ejemplares FROM libros WHERE isbn = '{last}'")
        ),
        0
    );
    assert_eq!(
        num(
            w,
            &format!("SELECT count(*) FROM prestamos WHERE isbn = '{last}' AND estado = 'ACTIVO'")
        ),
        1
    );
    // The ten requests ran in one transaction: one batch.
    assert_eq!(
        num(
            w,
            &format!("SELECT count(DISTINCT xmin::text) FROM solicitudes WHERE isbn = '{last}'")
        ),
        1,
        "the race was not one batch"
    );

    let (d1, d2) = (&r[10].0, &r[11].0);
    assert_ok(d1, "the duplicated id");
    assert_eq!(d1, d2, "both copies of one id get the same reply");
    assert_ok(&r[12].0, "the other loan of the batch");
    assert_eq!(
        num(
            w,
            &format!("SELECT count(*) FROM prestamos WHERE solicitud = '{dup}'")
        ),
        1,
        "the duplicated id was applied twice"
    );
    assert_eq!(
        num(
            w,
            &format!("SELECT ejemplares FROM libros WHERE isbn = '{plenty}'")
        ),
        8
    );
    assert_eq!(
        num(
            w,
            &format!("SELECT count(DISTINCT xmin::text) FROM prestamos WHERE isbn = '{plenty}'")
        ),
        1,
        "the duplicate id was not in one batch with the other loan"
    );
}

pub fn no_request_starves(w: &mut World) {
    let a = Almacen::start(w, 1);
    let hot = add_book(w, "hot", 1000);
    let cold = add_book(w, "cold", 10);
    let backlog = 80;
    let mut bodies: Vec<Value> = (0..backlog)
        .map(|i| loan(&hot, &format!("h{i}"), &format!("hot-{hot}-{i}")))
        .collect();
    bodies.push(loan(&cold, "c", &format!("cold-{cold}")));
    let r = queued_behind_a_blocker(w, &a, bodies);
    for (v, _) in &r {
        assert_ok(v, "every request of the backlog");
    }
    // Transaction ids say what ran before what: the cold book's loan came
    // after the whole hot backlog, but ran after at most one bounded batch
    // of it, not after all of it.
    let cold_xid = num(
        w,
        &format!("SELECT xmin::text::bigint FROM prestamos WHERE isbn = '{cold}'"),
    );
    let hot_before = num(
        w,
        &format!("SELECT count(*) FROM prestamos WHERE isbn = '{hot}' AND xmin::text::bigint < {cold_xid}"),
    );
    assert!(
        hot_before <= 32,
        "{hot_before} of the hot book's {backlog} loans ran before the cold book's one"
    );
    assert!(hot_before > 0, "the hot book's backlog did not run first");
    let batches = num(
        w,
        &format!("SELECT count(DISTINCT xmin::text) FROM prestamos WHERE isbn = '{hot}'"),
    );
    assert!(
        (3..backlog as i64).contains(&batches),
        "{backlog} hot loans in {batches} transactions: batches are bounded and shared"
    );
}

pub fn reads_are_not_stuck_behind_writes(w: &mut World) {
    let a = Almacen::start(w, 2);
    let book = add_book(w, "busy", 10);
    let mut c = session(w);
    let t = lock_book(&mut c, &book);
    let writes: Vec<_> = (0..5)
        .map(|i| a.send(loan(&book, &format!("r{i}"), &format!("busy-{book}-{i}"))))
        .collect();
    // One write alone or several arriving together (a batch): either
    // way the book's writes stall a worker.
    wait_for_lock_waiter(w, "%biblioteca_%");
    a.wait_in_flight(5);
    // The book's writes hold one worker (stalled) and the queue; the read
    // goes to the other worker while the lock is still held.
    let read = a.send(json!({"operacion": "consulta", "isbn": book}));
    let (v, _) = read.join().unwrap();
    assert_ok(&v, "a read while the book's writes wait");
    assert_eq!(v["datos"]["ejemplares_disponibles"], json!(10));
    t.commit().unwrap();
    for (v, _) in replies(writes) {
        assert_ok(&v, "the writes once the lock is gone");
    }
    assert_eq!(
        num(
            w,
            &format!("SELECT ejemplares FROM libros WHERE isbn = '{book}'")
        ),
        5
    );
}

pub fn backend_terminated_mid_batch(w: &mut World) {
    let a = Almacen::start(w, 1);
    let blocker = add_book(w, "blocker", 10);
    let book = add_book(w, "terminated", 3);
    let other = add_book(w, "alongside", 5);
    let mut bodies: Vec<Value> = (0..6)
        .map(|i| loan(&book, &format!("t{i}"), &format!("term-{book}-{i}")))
        .collect();
    let dup = format!("term-{book}-0");
    bodies.push(loan(&book, "t0", &dup));
    // Another book's writes share the batch (and its fate).
    bodies.push(loan(&other, "o1", &format!("term-{other}-1")));
    bodies.push(loan(&other, "o2", &format!("term-{other}-2")));

    let mut c1 = session(w);
    let mut c2 = session(w);
    let t1 = lock_book(&mut c1, &blocker);
    let t2 = lock_book(&mut c2, &book);
    let first = a.send(loan(&blocker, "blocker", &format!("blk-{blocker}")));
    wait_for_lock_waiter(w, "%biblioteca_prestamo%");
    let handles: Vec<_> = bodies.iter().map(|b| a.send(b.clone())).collect();
    a.wait_in_flight(1 + bodies.len() as u64);
    t1.commit().unwrap();
    assert_ok(&first.join().unwrap().0, "the blocker's loan");
    // The worker now runs the book's batch and waits for the book's lock.
    let pid = wait_for_lock_waiter(w, "%biblioteca_lote%");
    assert_eq!(
        sql(w.primary(), &format!("SELECT pg_terminate_backend({pid})")),
        "t"
    );
    // Let the batch's retry wait for the lock too, then release it.
    std::thread::sleep(Duration::from_millis(300));
    t2.commit().unwrap();
    let r = replies(handles);
    for (v, _) in &r[7..] {
        assert_ok(v, "the other book's loans in the terminated batch");
    }
    assert_eq!(
        num(
            w,
            &format!("SELECT count(*) FROM prestamos WHERE isbn = '{other}'")
        ),
        2,
        "the other book's loans were lost or applied twice"
    );
    let r7 = r[..7].to_vec();
    let winners: Vec<&Value> = r7
        .iter()
        .map(|(v, _)| v)
        .filter(|v| v["exito"] == json!(true))
        .collect();
    for (v, _) in &r7 {
        if v["exito"] != json!(true) {
            assert_err(v, "SinEjemplaresDisponibles", "after the terminated batch");
        }
    }
    // Three copies: three distinct loans, the duplicate id replayed.
    assert_eq!(r[0].0, r[6].0, "the duplicated id's replies differ");
    assert_eq!(
        winners.len(),
        3 + usize::from(r[0].0["exito"] == json!(true))
    );
    assert_eq!(
        num(
            w,
            &format!("SELECT ejemplares FROM libros WHERE isbn = '{book}'")
        ),
        0
    );
    assert_eq!(
        num(
            w,
            &format!("SELECT count(*) FROM prestamos WHERE isbn = '{book}'")
        ),
        3
    );
    assert_eq!(
        num(
            w,
            &format!("SELECT count(*) FROM solicitudes WHERE isbn = '{book}'")
        ),
        6,
        "every id stored exactly once"
    );
    let log = std::fs::read_to_string(a.service.spec().log_path()).unwrap();
    assert!(
        log.contains("connection lost during a batch"),
        "the terminated batch was not retried on a fresh connection:\n{log}"
    );
    // The same ids again: the stored replies, nothing applied twice.
    let again = replies(bodies.into_iter().map(|b| a.send(b)).collect());
    for ((first, _), (second, _)) in r.iter().zip(&again) {
        assert_eq!(first, second, "a retry under the same id changed the reply");
    }
    assert_eq!(
        num(
            w,
            &format!("SELECT count(*) FROM prestamos WHERE isbn = '{book}'")
        ),
        3
    );
}
