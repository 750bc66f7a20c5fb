//! The database-only baseline: `pgbench` running the storage manager's own
//! loan and return transactions, and the parsing of what it prints and logs.
//!
//! The custom script alternates per pgbench client between the loan and the
//! matching return (pgbench keeps a client's variables from one script run to
//! the next), so each pgbench "transaction" is ONE request, exactly like one
//! request of the end-to-end pipeline, and stock never runs out. Each
//! transaction is the very statement `storage::ops::apply_write` sends: one
//! call of the write function (`biblioteca_prestamo` / `biblioteca_devolucion`,
//! migration 0004) in autocommit, with the same arguments, so the comparison
//! stays like for like.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use biblioteca_cluster::PgBin;
use biblioteca_cluster::{APP_DB, APP_USER};

#[derive(Debug, thiserror::Error)]
pub enum PgbenchError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot run pgbench: {0}")]
    Spawn(std::io::Error),
    #[error("pgbench failed ({status}): {stderr}")]
    Failed { status: String, stderr: String },
    #[error("pgbench output has no {0} line:\n{1}")]
    Unparsed(&'static str, String),
    #[error("histogram: {0}")]
    Histogram(#[from] hdrhistogram::CreationError),
    #[error(transparent)]
    Cluster(#[from] biblioteca_cluster::ClusterError),
}

/// The pgbench script. Variables: `libros` (catalogue size), `run` (keeps
/// request ids and users of successive runs apart), `fase` and `seq`
/// (both start at 0, set with `-D`).
pub fn script() -> String {
    let id = "'pgb-' || :run::text || '-' || :client_id::text || '-' || :seq::text";
    let usuario = "'pgb-' || :run::text || '-' || :client_id::text";
    let isbn = "'979-' || lpad(:code::text, 10, '0')";
    // Timeline 1 is the newest a fresh benchmark cluster has seen; the loan
    // period is `storage::ops`' 14 days.
    format!(
        r#"-- biblioteca-bench: the storage manager's loan and return transactions
\set seq :seq + 1
\if :fase = 0
\set n random(1, :libros)
\set c (10 - (39 + 3 * ((:n / 100000000) % 10 + (:n / 1000000) % 10 + (:n / 10000) % 10 + (:n / 100) % 10 + :n % 10) + (:n / 10000000) % 10 + (:n / 100000) % 10 + (:n / 1000) % 10 + (:n / 10) % 10) % 10) % 10
\set code :n * 10 + :c
SELECT biblioteca_prestamo({id}, {isbn}, {usuario}, 1, 14)::text;
\set fase 1
\else
SELECT biblioteca_devolucion({id}, {isbn}, {usuario}, 1)::text;
\set fase 0
\endif
"#
    )
}

/// One pgbench run.
#[derive(Debug, Clone)]
pub struct Corrida<'a> {
    pub pg: &'a PgBin,
    /// Owned by the PostgreSQL user: script, logs and pgbench's cwd.
    pub dir: &'a Path,
    pub port: u16,
    pub clientes: usize,
    pub duracion: Duration,
    pub libros: u64,
    /// Distinguishes this run's ids and users from earlier runs.
    pub run: u32,
}

/// What pgbench reported, plus percentiles from its per-transaction log.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Resultado {
    pub transacciones: u64,
    pub fallidas: u64,
    pub tps: f64,
    pub latencia_media_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Clients pgbench aborted (an SQL error ends a client).
    pub abortado: bool,
}

