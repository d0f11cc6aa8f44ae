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
//!    origin that takes 4 at once, and 2 at worst. Each answer counts in that average as at
//!    most `OUTLIER` times the baseline: one client asking again and again for a page that is
//!    slow to build must not read as queueing and hold everyone's limit at the floor.
//! 3. **Growth.** Within tolerance, and only while the limit is in full use (as many in flight:
//!    a lighter load says nothing about capacity, and an origin with 4 workers answers 5 at
//!    once within tolerance, so growing at half use let the limit climb to 11), it grows by
//!    `SMOOTHING × √limit` per exchange, so it finds its way back from 1 to 32 in about fifty
//!    fast exchanges (unless it queued lately, below).
//!
//!    **Rises wait for their answers.** Every rise of the limit (rule 3's growth, or the
//!    `HEADROOM` of rule 2's target) needs the limit in full use and the answer's own latency
//!    within tolerance; and while the origin has queued within the last `BASELINE_WINDOW`,
//!    once the whole-number limit has changed it rises again only after a whole round at the
//!    new limit (as many answers as the limit, of requests sent after the change and answered
//!    in full use, once as many again have made room for its queue: an answer's send time is
//!    its arrival less its latency) came back within tolerance on average. The moving
//!    average learns of a higher limit a round trip late, so rising on answers to requests
//!    sent before the rise made the limit swing between 4 and 10 against 4 workers (the
//!    origin saw 7 to 9 in flight in the surge bench); paced, it stays at the gradient's
//!    `TOLERANCE × C + HEADROOM` (capacity + 2 for 4 workers; 11 for 8). An origin that has not
//!    queued lately grows back at full speed.
//! 4. **Bounds.** Never below 1, never above the ceiling (`origin_concurrency`).
//! 5. **Stress.** The origin is under stress while its latency (answers counted whole) shows
//!    queueing as in rule 2 (over `TOLERANCE` times the baseline plus `SLACK`): expired pages are then served from
//!    their copies at once. Not a higher bar: the gradient holds an overloaded origin's
//!    latency just above tolerance (1.5 times the baseline for 4 workers), and a visitor who
//!    joined that queue would wait a whole service time and more for a page it has.
//! 6. **Reporting.** A change of the whole-number limit by a quarter or more (at least 2) since
//!    the last report, or to 1 or to the ceiling, is returned for the log.
//! 7. **Re-measuring the minimum** (after the minRTT recalculation of Envoy's adaptive
//!    concurrency filter). An origin already queueing when its minimum was learnt (a crowd at
//!    start-up), or queueing for longer than the baseline windows, never shows its unloaded
//!    latency: the gradient then holds the limit near `baseline / service time` times too high
//!    (13 instead of 6 for 4 workers in the surge bench), or at the ceiling. So once queueing
//!    or a limit in full use has lasted `PROBE_AFTER`, at most every `PROBE_EVERY`, the limit is held at 1 until
//!    `PROBE_SAMPLES` answers of requests started during the hold have come back. Their mean
//!    (each counted as at most `OUTLIER` times the latency before the hold) is the new
//!    baseline (both windows), and the limit resumes at what Little's law gives for the
//!    latency seen before the hold against that baseline (`after_probe`), never above where
//!    it was; the smoothed latency restarts from what that limit should see. The hold is not reported,
//!    and is given up after `PROBE_GIVE_UP` without its answers (then the next waits longer).
//!    It is given up too (`end_overdue_hold`) once no answer has come for `OUTLIER` times the
//!    latency before the hold (answers counted whole; at least `HOLD_PATIENCE_FLOOR`) while requests wait, or when
//!    an answer of the hold itself took that long: at one request at a time, one client's
//!    slow page in the only slot held every other visitor's miss behind it for up to
//!    `PROBE_GIVE_UP`. Such a client can keep the minimum from being re-measured (the limit
//!    then stays where the gradient holds it), but no longer hold everyone at 1.

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
/// Weight of each exchange in the limit's moving average.
pub const SMOOTHING: f64 = 0.2;
/// An answer counts in the moving average (and in a re-measured minimum, against the
/// latency before the hold) as at most this
/// many times the baseline. A page the origin is slow to build is not queueing, and one client
/// can ask for it over and over: counted in whole, one such answer in twenty read as queueing
/// and held everyone's limit at the floor. Above `2 / TOLERANCE`, so that a real queue (every
/// answer slower) still takes the gradient to its floor of ½; one client's answers must then
/// be an eighth of all before they look like queueing. Stress (rule 5) counts answers whole.
pub const OUTLIER: f64 = 3.0;
/// Weight of each exchange in the latency's moving average: over about ten exchanges, so that
/// a site's mix of fast and slow pages reads as one steady level.
pub const LATENCY_SMOOTHING: f64 = 0.1;
/// Latencies averaged before the average may become the baseline: the first answers alone
/// (fast pages of a site with slow ones too) would make everything after them look like
/// queueing. Until then the average is a plain mean, so it has no start-up lag.
pub const WARM_UP: u32 = 10;
/// The baseline is the smallest smoothed latency over one to two of these windows (rule 2).
pub const BASELINE_WINDOW: Duration = Duration::from_secs(30);
/// Queueing that lasts this long makes the minimum suspect (rule 7).
pub const PROBE_AFTER: Duration = Duration::from_secs(2);
/// Time between two re-measurements of the minimum (rule 7): rare, as each costs the origin
/// about `PROBE_SAMPLES` answers at one request at a time.
pub const PROBE_EVERY: Duration = Duration::from_secs(30);
/// Answers averaged into a re-measured minimum (rule 7): several, so that one fast page of a
/// site with slow ones too does not become the minimum.
pub const PROBE_SAMPLES: u32 = 5;
/// A hold that has not gathered its answers in this long (no traffic, or only failures) is
/// given up: the limit resumes where it was.
pub const PROBE_GIVE_UP: Duration = Duration::from_secs(10);
/// The least time a hold waits for its next answer (rule 7) before it is given up, however
/// fast the origin was: a millisecond origin's jitter must not end every hold.
pub const HOLD_PATIENCE_FLOOR: Duration = Duration::from_millis(50);

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
    /// Moving average of the response-head latency, in seconds (None before the first answer),
    /// each answer counted as at most `OUTLIER` times the baseline.
    smoothed: Option<f64>,
    /// The same average of the answers as they came, for stress alone (rule 5): serving
    /// copies at once costs no visitor anything, so one very slow answer may say so.
    uncapped: Option<f64>,
    /// Smallest `smoothed` in the current and the previous baseline window, in seconds.
    current_min: Option<f64>,
    previous_min: Option<f64>,
    window_started_ms: u64,
    /// Latencies seen; the baseline is kept only once the average has settled (`WARM_UP`).
    seen: u32,
    reported: usize,
    /// Since when the latency has been above tolerance or the limit fully used (rule 7).
    pressed_since: Option<u64>,
    /// When the minimum was last re-measured (0: never).
    probed_ms: u64,
    probe: Option<Probe>,
    /// When latency last showed queueing (rule 2), for paced rises (rule 3).
    queued_ms: Option<u64>,
    /// The answers at the present whole-number limit (rule 3).
    round: Round,
}

