//! Latency distributions: an HDR histogram of microseconds (3 significant
//! digits, so every figure is within 0.1% of the exact sample), shared by the
//! summaries of request files and by the load generator's report.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies above this are recorded as this (microseconds): ten minutes.
const MAX_US: u64 = 600_000_000;

/// Latency samples; empty until the first one.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    /// Created with the first sample (its bounds are constants, so creation
    /// cannot fail in practice; a failure would only leave it empty).
    hist: Option<Histogram<u64>>,
}

/// The numbers printed at the end of a batch (milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub samples: u64,
    pub mean: f64,
    pub stddev: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Latencies {
    pub fn new() -> Latencies {
        Latencies::default()
    }

    pub fn push(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(MAX_US);
        if self.hist.is_none() {
            self.hist = Histogram::new_with_bounds(1, MAX_US, 3).ok();
        }
        if let Some(h) = &mut self.hist {
            h.saturating_record(us.clamp(1, MAX_US));
        }
    }

    pub fn push_ms(&mut self, ms: f64) {
        self.push(Duration::from_secs_f64(ms.max(0.0) / 1000.0));
    }

    /// The histogram, if it holds at least one sample.
    fn samples(&self) -> Option<&Histogram<u64>> {
        self.hist.as_ref().filter(|h| !h.is_empty())
    }

    pub fn len(&self) -> u64 {
        self.samples().map_or(0, |h| h.len())
    }

    pub fn is_empty(&self) -> bool {
        self.samples().is_none()
    }

    /// Forgets every sample (keeps the allocation).
    pub fn reset(&mut self) {
        if let Some(h) = &mut self.hist {
            h.reset();
        }
    }

    pub fn mean_ms(&self) -> Option<f64> {
        self.samples().map(|h| h.mean() / 1000.0)
    }

    /// Population standard deviation (0 for a single sample).
    pub fn stddev_ms(&self) -> Option<f64> {
        self.samples().map(|h| h.stdev() / 1000.0)
    }

    pub fn min_ms(&self) -> Option<f64> {
        self.samples().map(|h| ms(h.min()))
    }

    pub fn max_ms(&self) -> Option<f64> {
        self.samples().map(|h| ms(h.max()))
    }

    /// The latency at quantile `q` (0.5 is the median, 0.99 the p99).
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        self.samples()
            .map(|h| ms(h.value_at_quantile(q.clamp(0.0, 1.0))))
    }

    pub fn summary(&self) -> Option<Summary> {
        Some(Summary {
            samples: self.len(),
            mean: self.mean_ms()?,
            stddev: self.stddev_ms()?,
            p50: self.quantile_ms(0.5)?,
            p99: self.quantile_ms(0.99)?,
            max: self.max_ms()?,
        })
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "latency ms: mean {:.2}, stddev {:.2}, p50 {:.2}, p99 {:.2}, max {:.2} ({} samples)",
            self.mean, self.stddev, self.p50, self.p99, self.max, self.samples
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(xs: &[f64]) -> Latencies {
        let mut l = Latencies::new();
        for x in xs {
            l.push_ms(*x);
        }
        l
    }

    /// Within the histogram's 0.1%.
    fn near(got: Option<f64>, want: f64) -> bool {
        got.is_some_and(|g| (g - want).abs() <= want * 0.001 + 1e-9)
    }

    #[test]
    fn empty_has_no_summary() {
        let l = Latencies::new();
        assert!(l.is_empty());
        assert_eq!(l.mean_ms(), None);
        assert_eq!(l.quantile_ms(0.5), None);
        assert!(l.summary().is_none());
    }

    #[test]
    fn quantiles_are_within_a_tenth_of_a_percent() {
        let l = of(&(1..=100).rev().map(f64::from).collect::<Vec<_>>());
        assert!(near(l.quantile_ms(0.5), 50.0), "{:?}", l.quantile_ms(0.5));
        assert!(near(l.quantile_ms(0.99), 99.0));
        assert!(near(l.quantile_ms(0.999), 100.0));
        assert!(near(l.quantile_ms(0.0), 1.0));
        assert!(near(l.max_ms(), 100.0));
        assert!(near(l.min_ms(), 1.0));
        let small = of(&[10.0, 30.0, 20.0]);
        assert!(near(small.quantile_ms(0.5), 20.0));
        assert!(near(small.quantile_ms(0.99), 30.0));
        let mut one = of(&[7.0]);
        assert!(near(one.quantile_ms(0.01), 7.0));
        assert_eq!(one.stddev_ms(), Some(0.0));
        one.reset();
        assert!(one.is_empty());
    }

    #[test]
    fn mean_and_stddev() {
        let mut l = of(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert!(near(l.mean_ms(), 5.0));
        assert!(near(l.stddev_ms(), 2.0));
        l.push(Duration::from_millis(5));
        let r = l.summary().unwrap();
        assert_eq!(r.samples, 9);
        assert!(near(Some(r.max), 9.0));
        assert!(r.to_string().contains("p99 9.0"), "{r}");
    }
}
