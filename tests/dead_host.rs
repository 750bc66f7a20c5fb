//! `biblioteca-failover` against hosts that take TCP connections and never
//! answer (a silent listener on 127.0.0.1 for every database node and the
//! storage manager): `status` and `promote` end with an error naming what
//! timed out, within a bound, instead of hanging.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use biblioteca_stack::launch::find_binary;

/// Accepts every connection and keeps it open, saying nothing.
fn silent_listener() -> u16 {
    let l = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    port
}

fn run(config: &std::path::Path, command: &str) -> (bool, String, Duration) {
    let bin = find_binary("biblioteca-failover", None).unwrap();
    let t = Instant::now();
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(config)
        .arg(command)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The bound checked below; past it the tool is killed and the test fails.
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("biblioteca-failover {command} hung on a silent host");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text, t.elapsed())
}

#[test]
fn failover_never_hangs_on_a_host_that_does_not_answer() {
    let (db1, db2, storage) = (silent_listener(), silent_listener(), silent_listener());
    let dir = std::env::temp_dir().join(format!("bib-dead-host-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let storage_toml = dir.join("almacenamiento.toml");
    std::fs::write(&storage_toml, "").unwrap();
    let config = dir.join("failover.toml");
    std::fs::write(
        &config,
        format!(
            r#"connect_timeout = "2s"

[[nodes]]
name = "primary"
conninfo = "host=127.0.0.1 port={db1} user=postgres dbname=library"

[[nodes]]
name = "standby"
conninfo = "host=127.0.0.1 port={db2} user=postgres dbname=library"

[storage]
endpoint = "tcp://127.0.0.1:{storage}"
config = "{}"
reload = "none"
status_timeout = "1500ms"
"#,
            storage_toml.display()
        ),
    )
    .unwrap();
    let (ok, text, took) = run(&config, "status");
    eprintln!("status after {took:?}:\n{text}");
    assert!(
        took < Duration::from_secs(20),
        "status took {took:?} against silent hosts"
    );
    assert!(
        text.contains("never answered") || text.contains("timed out"),
        "status does not say what timed out:\n{text}"
    );
    let _ = ok;
    let (ok, text, took) = run(&config, "promote");
    eprintln!("promote after {took:?}:\n{text}");
    assert!(!ok, "promote succeeded against silent hosts:\n{text}");
    assert!(
        took < Duration::from_secs(30),
        "promote took {took:?} against silent hosts"
    );
    assert!(
        text.contains("never answered") || text.contains("timed out"),
        "promote does not say what timed out:\n{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
