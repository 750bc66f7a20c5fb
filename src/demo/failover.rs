//! Parts 5-7 of the reference scenario: the primary dies, requests fail fast,
//! `biblioteca-failover promote` turns the standby into the primary, nothing
//! acknowledged is lost and loans work again.
//!
//! The failover runs as the real operator command (printed first, so a person
//! can type it themselves next time) against the `failover.toml` the demo
//! wrote.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::scenario::{describe, Narrator, Requester, GUIDE_ISBNS};
use super::Demo;
use biblioteca_cluster::pg::run_within;
use biblioteca_cluster::Node;
use biblioteca_failover::storage::query_target;
use biblioteca_failover::StorageTarget;
use biblioteca_protocol::{CodigoError, Operacion};
use biblioteca_stack::launch::find_binary;

/// The failover tool bounds each of its own steps; this bounds the whole.
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(300);

fn counts(node: &Node) -> Option<(i64, i64)> {
    let books = node.sql("SELECT COUNT(*) FROM libros").ok()?.parse().ok()?;
    let loans = node
        .sql("SELECT COUNT(*) FROM prestamos")
        .ok()?
        .parse()
        .ok()?;
    Some((books, loans))
}

/// The node the storage manager says it writes to, asked as the operator
/// (`biblioteca-failover`'s key) when CURVE is on.
fn serving_node(demo: &Demo) -> String {
    let target = StorageTarget {
        endpoint: demo.stack.ports().storage_endpoint(),
        curve: demo.stack.spec().operator_curve(),
        ..StorageTarget::default()
    };
    match query_target(&target, Duration::from_secs(2)) {
        Ok(Some(s)) => s.writer.unwrap_or_else(|| "<none>".into()),
        Ok(None) => "<no answer>".into(),
        Err(e) => format!("<{e}>"),
    }
}

/// Runs parts 5-7 on a demo whose parts 2-4 already ran.
pub fn run(n: &mut Narrator, demo: &Demo) {
    let primary = demo.cluster.primary();
    let standby = demo.cluster.standby();
    let endpoint = demo.stack.ports().frontend_endpoint();
    let mut req = Requester::with_curve(&endpoint, demo.stack.spec().client_curve());

    n.section("Part 5: the primary fails; failover to the standby");
    let before = counts(primary);
    n.check(
        "5.1",
        "snapshot of libros and prestamos on the primary",
        before.is_some(),
        format!("{before:?}"),
    );

    let killed = primary.kill9();
    n.check(
        "5.2",
        "primary killed (SIGKILL to its postmaster)",
        killed.is_ok(),
        match &killed {
            Ok(()) => "only the standby is running".to_string(),
            Err(e) => e.to_string(),
        },
    );

    let r = req.send(Operacion::Consulta, GUIDE_ISBNS[0], "");
    let stale = r
        .datos
        .get("posiblemente_desactualizado")
        .and_then(Value::as_bool)
        == Some(true);
    n.check(
        "5.3",
        "consulta is served from the standby, marked possibly stale",
        r.exito && stale,
        describe(&r),
    );
    let started = Instant::now();
    let r = req.send(Operacion::Prestamo, GUIDE_ISBNS[2], "usuario_durante_fallo");
    let took = started.elapsed();
    let refused = !r.exito
        && matches!(
            r.error,
            Some(CodigoError::AlmacenamientoNoDisponible | CodigoError::ServicioNoDisponible)
        );
    n.check(
        "5.3",
        "a loan fails with a clear error instead of hanging",
        refused && took < Duration::from_secs(10),
        format!("{} after {} ms", describe(&r), took.as_millis()),
    );

    let promoted = promote(demo);
    n.check(
        "5.4",
        "biblioteca-failover promote",
        promoted.is_ok(),
        match &promoted {
            Ok(took) => format!("done in {:.1} s", took.as_secs_f64()),
            Err(e) => e.clone(),
        },
    );
    let recovery = standby
        .sql("SELECT pg_is_in_recovery()")
        .unwrap_or_else(|e| e.to_string());
    n.check(
        "5.5",
        "the standby is now a primary (pg_is_in_recovery = f)",
        recovery == "f",
        format!("pg_is_in_recovery = {recovery}"),
    );
    let after = counts(standby);
    n.check(
        "5.6",
        "all data preserved (counts before = after)",
        before.is_some() && before == after,
        format!("libros, prestamos before {before:?}, after {after:?}"),
    );

    n.section("Part 6: the storage manager writes to the new primary");
    let nodo = serving_node(demo);
    n.check(
        "6.1",
        "the storage manager serves from the standby node",
        nodo == standby.name,
        format!("status: nodo = {nodo}"),
    );
    let user = "usuario_post_failover";
    let r = req.send(Operacion::Prestamo, GUIDE_ISBNS[2], user);
    n.check(
        "6.2",
        &format!("prestamo {} for {user}", GUIDE_ISBNS[2]),
        r.exito,
        describe(&r),
    );
    let state = standby
        .sql(&format!(
            "SELECT estado FROM prestamos WHERE usuario='{user}'"
        ))
        .unwrap_or_else(|e| e.to_string());
    n.check(
        "6.3",
        "the loan is on the new primary",
        state == "ACTIVO",
        format!("estado = {state}"),
    );

    n.section("Part 7: final figures (new primary)");
    for (what, query) in [
        ("books", "SELECT COUNT(*) FROM libros"),
        (
            "active loans",
            "SELECT COUNT(*) FROM prestamos WHERE estado='ACTIVO'",
        ),
        (
            "returned loans",
            "SELECT COUNT(*) FROM prestamos WHERE estado='DEVUELTO'",
        ),
    ] {
        println!(
            "        {what}: {}",
            standby.sql(query).unwrap_or_else(|e| e.to_string())
        );
    }
}

/// Runs `biblioteca-failover --config DIR/failover.toml promote`, echoing
/// the command and its output.
fn promote(demo: &Demo) -> Result<Duration, String> {
    let bin = find_binary("biblioteca-failover", demo.config.bin_dir.as_deref())
        .map_err(|e| e.to_string())?;
    let config = demo.dir.join("failover.toml");
    println!(
        "        $ {} --config {} promote",
        bin.display(),
        config.display()
    );
    let started = Instant::now();
    let mut cmd = Command::new(&bin);
    cmd.arg("--config").arg(&config).arg("promote");
    match run_within(&mut cmd, PROMOTE_TIMEOUT) {
        Ok(out) => {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                println!("        | {line}");
            }
            Ok(started.elapsed())
        }
        Err(e) => {
            for line in e.to_string().lines() {
                println!("        ! {line}");
            }
            Err(format!("promote failed: {e}"))
        }
    }
}
