//! Aggregation of load-test samples and the final report.
//!
//! Samples stream in from the virtual clients; [`Agregado`] keeps one HDR
//! histogram per operation (microseconds, 3 significant digits) plus a small
//! one for the current second, which is folded into a [`Punto`] of the time
//! series when the second ends. [`Informe`] is the finished, serializable
//! report: per operation and aggregated, with the series for CSV and charts.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::{CreationError, Histogram};
use serde::Serialize;

use biblioteca_protocol::Operacion;

/// Latencies above this are recorded as this (microseconds).
const MAX_US: u64 = 600_000_000;

/// Label for requests whose outcome stayed unknown.
pub const SIN_RESPUESTA: &str = "SinRespuesta";

/// One finished request, as a virtual client reports it.
#[derive(Debug, Clone)]
pub struct Muestra {
    pub operacion: Operacion,
    /// From the intended send time to the reply (`None`: no reply).
    pub latencia: Option<Duration>,
    /// `None` on success, else the error code (or [`SIN_RESPUESTA`]).
    pub fallo: Option<&'static str>,
}

#[derive(Debug, Clone)]
struct PorOperacion {
    peticiones: u64,
    fallos: BTreeMap<&'static str, u64>,
    hist: Histogram<u64>,
}

impl PorOperacion {
    fn new(template: &Histogram<u64>) -> PorOperacion {
        PorOperacion {
            peticiones: 0,
            fallos: BTreeMap::new(),
            hist: template.clone(),
        }
    }

    fn record(&mut self, m: &Muestra) {
        self.peticiones += 1;
        if let Some(code) = m.fallo {
            *self.fallos.entry(code).or_default() += 1;
        }
        if let Some(l) = m.latencia {
            self.hist
                .saturating_record((l.as_micros() as u64).clamp(1, MAX_US));
        }
    }

    fn fila(&self, operacion: &str, segundos: f64) -> FilaOp {
        let h = &self.hist;
        let ms = |us: u64| us as f64 / 1000.0;
        let q = |p: f64| {
            if h.is_empty() {
                0.0
            } else {
                ms(h.value_at_quantile(p))
            }
        };
        let fallos: u64 = self.fallos.values().sum();
        FilaOp {
            operacion: operacion.to_string(),
            peticiones: self.peticiones,
            fallos,
            fallos_por_codigo: self
                .fallos
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            rps: if segundos > 0.0 {
                self.peticiones as f64 / segundos
            } else {
                0.0
            },
            media_ms: if h.is_empty() { 0.0 } else { h.mean() / 1000.0 },
            desviacion_ms: if h.is_empty() {
                0.0
            } else {
                h.stdev() / 1000.0
            },
            min_ms: if h.is_empty() { 0.0 } else { ms(h.min()) },
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
            max_ms: if h.is_empty() { 0.0 } else { ms(h.max()) },
        }
    }
}

/// Report row of one operation (or `Aggregated`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FilaOp {
    pub operacion: String,
    pub peticiones: u64,
    pub fallos: u64,
    pub fallos_por_codigo: BTreeMap<String, u64>,
    pub rps: f64,
    pub media_ms: f64,
    pub desviacion_ms: f64,
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
pub struct Punto {
    /// Seconds since the start (end of this interval).
    pub t_s: u64,
    pub rps: f64,
    pub fallos_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    /// Cumulative totals at the end of this second.
    pub total_peticiones: u64,
    pub total_fallos: u64,
}

/// Live aggregation; fed by the coordinating thread only.
#[derive(Debug)]
pub struct Agregado {
    template: Histogram<u64>,
    por_op: BTreeMap<&'static str, PorOperacion>,
    total: PorOperacion,
    segundo_actual: u64,
    segundo: PorOperacion,
    serie: Vec<Punto>,
}

impl Agregado {
    pub fn new() -> Result<Agregado, CreationError> {
        let template = Histogram::new_with_bounds(1, MAX_US, 3)?;
        let segundo = Histogram::new_with_bounds(1, MAX_US, 2)?;
        Ok(Agregado {
            total: PorOperacion::new(&template),
            segundo: PorOperacion::new(&segundo),
            template,
            por_op: BTreeMap::new(),
            segundo_actual: 0,
            serie: Vec::new(),
        })
    }

    /// Records a sample that completed `elapsed` after the start.
    pub fn record(&mut self, m: &Muestra, elapsed: Duration) {
        self.avanzar(elapsed);
        let template = &self.template;
        self.por_op
            .entry(m.operacion.as_str())
            .or_insert_with(|| PorOperacion::new(template))
            .record(m);
        self.total.record(m);
        self.segundo.record(m);
    }

    /// Closes every whole second before `elapsed` into the series.
    pub fn avanzar(&mut self, elapsed: Duration) {
        let now = elapsed.as_secs();
        while self.segundo_actual < now {
            self.cerrar_segundo(1.0);
        }
    }

