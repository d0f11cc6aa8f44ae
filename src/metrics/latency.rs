//! A latency histogram for the request path: fixed buckets of relaxed atomics, whose snapshot
//! `prometheus-client` encodes as a Prometheus histogram. The crate's own `Histogram` takes a mutex on
//! every observation; this one costs two atomic adds, so the hit path never waits on a lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// Upper bounds in seconds, from a cache hit (well under a millisecond) to an origin at its
/// response timeout: enough resolution for p50 and p99 on both sides of the proxy.
pub const BOUNDS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Observations per bucket (not cumulative; the encoder adds them up) and the sum in
/// nanoseconds (an integer, so that it can be an atomic add); the count is the buckets' sum.
#[derive(Debug, Default)]
pub struct Latency {
    /// `BOUNDS.len()` buckets plus the one above the last bound (`+Inf`).
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Latency {
    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        // Sixteen comparisons at most; a binary search would not be faster at this size.
        let index = BOUNDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BOUNDS.len());
        // No count of its own: it is the buckets' sum (one atomic add less per request).
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }
}

impl Latency {
    /// The histogram as it is now, for one scrape.
    pub fn snapshot(&self) -> Snapshot {
        let mut buckets: Vec<(f64, u64)> = BOUNDS
            .iter()
            .zip(&self.buckets)
            .map(|(bound, n)| (*bound, n.load(Ordering::Relaxed)))
            .collect();
        let above = self.buckets[BOUNDS.len()].load(Ordering::Relaxed);
        buckets.push((f64::INFINITY, above));
        // From the same reads as the buckets: a scrape must never show `_count` below `+Inf`.
        let count = buckets.iter().map(|(_, n)| n).sum();
        Snapshot {
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count,
            buckets,
        }
    }
}

/// A `Latency` at one moment: sum in seconds, count, and observations per bucket.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub sum: f64,
    pub count: u64,
    pub buckets: Vec<(f64, u64)>,
}

impl EncodeMetric for Snapshot {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket() {
        let latency = Latency::default();
        latency.observe(Duration::from_micros(300));
        latency.observe(Duration::from_millis(7));
        latency.observe(Duration::from_secs(100));
        assert_eq!(latency.count(), 3);
        assert_eq!(latency.buckets[0].load(Ordering::Relaxed), 1);
        // 7 ms is above 5 ms and at most 10 ms.
        assert_eq!(latency.buckets[4].load(Ordering::Relaxed), 1);
        assert_eq!(latency.buckets[BOUNDS.len()].load(Ordering::Relaxed), 1);
        let sum = latency.sum_nanos.load(Ordering::Relaxed);
        assert_eq!(sum, 300_000 + 7_000_000 + 100_000_000_000);
        let snapshot = latency.snapshot();
        assert_eq!(snapshot.count, 3);
        assert_eq!(snapshot.buckets.last(), Some(&(f64::INFINITY, 1)));
        assert!((snapshot.sum - 100.0073).abs() < 1e-9);
    }
}
