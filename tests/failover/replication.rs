//! Losing a standby: quorum commit over two standbys, one standby in
//! `estricta` (writes wait) and in `disponible` (the degraded mode), and
//! `promote` after writes acknowledged while degraded.

use std::time::{Duration, Instant};

use biblioteca_cluster::{wait_until, Node};
use biblioteca_failover::storage::query_status;
use biblioteca_protocol::config::ReplicationMode;
use biblioteca_protocol::Operacion;
use serde_json::Value;

use crate::env::{peticion, serial, sql, Env, DEGRADAR_TRAS, ISBNS};
use crate::load::{check_nothing_lost, pause, Load, Outcome};

fn replicacion(env: &Env) -> Value {
    query_status(&env.ports.storage_endpoint(), Duration::from_secs(2))
        .unwrap()
        .map(|s| s.raw["datos"]["replicacion"].clone())
        .unwrap_or(Value::Null)
}

fn wait_estado(env: &Env, want: &str, timeout: Duration) {
    wait_until(timeout, &format!("replicacion {want}"), || {
        Ok(replicacion(env)["estado"] == want)
    })
    .unwrap_or_else(|e| panic!("{e}: {}", replicacion(env)));
}

/// `state|sync_state` of `standby` in `primary`'s pg_stat_replication.
fn repl_state(primary: &Node, standby: &str) -> String {
    sql(
        primary,
        &format!("SELECT state || '|' || sync_state FROM pg_stat_replication WHERE application_name = '{standby}'"),
    )
}

