//! "Nobody gets in who does not belong", against real processes: a
//! PostgreSQL pair with scram-sha-256 and every service with CURVE on.
//!
//! One world (cluster + stack, ports in 30000..32000) runs every case in
//! order: the application role is no superuser, owns nothing and cannot
//! change the schema (its owner migrated it); a client with the right key is served; a client without a key, or
//! with a key not on the allow-list, gets nothing and changes nothing; a
//! plaintext peer gets nothing from any CURVE endpoint, nor does a client key
//! at the endpoints reserved for actors and the load manager, while the
//! operator's key (`biblioteca-failover`) gets the storage status; a forged
//! outcome and heartbeat on the back-channel from an unknown key are ignored
//! (while the same heartbeat from the actor's key counts); a wrong or missing
//! database password stops the storage manager at start with a clear error;
//! and no secret is in a log, a config, status output or a file others can
//! read.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use biblioteca_client::Client;
use biblioteca_cluster::auth::Passwords;
use biblioteca_cluster::{Cluster, ClusterSpec, Node};
use biblioteca_protocol::config::ClientConfig;
use biblioteca_protocol::{CodigoError, Informe, Operacion, Peticion};
use biblioteca_runtime::security::provision::{self, HostKeys};
use biblioteca_runtime::security::{ClientCurve, Curve, KeyPair, Load, Peer};
use biblioteca_stack::launch::{find_binary, LaunchError, Service};
use biblioteca_stack::{Stack, StackPorts, StackSecurity, StackSpec};
use serde_json::{json, Value};

const ISBN: &str = "978-0134685991";

/// A port in 30000..32000 nothing listens on (this suite's range).
fn port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::process::id() % 2000;
    for _ in 0..2000 {
        let p = 30_000 + (base + NEXT.fetch_add(1, Ordering::SeqCst)) % 2000;
        let p = p as u16;
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no free port in 30000..32000");
}

/// What a refused attempt must leave untouched.
fn db_state(n: &Node) -> String {
    n.sql(
        "SELECT (SELECT string_agg(isbn || '=' || ejemplares, ',' ORDER BY isbn) FROM libros) \
         || '|' || (SELECT count(*) FROM prestamos) || '|' || (SELECT count(*) FROM solicitudes)",
    )
    .unwrap_or_else(|e| panic!("SQL: {e}"))
}

fn client(frontend: &str, curve: Option<ClientCurve>) -> Client {
    Client::new(ClientConfig {
        endpoints: vec![frontend.to_string()],
        timeout: Duration::from_millis(2000),
        retries: 1,
        curve,
    })
    .unwrap()
}

fn prestamo(usuario: &str, id: &str) -> Peticion {
    Peticion {
        operacion: Operacion::Prestamo,
        isbn: ISBN.into(),
        usuario: usuario.into(),
        id: Some(id.into()),
    }
}

/// A raw socket of `kind` with `curve` as a client of `peer`.
fn socket(
    ctx: &zmq::Context,
    kind: zmq::SocketType,
    curve: &Curve,
    peer: Peer,
    ep: &str,
) -> zmq::Socket {
    let s = ctx.socket(kind).unwrap();
    s.set_linger(0).unwrap();
    curve.connect_to(&s, peer).unwrap();
    s.connect(ep).unwrap();
    s
}

/// Whether anything arrives on `s` within `ms`.
fn hears(s: &zmq::Socket, ms: i64) -> bool {
    s.poll(zmq::POLLIN, ms).unwrap() > 0
}

/// A curve with `pair` that knows the stack's real server keys.
fn curve_of(pair: &KeyPair, keys: &HostKeys) -> Curve {
    let carga =
        biblioteca_runtime::security::keys::load_public(&keys.public(provision::CARGA)).unwrap();
    let storage =
        biblioteca_runtime::security::keys::load_public(&keys.public(provision::STORAGE)).unwrap();
    Curve::new(
        pair.clone(),
        [(Peer::LoadManager, carga), (Peer::Storage, storage)]
            .into_iter()
            .collect(),
    )
}

