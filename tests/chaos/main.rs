//! Chaos test of the messaging layer.
//!
//! One synchronous primary/standby pair and every service as a real process
//! (ports in 28000-29999, clear of the other suites). Client threads run
//! loan / renew / return sessions with explicit request ids while a fault
//! driver, in turn with healthy traffic in between, kill -9s and restarts the
//! loan actor, the load manager and the storage manager, and freezes the
//! storage manager and the load manager with SIGSTOP for a few seconds. Then
//! the checker (the biblioteca-history crate, tests/history) resolves every
//! request the clients gave up on and replays the history against the
//! database; the per-fault table is printed whatever the result.
//!
//! `CHAOS_SEED=n` replays a workload; a failing run keeps its directory
//! (services' logs, PostgreSQL logs) and says where; `CHAOS_KEEP=1` keeps
//! it anyway, `CHAOS_VERBOSE=1` lists every retried or unknown request.
//! `CHAOS_SABOTAGE=1` corrupts the database the way the bugs this test hunts
//! would (a renewal applied twice, an acknowledged write lost, a copy out of
//! thin air, a loan for a refused request) before checking: the run must
//! then fail and name each one.

// Test code: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use biblioteca_history::snapshot::Snapshot;
use biblioteca_history::{checker, now_ms, report, resolve, workload};

use biblioteca_client::pirate::Client;
use biblioteca_cluster::{Cluster, ClusterSpec, Node, OWNER_USER};
use biblioteca_protocol::catalogue;
use biblioteca_protocol::config::ClientConfig;
use biblioteca_protocol::Operacion;
use biblioteca_stack::launch::{port_in_use, Service};
use biblioteca_stack::{Stack, StackPorts, StackSpec};

use report::{emit, Fault};
use workload::{Plan, Workload};

const BOOKS: u64 = 20;
// Sessions that end without a return (by design, or cut short by an unknown
// outcome) keep their copy; with a few copies per book the stock runs dry
// within a minute and every later loan is a business refusal.
const COPIES: i32 = 1000;
/// Half of them patient, half impatient ([`workload::IMPATIENT`]).
const CLIENTS: usize = 12;
/// Healthy traffic before the first fault and after each one.
const HEALTHY: Duration = Duration::from_secs(5);
/// How long a killed process stays down before its restart: longer than the
/// impatient clients' budget, so some requests are lost with the process and
/// must be resolved as never applied; shorter than the load manager's actor
/// timeout (3 s), so a killed actor is not yet written off.
const DOWN: Duration = Duration::from_millis(2500);
/// How long a process stays frozen by SIGSTOP.
const FROZEN: Duration = Duration::from_secs(3);
/// The load manager's per-request deadline: shorter than the clients' try
/// timeout, so clients also meet transient replies, not only silence.
const DEADLINE_MS: u64 = 1500;
/// After the clients stop, before resolving: stragglers inside the services
/// land (the resolution does not depend on it, the counts look saner).
const SETTLE: Duration = Duration::from_secs(3);

/// `n` distinct free ports in 28000..30000, from an offset of this process.
fn pick_ports(n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    let start = 28_000 + (std::process::id() % 200) as u16 * 10;
    for k in 0..2000u16 {
        let p = 28_000 + (start - 28_000 + k) % 2000;
        if !port_in_use(p) && !out.contains(&p) {
            out.push(p);
            if out.len() == n {
                return out;
            }
        }
    }
    panic!("fewer than {n} free ports in 28000-29999");
}

