//! Order statistics of repeated timings.

use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// Summary of repeated measurements, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of samples.
    pub runs: u32,
    /// Median.
    pub median_ns: u64,
    /// 10th percentile (nearest rank).
    pub p10_ns: u64,
    /// 90th percentile (nearest rank).
    pub p90_ns: u64,
    /// Fastest sample.
    pub min_ns: u64,
    /// Slowest sample.
    pub max_ns: u64,
    /// Relative spread `(p90 - p10) / median`: 0 for perfectly steady timings.
    pub spread: f64,
}

impl Summary {
    /// Summarises `samples` (any order). `None` when there are none.
    pub fn of(samples: &[u64]) -> Option<Self> {
        let mut sorted: Vec<u64> = samples.to_vec();
        sorted.sort_unstable();
        let n = sorted.len();
        let (&min_ns, &max_ns) = (sorted.first()?, sorted.last()?);
        let median_ns = if n % 2 == 1 { sorted[n / 2] } else { ((u128::from(sorted[n / 2 - 1]) + u128::from(sorted[n / 2])) / 2) as u64 };
        let (p10_ns, p90_ns) = (nearest_rank(&sorted, 10), nearest_rank(&sorted, 90));
        let spread = if median_ns == 0 { 0.0 } else { (p90_ns - p10_ns) as f64 / median_ns as f64 };
        Some(Self { runs: n as u32, median_ns, p10_ns, p90_ns, min_ns, max_ns, spread })
    }

    /// Median in seconds.
    pub fn median_secs(&self) -> f64 {
        self.median_ns as f64 * 1e-9
    }
}

/// The `pct`-th percentile of ascending, non-empty `sorted` by the nearest-rank method.
fn nearest_rank(sorted: &[u64], pct: usize) -> u64 {
    let rank = (pct * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_and_even_medians() {
        assert_eq!(Summary::of(&[5, 1, 3]).map(|s| s.median_ns), Some(3));
        assert_eq!(Summary::of(&[4, 1, 3, 2]).map(|s| s.median_ns), Some(2));
        assert_eq!(Summary::of(&[]), None);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let samples: Vec<u64> = (1..=100).rev().collect();
        let s = Summary::of(&samples).unwrap();
        assert_eq!((s.p10_ns, s.p90_ns, s.min_ns, s.max_ns, s.runs), (10, 90, 1, 100, 100));
        assert!((s.spread - 80.0 / 50.0).abs() < 1e-12);
    }
}
