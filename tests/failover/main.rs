//! `biblioteca-failover` against real PostgreSQL servers and the real
//! services: the guide's failover (parts 5-6), failover under load, fencing
//! of a returning old primary, refusal to lose data, rejoin and a second
//! failover, switchover under load, and a broken config on SIGHUP.

// Test code: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod env;
mod load;
mod redeploy;
mod replication;

use std::time::{Duration, Instant};

use biblioteca_cluster::StopMode;
use biblioteca_failover::roles_file;
use biblioteca_failover::storage::query_status;
use biblioteca_protocol::config::NodeRole;
use biblioteca_protocol::config_roles;
use biblioteca_protocol::Operacion;
use env::{serial, sql, wait_sync, Env, ISBNS};
use load::{check_nothing_lost, pause, Load};

/// The node the storage manager writes to, per its status reply.
pub(crate) fn serving_from(env: &Env) -> Option<String> {
    query_status(&env.ports.storage_endpoint(), Duration::from_secs(2))
        .unwrap()
        .and_then(|s| s.writer)
}

/// Keeps an environment up for trying the tool by hand: run with
/// `cargo test --test failover manual -- --ignored --nocapture`, then use the
/// printed config; remove the printed file to tear everything down.
#[test]
#[ignore]
fn manual() {
    let _g = serial();
    let env = Env::new("manual", 9);
    let flag = env.dir.join("remove-me-to-stop");
    std::fs::write(&flag, "").unwrap();
    println!(
        "config: {}\nstorage config: {}\nrm {} to stop",
        env.failover_toml.display(),
        env.storage_config_path().display(),
        flag.display()
    );
    while flag.exists() {
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The guide, parts 5 and 6: snapshot, the primary stops, a consulta fails
/// or is served read-only, promote, data preserved, a loan afterwards lands
/// on the new primary.
#[test]
fn guide_parts_5_and_6() {
    let _g = serial();
    let env = Env::new("guide", 0);
    for i in 0..5 {
        assert!(
            env.request(Operacion::Prestamo, ISBNS[i % 4], &format!("usuario_{i}"))
                .exito
        );
    }
    // 5.1
    let libros = sql(env.primary(), "SELECT count(*) FROM libros");
    let prestamos = sql(env.primary(), "SELECT count(*) FROM prestamos");
    // 5.2
    env.primary()
        .stop(biblioteca_cluster::StopMode::Fast)
        .unwrap();
    // 5.3: fails, times out, or is answered from the standby.
    let r = env
        .client(3000)
        .request(&env::peticion(Operacion::Consulta, ISBNS[0], "", None));
    println!("consulta with the primary down: {r:?}");
    // 5.4
    let (ok, out) = env.failover(&["promote"]);
    assert!(ok, "promote failed:\n{out}");
    assert!(out.contains("all data preserved"), "{out}");
    assert!(
        out.contains("storage manager now serves from standby"),
        "{out}"
    );
    // 5.5
    assert_eq!(sql(env.standby(), "SELECT pg_is_in_recovery()"), "f");
    // 5.6
    assert_eq!(sql(env.standby(), "SELECT count(*) FROM libros"), libros);
    assert_eq!(
        sql(env.standby(), "SELECT count(*) FROM prestamos"),
        prestamos
    );
    assert!(
        sql(
            env.standby(),
            "SELECT count(*) FROM eventos_failover WHERE nodo_nuevo = 'standby'"
        ) != "0"
    );
    // 6.2, 6.3
    let r = env.request(
        Operacion::Prestamo,
        "978-0596007126",
        "usuario_post_failover",
    );
    assert!(r.exito, "{r:?}");
    assert_eq!(
        sql(
            env.standby(),
            "SELECT count(*) FROM prestamos WHERE usuario = 'usuario_post_failover'"
        ),
        "1"
    );
    let (ok, out) = env.failover(&["status", "--json"]);
    assert!(ok);
    let report: serde_json::Value =
        serde_json::from_str(&out[..out.rfind('}').unwrap() + 1]).unwrap();
    assert_eq!(report["storage"]["serving_from"], "standby");
    let roles = env.roles_text();
    assert!(roles.contains("primary = \"fenced\""), "{roles}");
}

/// A config that does not parse, or breaks an invariant, sent with SIGHUP:
/// the storage manager keeps serving with the config it had. The failover
/// tool never writes such a file in the first place.
#[test]
fn sighup_with_a_broken_config_keeps_serving() {
    let _g = serial();
    let env = Env::new("sighup", 1);
    let path = env.storage_config_path();
    let good = std::fs::read_to_string(&path).unwrap();
    assert!(env.request(Operacion::Prestamo, ISBNS[0], "antes").exito);
    let two_primaries = good.replace("role = \"standby\"", "role = \"primary\"");
    for (what, text) in [
        ("not TOML", "this is [[[ not toml".to_string()),
        ("two primaries", two_primaries),
        (
            "empty node list",
            "bind = \"tcp://127.0.0.1:1\"\n[database]\nnodes = []\n".to_string(),
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        env.stack().storage.sighup().unwrap();
        pause(1);
        assert_eq!(serving_from(&env).as_deref(), Some("primary"), "{what}");
        assert!(
            env.request(
                Operacion::Prestamo,
                ISBNS[1],
                &format!("tras_{}", what.replace(' ', "_"))
            )
            .exito,
            "{what}: a loan after the broken reload"
        );
    }
    std::fs::write(&path, &good).unwrap();
    let err = roles_file::record(&path, &[("ghost", NodeRole::Primary)]).unwrap_err();
    println!("roles change refused: {err}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        good,
        "a refused roles change left the main file as it was"
    );
    let drop_in = config_roles::path_for(&config_roles::parse_main(&path).unwrap(), &path);
    assert!(
        !drop_in.exists(),
        "a refused roles change wrote no roles file"
    );
    env.stack().storage.sighup().unwrap();
    pause(1);
    assert!(env.request(Operacion::Devolucion, ISBNS[0], "antes").exito);
}

/// A standby that has not replayed what the primary flushed is not
/// promoted; with --allow-data-loss it is.
#[test]
fn promote_refused_while_the_standby_is_behind() {
    let _g = serial();
    let env = Env::new("behind", 2);
    let config_before = std::fs::read_to_string(env.storage_config_path()).unwrap();
    sql(env.standby(), "SELECT pg_wal_replay_pause()");
    biblioteca_cluster::wait_until(Duration::from_secs(10), "replay paused", || {
        Ok(sql(env.standby(), "SELECT pg_get_wal_replay_pause_state()") == "paused")
    })
    .unwrap();
    // Synchronous commit waits for the standby's flush, not its replay.
    assert!(
        env.request(Operacion::Prestamo, ISBNS[2], "durante_pausa")
            .exito
    );
    let (ok, out) = env.failover(&["promote"]);
    assert!(!ok, "promote must refuse:\n{out}");
    assert!(out.contains("refusing to promote standby"), "{out}");
    assert!(
        out.contains("PAUSED") && out.contains("--allow-data-loss"),
        "{out}"
    );
    assert_eq!(sql(env.standby(), "SELECT pg_is_in_recovery()"), "t");
    assert_eq!(
        std::fs::read_to_string(env.storage_config_path()).unwrap(),
        config_before
    );
    assert_eq!(serving_from(&env).as_deref(), Some("primary"));
    assert!(
        env.request(Operacion::Prestamo, ISBNS[3], "tras_rechazo")
            .exito
    );

    let (ok, out) = env.failover(&["promote", "--allow-data-loss"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("promoting anyway (--allow-data-loss)"),
        "{out}"
    );
    assert!(out.contains("stopping old primary primary"), "{out}");
    assert!(
        !env.primary().is_running(),
        "the old primary was stopped to fence it"
    );
    assert_eq!(serving_from(&env).as_deref(), Some("standby"));
    assert!(
        env.request(Operacion::Prestamo, ISBNS[0], "tras_promocion")
            .exito
    );
    println!(
        "loan made while replay was paused, on the new primary: {}",
        sql(
            env.standby(),
            "SELECT count(*) FROM prestamos WHERE usuario = 'durante_pausa'"
        )
    );
}

/// Clients keep borrowing, renewing and returning while the primary's
/// postmaster is killed with SIGKILL; after promote every acknowledged
/// request is on the new primary, exactly once.
#[test]
fn failover_under_load_loses_nothing() {
    let _g = serial();
    let env = Env::new("load", 3);
    let load = Load::start(&env, "k", 4);
    pause(3);
    env.primary().kill9().unwrap();
    println!("primary killed (SIGKILL to the postmaster)");
    pause(1);
    let started = Instant::now();
    let (ok, out) = env.failover(&["promote"]);
    assert!(ok, "{out}");
    env.loan_until_ok(ISBNS[1], "rto_probe", Duration::from_secs(30));
    println!(
        "RTO (start of promote -> first successful loan): {:.2}s",
        started.elapsed().as_secs_f64()
    );
    pause(3);
    // The probe loan moves a copy from available to on loan: totals hold.
    let (outcomes, before) = load.stop();
    check_nothing_lost(env.standby(), &outcomes, &before);
}

/// The old primary comes back as a primary on the old timeline after the
/// failover: the storage manager sends it nothing, whether it is fenced in
/// the config or only on a stale timeline.
#[test]
fn returning_old_primary_receives_no_write() {
    let _g = serial();
    let env = Env::new("fenced", 4);
    assert!(env.request(Operacion::Prestamo, ISBNS[0], "antes").exito);
    env.primary().kill9().unwrap();
    let (ok, out) = env.failover(&["promote"]);
    assert!(ok, "{out}");
    env.primary().start().unwrap();
    // Make it a fully writable split-brain primary.
    sql(
        env.primary(),
        "ALTER SYSTEM RESET synchronous_standby_names",
    );
    sql(env.primary(), "SELECT pg_reload_conf()");
    assert_eq!(sql(env.primary(), "SELECT pg_is_in_recovery()"), "f");
    let old_loans = sql(env.primary(), "SELECT count(*) FROM prestamos");
    let drop_in = env.roles_path();
    for round in ["fenced in config", "stale timeline only"] {
        if round == "stale timeline only" {
            let text = std::fs::read_to_string(&drop_in)
                .unwrap()
                .replace("primary = \"fenced\"", "primary = \"standby\"");
            std::fs::write(&drop_in, text).unwrap();
        }
        env.stack().storage.sighup().unwrap();
        pause(3);
        for i in 0..5 {
            let usuario = format!("{}_{i}", round.replace(' ', "_"));
            assert!(
                env.request(Operacion::Prestamo, ISBNS[i % 4], &usuario)
                    .exito,
                "{round}"
            );
            assert_eq!(
                sql(
                    env.standby(),
                    &format!("SELECT count(*) FROM prestamos WHERE usuario = '{usuario}'")
                ),
                "1"
            );
        }
        assert_eq!(serving_from(&env).as_deref(), Some("standby"), "{round}");
        assert_eq!(
            sql(env.primary(), "SELECT count(*) FROM prestamos"),
            old_loans,
            "{round}: the old primary got a write"
        );
    }
}

/// Failover, rejoin of the old primary as a standby (pg_rewind), then a
/// second failover back to it.
#[test]
fn rejoin_then_fail_back() {
    let _g = serial();
    let env = Env::new("rejoin", 5);
    assert!(env.request(Operacion::Prestamo, ISBNS[0], "uno").exito);
    env.primary().kill9().unwrap();
    let (ok, out) = env.failover(&["promote"]);
    assert!(ok, "{out}");
    assert!(env.request(Operacion::Prestamo, ISBNS[1], "dos").exito);

    let (ok, out) = env.failover(&["rejoin", "--node", "primary"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("pg_rewind: Done!"),
        "rewound, not rebuilt:\n{out}"
    );
    wait_sync(env.standby(), "primary", Duration::from_secs(30));
    assert!(env.roles_text().contains("primary = \"standby\""));
    assert!(env.request(Operacion::Prestamo, ISBNS[2], "tres").exito);
    let (ok, out) = env.failover(&["status"]);
    assert!(
        ok && out.contains("streaming") && out.contains("sync"),
        "{out}"
    );

    env.standby().kill9().unwrap();
    let (ok, out) = env.failover(&["promote"]);
    assert!(ok, "{out}");
    assert!(out.contains("all data preserved"), "{out}");
    assert_eq!(serving_from(&env).as_deref(), Some("primary"));
    assert!(env.request(Operacion::Prestamo, ISBNS[3], "cuatro").exito);
    for u in ["uno", "dos", "tres", "cuatro"] {
        assert_eq!(
            sql(
                env.primary(),
                &format!("SELECT count(*) FROM prestamos WHERE usuario = '{u}'")
            ),
            "1",
            "{u}"
        );
    }
    assert_eq!(
        sql(
            env.primary(),
            "SELECT timeline_id FROM pg_control_checkpoint()"
        ),
        "3"
    );
}

/// Planned switchover while clients write: nothing lost, the old primary
/// ends up a synchronous standby of the new one; then switch back.
#[test]
fn switchover_under_load_loses_nothing() {
    let _g = serial();
    let env = Env::new("switch", 6);
    let load = Load::start(&env, "s", 4);
    pause(2);
    let (ok, out) = env.failover(&["switchover"]);
    assert!(ok, "{out}");
    pause(2);
    let (ok, out) = env.failover(&["switchover"]);
    assert!(ok, "second switchover back:\n{out}");
    pause(2);
    let (outcomes, before) = load.stop();
    check_nothing_lost(env.primary(), &outcomes, &before);
    wait_sync(env.primary(), "standby", Duration::from_secs(30));
    assert_eq!(serving_from(&env).as_deref(), Some("primary"));
    assert_eq!(sql(env.standby(), "SELECT pg_is_in_recovery()"), "t");
    env.primary().stop(StopMode::Fast).unwrap();
}