fn seed_value() -> u64 {
    std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

fn sql(node: &Node, q: &str) -> String {
    node.sql(q).unwrap_or_else(|e| panic!("SQL {q}: {e}"))
}

/// Starts every request id and user name of the workload.
const PREFIX: &str = "ch";

fn snapshot(node: &Node) -> Snapshot {
    Snapshot::read(|q| node.sql(q)).unwrap_or_else(|e| panic!("snapshot of {}: {e}", node.name))
}

/// Waits until the load manager sees a live actor for every write operation.
fn wait_for_actors(frontend: &str, timeout: Duration) {
    let mut c = Client::new(ClientConfig {
        endpoints: vec![frontend.to_string()],
        timeout: Duration::from_millis(1000),
        retries: 1,
        curve: None,
    })
    .unwrap();
    let t = Instant::now();
    while t.elapsed() < timeout {
        if let Ok(r) = c.raw(br#"{"operacion":"status"}"#) {
            let alive = |op: Operacion| r.datos["actores"][op.as_str()]["vivos"].as_u64() > Some(0);
            if Operacion::WRITES.iter().all(|op| alive(*op)) {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the load manager saw no live actor for every operation within {timeout:?}");
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Kill,
    Freeze,
}

/// Injects one fault into `svc` and returns when the process is back.
fn inject(svc: &mut Service, kind: Kind, affects: Option<Operacion>) -> Fault {
    let start = now_ms();
    let name = match kind {
        Kind::Kill => {
            svc.kill9().unwrap();
            std::thread::sleep(DOWN);
            svc.restart()
                .unwrap_or_else(|e| panic!("restarting {}: {e}", svc.name()));
            format!("kill -9 {}", svc.name())
        }
        Kind::Freeze => {
            svc.sigstop().unwrap();
            std::thread::sleep(FROZEN);
            svc.sigcont().unwrap();
            format!("SIGSTOP {} {}s", svc.name(), FROZEN.as_secs())
        }
    };
    Fault {
        name,
        start,
        end: now_ms(),
        affects,
    }
}

/// What a lost write, a double application or a leak would leave behind.
fn sabotage(node: &Node, history: &[workload::Entry]) {
    let acked_return = history
        .iter()
        .find(|e| e.op == Operacion::Devolucion && e.ok())
        .expect("an acknowledged return");
    // A refused loan when the stock ran dry somewhere, else any refused
    // write (a third renewal): a loan row carrying its id is as wrong.
    let refused_loan = history
        .iter()
        .find(|e| e.op == Operacion::Prestamo && e.definitive() && !e.ok())
        .or_else(|| {
            history
                .iter()
                .find(|e| e.op.is_write() && e.definitive() && !e.ok())
        })
        .expect("a refused write");
    // As the schema owner: `app` may not delete rows.
    let sql = |node: &Node, q: &str| {
        node.sql_as(OWNER_USER, "library", q)
            .unwrap_or_else(|e| panic!("SQL {q}: {e}"))
    };
    sql(
        node,
        &format!(
            "UPDATE prestamos SET renovaciones = renovaciones + 1 WHERE id = \
               (SELECT min(id) FROM prestamos WHERE usuario LIKE 'ch%' AND renovaciones < 2); \
             DELETE FROM solicitudes WHERE id = '{}'; \
             UPDATE libros SET ejemplares = ejemplares + 1 WHERE isbn = '{}'; \
             INSERT INTO prestamos (isbn, usuario, fecha_devolucion, estado, solicitud) \
               VALUES ('{}', '{}', CURRENT_DATE, 'DEVUELTO', '{}')",
            acked_return.id,
            refused_loan.isbn,
            refused_loan.isbn,
            refused_loan.usuario,
            refused_loan.id
        ),
    );
    emit(&format!(
        "chaos: SABOTAGE: renewal doubled, {} deleted from solicitudes, a copy of {} added, \
         a loan for refused {} inserted\n",
        acked_return.id, refused_loan.isbn, refused_loan.id
    ));
}

/// Stops the database servers but leaves their files and every log behind.
fn keep_for_inspection(dir: &Path, cluster: &mut Cluster) -> PathBuf {
    let _ = cluster.stop();
    cluster.set_keep(true);
    dir.to_path_buf()
}

#[test]
fn faults_in_turn_keep_the_history_consistent() {
    let began = Instant::now();
    let seed = seed_value();
    let dir = std::env::temp_dir().join(format!("bib-chaos-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let p = pick_ports(6);
    let mut cluster = Cluster::create(ClusterSpec {
        dir: dir.join("pg"),
        primary_port: p[0],
        standby_port: p[1],
        synchronous: true,
        standbys: 1,
        quorum: 1,
        keep: false,
    })
    .unwrap_or_else(|e| panic!("cluster: {e}"));
    let ports = StackPorts {
        frontend: p[2],
        publisher: p[3],
        backchannel: p[4],
        storage: p[5],
    };
    let mut spec = StackSpec::new(
        dir.join("run"),
        ports,
        &cluster.primary().conninfo("app", "library"),
        &cluster.standby().conninfo("app", "library"),
    );
    spec.deadline = Duration::from_millis(DEADLINE_MS);
    let mut stack = Stack::start(spec).unwrap_or_else(|e| panic!("services: {e}"));
    let primary = cluster.primary().clone();
    let isbns: Vec<String> = (1..=BOOKS).map(catalogue::isbn).collect();
    sql(
        &primary,
        &format!(
            "INSERT INTO libros (isbn, titulo, autor, ejemplares) \
             SELECT i, 'Chaos ' || i, 'Jepsen', {COPIES} FROM unnest(ARRAY['{}']) AS i",
            isbns.join("','")
        ),
    );
    let initial = snapshot(&primary).copies;
    wait_for_actors(&ports.frontend_endpoint(), Duration::from_secs(15));
    emit(&format!(
        "chaos: seed {seed}, {CLIENTS} clients, {BOOKS} books x {COPIES} copies, setup {:.1}s, dir {}\n",
        began.elapsed().as_secs_f64(),
        dir.display()
    ));

    let plan = Plan {
        endpoints: vec![ports.frontend_endpoint()],
        curve: None,
        prefix: PREFIX.into(),
        isbns,
        seed,
        budgets: vec![workload::PATIENT, workload::IMPATIENT],
    };
    let workload = Workload::start(&plan, CLIENTS).unwrap();
    std::thread::sleep(HEALTHY);
    let mut faults = Vec::new();
    let actor = stack.actor(Operacion::Prestamo).unwrap();
    faults.push(inject(actor, Kind::Kill, Some(Operacion::Prestamo)));
    std::thread::sleep(HEALTHY);
    faults.push(inject(&mut stack.carga, Kind::Kill, None));
    std::thread::sleep(HEALTHY);
    faults.push(inject(&mut stack.storage, Kind::Kill, None));
    std::thread::sleep(HEALTHY);
    faults.push(inject(&mut stack.storage, Kind::Freeze, None));
    std::thread::sleep(HEALTHY);
    faults.push(inject(&mut stack.carga, Kind::Freeze, None));
    std::thread::sleep(HEALTHY);
    let history = workload.finish();
    std::thread::sleep(SETTLE);

    let mut crashed: Vec<String> = Vec::new();
    for svc in [&mut stack.storage, &mut stack.carga]
        .into_iter()
        .chain(stack.actors.iter_mut().map(|(_, s)| s))
    {
        if !svc.is_running() {
            crashed.push(format!("{} is not running after the faults", svc.name()));
        }
    }
    let resolved = resolve::resolve(&[ports.storage_endpoint()], None, &history).unwrap();
    if std::env::var_os("CHAOS_SABOTAGE").is_some() {
        sabotage(&primary, &history);
    }
    let mut violations: Vec<String> = checker::check(
        &snapshot(&primary),
        &[],
        PREFIX,
        &history,
        &resolved,
        &initial,
    )
    .iter()
    .map(ToString::to_string)
    .collect();
    violations.extend(crashed);
    let rows = report::table(&faults, &history, &resolved);
    for r in &rows[1..rows.len() - 1] {
        if r.recover.is_none_or(|d| d > Duration::from_secs(15)) {
            violations.push(format!(
                "{}: no recovery within 15 s ({:?})",
                r.name, r.recover
            ));
        }
    }
    emit(&format!(
        "\nchaos history: {} requests in {:.1}s (whole test {:.1}s)\n{}{}",
        history.len(),
        history
            .last()
            .map_or(0.0, |e| e.end.saturating_sub(history[0].start) as f64
                / 1000.0),
        began.elapsed().as_secs_f64(),
        report::render(&rows),
        report::unknown_causes(&history)
    ));
    if std::env::var_os("CHAOS_VERBOSE").is_some() {
        for (e, r) in history.iter().zip(&resolved) {
            if e.tries > 1 || !e.definitive() {
                emit(&format!(
                    "  {} {} {} {} +{}ms {}ms tries={} {:?} -> {}\n",
                    e.id,
                    e.op,
                    e.isbn,
                    e.usuario,
                    e.start.saturating_sub(history[0].start),
                    e.end.saturating_sub(e.start),
                    e.tries,
                    e.transient_texts,
                    r.brief()
                ));
            }
        }
    }
    if !violations.is_empty() || std::env::var_os("CHAOS_KEEP").is_some() {
        stack.stop();
        let kept = keep_for_inspection(&dir, &mut cluster);
        if violations.is_empty() {
            emit(&format!("chaos: kept {}\n", kept.display()));
            return;
        }
        let shown: Vec<&String> = violations.iter().take(40).collect();
        panic!(
            "{} invariant violation(s) (seed {seed}; logs kept in {}):\n{}",
            violations.len(),
            kept.display(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    drop(stack);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