fn secret_key_z85(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let line = text.lines().find(|l| l.starts_with("secret-key")).unwrap();
    line.split('"').nth(1).unwrap().to_string()
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn carga_status(c: &mut Client) -> Value {
    let r = c.raw(br#"{"operacion":"status"}"#).unwrap();
    serde_json::to_value(&r).unwrap()
}

#[test]
fn nobody_gets_in_who_does_not_belong() {
    let dir = std::env::temp_dir().join(format!("bib-security-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cspec = ClusterSpec::new(dir.join("pg"));
    cspec.primary_port = port();
    cspec.standby_port = port();
    let cluster = Cluster::create(cspec).unwrap_or_else(|e| panic!("cluster: {e}"));
    let passwords: Passwords = cluster
        .require_passwords()
        .unwrap_or_else(|e| panic!("scram: {e}"));
    let primary = cluster.primary().clone();

    // scram in force: a wrong password is refused, the right one accepted.
    let app_password = std::fs::read_to_string(&passwords.app)
        .unwrap()
        .trim()
        .to_string();
    assert!(biblioteca_cluster::auth::app_login(&primary, "wrong").is_err());
    biblioteca_cluster::auth::app_login(&primary, &app_password).unwrap();

    let keys = HostKeys::generate(&dir.join("claves")).unwrap();
    let ports = StackPorts {
        frontend: port(),
        publisher: port(),
        backchannel: port(),
        storage: port(),
    };
    let mut spec = StackSpec::new(
        dir.join("run"),
        ports,
        &primary.conninfo("app", "library"),
        &cluster.standby().conninfo("app", "library"),
    );
    // No renovacion actor: a forged one must not appear.
    spec.actors = vec![Operacion::Prestamo, Operacion::Devolucion];
    spec.deadline = Duration::from_millis(2500);
    spec.security = StackSecurity {
        keys: Some(keys.clone()),
        password_file: Some(passwords.app.clone()),
        owner_password_file: Some(passwords.owner.clone()),
    };
    let stack = Stack::start(spec.clone()).unwrap_or_else(|e| panic!("services: {e}"));
    let frontend = ports.frontend_endpoint();

    // 0. `app` is no superuser, owns nothing and cannot change the schema;
    // the schema owner migrated it (a separate step, another role).
    assert_eq!(
        primary
            .sql("SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = 'app'")
            .unwrap(),
        "f|f|f"
    );
    let owned = primary
        .sql(
            "SELECT (SELECT count(*) FROM pg_class WHERE relowner = 'app'::regrole) \
             + (SELECT count(*) FROM pg_namespace WHERE nspowner = 'app'::regrole) \
             + (SELECT count(*) FROM pg_proc WHERE proowner = 'app'::regrole) \
             + (SELECT count(*) FROM pg_type WHERE typowner = 'app'::regrole) \
             + (SELECT count(*) FROM pg_database WHERE datdba = 'app'::regrole)",
        )
        .unwrap();
    assert_eq!(owned, "0", "app owns objects");
    assert_eq!(
        primary
            .sql(
                "SELECT string_agg(DISTINCT pg_get_userbyid(relowner), ',') FROM pg_class \
                 WHERE relname IN ('libros', 'prestamos', 'solicitudes', 'schema_migrations')"
            )
            .unwrap(),
        biblioteca_cluster::OWNER_USER
    );
    let libros_before = primary.sql("SELECT count(*) FROM libros").unwrap();
    for ddl in [
        "CREATE TABLE intrusa (x int)",
        "DROP TABLE libros",
        "ALTER TABLE libros ADD COLUMN x int",
        "TRUNCATE libros",
        "DELETE FROM solicitudes",
    ] {
        let r = primary.sql(ddl);
        assert!(
            matches!(&r, Err(e) if e.to_string().contains("permission denied") || e.to_string().contains("must be owner")),
            "app ran {ddl:?}: {r:?}"
        );
    }
    assert_eq!(
        primary.sql("SELECT count(*) FROM libros").unwrap(),
        libros_before
    );
    let ctx = zmq::Context::new();
    let stranger = KeyPair::generate().unwrap();
    let (_, stranger_secret) = stranger
        .save(&dir.join("intruso"), "intruso", false)
        .unwrap();

    // 1. The right key is served, end to end.
    let mut good = client(&frontend, spec.client_curve());
    let before = db_state(&primary);
    let r = good.request(&prestamo("ana", "sec-ok-1")).unwrap();
    assert!(r.exito, "allowed client refused: {r:?}");
    assert_ne!(
        db_state(&primary),
        before,
        "the allowed loan changed nothing"
    );

    // 2. No key, or a key not on the allow-list: no service, no change.
    let before = db_state(&primary);
    let plain = client(&frontend, None).request(&prestamo("eva", "sec-plain-1"));
    assert!(plain.is_err(), "a plaintext client was served: {plain:?}");
    let stranger_curve = ClientCurve {
        storage_key: None,
        secret_key_file: stranger_secret.clone(),
        carga_key: keys.public(provision::CARGA).display().to_string(),
    };
    let refused =
        client(&frontend, Some(stranger_curve)).request(&prestamo("eva", "sec-stranger-1"));
    assert!(
        refused.is_err(),
        "a client with an unknown key was served: {refused:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        db_state(&primary),
        before,
        "a refused client changed the database"
    );

    // 3. Plaintext, or a client's key, at the storage manager: nothing.
    let body = serde_json::to_vec(
        &json!({"operacion": "prestamo", "isbn": ISBN, "usuario": "eva", "id": "sec-direct-1"}),
    )
    .unwrap();
    let client_pair = KeyPair::load(&keys.secret(provision::CLIENT)).unwrap();
    for (what, curve) in [
        ("plaintext", Curve::plaintext()),
        ("client key", curve_of(&client_pair, &keys)),
    ] {
        let s = socket(
            &ctx,
            zmq::DEALER,
            &curve,
            Peer::Storage,
            &ports.storage_endpoint(),
        );
        s.send_multipart([&b""[..], &body], zmq::DONTWAIT).ok();
        assert!(
            !hears(&s, 2000),
            "{what} got an answer from the storage manager"
        );
    }
    assert_eq!(
        db_state(&primary),
        before,
        "a direct storage request changed the database"
    );
    // The operator's key (biblioteca-failover) is on the storage allow-list.
    let operator = spec.operator_curve().unwrap().load().unwrap();
    let status = biblioteca_failover::storage::query_status_with(
        &ports.storage_endpoint(),
        &operator,
        Duration::from_secs(3),
    )
    .unwrap();
    assert_eq!(
        status.and_then(|s| s.writer).as_deref(),
        Some("primary"),
        "the operator's key got no storage status"
    );
    let plain = biblioteca_failover::storage::query_status(
        &ports.storage_endpoint(),
        Duration::from_millis(1500),
    )
    .unwrap();
    assert!(plain.is_none(), "a plaintext status request was answered");

    // 4. Plaintext, or a client's key, on the publisher hears nothing.
    let subs: Vec<zmq::Socket> = [Curve::plaintext(), curve_of(&client_pair, &keys)]
        .iter()
        .map(|c| {
            let s = socket(
                &ctx,
                zmq::SUB,
                c,
                Peer::LoadManager,
                &ports.publisher_endpoint(),
            );
            s.set_subscribe(b"").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let r = good.request(&prestamo("bob", "sec-ok-2")).unwrap();
    assert!(r.exito, "{r:?}");
    for s in &subs {
        assert!(!hears(s, 300), "an outsider received a publication");
    }

    // 5. Forged heartbeat and outcome from an unknown key: ignored.
    let forger = socket(
        &ctx,
        zmq::PUSH,
        &curve_of(&stranger, &keys),
        Peer::LoadManager,
        &ports.backchannel_endpoint(),
    );
    let forged_id = "sec-forged-1";
    let forged_ok = json!({"tipo": "resultado", "respuesta": {"exito": true, "operacion": "renovacion", "mensaje": "forged", "datos": null, "id": forged_id}});
    let heartbeat = json!({"tipo": "latido", "operacion": "renovacion", "actor": "intruso"});
    for m in [&forged_ok, &heartbeat] {
        Informe::from_bytes(&serde_json::to_vec(m).unwrap())
            .expect("the forgery must be well-formed");
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        forger
            .send(serde_json::to_vec(&heartbeat).unwrap(), zmq::DONTWAIT)
            .ok();
        forger
            .send(serde_json::to_vec(&forged_ok).unwrap(), zmq::DONTWAIT)
            .ok();
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = carga_status(&mut good);
    assert_eq!(
        status["datos"]["actores"]["renovacion"]["vivos"], 0,
        "forged heartbeat counted: {status}"
    );
    let before = db_state(&primary);
    let mut renew = prestamo("ana", forged_id);
    renew.operacion = Operacion::Renovacion;
    let r = good.request(&renew).unwrap();
    assert!(
        !r.exito && r.error == Some(CodigoError::ServicioNoDisponible),
        "forged outcome reached a client: {r:?}"
    );
    assert_eq!(db_state(&primary), before);
    let log = std::fs::read_to_string(stack.carga.log_path()).unwrap();
    assert!(
        log.contains(&stranger.public.z85()) && log.contains("connection refused"),
        "the refused key is not in the load manager's log:\n{log}"
    );
    // Control: the same heartbeat from the actor's key counts.
    let actor_pair =
        KeyPair::load(&keys.secret(&provision::actor_name(Operacion::Renovacion))).unwrap();
    let actor = socket(
        &ctx,
        zmq::PUSH,
        &curve_of(&actor_pair, &keys),
        Peer::LoadManager,
        &ports.backchannel_endpoint(),
    );
    let counted = (0..30).any(|_| {
        actor
            .send(serde_json::to_vec(&heartbeat).unwrap(), zmq::DONTWAIT)
            .ok();
        std::thread::sleep(Duration::from_millis(100));
        carga_status(&mut good)["datos"]["actores"]["renovacion"]["vivos"] == 1
    });
    assert!(
        counted,
        "an allowed actor key was not heard either: the negative above proves nothing"
    );

    // 6. A wrong, or missing, database password stops the storage manager at start.
    let wrong = dir.join("wrong.password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    for (tag, password_file) in [("wrong", Some(wrong.clone())), ("missing", None)] {
        let mut bad = spec.clone();
        bad.run_dir = dir.join(format!("run-{tag}"));
        bad.ports.storage = port();
        bad.security.password_file = password_file;
        let t = Instant::now();
        let result = Service::start(bad.storage_spec().unwrap());
        match result {
            Err(LaunchError::Exited { tail, log, .. }) => {
                // The whole log: with RUST_BACKTRACE set the message is
                // followed by more lines than the tail holds.
                let tail = std::fs::read_to_string(&log).unwrap_or(tail);
                assert!(
                    tail.contains("refused the application role's credentials"),
                    "{tag}: unclear error:\n{tail}"
                );
                assert!(
                    !tail.contains("not-the-password"),
                    "{tag}: the password is in the log"
                );
            }
            Err(e) => panic!("{tag}: expected an exit at start, got {e}"),
            Ok(_) => panic!("{tag}: the storage manager started with a {tag} password"),
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{tag}: took {:?} to give up",
            t.elapsed()
        );
    }

    // 7. No secret in logs, configs, status output; secret files private.
    let solicitante = find_binary("biblioteca-solicitante", None).unwrap();
    let out = std::process::Command::new(&solicitante)
        .args(["--json", "--endpoint", &frontend, "--secret-key-file"])
        .arg(keys.secret(provision::CLIENT))
        .arg("--carga-key")
        .arg(keys.public(provision::CARGA))
        .args(["status", "--storage", &ports.storage_endpoint()])
        .output()
        .unwrap();
    let status_out = format!(
        "{}{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        serde_json::to_string(&carga_status(&mut good)).unwrap()
    );
    assert!(
        status_out.contains("\"up\":true"),
        "status through CURVE failed: {status_out}"
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let storage_row = rows
        .iter()
        .find(|r| r["service"] == "almacenamiento")
        .unwrap();
    assert!(
        storage_row["note"]
            .as_str()
            .is_some_and(|n| n.contains("storage_key")),
        "without the storage manager's key the row must say what is missing: {storage_row}"
    );
    // With the storage manager's key and a key it allows (the operator's),
    // the storage row is up.
    let out = std::process::Command::new(&solicitante)
        .args(["--json", "--endpoint", &frontend, "--secret-key-file"])
        .arg(keys.secret(provision::OPERATOR))
        .arg("--carga-key")
        .arg(keys.public(provision::CARGA))
        .arg("--storage-key")
        .arg(keys.public(provision::STORAGE))
        .args(["status", "--storage", &ports.storage_endpoint()])
        .output()
        .unwrap();
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let storage_row = rows
        .iter()
        .find(|r| r["service"] == "almacenamiento")
        .unwrap();
    assert_eq!(storage_row["up"], true, "storage row under CURVE: {rows:?}");
    assert_eq!(storage_row["db_node"], "primary", "{storage_row}");
    // `resultado` goes through the load manager with the client's key.
    let out = std::process::Command::new(&solicitante)
        .args(["--json", "--endpoint", &frontend, "--secret-key-file"])
        .arg(keys.secret(provision::CLIENT))
        .arg("--carga-key")
        .arg(keys.public(provision::CARGA))
        .args(["resultado", "sec-ok-1"])
        .output()
        .unwrap();
    let resultado: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert!(
        out.status.success() && resultado["exito"] == true && resultado["id"] == "sec-ok-1",
        "resultado under CURVE: {resultado} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(resultado["operacion"], "prestamo", "{resultado}");
    let mut secret_files: Vec<PathBuf> = Vec::new();
    files_under(&keys.dir, &mut secret_files);
    secret_files.retain(|p| p.extension().is_some_and(|e| e == "key_secret"));
    let mut secrets: Vec<String> = secret_files.iter().map(|p| secret_key_z85(p)).collect();
    secrets.push(secret_key_z85(&stranger_secret));
    for f in [
        &passwords.app,
        &passwords.owner,
        &passwords.replicator,
        &passwords.superuser,
    ] {
        secrets.push(std::fs::read_to_string(f).unwrap().trim().to_string());
        secret_files.push(f.clone());
    }
    secret_files.push(passwords.pgpass.clone());
    assert!(secrets.len() >= 10 && secrets.iter().all(|s| s.len() >= 40));
    for f in &secret_files {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode & 0o077,
            0,
            "{} is readable by others (mode {mode:o})",
            f.display()
        );
    }
    let mut scanned = Vec::new();
    files_under(&dir.join("run"), &mut scanned);
    assert!(
        scanned.iter().any(|p| p.ends_with("migrate.log")),
        "no migrate step ran"
    );
    files_under(&dir.join("run-wrong"), &mut scanned);
    scanned.push(primary.log_file.clone());
    scanned.push(cluster.standby().log_file.clone());
    scanned.retain(|p| p.extension().is_none_or(|e| e != "notify"));
    assert!(scanned
        .iter()
        .any(|p| p.extension().is_some_and(|e| e == "log")));
    for f in &scanned {
        let Ok(text) = std::fs::read(f) else { continue };
        let text = String::from_utf8_lossy(&text);
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "a secret is in {}", f.display());
        }
    }
    for s in &secrets {
        assert!(
            !status_out.contains(s.as_str()),
            "a secret is in the status output"
        );
    }
    drop(stack);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
