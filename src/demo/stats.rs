//! Latency percentiles and counters for the demo and the load bench.

use std::collections::BTreeMap;

/// Latency samples in milliseconds.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    samples: Vec<f64>,
}

/// p50, p90, p99, p99.9 and max of a sample set, in ms.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latencies {
    /// Adds one sample.
    pub fn push(&mut self, ms: f64) {
        self.samples.push(ms);
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there is no sample.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The percentiles (nearest-rank).
    pub fn percentiles(&self) -> Percentiles {
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        let at = |p: f64| -> f64 {
            if s.is_empty() {
                return 0.0;
            }
            // The epsilon keeps 99.9% of 1000 at rank 999 despite float rounding.
            let rank = ((p / 100.0) * s.len() as f64 - 1e-9).ceil() as usize;
            s[rank.clamp(1, s.len()) - 1]
        };
        Percentiles {
            count: s.len(),
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
            p999: at(99.9),
            max: s.last().copied().unwrap_or(0.0),
        }
    }

    /// The sorted samples (for plotting a percentile curve).
    pub fn sorted(&self) -> Vec<f64> {
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        s
    }
}

/// Counts by key, printed in key order.
#[derive(Debug, Default, Clone)]
pub struct Tally(pub BTreeMap<String, u64>);

impl Tally {
    /// Adds one to `key`.
    pub fn add(&mut self, key: impl Into<String>) {
        *self.0.entry(key.into()).or_default() += 1;
    }

    /// The sum of all counts.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut l = Latencies::default();
        for i in 1..=1000 {
            l.push(i as f64);
        }
        let p = l.percentiles();
        assert_eq!(
            (p.p50, p.p90, p.p99, p.p999, p.max),
            (500.0, 900.0, 990.0, 999.0, 1000.0)
        );
        assert_eq!(Latencies::default().percentiles().max, 0.0);
    }
}