/// The answers of requests sent since the whole-number limit last changed (rule 3).
#[derive(Debug, Clone, Default)]
struct Round {
    started_ms: u64,
    answers: u32,
    /// The latencies' sum of the answers after the first `limit` of them, in seconds.
    sum: f64,
    /// A whole round came back within tolerance on average.
    passed: bool,
}

/// A re-measurement of the minimum under way (rule 7).
#[derive(Debug, Clone)]
struct Probe {
    started_ms: u64,
    /// The limit to resume from.
    resume: f64,
    /// The smoothed latency when the hold began, in seconds.
    before: f64,
    samples: u32,
    sum: f64,
    /// The latency when the hold began with every answer counted whole, in seconds: an
    /// origin that really got slower shows it here before its capped average catches up.
    before_whole: f64,
    /// The last answer during the hold (or its start), for `end_overdue_hold`.
    answered_ms: u64,
}

impl Probe {
    /// How long the hold waits for an answer before it is given up.
    fn patience_ms(&self) -> u64 {
        let before = self.before.max(self.before_whole);
        ((before * OUTLIER * 1000.0) as u64).max(HOLD_PATIENCE_FLOOR.as_millis() as u64)
    }
}

/// Is this latency queueing against the baseline (rule 2)? Both in seconds.
pub fn queueing(baseline: f64, smoothed: f64) -> bool {
    smoothed > baseline * TOLERANCE + SLACK.as_secs_f64()
}

