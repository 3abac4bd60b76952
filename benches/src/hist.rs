//! A log-linear latency histogram in the manner of HDR histograms.
//!
//! Values below 256 ns get a bucket each; above that every power of two is split into 128
//! buckets, so a reported percentile is never more than 0.8% above the value it stands for.
//! Recording is an index computation and an increment: cheap enough for every call.

use std::time::Duration;

const SUB_BITS: u32 = 8;
/// Values below this are counted exactly.
const LINEAR: u64 = 1 << SUB_BITS;
/// Buckets per power of two above `LINEAR`.
const HALF: u64 = LINEAR / 2;
/// One group per possible position of the highest set bit at or above `SUB_BITS`.
const GROUPS: u64 = 64 - SUB_BITS as u64;
const BUCKETS: usize = (LINEAR + GROUPS * HALF) as usize;

/// Counts of nanosecond latencies.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max_ns: u64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram { counts: vec![0; BUCKETS], total: 0, max_ns: 0 }
    }
}

/// The bucket that holds `value`.
fn index_of(value: u64) -> usize {
    if value < LINEAR {
        return value as usize;
    }
    let top_bit = 63 - value.leading_zeros();
    // Keep the top SUB_BITS bits: `value >> shift` lies in [HALF, LINEAR).
    let shift = u64::from(top_bit + 1 - SUB_BITS);
    (LINEAR + (shift - 1) * HALF + ((value >> shift) - HALF)) as usize
}

/// The largest value that lands in bucket `index`.
fn highest_in(index: usize) -> u64 {
    let index = index as u64;
    if index < LINEAR {
        return index;
    }
    let shift = (index - LINEAR) / HALF + 1;
    let mantissa = u128::from((index - LINEAR) % HALF + HALF);
    let highest = ((mantissa + 1) << shift) - 1;
    u64::try_from(highest).unwrap_or(u64::MAX)
}

impl Histogram {
    /// Counts one latency.
    pub fn record(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.counts[index_of(ns)] += 1;
        self.total += 1;
        self.max_ns = self.max_ns.max(ns);
    }

    /// Adds another histogram's counts (one per thread, merged at the end).
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// How many latencies were recorded.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The latency at quantile `q` (0..=1) in microseconds; `None` when nothing was recorded.
    #[must_use]
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(highest_in(index).min(self.max_ns) as f64 / 1000.0);
            }
        }
        Some(self.max_ns as f64 / 1000.0)
    }

    /// The largest latency in microseconds.
    #[must_use]
    pub fn max_us(&self) -> Option<f64> {
        (self.total > 0).then(|| self.max_ns as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lands_in_a_bucket_that_bounds_it_within_one_percent() {
        let mut value = 1u64;
        while value < u64::MAX / 3 {
            for v in [value, value + 1, value * 3 / 2] {
                let highest = highest_in(index_of(v));
                assert!(highest >= v, "bucket of {v} ends at {highest}");
                assert!((highest - v) as f64 <= v as f64 / 100.0, "bucket of {v} is too wide: ends at {highest}");
            }
            value = value * 2 + 1;
        }
        assert_eq!(index_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_follow_the_recorded_distribution() {
        let mut h = Histogram::default();
        for us in 1..=1000 {
            h.record(Duration::from_micros(us));
        }
        let p50 = h.quantile_us(0.5).unwrap();
        assert!((500.0..505.0).contains(&p50), "p50 = {p50}");
        assert_eq!(h.quantile_us(1.0), Some(1000.0));
    }
}
