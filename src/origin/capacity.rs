//! Feeds each origin exchange to the site's adaptive limit (`adaptive`), applies the limit to
//! the site's origin slots, publishes it in `Stats` and logs big changes; and tells the request
//! path when the origin is under stress (`Origin::stressed`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;

use super::adaptive::{Limit, Sample};
use super::{health, slots::Slots, OriginError};

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

    /// What an origin exchange says about capacity: only requests without a body (an upload's
    /// pace is the client's) and only answers that bear on load.
    pub(super) fn sample(
        result: &Result<reqwest::Response, OriginError>,
        took: Duration,
    ) -> Option<Sample> {
        match result {
            Ok(r)
                if r.status() == StatusCode::SERVICE_UNAVAILABLE
                    || r.status() == StatusCode::TOO_MANY_REQUESTS =>
            {
                Some(Sample::Overloaded)
            }
            Ok(_) => Some(Sample::Answered(took)),
            Err(OriginError::Timeout(_)) => Some(Sample::Overloaded),
            // Refused connections and broken exchanges are the circuit breaker's business.
            Err(_) => None,
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

    /// Every slot of the (adaptive) limit taken, or latency far above its baseline.
    pub(super) fn stressed(&self, slots: &Slots) -> bool {
        self.slow.load(Ordering::Relaxed) || slots.held() >= slots.limit()
    }
}
