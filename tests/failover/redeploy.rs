//! A deployment run after a failover: NixOS (`nixos-rebuild switch`, a
//! reboot) and ansible (`site.yml`) put their own storage manager config
//! back, with the roles they were written with. The failover tool's roles
//! drop-in keeps the storage manager on the promoted node anyway.

use std::time::Duration;

use biblioteca_protocol::config_roles;
use biblioteca_protocol::Operacion;

use crate::env::{serial, sql, Env, ISBNS};
use crate::load::pause;
use crate::serving_from;

fn loan_lands_on_standby(env: &Env, usuario: &str) {
    let r = env.loan_until_ok(ISBNS[usuario.len() % 4], usuario, Duration::from_secs(30));
    assert!(r.exito, "{r:?}");
    assert_eq!(
        sql(
            env.standby(),
            &format!("SELECT count(*) FROM prestamos WHERE usuario = '{usuario}'")
        ),
        "1",
        "{usuario} is on the promoted node"
    );
}

#[test]
fn the_deployments_config_does_not_undo_a_promotion() {
    let _g = serial();
    let mut env = Env::new("redeploy", 7);
    let main = env.storage_config_path();
    let deployed = std::fs::read_to_string(&main).unwrap();
    let drop_in = config_roles::path_for(&config_roles::parse_main(&main).unwrap(), &main);
    assert!(!drop_in.exists(), "no roles file before any failover");
    assert!(env.request(Operacion::Prestamo, ISBNS[0], "antes").exito);

    env.primary().kill9().unwrap();
    let (ok, out) = env.failover(&["promote"]);
    assert!(ok, "promote failed:\n{out}");
    assert_eq!(
        std::fs::read_to_string(&main).unwrap(),
        deployed,
        "the failover tool left the deployment's file alone"
    );
    let roles = std::fs::read_to_string(&drop_in).unwrap();
    assert!(roles.contains("standby = \"primary\""), "{roles}");
    assert!(roles.contains("primary = \"fenced\""), "{roles}");

    // The deployment writes its file again: a new inode with the old roles.
    std::fs::remove_file(&main).unwrap();
    std::fs::write(&main, &deployed).unwrap();
    env.stack().storage.sighup().unwrap();
    pause(2);
    assert_eq!(serving_from(&env).as_deref(), Some("standby"));
    loan_lands_on_standby(&env, "tras_redespliegue");

    let (ok, out) = env.failover(&["status"]);
    assert!(ok, "{out}");
    let shown = format!("storage manager roles from: {}", drop_in.display());
    assert!(out.contains(&shown), "status names the roles file:\n{out}");

    // A restart (the deployment restarts the unit) reads both files again.
    env.stack
        .as_mut()
        .unwrap()
        .storage
        .restart()
        .unwrap_or_else(|e| panic!("restart: {e}"));
    env.write_failover_toml();
    assert_eq!(serving_from(&env).as_deref(), Some("standby"));
    loan_lands_on_standby(&env, "tras_reinicio");
    assert!(!env.primary().is_running(), "the dead primary stayed down");
}
