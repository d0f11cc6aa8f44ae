//! Adaptive origin concurrency: how many requests an origin can really take at once, found from
//! what it does rather than configured (a gradient limiter after Netflix's concurrency-limits
//! and Envoy's adaptive concurrency filter). Pure logic: the caller reports each origin exchange
//! and applies the limit to the site's origin slots (`slots::Slots::set_limit`).
//!
//! The rules, one origin exchange at a time:
//! 1. **Overload.** A timeout or 503 that was the origin's own failure (see `capacity`)
//!    multiplies the limit by `DROP_FACTOR`: the origin said it cannot keep up.
//! 2. **Queueing.** Latency is compared as a short moving average (`smoothed`, so one slow URL
//!    among fast ones is not a trend) against its own minimum (once `WARM_UP` answers have
//!    been averaged) over the last one to two `BASELINE_WINDOW`s (`baseline`, so the reference
//!    follows an origin whose pages really got slower). Above `TOLERANCE` times the baseline (and `SLACK` more, so that jitter of a
//!    1 ms origin is not queueing) the limit moves towards `limit × gradient + HEADROOM`,
//!    where the gradient is `baseline × TOLERANCE / smoothed` (at least ½), by `SMOOTHING` per
//!    exchange. By Little's law an origin with C workers answers L requests in flight in about
//!    `baseline × L / C`, so the limit settles near `TOLERANCE × C + HEADROOM`: 6 for an
//!    origin that takes 4 at once, and 2 at worst.
//! 3. **Growth.** Within tolerance, and only while the limit is really used (at least half of
//!    it in flight: a light load says nothing about capacity), the limit grows by
//!    `SMOOTHING × √limit` per exchange, so it finds its way back from 1 to 32 in about fifty
//!    fast exchanges.
//! 4. **Bounds.** Never below 1, never above the ceiling (`origin_concurrency`).
//! 5. **Stress.** The origin is under stress while its latency is `STRESS` times the baseline
//!    or more (plus `SLACK`): expired pages are then served from their copies at once.
//! 6. **Reporting.** A change of the whole-number limit by a quarter or more (at least 2) since
//!    the last report, or to 1 or to the ceiling, is returned for the log.

use std::time::Duration;

/// Multiplier applied to the limit for each overload answer (rule 1).
pub const DROP_FACTOR: f64 = 0.9;
/// Smoothed latency up to this multiple of the baseline is normal (rule 2). Low, so that the
/// limit settles close to what the origin can take at once; `SLACK` keeps jitter out.
pub const TOLERANCE: f64 = 1.25;
/// Requests the limit keeps beyond what the gradient allows (rule 2), so that it keeps probing
/// an origin that merely got slower rather than falling to 1 until the baseline catches up.
pub const HEADROOM: f64 = 1.0;
/// Latency this far over the baseline (in absolute terms) is never counted as queueing.
pub const SLACK: Duration = Duration::from_millis(5);
/// Smoothed latency this many times the baseline means the origin is under stress (rule 5).
pub const STRESS: f64 = 4.0;
/// Weight of each exchange in the limit's moving average.
pub const SMOOTHING: f64 = 0.2;
/// Weight of each exchange in the latency's moving average: over about ten exchanges, so that
/// a site's mix of fast and slow pages reads as one steady level.
pub const LATENCY_SMOOTHING: f64 = 0.1;
/// Latencies averaged before the average may become the baseline: the first answers alone
/// (fast pages of a site with slow ones too) would make everything after them look like
/// queueing. Until then the average is a plain mean, so it has no start-up lag.
pub const WARM_UP: u32 = 10;
/// The baseline is the smallest smoothed latency over one to two of these windows (rule 2).
pub const BASELINE_WINDOW: Duration = Duration::from_secs(30);

/// What one origin exchange showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sample {
    /// The origin answered (its head) after this long, with a status that says nothing about
    /// overload.
    Answered(Duration),
    /// A timeout or 503 of the origin itself: it cannot keep up.
    Overloaded,
}

/// A change of the limit worth a log line (rule 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub from: usize,
    pub to: usize,
}

/// One origin's adaptive limit.
#[derive(Debug, Clone)]
pub struct Limit {
    ceiling: usize,
    limit: f64,
    /// Moving average of the response-head latency, in seconds (None before the first answer).
    smoothed: Option<f64>,
    /// Smallest `smoothed` in the current and the previous baseline window, in seconds.
    current_min: Option<f64>,
    previous_min: Option<f64>,
    window_started_ms: u64,
    /// Latencies seen; the baseline is kept only once the average has settled (`WARM_UP`).
    seen: u32,
    reported: usize,
}

impl Limit {
    /// A limit that starts at the ceiling: an origin is trusted until it shows otherwise.
    pub fn new(ceiling: usize) -> Limit {
        let ceiling = ceiling.max(1);
        Limit {
            ceiling,
            limit: ceiling as f64,
            smoothed: None,
            current_min: None,
            previous_min: None,
            window_started_ms: 0,
            seen: 0,
            reported: ceiling,
        }
    }

