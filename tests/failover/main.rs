//! `biblioteca-failover` against real PostgreSQL servers and the real
//! services: the guide's failover (parts 5-6), failover under load, fencing
//! of a returning old primary, refusal to lose data, rejoin and a second
//! failover, switchover under load, and a broken config on SIGHUP.

mod env;

use std::time::Duration;

use biblioteca::protocol::Operacion;
use env::{serial, sql, Env, ISBNS};

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
        assert!(env.request(Operacion::Prestamo, ISBNS[i % 4], &format!("usuario_{i}")).exito);
    }
    // 5.1
    let libros = sql(env.primary(), "SELECT count(*) FROM libros");
    let prestamos = sql(env.primary(), "SELECT count(*) FROM prestamos");
    // 5.2
    env.primary().stop(biblioteca::cluster::StopMode::Fast).unwrap();
    // 5.3: fails, times out, or is answered from the standby.
    let r = env.client(3000).request(&env::peticion(Operacion::Consulta, ISBNS[0], "", None));
    println!("consulta with the primary down: {r:?}");
    // 5.4
    let (ok, out) = env.failover(&["promote"]);
    assert!(ok, "promote failed:\n{out}");
    assert!(out.contains("all data preserved"), "{out}");
    assert!(out.contains("storage manager now serves from standby"), "{out}");
    // 5.5
    assert_eq!(sql(env.standby(), "SELECT pg_is_in_recovery()"), "f");
    // 5.6
    assert_eq!(sql(env.standby(), "SELECT count(*) FROM libros"), libros);
    assert_eq!(sql(env.standby(), "SELECT count(*) FROM prestamos"), prestamos);
    assert!(sql(env.standby(), "SELECT count(*) FROM eventos_failover WHERE nodo_nuevo = 'standby'") != "0");
    // 6.2, 6.3
    let r = env.request(Operacion::Prestamo, "978-0596007126", "usuario_post_failover");
    assert!(r.exito, "{r:?}");
    assert_eq!(
        sql(env.standby(), "SELECT count(*) FROM prestamos WHERE usuario = 'usuario_post_failover'"),
        "1"
    );
    let (ok, out) = env.failover(&["status", "--json"]);
    assert!(ok);
    let report: serde_json::Value = serde_json::from_str(&out[..out.rfind('}').unwrap() + 1]).unwrap();
    assert_eq!(report["storage"]["serving_from"], "standby");
    let storage_cfg = std::fs::read_to_string(env.storage_config_path()).unwrap();
    assert!(storage_cfg.contains("fenced"), "{storage_cfg}");
}
