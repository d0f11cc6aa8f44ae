//! Per-site counters over the last minute (for `/status`): a ring of 60 one-second slots of
//! relaxed atomics, so the hit path pays a clock read and a few increments, and nothing is
//! ever locked or allocated.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use crate::cache::{CacheStatus, Phase};

/// Seconds the window covers.
pub const SECONDS: u64 = 60;

/// What one slot counts, by index.
#[derive(Debug, Clone, Copy)]
enum Count {
    Requests,
    Hits,
    Stale,
    Misses,
    Passes,
    Errors,
    Limited,
    StaleWhileRevalidate,
    Grace,
    StaleIfError,
    OriginSlow,
    StaleOther,
}

const COUNTS: usize = Count::StaleOther as usize + 1;

#[derive(Debug, Default)]
struct Slot {
    /// The second (since the process epoch, from 1) these counts are for; 0: never used.
    second: AtomicU64,
    counts: [AtomicU64; COUNTS],
}

/// One site's last minute.
#[derive(Debug)]
pub struct Window {
    slots: Box<[Slot]>,
}

/// The sums over the last minute.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Minute {
    pub requests: u64,
    pub hits: u64,
    pub stale: u64,
    pub misses: u64,
    pub passes: u64,
    pub errors: u64,
    pub rate_limited: u64,
    pub stale_by_reason: StaleReasons,
}

/// Stale answers by the `detail` they were served with.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct StaleReasons {
    #[serde(rename = "stale-while-revalidate")]
    pub stale_while_revalidate: u64,
    /// `grace`, and `grace-overrode-must-revalidate`.
    pub grace: u64,
    #[serde(rename = "stale-if-error")]
    pub stale_if_error: u64,
    #[serde(rename = "origin-slow")]
    pub origin_slow: u64,
    pub other: u64,
}

impl Minute {
    /// Answers from the store (fresh or stale) among all answers; `None` with no requests.
    pub fn hit_ratio(&self) -> Option<f64> {
        (self.requests > 0).then(|| (self.hits + self.stale) as f64 / self.requests as f64)
    }

    /// Requests per second, averaged over the window.
    pub fn rate(&self) -> f64 {
        self.requests as f64 / SECONDS as f64
    }
}

fn now_second() -> u64 {
    second_of(Instant::now())
}

/// The window's second of `at` (from 1; an instant before the epoch counts as its first).
fn second_of(at: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    at.saturating_duration_since(*EPOCH.get_or_init(Instant::now))
        .as_secs()
        + 1
}

impl Default for Window {
    fn default() -> Window {
        Window {
            slots: (0..SECONDS).map(|_| Slot::default()).collect(),
        }
    }
}

impl Window {
    /// Counts one answered request.
    pub fn record(&self, status: &CacheStatus) {
        self.record_at(now_second(), status);
    }

    /// Counts one request answered at `at`: the request path has read the clock already.
    pub fn record_answered(&self, at: Instant, status: &CacheStatus) {
        self.record_at(second_of(at), status);
    }

    fn record_at(&self, second: u64, status: &CacheStatus) {
        let slot = &self.slots[(second % SECONDS) as usize];
        let seen = slot.second.load(Ordering::Acquire);
        if seen != second
            && (slot.second)
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // A slot a minute old is reused. An increment by another thread between the swap
            // and these stores may be lost: a count or two in a second, for a status page.
            for count in &slot.counts {
                count.store(0, Ordering::Relaxed);
            }
        }
        let add = |c: Count| slot.counts[c as usize].fetch_add(1, Ordering::Relaxed);
        add(Count::Requests);
        match status.phase {
            Phase::Hit => add(Count::Hits),
            Phase::StaleHit | Phase::StaleOnError => {
                add(Count::Stale);
                add(match status.detail {
                    Some("stale-while-revalidate") => Count::StaleWhileRevalidate,
                    Some("grace" | "grace-overrode-must-revalidate") => Count::Grace,
                    Some("stale-if-error") => Count::StaleIfError,
                    Some("origin-slow") => Count::OriginSlow,
                    _ => Count::StaleOther,
                })
            }
            Phase::Miss | Phase::VaryMiss | Phase::Revalidated => add(Count::Misses),
            Phase::Pass => add(Count::Passes),
            Phase::Error => add(Count::Errors),
            Phase::Limited => add(Count::Limited),
        };
    }

    /// The sums over the last `SECONDS` seconds (this one included).
    pub fn last_minute(&self) -> Minute {
        self.minute_at(now_second())
    }

    fn minute_at(&self, now: u64) -> Minute {
        let mut sums = [0u64; COUNTS];
        for slot in self.slots.iter() {
            let second = slot.second.load(Ordering::Acquire);
            if second != 0 && second <= now && now - second < SECONDS {
                for (sum, count) in sums.iter_mut().zip(&slot.counts) {
                    *sum += count.load(Ordering::Relaxed);
                }
            }
        }
        let n = |c: Count| sums[c as usize];
        Minute {
            requests: n(Count::Requests),
            hits: n(Count::Hits),
            stale: n(Count::Stale),
            misses: n(Count::Misses),
            passes: n(Count::Passes),
            errors: n(Count::Errors),
            rate_limited: n(Count::Limited),
            stale_by_reason: StaleReasons {
                stale_while_revalidate: n(Count::StaleWhileRevalidate),
                grace: n(Count::Grace),
                stale_if_error: n(Count::StaleIfError),
                origin_slow: n(Count::OriginSlow),
                other: n(Count::StaleOther),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_phase_and_reason_and_forgets_after_a_minute() {
        let window = Window::default();
        window.record_at(100, &CacheStatus::new(Phase::Hit));
        window.record_at(100, &CacheStatus::new(Phase::Miss));
        window.record_at(130, &CacheStatus::new(Phase::StaleOnError).detail("grace"));
        window.record_at(
            131,
            &CacheStatus::new(Phase::StaleHit).detail("stale-while-revalidate"),
        );
        let m = window.minute_at(131);
        assert_eq!((m.requests, m.hits, m.misses, m.stale), (4, 1, 1, 2));
        assert_eq!(m.stale_by_reason.grace, 1);
        assert_eq!(m.stale_by_reason.stale_while_revalidate, 1);
        assert_eq!(m.hit_ratio(), Some(0.75));
        // Second 100 has left the window at 160; its slot is reused at 160.
        assert_eq!(window.minute_at(160).requests, 2);
        window.record_at(160, &CacheStatus::new(Phase::Pass));
        let m = window.minute_at(160);
        assert_eq!((m.requests, m.hits, m.passes), (3, 0, 1));
        assert_eq!(window.minute_at(500), Minute::default());
        assert_eq!(Minute::default().hit_ratio(), None);
    }
}