    /// The limit now, in whole requests (rule 4).
    pub fn get(&self) -> usize {
        (self.limit.floor() as usize).clamp(1, self.ceiling)
    }

    /// Smallest recent smoothed latency (rule 2), once known.
    pub fn baseline(&self) -> Option<Duration> {
        let min = match (self.current_min, self.previous_min) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(Duration::from_secs_f64(min))
    }

    /// The moving average of latency, once known.
    pub fn latency(&self) -> Option<Duration> {
        self.smoothed.map(Duration::from_secs_f64)
    }

    /// Is the origin's latency far above its baseline (rule 5)?
    pub fn stressed(&self) -> bool {
        match (self.smoothed, self.baseline()) {
            (Some(now), Some(base)) => now > base.as_secs_f64() * STRESS + SLACK.as_secs_f64(),
            _ => false,
        }
    }

    /// Takes one exchange into account. `in_flight` is how many origin requests were under way
    /// when it finished (itself included); `now_ms` a monotonic clock in milliseconds.
    pub fn observe(&mut self, sample: Sample, in_flight: usize, now_ms: u64) -> Option<Change> {
        match sample {
            Sample::Overloaded => self.limit *= DROP_FACTOR,
            Sample::Answered(latency) => {
                let latency = latency.as_secs_f64();
                self.seen = self.seen.saturating_add(1);
                let weight = (1.0 / f64::from(self.seen)).max(LATENCY_SMOOTHING);
                let smoothed = match self.smoothed {
                    None => latency,
                    Some(s) => s + (latency - s) * weight,
                };
                self.smoothed = Some(smoothed);
                if self.seen >= WARM_UP {
                    self.track_baseline(smoothed, now_ms);
                }
                let base = self.baseline().map_or(smoothed, |b| b.as_secs_f64());
                let allowed = base * TOLERANCE + SLACK.as_secs_f64();
                if smoothed > allowed {
                    let gradient = (base * TOLERANCE / smoothed).clamp(0.5, 1.0);
                    let target = self.limit * gradient + HEADROOM;
                    self.limit += (target - self.limit) * SMOOTHING;
                } else if in_flight * 2 >= self.get() {
                    self.limit += SMOOTHING * self.limit.sqrt();
                }
            }
        }
        self.limit = self.limit.clamp(1.0, self.ceiling as f64);
        self.report()
    }

    fn track_baseline(&mut self, smoothed: f64, now_ms: u64) {
        if now_ms.saturating_sub(self.window_started_ms) >= BASELINE_WINDOW.as_millis() as u64 {
            self.previous_min = self.current_min.take();
            self.window_started_ms = now_ms;
        }
        self.current_min = Some(self.current_min.map_or(smoothed, |m| m.min(smoothed)));
    }