    fn cerrar_segundo(&mut self, largo_s: f64) {
        self.segundo_actual += 1;
        let s = &self.segundo;
        let h = &s.hist;
        let q = |p: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(p) as f64 / 1000.0
            }
        };
        let fallos: u64 = s.fallos.values().sum();
        let total_fallos: u64 = self.total.fallos.values().sum();
        self.serie.push(Punto {
            t_s: self.segundo_actual,
            rps: s.peticiones as f64 / largo_s,
            fallos_s: fallos as f64 / largo_s,
            p50_ms: q(0.50),
            p90_ms: q(0.90),
            p99_ms: q(0.99),
            total_peticiones: self.total.peticiones,
            total_fallos,
        });
        self.segundo.peticiones = 0;
        self.segundo.fallos.clear();
        self.segundo.hist.reset();
    }

    pub fn peticiones(&self) -> u64 {
        self.total.peticiones
    }

    pub fn fallos(&self) -> u64 {
        self.total.fallos.values().sum()
    }

    /// Aggregated p50 and p99 so far, in milliseconds.
    pub fn p50_p99(&self) -> (f64, f64) {
        let h = &self.total.hist;
        if h.is_empty() {
            return (0.0, 0.0);
        }
        (
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
        )
    }

    /// The finished report of a run that lasted `elapsed`.
    pub fn informe(mut self, clientes: usize, inicio_unix: u64, elapsed: Duration) -> Informe {
        self.avanzar(elapsed);
        let rest = elapsed.as_secs_f64() - self.segundo_actual as f64;
        // A sliver of a second would show as a spike in per-second rates.
        if self.segundo.peticiones > 0 && rest >= 0.5 {
            self.cerrar_segundo(rest);
        }
        let secs = elapsed.as_secs_f64();
        Informe {
            clientes,
            inicio_unix,
            duracion_s: secs,
            operaciones: self.por_op.iter().map(|(op, s)| s.fila(op, secs)).collect(),
            total: self.total.fila("Aggregated", secs),
            serie: self.serie,
        }
    }
}

/// A finished load run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Informe {
    pub clientes: usize,
    /// Wall-clock start, seconds since the Unix epoch.
    pub inicio_unix: u64,
    pub duracion_s: f64,
    pub operaciones: Vec<FilaOp>,
    pub total: FilaOp,
    pub serie: Vec<Punto>,
}

impl Informe {
    /// The per-operation table and failures by code.
    pub fn texto(&self) -> String {
        let mut out = format!(
            "{} clients, {:.1} s\n{:<12} {:>8} {:>7} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
            self.clientes,
            self.duracion_s,
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
        for f in self.operaciones.iter().chain(std::iter::once(&self.total)) {
            out.push_str(&format!(
                "{:<12} {:>8} {:>7} {:>9.1} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}\n",
                f.operacion,
                f.peticiones,
                f.fallos,
                f.rps,
                f.media_ms,
                f.desviacion_ms,
                f.p50_ms,
                f.p90_ms,
                f.p99_ms,
                f.p999_ms,
                f.max_ms
            ));
        }
        out.push_str("latencies in ms");
        let fallos: Vec<String> = self
            .operaciones
            .iter()
            .flat_map(|f| {
                f.fallos_por_codigo
                    .iter()
                    .map(move |(code, n)| format!("  {} {code}: {n}", f.operacion))
            })
            .collect();
        if !fallos.is_empty() {
            out.push_str("\nfailures by code:\n");
            out.push_str(&fallos.join("\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(op: Operacion, ms: Option<u64>, fallo: Option<&'static str>) -> Muestra {
        Muestra {
            operacion: op,
            latencia: ms.map(Duration::from_millis),
            fallo,
        }
    }

    #[test]
    fn aggregates_per_operation_and_over_time() {
        let mut a = Agregado::new().unwrap();
        let s = Duration::from_millis;
        for i in 1..=100u64 {
            a.record(&m(Operacion::Prestamo, Some(i), None), s(10 * i));
        }
        a.record(
            &m(Operacion::Devolucion, Some(5), Some("PrestamoNoEncontrado")),
            s(1500),
        );
        a.record(
            &m(Operacion::Devolucion, None, Some(SIN_RESPUESTA)),
            s(2100),
        );
        assert_eq!(a.peticiones(), 102);
        assert_eq!(a.fallos(), 2);
        let r = a.informe(4, 0, s(2500));
        assert_eq!(r.clientes, 4);
        let p = &r
            .operaciones
            .iter()
            .find(|f| f.operacion == "prestamo")
            .unwrap();
        assert_eq!(p.peticiones, 100);
        assert!((p.p50_ms - 50.0).abs() < 0.1, "{}", p.p50_ms);
        assert!((p.p99_ms - 99.0).abs() < 0.1, "{}", p.p99_ms);
        assert!((p.max_ms - 100.0).abs() < 0.1);
        assert!((p.media_ms - 50.5).abs() < 0.1);
        let d = r
            .operaciones
            .iter()
            .find(|f| f.operacion == "devolucion")
            .unwrap();
        assert_eq!(d.fallos, 2);
        assert_eq!(d.fallos_por_codigo[SIN_RESPUESTA], 1);
        assert_eq!(r.total.peticiones, 102);
        assert!((r.total.rps - 102.0 / 2.5).abs() < 1e-9);
        // Seconds 1 and 2 closed, plus the half second at the end.
        assert_eq!(r.serie.len(), 3);
        assert_eq!(r.serie[0].rps, 99.0);
        assert_eq!(r.serie[1].total_peticiones, 101);
        assert_eq!(r.serie[2].rps, 2.0);
        let text = r.texto();
        assert!(
            text.contains("Aggregated") && text.contains("SinRespuesta: 1"),
            "{text}"
        );
    }

    #[test]
    fn empty_runs_report_zeros() {
        let r = Agregado::new().unwrap().informe(1, 0, Duration::ZERO);
        assert_eq!(r.total.peticiones, 0);
        assert_eq!(r.total.p99_ms, 0.0);
        assert!(r.serie.is_empty());
    }
}
