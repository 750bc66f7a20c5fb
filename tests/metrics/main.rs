//! The metrics and health endpoints against the real binaries and a real
//! Prometheus 2.42: `promtool check metrics` on every service's output,
//! request counters that add up, a latency quantile, the degraded mode, a
//! promotion's new timeline, a killed actor's growing heartbeat age, every
//! dashboard and alert expression evaluated, and the health endpoints'
//! status codes in each state (not ready, ready, writer present, writer
//! gone, fenced). Also: the endpoint turned off, and a taken port as a
//! start-up error.

// Test code: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod prom;
mod world;

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use biblioteca_cluster::StopMode;
use biblioteca_protocol::Operacion;
use biblioteca_stack::launch::{find_binary, free_port, port_in_use, Service, ServiceSpec};
use prom::{http, promtool, status, Prometheus};
use world::World;

const ISBNS: [&str; 4] = [
    "978-0134685991",
    "978-0135957059",
    "978-0596007126",
    "978-1491950357",
];

fn scratch(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("bib-metrics-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Before its database answers, the storage manager is scrapeable and
/// alive but not ready, and has no primary.
#[test]
fn without_a_database_alive_but_not_ready() {
    let dir = scratch("nodb");
    let (port, dead_pg, zmq) = (
        free_port().unwrap(),
        free_port().unwrap(),
        free_port().unwrap(),
    );
    let config = dir.join("almacenamiento.toml");
    std::fs::write(
        &config,
        format!(
            "bind = \"tcp://127.0.0.1:{zmq}\"\n[database]\nconnect_timeout = \"1s\"\n\
             [[database.nodes]]\nname = \"primary\"\nconninfo = \"host=127.0.0.1 port={dead_pg} user=app dbname=library\"\nrole = \"primary\"\n\
             [metrics]\nport = {port}\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(find_binary("biblioteca-almacenamiento", None).unwrap())
        .arg("--config")
        .arg(&config)
        .stderr(std::fs::File::create(dir.join("log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(port, "/liveness") != 200 {
        assert!(Instant::now() < deadline, "no endpoint on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let codes: Vec<(&str, u16)> = [
        "/liveness",
        "/readiness",
        "/primary",
        "/metrics",
        "/nothing",
    ]
    .into_iter()
    .map(|p| (p, status(port, p)))
    .collect();
    let (_, metrics) = http("GET", &format!("http://127.0.0.1:{port}/metrics")).unwrap();
    let head = http("HEAD", &format!("http://127.0.0.1:{port}/readiness")).unwrap();
    let options = http("OPTIONS", &format!("http://127.0.0.1:{port}/primary")).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        codes,
        [
            ("/liveness", 200),
            ("/readiness", 503),
            ("/primary", 503),
            ("/metrics", 200),
            ("/nothing", 404)
        ]
    );
    assert_eq!(head, (503, String::new()), "HEAD answers without a body");
    assert_eq!(
        options,
        (503, String::new()),
        "OPTIONS answers without a body"
    );
    assert!(metrics.contains("biblioteca_ready 0\n"), "{metrics}");
    prom::ensure_installed();
    let (ok, out) = promtool(&["check", "metrics"], Some(&metrics), &dir);
    assert!(ok, "promtool check metrics: {out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `metrics.enabled = false` listens nowhere; a taken port stops the start.
#[test]
fn turned_off_listens_nowhere_and_a_taken_port_is_an_error() {
    let dir = scratch("off");
    let eps: Vec<String> = (0..4)
        .map(|_| format!("tcp://127.0.0.1:{}", free_port().unwrap()))
        .collect();
    let base = format!(
        "frontend = \"{}\"\npublisher = \"{}\"\nbackchannel = \"{}\"\nstorage = \"{}\"\n",
        eps[0], eps[1], eps[2], eps[3]
    );
    let port = free_port().unwrap();
    let binary = find_binary("biblioteca-carga", None).unwrap();
    let spec = ServiceSpec::new(
        "carga-off",
        &binary,
        format!("{base}[metrics]\nenabled = false\nport = {port}\n"),
        &dir,
    );
    let mut svc = Service::start(spec).unwrap();
    assert!(
        !port_in_use(port),
        "nothing listens on {port} with the endpoint off"
    );
    svc.stop().unwrap();

    let taken = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let config = dir.join("carga-taken.toml");
    std::fs::write(&config, format!("{base}[metrics]\nport = {port}\n")).unwrap();
    let out = Command::new(&binary)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    drop(taken);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with its metrics port taken");
    assert!(
        stderr.contains(&format!(
            "metrics endpoint: cannot listen on 127.0.0.1:{port}"
        )),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The whole pipeline under a real Prometheus.
#[test]
fn prometheus_watches_the_pipeline() {
    let mut w = World::start("pipeline");
    let targets = w.targets();
    let p = Prometheus::start(&w.dir.join("prometheus"), &targets);
    let all = targets.len() as f64;
    p.wait_for("count(up == 1)", Duration::from_secs(30), |v| v == all);

    // Every service's exposition passes promtool; health while all is well.
    for (job, port) in &targets {
        let (code, text) = http("GET", &format!("http://127.0.0.1:{port}/metrics")).unwrap();
        assert_eq!(code, 200, "{job}");
        let (ok, out) = promtool(&["check", "metrics"], Some(&text), &w.dir);
        assert!(ok, "promtool check metrics on {job}: {out}");
        assert_eq!(status(*port, "/liveness"), 200, "{job} liveness");
        assert_eq!(status(*port, "/readiness"), 200, "{job} readiness");
    }
    let sp = w.storage_port();
    assert_eq!(status(sp, "/primary"), 200, "writer present");
    assert_eq!(
        http("HEAD", &format!("http://127.0.0.1:{sp}/primary")).unwrap(),
        (200, String::new())
    );

    // N requests: the load manager's counters add up to N, the actors' to
    // the writes, and a latency quantile is a number.
    let mut answered = 0;
    for i in 0..10 {
        let isbn = ISBNS[i % 4];
        let user = format!("metrics_{i}");
        for op in [
            Operacion::Prestamo,
            Operacion::Consulta,
            Operacion::Devolucion,
        ] {
            w.request(op, isbn, &user);
            answered += 1;
        }
    }
    p.wait_for(
        "sum(biblioteca_load_manager_requests_total)",
        Duration::from_secs(15),
        |v| v == f64::from(answered),
    );
    p.wait_for(
        "sum(biblioteca_actor_operations_total)",
        Duration::from_secs(15),
        |v| v == 20.0,
    );
    p.wait_for(
        "sum(biblioteca_storage_requests_total{operation=\"consulta\"})",
        Duration::from_secs(15),
        |v| v == 10.0,
    );
    let q = p.wait_for(
        "histogram_quantile(0.9, sum by (le) (rate(biblioteca_load_manager_request_duration_seconds_bucket[1m])))",
        Duration::from_secs(15),
        f64::is_finite,
    );
    println!("p90 of the load manager's request duration: {q:.4} s");
    assert!(q > 0.0 && q < 5.0, "{q}");

    expressions_are_accepted(&p);

    // Replication as the writer sees it, and the timeline.
    p.wait_for(
        "biblioteca_storage_standby_sync_state{node=\"standby\",state=\"sync\"}",
        Duration::from_secs(20),
        |v| v == 1.0,
    );
    let tl = p.wait_for(
        "biblioteca_storage_timeline",
        Duration::from_secs(10),
        |v| v >= 1.0,
    );

    // A killed actor's last heartbeat ages.
    let age = "time() - biblioteca_load_manager_actor_last_heartbeat_timestamp_seconds{operation=\"devolucion\"}";
    w.kill_actor(Operacion::Devolucion);
    let a0 = p.scalar(age).unwrap();
    let a1 = p.wait_for(age, Duration::from_secs(15), |v| v >= a0 + 5.0);
    println!("devolucion's heartbeat age: {a0:.1} s at the kill, then {a1:.1} s");
    let other = p
        .scalar("time() - biblioteca_load_manager_actor_last_heartbeat_timestamp_seconds{operation=\"prestamo\"}")
        .unwrap();
    assert!(other < 3.0, "a live actor's heartbeat age is {other}");
    p.wait_for(
        "up{job=\"biblioteca-actor-devolucion\"}",
        Duration::from_secs(10),
        |v| v == 0.0,
    );

    // The standby stops in `disponible`: degraded, and the alert fires.
    w.cluster.standby().stop(StopMode::Fast).unwrap();
    p.wait_for(
        "biblioteca_storage_replication_degraded",
        Duration::from_secs(30),
        |v| v == 1.0,
    );
    p.wait_for(
        "biblioteca_storage_replication_transitions_total{to=\"degradada\"}",
        Duration::from_secs(5),
        |v| v >= 1.0,
    );
    p.wait_for(
        "biblioteca_storage_standby_sync_state{node=\"standby\",state=\"absent\"}",
        Duration::from_secs(10),
        |v| v == 1.0,
    );
    p.wait_for(
        "ALERTS{alertname=\"BibliotecaReplicationDegraded\",alertstate=\"firing\"}",
        Duration::from_secs(10),
        |v| v == 1.0,
    );
    // It comes back and catches up: synchronous again.
    w.cluster.standby().start().unwrap();
    p.wait_for(
        "biblioteca_storage_replication_degraded",
        Duration::from_secs(60),
        |v| v == 0.0,
    );

    // The primary stops: the writer is gone, reads still have a node.
    w.cluster.primary().stop(StopMode::Fast).unwrap();
    w.wait_status(sp, "/primary", 503);
    assert_eq!(
        status(sp, "/readiness"),
        200,
        "the standby still answers reads"
    );
    p.wait_for(
        "sum(biblioteca_storage_writer)",
        Duration::from_secs(10),
        |v| v == 0.0,
    );

    // Promote: a new timeline, a writer again, and the tool's textfile.
    let textfiles = w.dir.join("textfiles");
    std::fs::create_dir_all(&textfiles).unwrap();
    let (ok, out) = w.failover(&["--textfile-dir", textfiles.to_str().unwrap(), "promote"]);
    assert!(ok, "promote: {out}");
    w.wait_status(sp, "/primary", 200);
    p.wait_for(
        "biblioteca_storage_timeline",
        Duration::from_secs(15),
        |v| v > tl,
    );
    let text = std::fs::read_to_string(textfiles.join("biblioteca_failover_promote.prom")).unwrap();
    assert!(
        text.contains("biblioteca_failover_last_run_success{action=\"promote\"} 1"),
        "{text}"
    );
    let (ok, out) = promtool(&["check", "metrics"], Some(&text), &w.dir);
    assert!(ok, "promtool check metrics on the textfile: {out}");

    // The old primary returns on the old timeline: fenced, never the writer.
    w.cluster.primary().start().unwrap();
    p.wait_for(
        "biblioteca_storage_node_fenced{node=\"primary\"}",
        Duration::from_secs(20),
        |v| v == 1.0,
    );
    assert_eq!(status(sp, "/primary"), 200, "the promoted standby writes");
    w.cluster.standby().stop(StopMode::Fast).unwrap();
    w.wait_status(sp, "/primary", 503);
    // The fenced node is never used, not even for reads: nothing to serve.
    assert_eq!(status(sp, "/readiness"), 503, "only a fenced node is left");
    drop(p);
    w.finish();
}

/// Every expression of the dashboard and of the alert rules is accepted
/// by this Prometheus, and every rule evaluates without error.
fn expressions_are_accepted(p: &Prometheus) {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(prom::monitoring_dir().join("dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() > 10, "the dashboard has its panels");
    let deadline = Instant::now() + Duration::from_secs(15);
    let rules = loop {
        let (_, body) = http("GET", &format!("http://127.0.0.1:{}/api/v1/rules", p.port)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let rules: Vec<serde_json::Value> = v["data"]["groups"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        if !rules.is_empty() && rules.iter().all(|r| r["health"] == "ok") {
            break rules;
        }
        assert!(
            Instant::now() < deadline,
            "rules not all healthy: {rules:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(rules.len(), 8, "every alert rule loaded");
    exprs.extend(
        rules
            .iter()
            .map(|r| r["query"].as_str().unwrap().to_string()),
    );
    for e in &exprs {
        let v = p.query_raw(e);
        assert_eq!(v["status"], "success", "{e}: {v}");
    }
    println!("{} expressions accepted", exprs.len());
}
