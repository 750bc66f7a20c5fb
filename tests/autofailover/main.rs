//! The automatic mode (`biblioteca-failover agent`) against real etcd 3.4
//! members, real PostgreSQL servers and the real services: a crashed
//! primary host is replaced with nothing acknowledged lost; short blips,
//! a lost etcd member or leader, and etcd without quorum cause no
//! failover; PostgreSQL crashing under a living agent; double faults
//! promote only with the sync record's proof.

// Test code: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The failover suite's world and load, shared as they are.
#[allow(dead_code)]
#[path = "../failover/env.rs"]
mod env;
#[allow(dead_code)]
#[path = "../failover/load.rs"]
mod load;

mod proxy;
mod world;

use std::time::{Duration, Instant};

use biblioteca_failover::storage::query_status;
use env::{serial, sql, ISBNS};
use load::{check_nothing_lost, pause, Load};
use nix::sys::signal::Signal;
use world::{World, TTL};

fn serving_from(w: &World) -> Option<String> {
    query_status(&w.env.ports.storage_endpoint(), Duration::from_secs(2))
        .ok()
        .flatten()
        .and_then(|s| s.writer)
}

fn in_recovery(w: &World, name: &str) -> Option<bool> {
    let node = w.env.cluster.nodes().into_iter().find(|n| n.name == name)?;
    node.is_in_recovery().ok()
}

