//! Exactly-once: the last copy raced by twenty clients, the same request id
//! sent twice and concurrently, and two actors serving one topic.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use biblioteca_protocol::Operacion;
use serde_json::{json, Value};

use crate::common::{assert_err, assert_ok, field, request, sql, World};

/// Adds a book with `copies` copies straight into the catalogue.
fn add_book(w: &World, isbn: &str, copies: i64) {
    sql(
        w.primary(),
        &format!(
            "INSERT INTO libros (isbn, titulo, autor, ejemplares) \
             VALUES ('{isbn}', 'Libro de prueba {isbn}', 'e2e', {copies})"
        ),
    );
}

fn copies(w: &World, isbn: &str) -> i64 {
    sql(
        w.primary(),
        &format!("SELECT ejemplares FROM libros WHERE isbn = '{isbn}'"),
    )
    .parse()
    .unwrap()
}

fn count(w: &World, query: &str) -> i64 {
    sql(w.primary(), query).parse().unwrap()
}

/// Sends every body at once, each from its own thread and socket.
fn concurrently(w: &World, bodies: Vec<Value>) -> Vec<Value> {
    let barrier = Arc::new(Barrier::new(bodies.len()));
    let endpoint = w.frontend();
    let handles: Vec<_> = bodies
        .into_iter()
        .map(|body| {
            let (ctx, barrier, endpoint) = (w.ctx.clone(), barrier.clone(), endpoint.clone());
            std::thread::spawn(move || {
                let bytes = serde_json::to_vec(&body).unwrap();
                barrier.wait();
                request(&ctx, &endpoint, &bytes, Duration::from_secs(20))
                    .unwrap_or_else(|| panic!("no reply to {body}"))
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

pub fn last_copy_race(w: &mut World) {
    let isbn = "978-9990000001";
    add_book(w, isbn, 1);
    let bodies = (0..20)
        .map(|i| json!({"operacion": "prestamo", "isbn": isbn, "usuario": format!("carrera_{i}")}))
        .collect();
    let replies = concurrently(w, bodies);
    let winners: Vec<&Value> = replies
        .iter()
        .filter(|r| r["exito"] == json!(true))
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one loan of the last copy: {replies:#?}"
    );
    for r in replies.iter().filter(|r| r["exito"] != json!(true)) {
        assert_err(r, "SinEjemplaresDisponibles", "losers of the race");
    }
    assert_eq!(copies(w, isbn), 0);
    let holder = sql(
        w.primary(),
        &format!("SELECT usuario FROM prestamos WHERE isbn = '{isbn}' AND estado = 'ACTIVO'"),
    );
    assert_eq!(holder.lines().count(), 1, "{holder}");
    assert_eq!(
        json!(holder),
        winners[0]["datos"]["usuario"],
        "{:?}",
        winners[0]
    );
}

pub fn same_id_twice(w: &mut World) {
    let isbn = "978-9990000002";
    add_book(w, isbn, 50);
    let id = "e2e-idem-1";
    let first = w.op_id("prestamo", isbn, "idem_a", id);
    assert_ok(&first, "first send");
    assert_eq!(field(&first, "id"), &json!(id));
    let second = w.op_id("prestamo", isbn, "idem_a", id);
    assert_eq!(first, second, "a repeated id gets the stored reply");
    assert_eq!(copies(w, isbn), 49);
    assert_eq!(
        count(w, "SELECT count(*) FROM prestamos WHERE usuario = 'idem_a'"),
        1
    );
    assert_eq!(
        count(
            w,
            &format!("SELECT count(*) FROM solicitudes WHERE id = '{id}'")
        ),
        1
    );

    // The same id with other content is still that request: no new effect.
    let reused = w.op_id("prestamo", isbn, "idem_otro", id);
    assert_eq!(
        count(
            w,
            "SELECT count(*) FROM prestamos WHERE usuario = 'idem_otro'"
        ),
        0,
        "reply to a reused id: {reused}"
    );
    assert_eq!(copies(w, isbn), 49);

    // The storage manager can tell the stored outcome.
    let stored = request(
        &w.ctx,
        &w.storage(),
        json!({"operacion": "resultado", "id": id})
            .to_string()
            .as_bytes(),
        Duration::from_secs(10),
    )
    .expect("no reply from the storage manager");
    assert_ok(&stored, "resultado lookup");
    assert_eq!(stored["id"], json!(id), "{stored}");
    assert_eq!(stored["datos"], first["datos"], "{stored}");

    // A return sent twice is one return.
    let d1 = w.op_id("devolucion", isbn, "idem_a", "e2e-idem-dev");
    assert_ok(&d1, "return");
    let d2 = w.op_id("devolucion", isbn, "idem_a", "e2e-idem-dev");
    assert_eq!(d1, d2);
    assert_eq!(copies(w, isbn), 50);
}

pub fn same_id_concurrently(w: &mut World) {
    let isbn = "978-9990000003";
    add_book(w, isbn, 50);
    let body =
        json!({"operacion": "prestamo", "isbn": isbn, "usuario": "idem_b", "id": "e2e-idem-2"});
    let replies = concurrently(w, vec![body; 6]);
    assert_ok(&replies[0], "concurrent same id");
    for r in &replies[1..] {
        assert_eq!(r, &replies[0], "identical replies for one id");
    }
    assert_eq!(copies(w, isbn), 49);
    assert_eq!(
        count(w, "SELECT count(*) FROM prestamos WHERE usuario = 'idem_b'"),
        1
    );
}

pub fn two_loan_actors(w: &mut World) {
    let isbn = "978-9990000004";
    add_book(w, isbn, 50);
    let before = w.stack.actors.len();
    w.stack
        .add_actor(Operacion::Prestamo)
        .unwrap_or_else(|e| panic!("second loan actor: {e}"));
    // Let the new subscriber join (re-publication would cover it anyway).
    std::thread::sleep(Duration::from_millis(1500));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let r = w.op("prestamo", isbn, "dos_actores");
        assert_ok(&r, "loan with two actors");
        let id = r["id"].as_str().unwrap().to_string();
        assert_eq!(
            count(
                w,
                "SELECT count(*) FROM prestamos WHERE usuario = 'dos_actores'"
            ),
            1
        );
        assert_eq!(
            count(
                w,
                &format!("SELECT count(*) FROM solicitudes WHERE id = '{id}'")
            ),
            1
        );
        let bodies = (0..10)
            .map(|i| json!({"operacion": "prestamo", "isbn": isbn, "usuario": format!("dos_actores_{i}")}))
            .collect();
        for r in concurrently(w, bodies) {
            assert_ok(&r, "concurrent loans with two actors");
        }
        assert_eq!(
            count(
                w,
                "SELECT count(*) FROM prestamos WHERE usuario LIKE 'dos_actores%'"
            ),
            11
        );
        assert_eq!(copies(w, isbn), 39);
    }));
    // Back to one actor per operation for the cases after this one.
    while w.stack.actors.len() > before {
        if let Some((_, mut svc)) = w.stack.actors.pop() {
            let _ = svc.stop();
        }
    }
    if let Err(e) = outcome {
        std::panic::resume_unwind(e);
    }
}
