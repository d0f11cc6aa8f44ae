//! Feeds each origin exchange to the site's adaptive limit (`adaptive`), applies the limit to
//! the site's origin slots, publishes it in `Stats` and logs big changes; and tells the request
//! path when the origin is under stress (`Origin::stressed`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;

use super::adaptive::{Limit, Sample};
use super::{health, slots::Slots, Origin, OriginError};

/// One site's adaptive limit and what it drives.
pub(super) struct Capacity {
    limit: Mutex<Limit>,
    /// `site.adaptive_concurrency`: when off, the limit is still computed (for stress and the
    /// log) but the slots stay at the ceiling.
    enabled: bool,
    /// The latency part of `stressed`, kept here so the request path never takes the lock.
    slow: AtomicBool,
    gauge: Arc<AtomicU64>,
}

impl Capacity {
    pub(super) fn new(ceiling: usize, enabled: bool, gauge: Arc<AtomicU64>) -> Capacity {
        Capacity {
            limit: Mutex::new(Limit::new(ceiling)),
            enabled,
            slow: AtomicBool::new(false),
            gauge,
        }
    }

    /// What an origin exchange says about capacity, once `judge` has ruled on it: a healthy
    /// answer gives its latency; a timeout or 503 counts as overload only when it was judged
    /// the origin's own failure (confirmed by a probe), so a client repeating a broken or
    /// deliberately slow-to-fail URL cannot talk the limit down. Other failures (refused
    /// connections, 500, 502) are the circuit breaker's business.
    pub(super) fn sample(
        result: &Result<reqwest::Response, OriginError>,
        took: Duration,
        origin_failed: bool,
    ) -> Option<Sample> {
        match result {
            Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {
                origin_failed.then_some(Sample::Overloaded)
            }
            Ok(_) if !origin_failed => Some(Sample::Answered(took)),
            Err(OriginError::Timeout(_)) if origin_failed => Some(Sample::Overloaded),
            _ => None,
        }
    }

    pub(super) fn observe(&self, site: &str, sample: Sample, slots: &Slots) {
        let Ok(mut limit) = self.limit.lock() else {
            return;
        };
        let change = limit.observe(sample, slots.held(), health::now_ms());
        self.slow.store(limit.stressed(), Ordering::Relaxed);
        if !self.enabled {
            return;
        }
        let now = limit.get();
        // Under the lock, so two exchanges never move the slots in opposite orders.
        if now != slots.limit() {
            slots.set_limit(now);
            self.gauge.store(now as u64, Ordering::Relaxed);
        }
        let (latency, baseline) = (limit.latency(), limit.baseline());
        drop(limit);
        if let Some(change) = change {
            tracing::info!(
                site,
                from = change.from,
                to = change.to,
                latency_ms = latency.map_or(0, |d| d.as_millis() as u64),
                baseline_ms = baseline.map_or(0, |d| d.as_millis() as u64),
                "adaptive origin concurrency limit changed"
            );
        }
    }

    /// Every slot of the (adaptive) limit taken, or latency showing queueing.
    pub(super) fn stressed(&self, slots: &Slots) -> bool {
        self.slow.load(Ordering::Relaxed) || slots.held() >= slots.limit()
    }
}

impl Origin {
    /// Feeds one judged exchange to the adaptive limit. Requests with a body are left out: an
    /// upload goes at the client's pace, not the origin's.
    pub(super) fn learn(
        &self,
        result: &Result<reqwest::Response, OriginError>,
        took: Duration,
        origin_failed: bool,
        without_body: bool,
    ) {
        if !without_body {
            return;
        }
        if let Some(sample) = Capacity::sample(result, took, origin_failed) {
            self.capacity.observe(&self.site, sample, &self.slots);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16) -> Result<reqwest::Response, OriginError> {
        let response = http::Response::builder()
            .status(status)
            .body(reqwest::Body::from(""))
            .map_err(|e| OriginError::Other(e.to_string()))?;
        Ok(reqwest::Response::from(response))
    }

    const TOOK: Duration = Duration::from_millis(40);

    #[test]
    fn healthy_answers_give_their_latency() {
        for status in [200, 304, 404, 429] {
            assert_eq!(
                Capacity::sample(&answer(status), TOOK, false),
                Some(Sample::Answered(TOOK)),
                "{status}"
            );
        }
    }

    #[test]
    fn only_the_origins_own_timeouts_and_503s_are_overload() {
        let timeout = || Err(OriginError::Timeout(TOOK));
        assert_eq!(
            Capacity::sample(&answer(503), TOOK, true),
            Some(Sample::Overloaded)
        );
        assert_eq!(
            Capacity::sample(&timeout(), TOOK, true),
            Some(Sample::Overloaded)
        );
        // One URL's 503 or timeout (not confirmed by a probe) says nothing about capacity.
        assert_eq!(Capacity::sample(&answer(503), TOOK, false), None);
        assert_eq!(Capacity::sample(&timeout(), TOOK, false), None);
    }

    #[test]
    fn other_failures_are_left_to_the_circuit_breaker() {
        assert_eq!(Capacity::sample(&answer(500), TOOK, true), None);
        assert_eq!(Capacity::sample(&answer(502), TOOK, true), None);
        let refused = Err(OriginError::Connect("refused".into()));
        assert_eq!(Capacity::sample(&refused, TOOK, true), None);
    }
}
