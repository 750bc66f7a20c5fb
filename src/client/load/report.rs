//! Aggregation of load-test samples and the final report.
//!
//! Samples stream in from the virtual clients; [`Aggregate`] keeps the
//! latencies ([`Latencies`], an HDR histogram) of each operation and of the
//! run, plus those of the current second, which is folded into a [`Point`] of the time
//! series when the second ends. [`LoadReport`] is the finished, serializable
//! report: per operation and aggregated, with the series for CSV and charts.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::stats::Latencies;
use biblioteca_protocol::Operacion;

/// Label for requests whose outcome stayed unknown.
pub const NO_REPLY: &str = "SinRespuesta";

/// One finished request, as a virtual client reports it.
#[derive(Debug, Clone)]
pub struct Sample {
    pub operacion: Operacion,
    /// From the intended send time to the reply (`None`: no reply).
    pub latency: Option<Duration>,
    /// `None` on success, else the error code (or [`NO_REPLY`]).
    pub failure: Option<&'static str>,
}

#[derive(Debug, Clone, Default)]
struct PerOperation {
    requests: u64,
    failures: BTreeMap<&'static str, u64>,
    latencies: Latencies,
}

impl PerOperation {
    fn record(&mut self, m: &Sample) {
        self.requests += 1;
        if let Some(code) = m.failure {
            *self.failures.entry(code).or_default() += 1;
        }
        if let Some(l) = m.latency {
            self.latencies.push(l);
        }
    }

    fn row(&self, operacion: &str, seconds: f64) -> OperationRow {
        let l = &self.latencies;
        let q = |p: f64| l.quantile_ms(p).unwrap_or(0.0);
        OperationRow {
            operacion: operacion.to_string(),
            requests: self.requests,
            failures: self.failures.values().sum(),
            failures_by_code: self
                .failures
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            rps: if seconds > 0.0 {
                self.requests as f64 / seconds
            } else {
                0.0
            },
            mean_ms: l.mean_ms().unwrap_or(0.0),
            stddev_ms: l.stddev_ms().unwrap_or(0.0),
            min_ms: l.min_ms().unwrap_or(0.0),
            p50_ms: q(0.50),
            p66_ms: q(0.66),
            p75_ms: q(0.75),
            p80_ms: q(0.80),
            p90_ms: q(0.90),
            p95_ms: q(0.95),
            p98_ms: q(0.98),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            p9999_ms: q(0.9999),
            max_ms: l.max_ms().unwrap_or(0.0),
        }
    }
}

/// Report row of one operation (or `Aggregated`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OperationRow {
    pub operacion: String,
    pub requests: u64,
    pub failures: u64,
    pub failures_by_code: BTreeMap<String, u64>,
    pub rps: f64,
    pub mean_ms: f64,
    pub stddev_ms: f64,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p66_ms: f64,
    pub p75_ms: f64,
    pub p80_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p98_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub p9999_ms: f64,
    pub max_ms: f64,
}

/// One second of the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// Seconds since the start (end of this interval).
    pub t_s: u64,
    pub rps: f64,
    pub failures_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    /// Cumulative totals at the end of this second.
    pub total_requests: u64,
    pub total_failures: u64,
}

/// Live aggregation; fed by the coordinating thread only.
#[derive(Debug, Default)]
pub struct Aggregate {
    per_op: BTreeMap<&'static str, PerOperation>,
    total: PerOperation,
    current_second: u64,
    second: PerOperation,
    series: Vec<Point>,
}

impl Aggregate {
    pub fn new() -> Aggregate {
        Aggregate::default()
    }

    /// Records a sample that completed `elapsed` after the start.
    pub fn record(&mut self, m: &Sample, elapsed: Duration) {
        self.advance(elapsed);
        self.per_op
            .entry(m.operacion.as_str())
            .or_default()
            .record(m);
        self.total.record(m);
        self.second.record(m);
    }

    /// Closes every whole second before `elapsed` into the series.
    pub fn advance(&mut self, elapsed: Duration) {
        let now = elapsed.as_secs();
        while self.current_second < now {
            self.close_second(1.0);
        }
    }

    fn close_second(&mut self, length_s: f64) {
        self.current_second += 1;
        let s = &self.second;
        let q = |p: f64| s.latencies.quantile_ms(p).unwrap_or(0.0);
        let failures: u64 = s.failures.values().sum();
        let total_failures: u64 = self.total.failures.values().sum();
        self.series.push(Point {
            t_s: self.current_second,
            rps: s.requests as f64 / length_s,
            failures_s: failures as f64 / length_s,
            p50_ms: q(0.50),
            p90_ms: q(0.90),
            p99_ms: q(0.99),
            total_requests: self.total.requests,
            total_failures,
        });
        self.second.requests = 0;
        self.second.failures.clear();
        self.second.latencies.reset();
    }

    pub fn requests(&self) -> u64 {
        self.total.requests
    }

    pub fn failures(&self) -> u64 {
        self.total.failures.values().sum()
    }