    fn report(&mut self) -> Option<Change> {
        let (from, to) = (self.reported, self.get());
        let step = (from / 4).max(2);
        let big = from.abs_diff(to) >= step || (to != from && (to == 1 || to == self.ceiling));
        big.then(|| {
            self.reported = to;
            Change { from, to }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Sample {
        Sample::Answered(Duration::from_millis(n))
    }

    /// `n` exchanges of `latency_ms` with `in_flight` under way, one per millisecond from `t`.
    fn feed(l: &mut Limit, n: usize, latency_ms: u64, in_flight: usize, t: &mut u64) {
        for _ in 0..n {
            *t += 1;
            l.observe(ms(latency_ms), in_flight, *t);
        }
    }

    #[test]
    fn starts_at_the_ceiling_and_never_leaves_its_bounds() {
        let mut l = Limit::new(32);
        assert_eq!(l.get(), 32);
        for _ in 0..500 {
            l.observe(Sample::Overloaded, 32, 1);
        }
        assert_eq!(l.get(), 1, "never below 1");
        let mut t = 1;
        feed(&mut l, 500, 10, 64, &mut t);
        assert_eq!(l.get(), 32, "never above the ceiling");
        assert_eq!(Limit::new(0).get(), 1, "a ceiling of 0 still allows one");
    }

    #[test]
    fn overload_answers_shrink_the_limit_multiplicatively() {
        let mut l = Limit::new(32);
        l.observe(Sample::Overloaded, 32, 1);
        assert_eq!(l.get(), 28, "32 × 0.9");
        for _ in 0..10 {
            l.observe(Sample::Overloaded, 32, 1);
        }
        assert_eq!(l.get(), 10, "32 × 0.9^11 ≈ 10");
    }

    #[test]
    fn latency_far_above_its_minimum_makes_the_limit_fall() {
        let mut l = Limit::new(32);
        let mut t = 0;
        feed(&mut l, 50, 10, 32, &mut t);
        assert_eq!(l.get(), 32);
        feed(&mut l, 60, 500, 32, &mut t);
        assert_eq!(l.get(), 2, "fifty times slower: the floor of rule 2");
        assert!(l.stressed());
    }

    #[test]
    fn an_origin_that_takes_four_at_once_settles_near_six() {
        // Little's law: 4 workers at 200 ms answer L requests in flight in 50 ms × L.
        let mut l = Limit::new(32);
        let mut t = 0;
        feed(&mut l, 20, 200, 4, &mut t);
        for _ in 0..400 {
            let in_flight = l.get();
            let latency = 200.max(50 * in_flight as u64);
            t += 1;
            l.observe(ms(latency), in_flight, t);
        }
        assert!((5..=7).contains(&l.get()), "settled at {}", l.get());
    }

    #[test]
    fn one_slow_answer_among_fast_ones_is_not_a_trend() {
        let mut l = Limit::new(32);
        let mut t = 0;
        feed(&mut l, 50, 10, 32, &mut t);
        feed(&mut l, 1, 30, 32, &mut t);
        assert_eq!(l.get(), 32);
        assert!(!l.stressed());
    }

    #[test]
    fn a_mix_of_fast_and_slow_pages_is_not_queueing() {
        let mut l = Limit::new(32);
        let mut t = 0;
        for i in 0..400 {
            t += 1;
            l.observe(ms(if i % 2 == 0 { 5 } else { 100 }), 32, t);
        }
        assert_eq!(l.get(), 32);
        assert!(!l.stressed());
        let base = l.baseline().unwrap();
        assert!(base > Duration::from_millis(40), "baseline {base:?}");
    }

    #[test]
    fn jitter_of_a_very_fast_origin_is_not_queueing() {
        let mut l = Limit::new(32);
        let mut t = 0;
        feed(&mut l, 50, 1, 32, &mut t);
        feed(&mut l, 50, 4, 32, &mut t);
        assert_eq!(l.get(), 32, "4 ms is within the slack of a 1 ms origin");
        assert!(!l.stressed());
    }

    #[test]
    fn the_limit_grows_back_when_latency_returns_and_the_limit_is_used() {
        let mut l = Limit::new(32);
        for _ in 0..40 {
            l.observe(Sample::Overloaded, 32, 1);
        }
        assert_eq!(l.get(), 1);
        let mut t = 1;
        feed(&mut l, 60, 10, 32, &mut t);
        assert_eq!(l.get(), 32, "back at the ceiling within 60 fast exchanges");
    }

    #[test]
    fn a_light_load_does_not_raise_the_limit() {
        let mut l = Limit::new(32);
        for _ in 0..20 {
            l.observe(Sample::Overloaded, 32, 1);
        }
        let before = l.get();
        let mut t = 1;
        feed(&mut l, 100, 10, 1, &mut t);
        assert_eq!(
            l.get(),
            before,
            "one request at a time says nothing about capacity"
        );
    }

    #[test]
    fn the_baseline_follows_an_origin_that_really_got_slower() {
        let mut l = Limit::new(32);
        let mut t = 0;
        feed(&mut l, 50, 10, 32, &mut t);
        assert_eq!(l.baseline(), Some(Duration::from_millis(10)));
        // Slow for two whole windows: the old minimum is forgotten.
        let window = BASELINE_WINDOW.as_millis() as u64;
        for _ in 0..3 {
            t += window;
            feed(&mut l, 30, 200, 32, &mut t);
        }
        let base = l.baseline().unwrap();
        assert!(base > Duration::from_millis(150), "baseline now {base:?}");
        assert!(!l.stressed());
    }

    #[test]
    fn stress_needs_latency_far_above_the_baseline() {
        let mut l = Limit::new(32);
        assert!(!l.stressed(), "no data, no stress");
        let mut t = 0;
        feed(&mut l, 50, 10, 4, &mut t);
        feed(&mut l, 3, 30, 4, &mut t);
        assert!(!l.stressed(), "a little slower is not stress");
        feed(&mut l, 10, 200, 4, &mut t);
        assert!(l.stressed());
        feed(&mut l, 60, 10, 4, &mut t);
        assert!(!l.stressed(), "stress ends with the latency");
    }

    #[test]
    fn only_big_changes_are_reported() {
        let mut l = Limit::new(32);
        assert_eq!(
            l.observe(Sample::Overloaded, 32, 1),
            None,
            "32 → 28 is small"
        );
        assert_eq!(l.observe(Sample::Overloaded, 32, 1), None, "32 → 25 too");
        assert_eq!(
            l.observe(Sample::Overloaded, 32, 1),
            Some(Change { from: 32, to: 23 })
        );
        for _ in 0..60 {
            l.observe(Sample::Overloaded, 32, 1);
        }
        let mut t = 1;
        let mut changes = Vec::new();
        for _ in 0..60 {
            t += 1;
            changes.extend(l.observe(ms(10), 32, t));
        }
        assert_eq!(changes.last().map(|c| c.to), Some(32), "{changes:?}");
        assert!(
            changes.len() < 15,
            "a few lines, not one per step: {changes:?}"
        );
    }
}
