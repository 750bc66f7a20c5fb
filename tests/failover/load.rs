//! Client threads doing loans, renewals and returns through the load manager
//! with recorded request ids, and the checks that nothing acknowledged was
//! lost and nothing was applied twice.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use biblioteca_cluster::Node;
use biblioteca_protocol::Operacion;

use crate::env::{copies, peticion, sql, Env, ISBNS};

#[derive(Debug, Clone)]
pub struct Outcome {
    pub id: String,
    pub op: Operacion,
    pub usuario: String,
    pub exito: bool,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    /// Each book's copies (available + on loan) before the load.
    pub copies_before: Vec<(String, i64)>,
}

impl Load {
    /// `threads` clients; client `t`'s k-th user `{tag}{t}u{k}` borrows,
    /// renews and returns one book, each request with its own id.
    pub fn start(env: &Env, tag: &str, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let copies_before = copies(env.primary());
        let handles = (0..threads)
            .map(|t| {
                let stop = stop.clone();
                let outcomes = outcomes.clone();
                let mut client = env.client(2000);
                let tag = tag.to_string();
                std::thread::spawn(move || {
                    let mut k = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let usuario = format!("{tag}{t}u{k}");
                        let isbn = ISBNS[(t + k) % ISBNS.len()];
                        for op in [
                            Operacion::Prestamo,
                            Operacion::Renovacion,
                            Operacion::Devolucion,
                        ] {
                            let id = format!("{usuario}-{op}");
                            let r = client.request(&peticion(op, isbn, &usuario, Some(id.clone())));
                            let exito = matches!(&r, Ok(r) if r.exito);
                            outcomes.lock().unwrap().push(Outcome {
                                id,
                                op,
                                usuario: usuario.clone(),
                                exito,
                            });
                        }
                        k += 1;
                    }
                })
            })
            .collect();
        Load {
            stop,
            handles,
            outcomes,
            copies_before,
        }
    }

    pub fn stop(self) -> (Vec<Outcome>, Vec<(String, i64)>) {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.handles {
            h.join().unwrap();
        }
        let outcomes = self.outcomes.lock().unwrap().clone();
        (outcomes, self.copies_before)
    }
}

/// On `primary`: every acknowledged write is stored, copies are conserved
/// per book, and no request was applied twice.
pub fn check_nothing_lost(primary: &Node, outcomes: &[Outcome], copies_before: &[(String, i64)]) {
    let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.exito).collect();
    println!(
        "{} requests, {} acknowledged with exito: true",
        outcomes.len(),
        ok.len()
    );
    assert!(ok.len() > 10, "the load made too little progress");
    let stored: HashSet<String> = sql(primary, "SELECT id FROM solicitudes")
        .lines()
        .map(str::to_string)
        .collect();
    let missing: Vec<&str> = ok
        .iter()
        .filter(|o| !stored.contains(&o.id))
        .map(|o| o.id.as_str())
        .collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    assert_eq!(copies(primary), copies_before, "copies not conserved");
    let twice = sql(
        primary,
        "SELECT usuario || ' ' || isbn FROM prestamos GROUP BY usuario, isbn HAVING count(*) > 1",
    );
    assert!(twice.is_empty(), "a loan was applied twice: {twice}");
    let renewals: HashMap<String, i64> =
        sql(primary, "SELECT usuario, renovaciones FROM prestamos")
            .lines()
            .filter_map(|l| l.split_once('|'))
            .map(|(u, r)| (u.to_string(), r.parse().unwrap()))
            .collect();
    for o in ok.iter().filter(|o| o.op == Operacion::Renovacion) {
        assert_eq!(
            renewals.get(&o.usuario),
            Some(&1),
            "renewal {} applied {:?} times",
            o.id,
            renewals.get(&o.usuario)
        );
    }
    assert!(
        renewals.values().all(|r| *r <= 1),
        "a renewal was applied twice"
    );
    let returned: HashSet<String> = sql(
        primary,
        "SELECT usuario FROM prestamos WHERE estado = 'DEVUELTO'",
    )
    .lines()
    .map(str::to_string)
    .collect();
    for o in ok.iter().filter(|o| o.op == Operacion::Devolucion) {
        assert!(returned.contains(&o.usuario), "return {} lost", o.id);
    }
}

pub fn pause(secs: u64) {
    std::thread::sleep(Duration::from_secs(secs));
}