fn p99(secs: &mut [f64]) -> f64 {
    secs.sort_by(f64::total_cmp);
    secs.get(secs.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or(0.0)
}

fn during(outcomes: &[Outcome], from: Instant, to: Instant) -> Vec<&Outcome> {
    outcomes
        .iter()
        .filter(|o| o.sent >= from && o.sent < to)
        .collect()
}

/// Three nodes, `ANY 1 (standby1, standby2)`: one standby killed under
/// load costs no write and no wait; then the primary is killed, the most
/// advanced standby promoted, and the other follows it synchronously.
#[test]
fn quorum_loses_a_standby_then_the_primary() {
    let _g = serial();
    let env = Env::with("quorum", 7, 2, ReplicationMode::Estricta);
    let [s1, s2] = [&env.cluster.standbys()[0], &env.cluster.standbys()[1]];
    assert_eq!(repl_state(env.primary(), &s1.name), "streaming|quorum");
    let load = Load::start(&env, "q", 4);
    pause(3);
    let before_fault = Instant::now();
    s2.kill9().unwrap();
    println!("{} killed (SIGKILL)", s2.name);
    pause(5);
    let fault_end = Instant::now();
    s2.start().unwrap();
    wait_until(Duration::from_secs(30), "standby2 back", || {
        Ok(repl_state(env.primary(), &s2.name) == "streaming|quorum")
    })
    .unwrap();
    pause(1);
    env.primary().kill9().unwrap();
    println!("primary killed (SIGKILL)");
    pause(1);
    let (ok, out) = env.failover(&["promote"]);
    assert!(ok, "{out}");
    pause(3);
    let (outcomes, copies_before) = load.stop();

    let normal: Vec<f64> = during(
        &outcomes,
        before_fault - Duration::from_secs(3),
        before_fault,
    )
    .iter()
    .map(|o| o.secs)
    .collect();
    let fault = during(&outcomes, before_fault, fault_end);
    let mut fault_secs: Vec<f64> = fault.iter().map(|o| o.secs).collect();
    let worst = fault_secs.iter().copied().fold(0.0, f64::max);
    println!(
        "standby killed: {} requests during the fault, p99 {:.3}s (before: p99 {:.3}s), slowest {:.3}s",
        fault.len(),
        p99(&mut fault_secs),
        p99(&mut normal.clone()),
        worst
    );
    assert!(fault.len() > 10, "the load made too little progress");
    let failed: Vec<&str> = fault
        .iter()
        .filter(|o| o.failed)
        .map(|o| o.id.as_str())
        .collect();
    assert!(
        failed.is_empty(),
        "writes failed while a standby was down: {failed:?}"
    );
    assert!(
        worst < 2.0,
        "a write waited {worst:.3}s with one standby down"
    );

    let promoted = if out.contains(&format!("promoting {} in place", s1.name)) {
        (s1, s2)
    } else {
        (s2, s1)
    };
    let (new, other) = promoted;
    println!("promoted {}, {} follows", new.name, other.name);
    check_nothing_lost(new, &outcomes, &copies_before);
    wait_until(
        Duration::from_secs(30),
        "the other standby to follow",
        || {
            let s = repl_state(new, &other.name);
            Ok(s == "streaming|quorum" || s == "streaming|sync")
        },
    )
    .unwrap();
    assert!(
        env.request(Operacion::Prestamo, ISBNS[0], "tras_quorum")
            .exito
    );
    let (ok, status) = env.failover(&["status"]);
    assert!(ok, "{status}");
    assert!(
        status.contains("quorum") || status.contains(" sync"),
        "{status}"
    );
}

/// One standby, `estricta`: writes wait while it is gone and resume when
/// it returns; nothing lost, nothing applied twice.
#[test]
fn strict_mode_waits_for_the_standby() {
    let _g = serial();
    let env = Env::new("strict", 8);
    let load = Load::start(&env, "e", 4);
    pause(2);
    env.standby().kill9().unwrap();
    let killed = Instant::now();
    pause(6);
    assert_eq!(
        replicacion(&env)["estado"],
        "sincrona",
        "estricta never degrades"
    );
    let back = Instant::now();
    env.standby().start().unwrap();
    pause(5);
    let (outcomes, copies_before) = load.stop();
    let acked_while_gone = outcomes
        .iter()
        .filter(|o| o.exito && o.sent >= killed + Duration::from_secs(1) && o.sent < back)
        .filter(|o| o.sent + Duration::from_secs_f64(o.secs) < back)
        .count();
    assert_eq!(
        acked_while_gone, 0,
        "a write was acknowledged without the standby"
    );
    let after = outcomes.iter().filter(|o| o.exito && o.sent > back).count();
    println!("{after} writes acknowledged after the standby returned");
    assert!(after > 0, "writes did not resume");
    check_nothing_lost(env.primary(), &outcomes, &copies_before);
}

/// One standby, `disponible`: writes resume within degradar_tras + 2 s of
/// its death, synchronous replication comes back after it returns, every
/// change is in status and eventos_failover; degrade/restore by hand too.
#[test]
fn available_mode_degrades_and_restores() {
    let _g = serial();
    let env = Env::with("avail", 10, 1, ReplicationMode::Disponible);
    assert_eq!(replicacion(&env)["estado"], "sincrona");
    let load = Load::start(&env, "d", 4);
    pause(2);
    env.standby().kill9().unwrap();
    let killed = Instant::now();
    let mut client = env.client(10_000);
    let mut n = 0;
    let resumed = loop {
        n += 1;
        let r = client.request(&peticion(
            Operacion::Prestamo,
            ISBNS[n % 4],
            &format!("resume{n}"),
            Some(format!("resume{n}")),
        ));
        if matches!(&r, Ok(r) if r.exito) {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "writes never resumed: {r:?}"
        );
    };
    println!(
        "a fresh loan succeeded {:.2}s after the standby died",
        resumed.as_secs_f64()
    );
    assert!(
        resumed <= DEGRADAR_TRAS + Duration::from_secs(2),
        "writes resumed only after {resumed:?}"
    );
    wait_estado(&env, "degradada", Duration::from_secs(5));
    let (_, status) = env.failover(&["status"]);
    assert!(
        status.contains("replication: degradada (automatica"),
        "{status}"
    );
    pause(2);
    env.standby().start().unwrap();
    wait_estado(&env, "sincrona", Duration::from_secs(30));
    wait_until(Duration::from_secs(10), "sync again", || {
        Ok(repl_state(env.primary(), "standby") == "streaming|sync")
    })
    .unwrap();
    let (_, status) = env.failover(&["status"]);
    assert!(
        status.contains("replication: sincrona (replicacion = disponible)"),
        "{status}"
    );
    pause(2);
    let (outcomes, copies_before) = load.stop();
    check_nothing_lost(env.primary(), &outcomes, &copies_before);

    let (ok, out) = env.failover(&["degrade"]);
    assert!(ok && out.contains("replication is degradada"), "{out}");
    assert_eq!(replicacion(&env)["motivo"], "manual");
    assert!(env.request(Operacion::Prestamo, ISBNS[1], "manual").exito);
    pause(3);
    assert_eq!(replicacion(&env)["estado"], "degradada", "manual holds");
    let (ok, out) = env.failover(&["restore"]);
    assert!(ok && out.contains("sincrona again"), "{out}");
    let events = sql(
        env.primary(),
        "SELECT string_agg(evento, ',' ORDER BY id) FROM eventos_failover WHERE evento <> 'failover'",
    );
    println!("eventos_failover: {events}");
    assert_eq!(events, "degradada,sincrona,degradada,sincrona");
}

/// Writes acknowledged while degraded exist only on the old primary: a
/// promotion of the standby is refused, and with --allow-data-loss it says
/// what was lost.
#[test]
fn promote_after_degraded_writes() {
    let _g = serial();
    let env = Env::with("lossy", 11, 1, ReplicationMode::Disponible);
    assert!(env.request(Operacion::Prestamo, ISBNS[0], "antes").exito);
    env.standby().kill9().unwrap();
    wait_estado(&env, "degradada", Duration::from_secs(15));
    for i in 0..3 {
        let r = env.request(Operacion::Prestamo, ISBNS[i + 1], &format!("degradado{i}"));
        assert!(r.exito, "{r:?}");
    }
    assert!(replicacion(&env)["escrituras_degradadas"].as_u64().unwrap() >= 3);
    env.primary().kill9().unwrap();
    env.standby().start().unwrap();
    let (ok, out) = env.failover(&["promote"]);
    assert!(!ok, "promote must refuse:\n{out}");
    let line = out
        .lines()
        .find(|l| l.contains("refusing to promote standby"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("writes were acknowledged in degraded mode")
            && line.contains("--allow-data-loss would lose")
            && line.contains("writes acknowledged by primary"),
        "{line}"
    );
    assert_eq!(sql(env.standby(), "SELECT pg_is_in_recovery()"), "t");

    let (ok, out) = env.failover(&["promote", "--allow-data-loss"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("LOST:") && out.contains("writes acknowledged by primary"),
        "{out}"
    );
    assert_eq!(
        sql(
            env.standby(),
            "SELECT count(*) FROM prestamos WHERE usuario LIKE 'degradado%'"
        ),
        "0",
        "the loans reported lost are indeed missing"
    );
    assert_eq!(
        sql(
            env.standby(),
            "SELECT count(*) FROM prestamos WHERE usuario = 'antes'"
        ),
        "1"
    );
}

/// Planned switchover with two standbys: the most advanced standby takes
/// over, the other follows it, the old primary is rejoined, and commits
/// wait for a quorum of both again.
#[test]
fn switchover_with_two_standbys() {
    let _g = serial();
    let env = Env::with("switch3", 12, 2, ReplicationMode::Estricta);
    assert!(env.request(Operacion::Prestamo, ISBNS[0], "antes").exito);
    let (ok, out) = env.failover(&["switchover"]);
    assert!(ok, "{out}");
    let new = &env.cluster.standbys()[0];
    assert_eq!(sql(new, "SELECT pg_is_in_recovery()"), "f", "{out}");
    for follower in ["primary", "standby2"] {
        wait_until(Duration::from_secs(30), follower, || {
            Ok(repl_state(new, follower) == "streaming|quorum")
        })
        .unwrap_or_else(|e| panic!("{follower}: {e}: {}", repl_state(new, follower)));
    }
    assert!(env.request(Operacion::Prestamo, ISBNS[1], "despues").exito);
    for n in env.cluster.nodes() {
        wait_until(Duration::from_secs(10), "replicated", || {
            Ok(sql(
                n,
                "SELECT count(*) FROM prestamos WHERE usuario IN ('antes', 'despues')",
            ) == "2")
        })
        .unwrap_or_else(|e| panic!("{}: {e}", n.name));
    }
}
