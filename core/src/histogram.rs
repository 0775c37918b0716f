//! Latency histograms the protocols keep of their own operations: probe round trips, HyDFS
//! requests, RainStorm commits and tuple latencies. Counts only, in fixed buckets, so keeping
//! one costs a few words and no allocation, and the simulator's runs stay deterministic.
//!
//! Times are the core's milliseconds ([`Millis`]): a round trip under 1 ms counts in the first
//! bucket. Drivers export the buckets as they are (the runtime as Prometheus histograms).
//!
//! Invariants: [`LATENCY_BOUNDS_MS`] strictly increase (checked at compile time); every
//! observation is in exactly one bucket (the last one holds what is above the last bound), so
//! the count is the buckets' sum; `sum_ms` is the sum of the observations (saturating).

use crate::time::Millis;

/// Upper bounds of the buckets, in milliseconds (an observation `x` counts in the first
/// bucket whose bound is `>= x`, or in the overflow bucket).
pub const LATENCY_BOUNDS_MS: [u64; 16] =
    [1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 60_000, 120_000];

const _: () = {
    let mut i = 1;
    while i < LATENCY_BOUNDS_MS.len() {
        assert!(LATENCY_BOUNDS_MS[i - 1] < LATENCY_BOUNDS_MS[i], "bucket bounds strictly increase");
        i += 1;
    }
};

/// Observations per bucket: one per bound, then the overflow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    buckets: [u64; LATENCY_BOUNDS_MS.len() + 1],
    sum_ms: u64,
}

impl LatencyHistogram {
    pub fn observe(&mut self, d: Millis) {
        self.observe_n(d, 1);
    }

    /// Observes `d` `n` times (one per tuple of a batch that shares it).
    pub fn observe_n(&mut self, d: Millis, n: u64) {
        let i = LATENCY_BOUNDS_MS.partition_point(|b| *b < d.0);
        debug_assert!(
            LATENCY_BOUNDS_MS.get(i).is_none_or(|b| d.0 <= *b) && (i == 0 || LATENCY_BOUNDS_MS[i - 1] < d.0),
            "{d:?} counted outside its bucket"
        );
        self.buckets[i] += n;
        self.sum_ms = self.sum_ms.saturating_add(d.0.saturating_mul(n));
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    pub fn sum_ms(&self) -> u64 {
        self.sum_ms
    }

    /// `(upper bound in ms, observations in this bucket alone)` per bound; the overflow is
    /// `count()` minus their sum.
    pub fn per_bucket(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        LATENCY_BOUNDS_MS.iter().copied().zip(self.buckets.iter().copied())
    }

    /// The observations made since `earlier` (an older copy of this histogram).
    pub fn since(&self, earlier: &LatencyHistogram) -> LatencyHistogram {
        let mut d = LatencyHistogram::default();
        for (i, (a, b)) in self.buckets.iter().zip(earlier.buckets.iter()).enumerate() {
            d.buckets[i] = a.saturating_sub(*b);
        }
        d.sum_ms = self.sum_ms.saturating_sub(earlier.sum_ms);
        d
    }

    /// The `q` quantile (0 < q <= 1) in milliseconds, interpolated linearly inside its bucket
    /// as Prometheus's `histogram_quantile` does; the last bound when it falls in the
    /// overflow; `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * count as f64;
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
    fn observations_land_in_their_bucket() {
        let mut h = LatencyHistogram::default();
        for ms in [0, 1, 2, 3, 150, 999_999] {
            h.observe(Millis(ms));
        }
        let c: Vec<(u64, u64)> = h.per_bucket().collect();
        assert_eq!(c[0], (1, 2), "0 and 1 ms are at or below 1 ms");
        assert_eq!(c[1], (2, 1));
        assert_eq!(c[2], (5, 1));
        assert_eq!(c[7], (200, 1));
        assert_eq!(c.iter().map(|(_, n)| n).sum::<u64>(), 5, "the overflow is in no bound's bucket");
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
        assert_eq!(h.since(&h), LatencyHistogram::default());
    }
}