    /// Aggregated p50 and p99 so far, in milliseconds.
    pub fn p50_p99(&self) -> (f64, f64) {
        let l = &self.total.latencies;
        (
            l.quantile_ms(0.5).unwrap_or(0.0),
            l.quantile_ms(0.99).unwrap_or(0.0),
        )
    }

    /// The finished report of a run that lasted `elapsed`.
    pub fn report(mut self, clients: usize, start_unix: u64, elapsed: Duration) -> LoadReport {
        self.advance(elapsed);
        let rest = elapsed.as_secs_f64() - self.current_second as f64;
        // A sliver of a second would show as a spike in per-second rates.
        if self.second.requests > 0 && rest >= 0.5 {
            self.close_second(rest);
        }
        let secs = elapsed.as_secs_f64();
        LoadReport {
            clients,
            start_unix,
            duration_s: secs,
            operations: self.per_op.iter().map(|(op, s)| s.row(op, secs)).collect(),
            total: self.total.row("Aggregated", secs),
            series: self.series,
        }
    }
}

/// A finished load run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadReport {
    pub clients: usize,
    /// Wall-clock start, seconds since the Unix epoch.
    pub start_unix: u64,
    pub duration_s: f64,
    pub operations: Vec<OperationRow>,
    pub total: OperationRow,
    pub series: Vec<Point>,
}

impl LoadReport {
    /// The per-operation table and failures by code.
    pub fn text(&self) -> String {
        let mut out = format!(
            "{} clients, {:.1} s\n{:<12} {:>8} {:>7} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
            self.clients,
            self.duration_s,
            "OPERATION",
            "REQS",
            "FAILS",
            "REQ/S",
            "MEAN",
            "STDDEV",
            "P50",
            "P90",
            "P99",
            "P99.9",
            "MAX"
        );
        for f in self.operations.iter().chain(std::iter::once(&self.total)) {
            out.push_str(&format!(
                "{:<12} {:>8} {:>7} {:>9.1} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}\n",
                f.operacion,
                f.requests,
                f.failures,
                f.rps,
                f.mean_ms,
                f.stddev_ms,
                f.p50_ms,
                f.p90_ms,
                f.p99_ms,
                f.p999_ms,
                f.max_ms
            ));
        }
        out.push_str("latencies in ms");
        let failures: Vec<String> = self
            .operations
            .iter()
            .flat_map(|f| {
                f.failures_by_code
                    .iter()
                    .map(move |(code, n)| format!("  {} {code}: {n}", f.operacion))
            })
            .collect();
        if !failures.is_empty() {
            out.push_str("\nfailures by code:\n");
            out.push_str(&failures.join("\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(op: Operacion, ms: Option<u64>, failure: Option<&'static str>) -> Sample {
        Sample {
            operacion: op,
            latency: ms.map(Duration::from_millis),
            failure,
        }
    }

    #[test]
    fn aggregates_per_operation_and_over_time() {
        let mut a = Aggregate::new();
        let s = Duration::from_millis;
        for i in 1..=100u64 {
            a.record(&m(Operacion::Prestamo, Some(i), None), s(10 * i));
        }
        a.record(
            &m(Operacion::Devolucion, Some(5), Some("PrestamoNoEncontrado")),
            s(1500),
        );
        a.record(&m(Operacion::Devolucion, None, Some(NO_REPLY)), s(2100));
        assert_eq!(a.requests(), 102);
        assert_eq!(a.failures(), 2);
        let r = a.report(4, 0, s(2500));
        assert_eq!(r.clients, 4);
        let p = &r
            .operations
            .iter()
            .find(|f| f.operacion == "prestamo")
            .unwrap();
        assert_eq!(p.requests, 100);
        assert!((p.p50_ms - 50.0).abs() < 0.1, "{}", p.p50_ms);
        assert!((p.p99_ms - 99.0).abs() < 0.1, "{}", p.p99_ms);
        assert!((p.max_ms - 100.0).abs() < 0.1);
        assert!((p.mean_ms - 50.5).abs() < 0.1);
        let d = r
            .operations
            .iter()
            .find(|f| f.operacion == "devolucion")
            .unwrap();
        assert_eq!(d.failures, 2);
        assert_eq!(d.failures_by_code[NO_REPLY], 1);
        assert_eq!(r.total.requests, 102);
        assert!((r.total.rps - 102.0 / 2.5).abs() < 1e-9);
        // Seconds 1 and 2 closed, plus the half second at the end.
        assert_eq!(r.series.len(), 3);
        assert_eq!(r.series[0].rps, 99.0);
        assert_eq!(r.series[1].total_requests, 101);
        assert_eq!(r.series[2].rps, 2.0);
        let text = r.text();
        assert!(
            text.contains("Aggregated") && text.contains("SinRespuesta: 1"),
            "{text}"
        );
    }

    #[test]
    fn empty_runs_report_zeros() {
        let r = Aggregate::new().report(1, 0, Duration::ZERO);
        assert_eq!(r.total.requests, 0);
        assert_eq!(r.total.p99_ms, 0.0);
        assert!(r.series.is_empty());
    }
}
