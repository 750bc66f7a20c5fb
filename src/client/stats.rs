//! Latency summaries of a batch of requests (files of requests, `status`).
//!
//! Samples are kept exactly (a request file is small); the load generator,
//! which needs millions of samples, uses an HDR histogram instead.

use std::time::Duration;

use serde::Serialize;

/// Latency samples in milliseconds.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    ms: Vec<f64>,
    sorted: bool,
}

/// The numbers printed at the end of a batch (milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub samples: usize,
    pub mean: f64,
    pub stddev: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latencies {
    pub fn new() -> Latencies {
        Latencies::default()
    }

    pub fn push(&mut self, d: Duration) {
        self.push_ms(d.as_secs_f64() * 1000.0);
    }

    pub fn push_ms(&mut self, ms: f64) {
        self.ms.push(ms);
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.ms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ms.is_empty()
    }

    pub fn mean(&self) -> Option<f64> {
        if self.ms.is_empty() {
            return None;
        }
        Some(self.ms.iter().sum::<f64>() / self.ms.len() as f64)
    }

    /// Population standard deviation (0 for a single sample).
    pub fn stddev(&self) -> Option<f64> {
        let mean = self.mean()?;
        let var =
            self.ms.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / self.ms.len() as f64;
        Some(var.sqrt())
    }

    /// Nearest-rank percentile: the smallest sample with at least `p`% of
    /// the samples at or below it.
    pub fn percentile(&mut self, p: f64) -> Option<f64> {
        if self.ms.is_empty() {
            return None;
        }
        if !self.sorted {
            self.ms.sort_by(f64::total_cmp);
            self.sorted = true;
        }
        let n = self.ms.len();
        let rank = ((p.clamp(0.0, 100.0) / 100.0) * n as f64).ceil() as usize;
        self.ms.get(rank.clamp(1, n) - 1).copied()
    }

    pub fn summary(&mut self) -> Option<Summary> {
        Some(Summary {
            samples: self.len(),
            mean: self.mean()?,
            stddev: self.stddev()?,
            p50: self.percentile(50.0)?,
            p99: self.percentile(99.0)?,
            max: self.percentile(100.0)?,
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

    #[test]
    fn empty_has_no_summary() {
        let mut l = Latencies::new();
        assert!(l.is_empty());
        assert_eq!(l.mean(), None);
        assert_eq!(l.percentile(50.0), None);
        assert!(l.summary().is_none());
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut l = of(&(1..=100).rev().map(f64::from).collect::<Vec<_>>());
        assert_eq!(l.percentile(50.0), Some(50.0));
        assert_eq!(l.percentile(99.0), Some(99.0));
        assert_eq!(l.percentile(99.9), Some(100.0));
        assert_eq!(l.percentile(0.0), Some(1.0));
        assert_eq!(l.percentile(100.0), Some(100.0));
        let mut small = of(&[10.0, 30.0, 20.0]);
        assert_eq!(small.percentile(50.0), Some(20.0));
        assert_eq!(small.percentile(99.0), Some(30.0));
        let mut one = of(&[7.0]);
        assert_eq!(one.percentile(1.0), Some(7.0));
        assert_eq!(one.stddev(), Some(0.0));
    }

    #[test]
    fn mean_and_stddev() {
        let mut l = of(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(l.mean(), Some(5.0));
        assert_eq!(l.stddev(), Some(2.0));
        l.push(Duration::from_millis(5));
        let r = l.summary().unwrap();
        assert_eq!(r.samples, 9);
        assert_eq!(r.max, 9.0);
        assert!(r.to_string().contains("p99 9.00"));
    }
}
