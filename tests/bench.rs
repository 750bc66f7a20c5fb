//! `biblioteca-bench` end to end: the real binary builds its own cluster
//! (primary + synchronous standby) and services, runs every system it can
//! measure for a short step, and reports figures that came from those runs.
//! Nothing about speed is asserted (that is what the benchmark prints); what
//! is asserted is that each system did real work without failures and that
//! the report is consistent with itself.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use biblioteca_stack::launch::find_binary;
use serde_json::Value;

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {v}"))
}

/// CPU per request of `part` in system `system` of a row.
fn cpu(row: &Value, system: &str, part: &str) -> f64 {
    let s = row["cpu"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["system"] == system)
        .unwrap_or_else(|| panic!("no CPU figures for {system}: {row}"));
    s["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["part"] == part)
        .and_then(|p| p["us_per_request"].as_f64())
        .unwrap_or_else(|| panic!("no {part} in {system}: {s}"))
}

/// Removes what `--keep` left, however the test ends.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What `--keep` leaves: the database's files with no server running on
/// them, and the services' logs. Under load the actors log a sample of the
/// requests at info and one line a second counting the rest.
fn kept_run_is_stopped_and_logged(dir: &Path) {
    for node in ["primary", "standby"] {
        let data = dir.join("pg").join(node);
        assert!(data.join("PG_VERSION").is_file(), "{} kept", data.display());
        assert!(
            !data.join("postmaster.pid").exists(),
            "{node} still running after the bench ended"
        );
    }
    let log = std::fs::read_to_string(dir.join("servicios").join("actor-prestamo.log"))
        .expect("the loan actor's log");
    let processed = log.lines().filter(|l| l.contains("processed")).count();
    assert!(processed > 0, "no request line at all:\n{log}");
    assert!(
        log.contains("more requests in the last second"),
        "no summary of the lines not shown:\n{processed} request lines"
    );
    // At most 50 a second at info; a wall-clock second can straddle two
    // windows, so count per second of timestamp against twice that.
    let mut per_second = std::collections::HashMap::<&str, usize>::new();
    for l in log.lines().filter(|l| l.contains("processed")) {
        *per_second.entry(l.get(..19).unwrap_or("")).or_default() += 1;
    }
    let busiest = per_second.values().max().copied().unwrap_or(0);
    assert!(busiest <= 100, "{busiest} request lines in one second");
}

/// The real bench binary with every optional system, 2 s per step, as JSON.
fn bench(clientes: &str, libros: &str, extra: &[&str]) -> std::process::Output {
    Command::new(find_binary("biblioteca-bench", None).unwrap())
        .args([
            "--clientes",
            clientes,
            "--duracion",
            "2s",
            "--libros",
            libros,
        ])
        .args(["--almacenamiento", "--esqueleto", "--metricas", "--json"])
        .args(extra)
        .output()
        .expect("run biblioteca-bench")
}

#[test]
fn the_benchmark_measures_every_system_it_is_asked_for() {
    let out = bench("2", "50", &["--keep"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let kept = stderr
        .lines()
        .find_map(|l| l.strip_prefix("kept "))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("--keep did not name the directory: {stderr}"));
    let _cleanup = Cleanup(kept.clone());
    kept_run_is_stopped_and_logged(&kept);
    let r: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));

    let rows = r["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{r}");
    let f = &rows[0];
    assert_eq!(f["clients"], 2);
    let pgb = num(f, &["pgbench", "tps"]);
    assert!(pgb > 0.0, "pgbench did nothing: {f}");
    for system in ["ours", "storage_alone", "skeleton", "metrics_on"] {
        assert!(num(f, &[system, "rps"]) > 0.0, "{system} did nothing: {f}");
        assert!(num(f, &[system, "requests"]) > 0.0, "{f}");
        assert_eq!(num(f, &[system, "failures"]), 0.0, "{system} failed: {f}");
        assert!(num(f, &[system, "p99_ms"]) >= num(f, &[system, "p50_ms"]));
    }
    let ratio = num(f, &["ours", "rps"]) / pgb;
    assert!((num(f, &["ratio"]) - ratio).abs() < 1e-9, "{f}");

    // Each system's work shows up in the processes that did it: the
    // skeleton's own load manager and actor, not the real ones, are idle
    // when the storage manager is driven alone.
    let sistemas: Vec<&str> = f["cpu"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["system"].as_str().unwrap())
        .collect();
    assert_eq!(
        sistemas,
        ["pgbench", "ours", "storage alone", "skeleton", "metrics on"],
        "{f}"
    );
    for system in ["ours", "skeleton", "metrics on"] {
        for part in ["pg primary", "almacenamiento", "carga", "actors", "client"] {
            assert!(cpu(f, system, part) > 0.0, "{system}: no {part} CPU");
        }
    }
    assert!(cpu(f, "storage alone", "almacenamiento") > 0.0);
    assert!(
        cpu(f, "storage alone", "carga") < cpu(f, "ours", "carga") / 2.0,
        "the load manager worked while nobody sent it anything: {f}"
    );

    let floor = r["floor"].as_array().expect("floor");
    assert_eq!(floor.len(), 1);
    assert!(num(&floor[0], &["us_per_hop"]) > 0.0);
    let memory = r["memory"].as_array().expect("memory");
    assert_eq!(
        memory.len(),
        10,
        "storage, load manager, 3 actors, with metrics off and on: {r}"
    );
    assert!(
        memory
            .iter()
            .any(|m| m["service"] == "metrics on: almacenamiento"),
        "{r}"
    );
    assert!(memory.iter().all(|m| num(m, &["vm_hwm_kb"]) > 0.0));
    let targets = r["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 4);
    // 16 clients were not run: that target is "not measured", never met.
    assert_eq!(targets[0]["met"], Value::Null, "{r}");
}

#[test]
fn the_guide_catalogue_runs_every_system_on_the_four_guide_books() {
    let out = bench("4", "4", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    assert!(
        stderr.contains("4 books (the guide's catalogue) ready"),
        "not the guide's catalogue: {stderr}"
    );
    let r: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(r["books"], 4, "{r}");
    let f = &r["rows"][0];
    assert!(
        num(f, &["pgbench", "tps"]) > 0.0,
        "pgbench did nothing: {f}"
    );
    assert_eq!(num(f, &["pgbench", "failed_requests"]), 0.0, "{f}");
    assert_eq!(f["pgbench"]["aborted"], Value::Bool(false), "{f}");
    for system in ["ours", "storage_alone", "skeleton"] {
        assert!(
            num(f, &[system, "requests"]) > 0.0,
            "{system} did nothing: {f}"
        );
        // Stock was raised: a refused loan would mean the books were not
        // the guide's (or not stocked), and would count as a failure.
        assert_eq!(num(f, &[system, "failures"]), 0.0, "{system} failed: {f}");
    }
}
