//! Locust-style CSV files, so existing Locust tooling and spreadsheets read a
//! run: `PREFIX_stats.csv` (one row per operation plus `Aggregated`) and
//! `PREFIX_stats_history.csv` (one aggregated row per second).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::informe::{FilaOp, Informe};

/// The request "type" column; Locust puts the HTTP method there.
const TIPO: &str = "ZMQ";

const STATS_HEADER: &str = "Type,Name,Request Count,Failure Count,Median Response Time,\
Average Response Time,Min Response Time,Max Response Time,Average Content Size,Requests/s,\
Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%";

const HISTORY_HEADER: &str = "Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,66%,\
75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%,Total Request Count,Total Failure Count,\
Total Median Response Time,Total Average Response Time,Total Min Response Time,\
Total Max Response Time,Total Average Content Size";

/// `PREFIX_stats.csv` and `PREFIX_stats_history.csv`.
pub fn rutas(prefix: &Path) -> (PathBuf, PathBuf) {
    let with = |suffix: &str| {
        let mut s = prefix.as_os_str().to_os_string();
        s.push(suffix);
        PathBuf::from(s)
    };
    (with("_stats.csv"), with("_stats_history.csv"))
}

pub fn stats(informe: &Informe, mut w: impl Write) -> std::io::Result<()> {
    writeln!(w, "{STATS_HEADER}")?;
    for f in &informe.operaciones {
        fila(&mut w, TIPO, f, informe.duracion_s)?;
    }
    fila(&mut w, "", &informe.total, informe.duracion_s)
}

fn fila(w: &mut impl Write, tipo: &str, f: &FilaOp, secs: f64) -> std::io::Result<()> {
    let fails_s = if secs > 0.0 {
        f.fallos as f64 / secs
    } else {
        0.0
    };
    writeln!(
        w,
        "{tipo},{},{},{},{:.3},{:.3},{:.3},{:.3},0,{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3}",
        f.operacion,
        f.peticiones,
        f.fallos,
        f.p50_ms,
        f.media_ms,
        f.min_ms,
        f.max_ms,
        f.rps,
        fails_s,
        f.p50_ms,
        f.p66_ms,
        f.p75_ms,
        f.p80_ms,
        f.p90_ms,
        f.p95_ms,
        f.p98_ms,
        f.p99_ms,
        f.p999_ms,
        f.p9999_ms,
        f.max_ms
    )
}

pub fn history(informe: &Informe, mut w: impl Write) -> std::io::Result<()> {
    writeln!(w, "{HISTORY_HEADER}")?;
    for p in &informe.serie {
        // Only p50/p90/p99 are kept per second; Locust writes N/A for gaps too.
        writeln!(
            w,
            "{},{},,Aggregated,{:.3},{:.3},{:.3},N/A,N/A,N/A,{:.3},N/A,N/A,{:.3},N/A,N/A,N/A,{},{},N/A,N/A,N/A,N/A,0",
            informe.inicio_unix + p.t_s,
            informe.clientes,
            p.rps,
            p.fallos_s,
            p.p50_ms,
            p.p90_ms,
            p.p99_ms,
            p.total_peticiones,
            p.total_fallos
        )?;
    }
    Ok(())
}

/// Writes both files next to `prefix`.
pub fn escribir(informe: &Informe, prefix: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
    let (a, b) = rutas(prefix);
    stats(informe, std::io::BufWriter::new(std::fs::File::create(&a)?))?;
    history(informe, std::io::BufWriter::new(std::fs::File::create(&b)?))?;
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::informe::{Agregado, Muestra};
    use biblioteca_protocol::Operacion;
    use std::time::Duration;

    #[test]
    fn files_have_locust_columns() {
        let mut a = Agregado::new().unwrap();
        for i in 0..10u64 {
            a.record(
                &Muestra {
                    operacion: Operacion::Prestamo,
                    latencia: Some(Duration::from_millis(5)),
                    fallo: (i == 0).then_some("PrestamoActivo"),
                },
                Duration::from_millis(300 * i),
            );
        }
        let r = a.informe(2, 1_700_000_000, Duration::from_secs(3));
        let mut out = Vec::new();
        stats(&r, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let cols = STATS_HEADER.split(',').count();
        assert!(lines.iter().all(|l| l.split(',').count() == cols), "{text}");
        assert!(lines[1].starts_with("ZMQ,prestamo,10,1,"));
        assert!(lines[2].starts_with(",Aggregated,10,1,"));
        let mut out = Vec::new();
        history(&r, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let cols = HISTORY_HEADER.split(',').count();
        assert!(text.lines().all(|l| l.split(',').count() == cols), "{text}");
        assert!(text
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("1700000001,2,,Aggregated,"));
        let (s, h) = rutas(Path::new("/tmp/run1"));
        assert_eq!(s, Path::new("/tmp/run1_stats.csv"));
        assert_eq!(h, Path::new("/tmp/run1_stats_history.csv"));
    }
}
