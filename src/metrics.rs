//! Counters for everything the request path decides, in one place: the admin API's
//! `/metrics` reads a `Snapshot` and the per-site handles (`site`); benches print it.

pub mod allocator;
pub mod latency;
pub mod site;

pub mod window;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::cache::Phase;

macro_rules! stats {
    ($($name:ident: $doc:literal),* $(,)?) => {
        /// Live counters; cheap relaxed atomics, safe to bump on the hot path.
        #[derive(Debug, Default)]
        pub struct Stats {
            $(#[doc = $doc] pub $name: AtomicU64,)*
            /// Each site's adaptive origin concurrency limit now.
            pub origin_limits: OriginLimits,
        }

        /// A copy of every counter at one moment.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct Snapshot { $(#[doc = $doc] pub $name: u64,)* }

        impl Stats {
            /// `(name, description)` of every counter, for export.
            pub fn docs() -> &'static [(&'static str, &'static str)] {
                &[$((stringify!($name), $doc),)*]
            }

            pub fn snapshot(&self) -> Snapshot {
                Snapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl Snapshot {
            /// `(name, value)` pairs, for printing and export.
            pub fn pairs(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

stats! {
    requests: "Requests answered.",
    hits: "Fresh answers from the cache.",
    stale_served: "Stale answers (stale-while-revalidate, stale-if-error, grace).",
    misses: "Requests that had to fetch (miss, vary-miss, revalidation).",
    passes: "Requests relayed without caching.",
    errors: "Answers Kagami made itself (refusals, origin unavailable).",
    collapsed: "Requests that waited on another request's fetch.",
    origin_requests: "Requests sent to origins (probes and retries included).",
    origin_failures: "Origin requests that failed (connect, timeout, 500/502/503/504).",
    origin_in_flight: "Origin requests under way now.",
    origin_peak_in_flight: "Most origin requests ever under way at once.",
    origin_busy: "Requests that found every origin slot taken.",
    origin_slow: "Stored copies served because the origin was slow or under stress (origin_patience).",
    circuit_opened: "Times an origin circuit opened.",
    failovers: "Requests retried on a backup origin.",
    rate_limited: "429 answers.",
    overloaded: "503 answers because of a global cap.",
    emergency_pages: "Emergency pages served.",
    connections_open: "Client connections open now.",
    connections_total: "Client connections accepted.",
    connections_shrunk: "Times an idle HTTP/1 connection gave its read and write buffers back until its next request.",
    requests_in_flight: "Client requests under way now.",
    inflight_bytes: "Body bytes held in flight now (fills, chunks for slow clients, shared errors).",
    inflight_peak_bytes: "Most body bytes ever held in flight at once.",
    inflight_refusals: "Times the in-flight budget refused bytes (a fill not stored, a relay held back).",
    relay_stalls: "Relays abandoned because the client took nothing for the stall timeout.",
}

impl Stats {
    pub fn add(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one answered request under its cache phase.
    pub fn record(&self, phase: Phase, collapsed: bool) {
        self.add(&self.requests);
        let counter = match phase {
            Phase::Hit => &self.hits,
            Phase::StaleHit | Phase::StaleOnError => &self.stale_served,
            Phase::Miss | Phase::VaryMiss | Phase::Revalidated => &self.misses,
            Phase::Pass => &self.passes,
            Phase::Error => &self.errors,
            Phase::Limited => &self.rate_limited,
        };
        self.add(counter);
        if collapsed {
            self.add(&self.collapsed);
        }
    }

    /// Marks an origin request as started; the guard marks it finished when dropped.
    pub fn origin_started(&self) -> InFlight<'_> {
        self.add(&self.origin_requests);
        let now = self.origin_in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.origin_peak_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(&self.origin_in_flight)
    }
}

/// Gauges of the adaptive origin concurrency limits (`origin::adaptive`), one per site.
#[derive(Debug, Default)]
pub struct OriginLimits(Mutex<Vec<(String, Arc<AtomicU64>)>>);

impl OriginLimits {
    /// A gauge for `site`'s limit, starting at `limit`; its origin keeps it current.
    /// A site registered again (its origin rebuilt by a reload) has its gauge replaced.
    pub fn register(&self, site: &str, limit: u64) -> Arc<AtomicU64> {
        let gauge = Arc::new(AtomicU64::new(limit));
        if let Ok(mut all) = self.0.lock() {
            match all.iter_mut().find(|(name, _)| name == site) {
                Some(slot) => slot.1 = gauge.clone(),
                None => all.push((site.to_string(), gauge.clone())),
            }
        }
        gauge
    }

    /// Forgets the sites a reload removed.
    pub fn retain(&self, sites: &[&str]) {
        if let Ok(mut all) = self.0.lock() {
            all.retain(|(name, _)| sites.contains(&name.as_str()));
        }
    }

    /// `(site, limit)` for every site, in the order they were configured.
    pub fn now(&self) -> Vec<(String, u64)> {
        self.0.lock().map_or_else(
            |_| Vec::new(),
            |all| {
                all.iter()
                    .map(|(site, gauge)| (site.clone(), gauge.load(Ordering::Relaxed)))
                    .collect()
            },
        )
    }
}

/// "At most once per period", for log lines that could otherwise repeat per request.
#[derive(Debug, Default)]
pub struct Every {
    last_ms: AtomicU64,
}

impl Every {
    /// True at most once per `period` (and the first time).
    pub fn every(&self, period: std::time::Duration) -> bool {
        static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let now = EPOCH
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis() as u64
            + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= period.as_millis() as u64)
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Decrements a gauge when dropped.
pub struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_land_in_their_counters_and_the_peak_is_kept() {
        let stats = Stats::default();
        stats.record(Phase::Hit, false);
        stats.record(Phase::StaleOnError, true);
        {
            let _a = stats.origin_started();
            let _b = stats.origin_started();
        }
        let s = stats.snapshot();
        assert_eq!(
            (s.requests, s.hits, s.stale_served, s.collapsed),
            (2, 1, 1, 1)
        );
        assert_eq!(
            (
                s.origin_requests,
                s.origin_in_flight,
                s.origin_peak_in_flight
            ),
            (2, 0, 2)
        );
        assert!(s.pairs().contains(&("hits", 1)));
    }
}