/// Where the gradient moves a limit whose latency shows queueing (rule 2): the gradient,
/// `baseline × TOLERANCE / smoothed` kept within ½ and 1, times the limit, plus `HEADROOM`.
pub fn gradient_target(limit: f64, baseline: f64, smoothed: f64) -> f64 {
    let gradient = (baseline * TOLERANCE / smoothed).clamp(0.5, 1.0);
    limit * gradient + HEADROOM
}

/// Growth per exchange within tolerance (rule 3).
pub fn growth(limit: f64) -> f64 {
    SMOOTHING * limit.sqrt()
}

/// Is a re-measurement of the minimum due (rule 7)? Queueing since `since` (if at all), the
/// last re-measurement at `probed_ms` (0: never), times in milliseconds.
pub fn probe_due(since: Option<u64>, probed_ms: u64, now_ms: u64) -> bool {
    let lasted = since.is_some_and(|s| now_ms.saturating_sub(s) >= PROBE_AFTER.as_millis() as u64);
    let rested =
        probed_ms == 0 || now_ms.saturating_sub(probed_ms) >= PROBE_EVERY.as_millis() as u64;
    lasted && rested
}

/// The limit after a re-measurement (rule 7): `limit` requests in flight took `before` (the
/// smoothed latency when the hold began), so by Little's law the origin takes about
/// `limit × baseline / before` at once; the limit resumes at `TOLERANCE` times that plus
/// `HEADROOM`, never above `limit` and never below 1. Latencies in seconds.
pub fn after_probe(limit: f64, baseline: f64, before: f64) -> f64 {
    if before <= 0.0 {
        return limit.max(1.0);
    }
    let capacity = limit * baseline / before;
    (capacity * TOLERANCE + HEADROOM).clamp(1.0, limit.max(1.0))
}

impl Limit {
    /// A limit that starts at the ceiling: an origin is trusted until it shows otherwise.
    pub fn new(ceiling: usize) -> Limit {
        let ceiling = ceiling.max(1);
        Limit {
            ceiling,
            limit: ceiling as f64,
            smoothed: None,
            uncapped: None,
            current_min: None,
            previous_min: None,
            window_started_ms: 0,
            seen: 0,
            reported: ceiling,
            pressed_since: None,
            probed_ms: 0,
            probe: None,
            queued_ms: None,
            round: Round::default(),
        }
    }

    /// The limit now, in whole requests (rule 4); 1 while the minimum is re-measured (rule 7).
    pub fn get(&self) -> usize {
        if self.probe.is_some() {
            return 1;
        }
        (self.limit.floor() as usize).clamp(1, self.ceiling)
    }

