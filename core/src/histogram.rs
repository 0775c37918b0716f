//! Latency histograms the protocols keep of their own operations: probe round trips, HyDFS
//! requests, RainStorm commits and tuple latencies. Counts only, in fixed buckets, so keeping
//! one costs a few words and no allocation, and the simulator's runs stay deterministic.
//!
//! Times are the core's milliseconds ([`Millis`]): a round trip under 1 ms counts in the first
//! bucket. Drivers export the buckets as they are (the runtime as Prometheus histograms).
//!
//! Invariants: [`LATENCY_BOUNDS_MS`] strictly increase; `count` is the sum of every bucket
//! (the last one holds what is above the last bound); `sum_ms` is the sum of the observations.

use crate::time::Millis;

/// Upper bounds of the buckets, in milliseconds (an observation `x` counts in the first
/// bucket whose bound is `>= x`, or in the overflow bucket).
pub const LATENCY_BOUNDS_MS: [u64; 16] =
    [1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 60_000, 120_000];

/// Observations per bucket: one per bound, then the overflow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    buckets: [u64; LATENCY_BOUNDS_MS.len() + 1],
    count: u64,
    sum_ms: u64,
}

impl LatencyHistogram {
    pub fn observe(&mut self, d: Millis) {
        let i = LATENCY_BOUNDS_MS.partition_point(|b| *b < d.0);
        self.buckets[i] += 1;
        self.count += 1;
        self.sum_ms = self.sum_ms.saturating_add(d.0);
        debug_assert_eq!(self.count, self.buckets.iter().sum::<u64>(), "count is the buckets' sum");
    }

    /// Observes `d` `n` times (one per tuple of a batch that shares it).
    pub fn observe_n(&mut self, d: Millis, n: u64) {
        let i = LATENCY_BOUNDS_MS.partition_point(|b| *b < d.0);
        self.buckets[i] += n;
        self.count += n;
        self.sum_ms = self.sum_ms.saturating_add(d.0.saturating_mul(n));
        debug_assert_eq!(self.count, self.buckets.iter().sum::<u64>(), "count is the buckets' sum");
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum_ms(&self) -> u64 {
        self.sum_ms
    }

    /// `(upper bound in ms, observations at or below it)` per bound, cumulative as Prometheus
    /// has them; the overflow is `count() - ` the last of these.
    pub fn cumulative(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        LATENCY_BOUNDS_MS
            .iter()
            .zip(self.buckets.iter().scan(0u64, |acc, n| {
                *acc += n;
                Some(*acc)
            }))
            .map(|(b, c)| (*b, c))
    }

    /// `(upper bound in ms, observations in this bucket alone)` per bound; the overflow is
    /// `count()` minus their sum.
    pub fn per_bucket(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        LATENCY_BOUNDS_MS.iter().copied().zip(self.buckets.iter().copied())
    }

    /// Adds another histogram's observations.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.count += other.count;
        self.sum_ms = self.sum_ms.saturating_add(other.sum_ms);
    }

    /// The observations made since `earlier` (an older copy of this histogram).
    pub fn since(&self, earlier: &LatencyHistogram) -> LatencyHistogram {
        let mut d = LatencyHistogram::default();
        for (i, (a, b)) in self.buckets.iter().zip(earlier.buckets.iter()).enumerate() {
            d.buckets[i] = a.saturating_sub(*b);
        }
        d.count = d.buckets.iter().sum();
        d.sum_ms = self.sum_ms.saturating_sub(earlier.sum_ms);
        d
    }

    /// The `q` quantile (0 < q <= 1) in milliseconds, interpolated linearly inside its bucket
    /// as Prometheus's `histogram_quantile` does; the last bound when it falls in the
    /// overflow; `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * self.count as f64;
        let mut below = 0u64;
        let mut lower = 0u64;
        for (i, n) in self.buckets.iter().enumerate() {
            let Some(&upper) = LATENCY_BOUNDS_MS.get(i) else { break };
            if *n > 0 && (below + n) as f64 >= rank {
                let within = (rank - below as f64) / *n as f64;
                return Some(lower as f64 + within * (upper - lower) as f64);
            }
            below += n;
            lower = upper;
        }
        Some(*LATENCY_BOUNDS_MS.last().expect("bounds") as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_increase() {
        assert!(LATENCY_BOUNDS_MS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn observations_land_in_their_bucket() {
        let mut h = LatencyHistogram::default();
        for ms in [0, 1, 2, 3, 150, 999_999] {
            h.observe(Millis(ms));
        }
        let c: Vec<(u64, u64)> = h.cumulative().collect();
        assert_eq!(c[0], (1, 2), "0 and 1 ms are at or below 1 ms");
        assert_eq!(c[1], (2, 3));
        assert_eq!(c[2], (5, 4));
        assert_eq!(c[7], (200, 5));
        assert_eq!(c.last().unwrap().1, 5, "the overflow is not in the last bound");
        assert_eq!(h.count(), 6);
        assert_eq!(h.sum_ms(), 1 + 2 + 3 + 150 + 999_999);
    }

    #[test]
    fn quantiles_interpolate_and_since_subtracts() {
        let mut h = LatencyHistogram::default();
        h.observe_n(Millis(30), 100);
        // All 100 in (20, 50]: the median is half way.
        assert_eq!(h.quantile(0.5), Some(35.0));
        assert_eq!(h.quantile(1.0), Some(50.0));
        let before = h;
        h.observe(Millis(400));
        let d = h.since(&before);
        assert_eq!(d.count(), 1);
        assert_eq!(d.quantile(0.99), Some(200.0 + 0.99 * 300.0));
        assert_eq!(LatencyHistogram::default().quantile(0.99), None);
        let mut m = before;
        m.merge(&d);
        assert_eq!(m, h);
    }
}
