//! Feeds each origin exchange to the site's adaptive limit (`adaptive`), applies the limit to
//! the site's origin slots, publishes it in `Stats` and logs big changes; and tells the request
//! path when the origin is under stress (`Origin::stressed`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;

use super::adaptive::{Limit, Sample};
use super::slots::{Slot, Slots};
use super::{health, Origin, OriginError};

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
        self.apply(&limit, slots);
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

    /// The limit onto the slots; called under the lock, so two changes never move the slots
    /// in opposite orders.
    fn apply(&self, limit: &Limit, slots: &Slots) {
        if !self.enabled {
            return;
        }
        let now = limit.get();
        if now != slots.limit() {
            slots.set_limit(now);
            self.gauge.store(now as u64, Ordering::Relaxed);
        }
    }

    /// While the minimum is re-measured (the limit held at 1), how long a waiting request
    /// waits before it asks `end_overdue_hold`; `None` otherwise.
    pub(super) fn hold_overdue_in(&self) -> Option<Duration> {
        if !self.enabled {
            return None;
        }
        let limit = self.limit.lock().ok()?;
        limit.hold_overdue_in(health::now_ms())
    }

    /// Ends a hold that has had no answer for its patience (`adaptive::Limit::end_overdue_hold`):
    /// the slots get their limit back at once, and the requests waiting for them go.
    pub(super) fn end_overdue_hold(&self, site: &str, slots: &Slots) {
        let Ok(mut limit) = self.limit.lock() else {
            return;
        };
        if limit.end_overdue_hold(health::now_ms()) {
            self.apply(&limit, slots);
            tracing::debug!(
                site,
                limit = limit.get(),
                "re-measuring the origin's minimum latency given up: no answer within its patience"
            );
        }
    }

    /// Waits for `take` (a slot of `slots`) at most `queue_timeout`. While the limit is held
    /// at 1 to re-measure the origin's minimum, a wait with no answer for the hold's patience
    /// ends the hold (`end_overdue_hold`): one slow request in the only slot must not keep
    /// every other miss waiting (and past the queue timeout, refused).
    pub(super) async fn wait_for_slot(
        &self,
        site: &str,
        slots: &Slots,
        queue_timeout: Duration,
        take: impl std::future::Future<Output = Option<Slot>>,
    ) -> Option<Slot> {
        let deadline = tokio::time::Instant::now() + queue_timeout;
        let mut take = std::pin::pin!(take);
        loop {
            let until = match self.hold_overdue_in() {
                Some(patience) => deadline.min(tokio::time::Instant::now() + patience),
                None => deadline,
            };
            match tokio::time::timeout_at(until, &mut take).await {
                Ok(slot) => return slot,
                Err(_) if until >= deadline => return None,
                Err(_) => self.end_overdue_hold(site, slots),
            }
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

    /// One client's slow page in the only slot of a hold (rule 7 of `adaptive`): a request
    /// waiting behind it ends the hold after the hold's patience, instead of waiting out the
    /// slow page or the queue timeout. Real time: a hold needs 2 s of full use.
    #[tokio::test]
    async fn a_wait_behind_a_slow_request_in_a_hold_ends_the_hold() {
        let slots = Slots::new(8, 8);
        let capacity = Capacity::new(8, true, Arc::new(AtomicU64::new(8)));
        let mut held: Vec<Slot> = (0..8).filter_map(|_| slots.try_take(None)).collect();
        assert_eq!(held.len(), 8);
        let began = std::time::Instant::now();
        while slots.limit() != 1 {
            assert!(
                began.elapsed() < Duration::from_secs(4),
                "no hold after 4 s of full use"
            );
            capacity.observe("t", Sample::Answered(Duration::from_millis(20)), &slots);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(capacity.hold_overdue_in().is_some());
        // Seven answers come back; the eighth request (a 3 s page, say) keeps its slot.
        held.truncate(1);
        let asked = std::time::Instant::now();
        let waited = capacity.wait_for_slot("t", &slots, Duration::from_secs(2), slots.take(None));
        let slot = waited.await;
        assert!(slot.is_some(), "refused as busy behind the slow request");
        let took = asked.elapsed();
        assert!(took < Duration::from_millis(500), "waited {took:?}");
        assert_eq!(slots.limit(), 8, "the limit resumed where it was");
        assert!(capacity.hold_overdue_in().is_none());
    }
}