    /// Is the minimum being re-measured (rule 7)?
    pub fn probing(&self) -> bool {
        self.probe.is_some()
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

    /// Does the origin's latency show queueing against its baseline (rule 5)?
    pub fn stressed(&self) -> bool {
        match (self.uncapped, self.baseline()) {
            (Some(now), Some(base)) => queueing(base.as_secs_f64(), now),
            _ => false,
        }
    }

    /// Takes one exchange into account. `in_flight` is how many origin requests were under way
    /// when it finished (itself included); `now_ms` a monotonic clock in milliseconds.
    pub fn observe(&mut self, sample: Sample, in_flight: usize, now_ms: u64) -> Option<Change> {
        if let Some(probe) = &self.probe {
            if now_ms.saturating_sub(probe.started_ms) >= PROBE_GIVE_UP.as_millis() as u64 {
                self.give_up_hold(now_ms);
            }
        }
        let latency = match sample {
            Sample::Overloaded => {
                match &mut self.probe {
                    Some(probe) => probe.resume *= DROP_FACTOR,
                    None => self.limit *= DROP_FACTOR,
                }
                None
            }
            Sample::Answered(latency) => Some(latency.as_secs_f64()),
        };
        let before = self.get();
        if let Some(latency) = latency {
            if self.probe.is_some() {
                self.probe_answer(latency, now_ms);
            } else {
                self.answered(latency, in_flight, now_ms);
            }
        }
        self.limit = self.limit.clamp(1.0, self.ceiling as f64);
        if self.get() != before {
            self.new_round(now_ms);
        }
        if self.probe.is_some() {
            return None;
        }
        self.report()
    }

    /// Rules 2, 3 and the start of rule 7 for one answer.
    fn answered(&mut self, latency: f64, in_flight: usize, now_ms: u64) {
        self.seen = self.seen.saturating_add(1);
        let weight = (1.0 / f64::from(self.seen)).max(LATENCY_SMOOTHING);
        let counted = self.capped(latency);
        let smoothed = match self.smoothed {
            None => counted,
            Some(s) => s + (counted - s) * weight,
        };
        self.smoothed = Some(smoothed);
        self.uncapped = Some(match self.uncapped {
            None => latency,
            Some(s) => s + (latency - s) * weight,
        });
        if self.seen >= WARM_UP {
            self.track_baseline(smoothed, now_ms);
        }
        let base = self.baseline().map_or(smoothed, |b| b.as_secs_f64());
        // A limit in full use may hide queueing that started before the baseline was learnt.
        let full = in_flight >= self.get();
        let pressed = queueing(base, smoothed) || full;
        if queueing(base, smoothed) {
            self.queued_ms = Some(now_ms);
        }
        let may_rise = self.rise_answered(base, latency, full, now_ms) && full;
        if queueing(base, smoothed) {
            let target = gradient_target(self.limit, base, smoothed);
            let step = (target - self.limit) * SMOOTHING;
            if step < 0.0 || may_rise {
                self.limit += step;
            }
        } else if may_rise {
            self.limit += growth(self.limit);
        }
        self.limit = self.limit.clamp(1.0, self.ceiling as f64);
        if !pressed || self.seen < WARM_UP {
            self.pressed_since = None;
            return;
        }
        let since = *self.pressed_since.get_or_insert(now_ms);
        if probe_due(Some(since), self.probed_ms, now_ms) {
            self.probe = Some(Probe {
                started_ms: now_ms,
                resume: self.limit,
                before: smoothed,
                samples: 0,
                sum: 0.0,
                before_whole: self.uncapped.unwrap_or(smoothed),
                answered_ms: now_ms,
            });
        }
    }

    /// Rule 3: may this answer (`latency` in seconds, arriving at `now_ms`) let the limit rise?
    /// Its own latency must be within tolerance of `base`; and if the origin queued within
    /// the last `BASELINE_WINDOW`, so must the mean of a whole round at the present limit: as
    /// many answers as the limit, of requests sent after the limit last changed and answered
    /// with the limit in full use (`full`), after as many again. A round that shows queueing
    /// is followed by a fresh one.
    fn rise_answered(&mut self, base: f64, latency: f64, full: bool, now_ms: u64) -> bool {
        let sent = now_ms.saturating_sub((latency * 1000.0) as u64);
        let limit = self.get();
        // Only answers that came back with the limit in full use say what the limit does: a
        // round half spent below it would pass at a latency the limit itself never sees.
        if full && sent >= self.round.started_ms && !self.round.passed {
            self.round.answers = self.round.answers.saturating_add(1);
            // The first round's worth only makes room: requests sent just after a rise find
            // the workers the old limit left free, before the new limit's queue has built.
            if self.round.answers as usize > limit {
                self.round.sum += latency;
            }
            if self.round.answers as usize >= 2 * limit {
                let mean = self.round.sum / limit as f64;
                if queueing(base, mean) {
                    self.new_round(now_ms);
                } else {
                    self.round.passed = true;
                }
            }
        }
        if queueing(base, latency) {
            return false;
        }
        let window = BASELINE_WINDOW.as_millis() as u64;
        let queued_lately = self
            .queued_ms
            .is_some_and(|q| now_ms.saturating_sub(q) < window);
        !queued_lately || self.round.passed
    }

    /// The whole-number limit changed at `now_ms` (rule 3): a round at the new limit begins.
    fn new_round(&mut self, now_ms: u64) {
        self.round = Round {
            started_ms: now_ms,
            ..Round::default()
        };
    }

    /// Rule 7: ends the hold, the limit resuming where it was. An origin too slow for a hold
    /// to finish (five answers in 10 s) would spend a quarter of its time at 1, and a client
    /// that ends holds with a slow page would get one every rest: the next try waits four
    /// rests instead of one.
    fn give_up_hold(&mut self, now_ms: u64) {
        if let Some(probe) = self.probe.take() {
            self.limit = probe.resume;
            self.probed_ms = now_ms + 3 * PROBE_EVERY.as_millis() as u64;
            self.pressed_since = None;
        }
    }

    /// During a hold (rule 7), how long until it is overdue (`end_overdue_hold`): `None`
    /// without a hold.
    pub fn hold_overdue_in(&self, now_ms: u64) -> Option<Duration> {
        let probe = self.probe.as_ref()?;
        let due = probe.answered_ms + probe.patience_ms();
        Some(Duration::from_millis(due.saturating_sub(now_ms)))
    }

    /// Gives up a hold that has had no answer for its patience, for a request that waited that
    /// long: the only slot is held by something slow (one client's slow page, say), and every
    /// other miss would wait behind it. Whether it did.
    pub fn end_overdue_hold(&mut self, now_ms: u64) -> bool {
        if self.hold_overdue_in(now_ms) != Some(Duration::ZERO) {
            return false;
        }
        self.give_up_hold(now_ms);
        true
    }

    /// Rule 7: an answer during the hold; only requests started during it count.
    fn probe_answer(&mut self, latency: f64, now_ms: u64) {
        let Some(probe) = self.probe.as_mut() else {
            return;
        };
        probe.answered_ms = now_ms;
        let started = now_ms.saturating_sub((latency * 1000.0) as u64);
        if started < probe.started_ms {
            return;
        }
        if (latency * 1000.0) as u64 > probe.patience_ms() {
            // It held the only slot that long: the same lever as a wait without answers.
            self.give_up_hold(now_ms);
            return;
        }
        probe.samples += 1;
        // Capped against the latency before the hold, not the suspect minimum: an origin
        // that really got slower shows that latency already, while one client's slow page
        // (which may get every other answer at one request at a time) cannot make itself
        // the minimum.
        probe.sum += latency.min(probe.before * OUTLIER);
        if probe.samples < PROBE_SAMPLES {
            return;
        }
        let base = probe.sum / f64::from(probe.samples);
        self.limit = after_probe(probe.resume, base, probe.before);
        self.current_min = Some(base);
        self.previous_min = None;
        self.window_started_ms = now_ms;
        // What the resumed limit will see (Little's law again), so that the average neither
        // claims the origin idle (and grows the limit) nor keeps the old queue.
        let expected = probe.before * self.limit / probe.resume.max(1.0);
        self.smoothed = Some(expected.max(base));
        self.uncapped = self.smoothed;
        self.pressed_since = None;
        self.probed_ms = now_ms;
        self.probe = None;
    }

    /// `latency` as the average counts it: at most `OUTLIER` times the baseline, once known.
    fn capped(&self, latency: f64) -> f64 {
        self.baseline()
            .map_or(latency, |b| latency.min(b.as_secs_f64() * OUTLIER))
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
#[path = "adaptive_tests.rs"]
mod tests;