impl Corrida<'_> {
    pub fn ejecutar(&self) -> Result<Resultado, PgbenchError> {
        let path = self.dir.join("prestamo.sql");
        std::fs::write(&path, script()).map_err(|source| PgbenchError::Io {
            path: path.clone(),
            source,
        })?;
        self.pg.give(&path)?;
        let logs = self.dir.join(format!("log-{}", self.run));
        self.pg.make_dir(&logs)?;
        let prefix = logs.join("pgb");
        let mut cmd = self.pg.command("pgbench", self.dir);
        cmd.args(["-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(["-U", APP_USER, "-n", "-M", "prepared", "-c"])
            .arg(self.clientes.to_string())
            .arg("-j")
            .arg(self.clientes.clamp(1, 2).to_string())
            .arg("-T")
            .arg(self.duracion.as_secs().max(1).to_string())
            .args(["-D", "fase=0", "-D", "seq=0", "-D"])
            .arg(format!("libros={}", self.libros))
            .arg("-D")
            .arg(format!("run={}", self.run))
            .arg("--log")
            .arg(format!("--log-prefix={}", prefix.display()))
            .arg("-f")
            .arg(&path)
            .arg(APP_DB);
        let out = cmd.output().map_err(PgbenchError::Spawn)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut r = match parse_resumen(&stdout) {
            Ok(r) => r,
            Err(_) if !out.status.success() => {
                return Err(PgbenchError::Failed {
                    status: out.status.to_string(),
                    stderr: tail(&stderr, 20),
                })
            }
            Err(e) => return Err(e),
        };
        r.abortado = !out.status.success() || stderr.contains("aborted");
        if r.abortado {
            tracing::warn!(stderr = %tail(&stderr, 10), "pgbench aborted clients");
        }
        let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        let entries = std::fs::read_dir(&logs).map_err(|source| PgbenchError::Io {
            path: logs.clone(),
            source,
        })?;
        for e in entries.flatten() {
            let text = std::fs::read_to_string(e.path()).map_err(|source| PgbenchError::Io {
                path: e.path(),
                source,
            })?;
            registrar_log(&text, &mut hist);
        }
        let _ = std::fs::remove_dir_all(&logs);
        if !hist.is_empty() {
            r.p50_ms = hist.value_at_quantile(0.50) as f64 / 1000.0;
            r.p99_ms = hist.value_at_quantile(0.99) as f64 / 1000.0;
        }
        Ok(r)
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The summary pgbench prints at the end of a run.
pub fn parse_resumen(stdout: &str) -> Result<Resultado, PgbenchError> {
    let mut r = Resultado::default();
    let mut tps = None;
    for line in stdout.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("number of transactions actually processed:") {
            r.transacciones = primer_numero(v).unwrap_or(0.0) as u64;
        } else if let Some(v) = line.strip_prefix("number of failed transactions:") {
            r.fallidas = primer_numero(v).unwrap_or(0.0) as u64;
        } else if let Some(v) = line.strip_prefix("latency average =") {
            r.latencia_media_ms = primer_numero(v).unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("tps =") {
            // Older pgbench prints two tps lines; the one without the
            // connection time is what we compare.
            if tps.is_none() || v.contains("without") {
                tps = primer_numero(v);
            }
        }
    }
    r.tps = tps.ok_or_else(|| PgbenchError::Unparsed("tps =", stdout.to_string()))?;
    Ok(r)
}

fn primer_numero(s: &str) -> Option<f64> {
    s.split_whitespace().next()?.parse().ok()
}

/// Adds the latencies of a `--log` file (`client tx time_us script epoch us`;
/// failed or skipped transactions have a word instead of a time).
pub fn registrar_log(text: &str, hist: &mut Histogram<u64>) {
    for line in text.lines() {
        let Some(us) = line.split_whitespace().nth(2) else {
            continue;
        };
        if let Ok(us) = us.parse::<u64>() {
            hist.saturating_record(us.clamp(1, 600_000_000));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALIDA_PG15: &str = "pgbench (15.8 (Debian 15.8-0+deb12u1))
transaction type: /tmp/x/prestamo.sql
scaling factor: 1
query mode: prepared
number of clients: 16
number of threads: 2
maximum number of tries: 1
duration: 20 s
number of transactions actually processed: 41234
number of failed transactions: 0 (0.000%)
latency average = 7.761 ms
initial connection time = 35.812 ms
tps = 2061.593190 (without initial connection time)
";

    #[test]
    fn parses_the_pgbench_summary() {
        let r = parse_resumen(SALIDA_PG15).unwrap();
        assert_eq!(r.transacciones, 41234);
        assert_eq!(r.fallidas, 0);
        assert!((r.tps - 2061.593190).abs() < 1e-6);
        assert!((r.latencia_media_ms - 7.761).abs() < 1e-9);
        let old = "tps = 10.5 (including connections establishing)\n\
                   tps = 11.5 (excluding connections establishing)\n";
        assert!((parse_resumen(old).unwrap().tps - 10.5).abs() < 1e-9);
        assert!(parse_resumen("pgbench: error: connection refused").is_err());
    }

    #[test]
    fn reads_latencies_from_the_transaction_log() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
        registrar_log(
            "0 1 1500 0 1700000000 1\n0 2 2500 0 1700000000 2\n1 1 failed 0 1700000000 3\n\n",
            &mut h,
        );
        assert_eq!(h.len(), 2);
        assert_eq!(h.max(), h.highest_equivalent(2500));
    }

    #[test]
    fn the_script_computes_the_seeded_isbns_check_digit() {
        // The script's check-digit expression, evaluated the same way.
        let c = |n: u64| {
            (10 - (39
                + 3 * ((n / 100000000) % 10
                    + (n / 1000000) % 10
                    + (n / 10000) % 10
                    + (n / 100) % 10
                    + n % 10)
                + (n / 10000000) % 10
                + (n / 100000) % 10
                + (n / 1000) % 10
                + (n / 10) % 10)
                % 10)
                % 10
        };
        for n in [1, 7, 42, 999, 1000, 123_456, 987_654_321] {
            let isbn = format!("979-{:010}", n * 10 + c(n));
            assert_eq!(isbn, biblioteca_protocol::catalogue::isbn(n), "book {n}");
        }
        assert!(script().contains("biblioteca_devolucion("));
    }
}