/// Until the storage manager reports it writes to `node`.
fn wait_serving(w: &World, node: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while serving_from(w).as_deref() != Some(node) {
        if Instant::now() >= deadline {
            w.dump_logs();
            panic!(
                "storage manager never served from {node}: {:?}",
                serving_from(w)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Kills the primary's host: its agent and its postmaster, with SIGKILL.
fn crash_primary_host(w: &mut World) -> String {
    let primary = w.env.primary().name.clone();
    w.kill_agent(&primary);
    w.env.primary().kill9().unwrap();
    println!("{primary}'s host crashed (agent and postmaster SIGKILLed)");
    primary
}

/// Samples the leader key and the standbys' recovery state for `secs`:
/// the leader must stay `holder` and no standby may leave recovery.
fn assert_no_failover(w: &World, holder: &str, secs: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let standbys = w.standby_names();
    while Instant::now() < deadline {
        if let Some((l, _)) = w.leader() {
            assert_eq!(l.node, holder, "{what}: the leader key moved to {}", l.node);
        }
        for s in &standbys {
            assert_ne!(in_recovery(w, s), Some(false), "{what}: {s} was promoted");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        in_recovery(w, holder),
        Some(false),
        "{what}: {holder} no longer a primary"
    );
    println!("{what}: no failover in {secs}s");
}

/// kill -9 of the primary's host under load, two standbys: the most
/// advanced standby is promoted by its agent, the other follows it, the
/// storage manager follows the leader key, writes resume and every
/// acknowledged request is on the new primary, once.
#[test]
fn crashed_primary_host_is_replaced_nothing_lost() {
    let _g = serial();
    let mut w = World::start("crash", 0, 2);
    let load = Load::start(&w.env, "c", 3);
    pause(3);
    let started = Instant::now();
    let old = crash_primary_host(&mut w);
    let deadline = Instant::now() + TTL * 6;
    let new = loop {
        if let Some((l, _)) = w.leader().filter(|(l, _)| l.node != old && l.promoted) {
            break l.node;
        }
        assert!(Instant::now() < deadline, "no standby was promoted");
        std::thread::sleep(Duration::from_millis(100));
    };
    println!(
        "{new} promoted {:.1}s after the crash",
        started.elapsed().as_secs_f64()
    );
    wait_serving(&w, &new, Duration::from_secs(30));
    w.env
        .loan_until_ok(ISBNS[1], "after_crash", Duration::from_secs(30));
    println!(
        "crash -> first acknowledged loan on {new}: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    pause(2);
    let (outcomes, before) = load.stop();
    let new_node = w
        .env
        .cluster
        .nodes()
        .into_iter()
        .find(|n| n.name == new)
        .unwrap();
    check_nothing_lost(new_node, &outcomes, &before);
    // The other standby streams from the new primary again.
    let other: Vec<String> = w
        .standby_names()
        .into_iter()
        .filter(|n| *n != new)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let streaming = sql(
            new_node,
            "SELECT string_agg(application_name, ',') FROM pg_stat_replication WHERE state = 'streaming'",
        );
        if other.iter().all(|o| streaming.contains(o.as_str())) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{other:?} do not stream from {new}: {streaming}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The primary's agent frozen for 1 s and 2 s (SIGSTOP), the etcd leader
/// killed, one etcd member down: the leader key never moves, no standby is
/// promoted, and writes go on.
#[test]
fn blips_cause_no_failover() {
    let _g = serial();
    let mut w = World::start("blips", 1, 1);
    let primary = w.env.primary().name.clone();
    for secs in [1, 2] {
        w.signal_agent(&primary, Signal::SIGSTOP);
        std::thread::sleep(Duration::from_secs(secs));
        w.signal_agent(&primary, Signal::SIGCONT);
        assert_no_failover(&w, &primary, 6, &format!("agent frozen {secs}s"));
    }
    let leader = w.etcd.leader().unwrap();
    w.etcd.kill(leader);
    assert_no_failover(&w, &primary, 8, "etcd leader killed");
    w.etcd.restart(leader).unwrap();
    w.etcd.wait_healthy().unwrap();
    let other = (w.etcd.leader().unwrap() + 1) % 3;
    w.etcd.kill(other);
    assert_no_failover(&w, &primary, 8, "one etcd member down");
    w.etcd.restart(other).unwrap();
    w.env
        .loan_until_ok(ISBNS[0], "after_blips", Duration::from_secs(10));
    assert_eq!(serving_from(&w).as_deref(), Some(primary.as_str()));
}

/// etcd loses quorum (two of three members down): nobody can be promoted,
/// and the primary keeps serving while every standby streams from it
/// (the failsafe), instead of stopping over etcd alone.
#[test]
fn etcd_without_quorum_promotes_nobody() {
    let _g = serial();
    let mut w = World::start("quorum", 2, 1);
    let primary = w.env.primary().name.clone();
    w.etcd.kill(0);
    w.etcd.kill(1);
    assert_no_failover(&w, &primary, TTL.as_secs() * 3, "etcd without quorum");
    w.env
        .loan_until_ok(ISBNS[2], "no_quorum", Duration::from_secs(10));
    assert!(
        w.agent_log(&primary).contains("failsafe"),
        "the primary's agent did not say why it stays primary"
    );
    w.etcd.restart(0).unwrap();
    w.etcd.restart(1).unwrap();
}

/// PostgreSQL alone crashes on the primary while its agent lives: the agent
/// does not restart it (its unit's restart policy would, within the TTL);
/// after the TTL it releases the leader key, the standby is promoted, and
/// the old primary, started again, finds another leader and is fenced.
#[test]
fn postgres_crash_under_living_agent_fails_over_after_ttl() {
    let _g = serial();
    let w = World::start("pgcrash", 3, 1);
    let old = w.env.primary().name.clone();
    let standby = w.env.standby().name.clone();
    w.env.primary().kill9().unwrap();
    let started = Instant::now();
    w.wait_leader(&standby, TTL * 6);
    println!(
        "leader released and {standby} promoted after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    // Released by the old primary's agent once PostgreSQL stayed down for
    // the TTL (its chance to restart in place), not expired: its lease
    // was renewed all along.
    assert!(
        w.agent_log(&old).contains("leader key released"),
        "the old primary's agent did not release the key"
    );
    wait_serving(&w, &standby, Duration::from_secs(30));
    w.env
        .loan_until_ok(ISBNS[3], "after_pg_crash", Duration::from_secs(30));
    // The old primary comes back as a primary: its agent fences it, perhaps
    // before `pg_ctl start -w` saw it ready (then start reports a failure).
    if let Err(e) = w.env.primary().start() {
        println!("pg_ctl start: {e} (fenced while starting?)");
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while w.env.primary().is_running() {
        assert!(
            Instant::now() < deadline,
            "the returning old primary was not fenced"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(w.agent_log(&old).contains("stale primary"));
}

/// Double fault: a standby dies, the primary's agent drops it from
/// `synchronous_standby_names` and records the narrower set; later the
/// primary's host crashes: the surviving standby alone proves it holds
/// every acknowledged write and is promoted, with nothing lost.
#[test]
fn double_fault_promotes_with_the_sync_records_proof() {
    let _g = serial();
    let mut w = World::start("double", 4, 2);
    let standbys = w.standby_names();
    let (survivor, dead) = (standbys[0].clone(), standbys[1].clone());
    w.kill_agent(&dead);
    w.env.cluster.standbys()[1].kill9().unwrap();
    println!("{dead} died");
    w.wait_sync_record(std::slice::from_ref(&survivor), Duration::from_secs(20));
    let load = Load::start(&w.env, "d", 2);
    pause(2);
    crash_primary_host(&mut w);
    w.wait_leader(&survivor, TTL * 6);
    wait_serving(&w, &survivor, Duration::from_secs(30));
    w.env
        .loan_until_ok(ISBNS[0], "after_double", Duration::from_secs(30));
    pause(1);
    let (outcomes, before) = load.stop();
    check_nothing_lost(&w.env.cluster.standbys()[0], &outcomes, &before);
}

/// The primary and a synchronous standby die together while the record
/// still names both standbys (`ANY 1` of two): the survivor cannot prove
/// it holds every acknowledged write, so no agent promotes it, it says
/// why, and the manual `promote` refuses too without --allow-data-loss.
#[test]
fn primary_and_a_standby_dying_together_promote_nobody() {
    let _g = serial();
    let mut w = World::start("together", 5, 2);
    let standbys = w.standby_names();
    // Frozen first, so the primary's agent cannot narrow the record: the
    // two die "together".
    let primary = w.env.primary().name.clone();
    w.signal_agent(&primary, Signal::SIGSTOP);
    w.kill_agent(&standbys[0]);
    w.env.cluster.standbys()[0].kill9().unwrap();
    crash_primary_host(&mut w);
    std::thread::sleep(TTL * 3);
    assert_eq!(
        in_recovery(&w, &standbys[1]),
        Some(true),
        "the survivor was promoted"
    );
    assert!(
        w.leader().is_none(),
        "someone took the leader key: {:?}",
        w.leader()
    );
    let log = w.agent_log(&standbys[1]);
    assert!(
        log.contains("no automatic promotion yet"),
        "no reason given:\n{log}"
    );
    let (ok, out) = w.env.failover(&["promote"]);
    assert!(!ok, "manual promote went ahead: {out}");
    assert!(out.contains("--allow-data-loss"), "{out}");
    assert_eq!(in_recovery(&w, &standbys[1]), Some(true));
}

/// The primary cut from etcd only (its agent's etcd traffic goes through
/// relays that are cut; replication and the other agents work): the
/// standby's election stops its WAL receiver, the old primary, no longer
/// covered by the failsafe, fences itself, and only then is the standby
/// promoted. No write is acknowledged by two primaries.
#[test]
fn primary_cut_from_etcd_fences_itself_before_the_promotion() {
    let _g = serial();
    let mut w = World::start("cut", 6, 1);
    let primary = w.env.primary().name.clone();
    let standby = w.env.standby().name.clone();
    let relays = w.relay_agent(&primary);
    w.wait_leader(&primary, Duration::from_secs(20));
    pause(2);
    for r in &relays {
        r.cut();
    }
    println!("{primary}'s agent cut from etcd");
    let (mut fenced_at, mut promoted_at) = (None, None);
    let deadline = Instant::now() + TTL * 6;
    while (fenced_at.is_none() || promoted_at.is_none()) && Instant::now() < deadline {
        if fenced_at.is_none() && !w.env.primary().is_running() {
            fenced_at = Some(Instant::now());
        }
        if promoted_at.is_none() && in_recovery(&w, &standby) == Some(false) {
            promoted_at = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (Some(f), Some(p)) = (fenced_at, promoted_at) else {
        w.dump_logs();
        panic!("fenced: {fenced_at:?}, promoted: {promoted_at:?}");
    };
    assert!(
        f <= p,
        "{standby} was promoted before {primary} fenced itself"
    );
    println!(
        "{primary} fenced {:.2}s before {standby} was promoted",
        (p - f).as_secs_f64()
    );
    assert!(w.agent_log(&primary).contains("fencing"));
    wait_serving(&w, &standby, Duration::from_secs(30));
    w.env
        .loan_until_ok(ISBNS[2], "after_cut", Duration::from_secs(30));
}

/// A planned switchover in the automatic mode goes through the leader key:
/// the command takes it from the old primary before promoting, no agent
/// fights it, the new primary's agent adopts the key, and the old primary,
/// rejoined as a standby by the command, follows it.
#[test]
fn switchover_goes_through_the_leader_key() {
    let _g = serial();
    let w = World::start("switch", 7, 1);
    let (old, new) = (w.env.primary().name.clone(), w.env.standby().name.clone());
    let (ok, out) = w.env.failover(&["switchover"]);
    assert!(ok, "{out}");
    assert!(out.contains("took the leader key"), "{out}");
    w.wait_leader(&new, Duration::from_secs(20));
    wait_serving(&w, &new, Duration::from_secs(30));
    w.env
        .loan_until_ok(ISBNS[1], "after_switchover", Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        assert_eq!(w.leader().map(|(l, _)| l.node), Some(new.clone()));
        assert_ne!(
            in_recovery(&w, &old),
            Some(false),
            "{old} is a primary again"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(in_recovery(&w, &old), Some(true), "{old} is not a standby");
}
