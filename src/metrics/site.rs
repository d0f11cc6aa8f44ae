//! Per-site counters the request path bumps for `/metrics`: requests by status class and
//! cache phase, client latency, coalesced waits and stale answers by reason. Every handle is
//! made when the site is built and indexed by position, so answering a request costs a few
//! relaxed atomic adds: no label lookup, no allocation, no lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::StatusCode;

use super::latency::Latency;
use crate::cache::{CacheStatus, Phase};

/// Every cache phase, in the order of the counters (`phase_index`).
pub const PHASES: [Phase; 9] = [
    Phase::Hit,
    Phase::StaleHit,
    Phase::Miss,
    Phase::VaryMiss,
    Phase::Revalidated,
    Phase::StaleOnError,
    Phase::Pass,
    Phase::Error,
    Phase::Limited,
];

/// The `status` label: the class of the status code sent to the client.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Why a stale copy was served: the `Cache-Status` detail of a stale answer. Anything else
/// (none is known today) is counted as `other`, so the label set stays fixed.
pub const STALE_REASONS: [&str; 6] = [
    "stale-while-revalidate",
    "stale-if-error",
    "grace",
    "grace-overrode-must-revalidate",
    // `proxy::patience::ORIGIN_SLOW`: a copy served because the origin was slow.
    "origin-slow",
    "other",
];

/// The `site` label of requests no site took (no valid Host, no site for it, overload).
pub const NO_SITE: &str = "-";

/// One site's request counters (or those of requests no site took, `NO_SITE`).
#[derive(Debug)]
pub struct SiteMetrics {
    pub name: String,
    requests: [[AtomicU64; PHASES.len()]; CLASSES.len()],
    /// From the request head read to the response head ready (body transfer not included:
    /// that is the client's pace, not Kagami's).
    pub latency: Latency,
    coalesced: AtomicU64,
    stale: [AtomicU64; STALE_REASONS.len()],
}

impl SiteMetrics {
    pub fn new(name: &str) -> SiteMetrics {
        SiteMetrics {
            name: name.to_string(),
            requests: Default::default(),
            latency: Latency::default(),
            coalesced: AtomicU64::new(0),
            stale: Default::default(),
        }
    }

    /// Counts one answered request.
    pub fn record(&self, status: StatusCode, cache: &CacheStatus, took: Duration) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.requests[class][phase_index(cache.phase)].fetch_add(1, Ordering::Relaxed);
        self.latency.observe(took);
        if cache.collapsed {
            self.coalesced.fetch_add(1, Ordering::Relaxed);
        }
        if matches!(cache.phase, Phase::StaleHit | Phase::StaleOnError) {
            let reason = cache.detail.unwrap_or("other");
            let index = STALE_REASONS
                .iter()
                .position(|r| *r == reason)
                .unwrap_or(STALE_REASONS.len() - 1);
            self.stale[index].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `(status class, phase label, count)` of every combination seen at least once: the
    /// others would be dozens of zero series per site.
    pub fn requests(&self) -> impl Iterator<Item = (&'static str, &'static str, u64)> + '_ {
        self.requests.iter().zip(CLASSES).flat_map(|(row, class)| {
            row.iter()
                .zip(PHASES)
                .map(move |(n, phase)| (class, phase.label(), n.load(Ordering::Relaxed)))
                .filter(|(_, _, n)| *n > 0)
        })
    }

    pub fn coalesced(&self) -> u64 {
        self.coalesced.load(Ordering::Relaxed)
    }

    /// `(reason, count)` for every reason, zeros included.
    pub fn stale(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        STALE_REASONS
            .iter()
            .zip(&self.stale)
            .map(|(reason, n)| (*reason, n.load(Ordering::Relaxed)))
    }
}

fn phase_index(phase: Phase) -> usize {
    match phase {
        Phase::Hit => 0,
        Phase::StaleHit => 1,
        Phase::Miss => 2,
        Phase::VaryMiss => 3,
        Phase::Revalidated => 4,
        Phase::StaleOnError => 5,
        Phase::Pass => 6,
        Phase::Error => 7,
        Phase::Limited => 8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_indexes_follow_the_phase_list() {
        for (i, phase) in PHASES.iter().enumerate() {
            assert_eq!(phase_index(*phase), i);
        }
    }

    #[test]
    fn a_request_moves_its_class_phase_and_reason() {
        let site = SiteMetrics::new("test");
        let stale = CacheStatus::new(Phase::StaleOnError)
            .detail("grace")
            .collapsed(true);
        site.record(StatusCode::OK, &stale, Duration::from_millis(1));
        site.record(
            StatusCode::NOT_FOUND,
            &CacheStatus::new(Phase::Miss),
            Duration::from_millis(2),
        );
        let requests: Vec<_> = site.requests().collect();
        assert_eq!(
            requests,
            vec![("2xx", "stale-on-error", 1), ("4xx", "miss", 1)]
        );
        assert_eq!(site.coalesced(), 1);
        assert!(site.stale().any(|(r, n)| r == "grace" && n == 1));
        assert_eq!(site.stale().map(|(_, n)| n).sum::<u64>(), 1);
        assert_eq!(site.latency.count(), 2);
    }
}
