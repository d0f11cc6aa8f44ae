//! Origin health, passive and active.
//!
//! `Backoff`: after any failure, requests that have a stale copy are answered from it for a
//! short while without asking the origin, so a sick origin is not hit by every request (a known
//! nginx weakness).
//!
//! `Breaker`: a circuit per origin server. Consecutive failures open it; while open, nothing is
//! sent there; once its wait has passed, exactly one request at a time is let through as a
//! probe, and the first success closes the circuit.
//!
//! The wait starts short (`FIRST_OPEN`) so that cold pages work again soon after the origin is
//! back (issue 9: a fixed `circuit_open` kept them on the emergency page for ~10 s). A probe
//! that the origin answered badly or left hanging doubles the wait, up to `circuit_open`: that
//! origin is alive and struggling, and every probe costs it work. A probe whose connection was
//! refused (or never completed) costs the origin nothing, so a dead origin keeps being probed
//! every `FIRST_OPEN`, still one probe at a time.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The wait before the first probe of a freshly opened circuit (or `circuit_open` if shorter).
pub const FIRST_OPEN: Duration = Duration::from_secs(1);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

pub(super) fn now_ms() -> u64 {
    // Never 0, which stands for "not set" below.
    epoch().elapsed().as_millis() as u64 + 1
}

#[derive(Debug, Default)]
pub struct Backoff {
    failing_until: AtomicU64,
}

impl Backoff {
    pub fn record_failure(&self, backoff: Duration) {
        let until = now_ms() + backoff.as_millis() as u64;
        self.failing_until.fetch_max(until, Ordering::Relaxed);
    }

    pub fn record_success(&self) {
        self.failing_until.store(0, Ordering::Relaxed);
    }

    /// True while the back-off after the last failure lasts.
    pub fn is_failing(&self) -> bool {
        let until = self.failing_until.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }
}

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    /// The longest wait between probes (`circuit_open`).
    open_for: Duration,
    /// The first wait: `FIRST_OPEN`, or `open_for` when that is shorter.
    first_open: Duration,
    /// Probes in a row that the origin answered badly (or left hanging) since the circuit last
    /// closed; each doubles the wait before the next one.
    failed_probes: AtomicU32,
    failures: AtomicU32,
    /// 0 while closed; otherwise when the next probe may go.
    open_until: AtomicU64,
    probing: AtomicBool,
}

/// Permission to send one request through a breaker. Report the result with `success` or
/// `failure`; a ticket dropped without a result frees the probe slot for someone else.
pub struct Ticket<'a> {
    breaker: &'a Breaker,
    probe: bool,
}

/// What happened to the circuit when a result was reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    Opened,
    Closed,
}

impl Breaker {
    pub fn new(threshold: u32, open_for: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            open_for,
            first_open: open_for.min(FIRST_OPEN),
            failed_probes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    /// May a request go to this server now?
    pub fn admit(&self) -> Option<Ticket<'_>> {
        let open_until = self.open_until.load(Ordering::Acquire);
        if open_until == 0 {
            return Some(Ticket {
                breaker: self,
                probe: false,
            });
        }
        if now_ms() < open_until {
            return None;
        }
        // Half-open: one probe at a time.
        self.probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Ticket {
                breaker: self,
                probe: true,
            })
    }

    /// Open and not yet ready for a probe: requests should not even try.
    pub fn rejecting(&self) -> bool {
        let open_until = self.open_until.load(Ordering::Acquire);
        open_until != 0 && now_ms() < open_until
    }

    pub fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }

    /// A success seen outside a ticket (an active health check).
    pub fn record_success(&self) -> Transition {
        self.failures.store(0, Ordering::Release);
        self.failed_probes.store(0, Ordering::Release);
        let was = self.open_until.swap(0, Ordering::AcqRel);
        self.probing.store(false, Ordering::Release);
        if was != 0 {
            Transition::Closed
        } else {
            Transition::None
        }
    }

    /// A failure seen outside a ticket (an active health check).
    pub fn record_failure(&self) -> Transition {
        self.fail(false, false)
    }

    /// How long the circuit stays open after `failed_probes` probes failed in a row.
    fn wait(&self, failed_probes: u32) -> Duration {
        let doubled = self
            .first_open
            .saturating_mul(1u32.checked_shl(failed_probes.min(31)).unwrap_or(u32::MAX));
        doubled.min(self.open_for)
    }

    /// `unreachable`: the connection itself failed, which costs the origin nothing.
    fn fail(&self, probe: bool, unreachable: bool) -> Transition {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let transition = if probe || failures >= self.threshold {
            let wait = match (probe, unreachable) {
                (true, true) => self.first_open,
                (true, false) => self.wait(self.failed_probes.fetch_add(1, Ordering::AcqRel) + 1),
                (false, _) => self.wait(self.failed_probes.load(Ordering::Acquire)),
            };
            let until = now_ms() + wait.as_millis() as u64;
            let was = self.open_until.swap(until, Ordering::AcqRel);
            if was == 0 {
                Transition::Opened
            } else {
                Transition::None
            }
        } else {
            Transition::None
        };
        if probe {
            self.probing.store(false, Ordering::Release);
        }
        transition
    }
}

impl Ticket<'_> {
    pub fn success(self) -> Transition {
        let transition = self.breaker.record_success();
        std::mem::forget(self);
        transition
    }

    pub fn failure(self) -> Transition {
        let transition = self.breaker.fail(self.probe, false);
        std::mem::forget(self);
        transition
    }

    /// A failure to connect at all: as `failure`, but a failed probe does not lengthen the
    /// wait before the next one (see the module comment).
    pub fn unreachable(self) -> Transition {
        let transition = self.breaker.fail(self.probe, true);
        std::mem::forget(self);
        transition
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.probe {
            self.breaker.probing.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_remembered_for_its_duration_only() {
        let h = Backoff::default();
        assert!(!h.is_failing());
        h.record_failure(Duration::from_millis(30));
        assert!(h.is_failing());
        std::thread::sleep(Duration::from_millis(40));
        assert!(!h.is_failing());
        h.record_failure(Duration::from_secs(60));
        h.record_success();
        assert!(!h.is_failing());
    }

    #[test]
    fn circuit_opens_after_consecutive_failures_and_lets_one_probe_through() {
        let b = Breaker::new(3, Duration::from_millis(50));
        assert_eq!(b.admit().unwrap().failure(), Transition::None);
        assert_eq!(b.admit().unwrap().success(), Transition::None);
        assert_eq!(b.admit().unwrap().failure(), Transition::None);
        assert_eq!(b.admit().unwrap().failure(), Transition::None);
        assert_eq!(b.admit().unwrap().failure(), Transition::Opened);
        assert!(b.admit().is_none() && b.rejecting());
        std::thread::sleep(Duration::from_millis(60));
        let probe = b.admit().expect("half-open lets a probe through");
        assert!(b.admit().is_none(), "only one probe at a time");
        assert_eq!(probe.failure(), Transition::None);
        assert!(b.rejecting(), "a failed probe reopens the circuit");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.admit().unwrap().success(), Transition::Closed);
        assert!(b.admit().is_some() && b.admit().is_some());
    }

    #[test]
    fn failed_probes_double_the_wait_up_to_circuit_open_unless_unreachable() {
        let b = Breaker::new(1, Duration::from_secs(10));
        let open_ms = |b: &Breaker| {
            b.open_until
                .load(Ordering::Acquire)
                .saturating_sub(now_ms())
        };
        assert_eq!(b.admit().unwrap().failure(), Transition::Opened);
        assert!((900..=1000).contains(&open_ms(&b)), "first wait is 1 s");
        fn probe(b: &Breaker) -> Ticket<'_> {
            // Pretend the wait has passed.
            b.open_until.store(1, Ordering::Release);
            b.admit().expect("half-open")
        }
        let _ = probe(&b).failure();
        assert!(
            (1900..=2000).contains(&open_ms(&b)),
            "doubled: {}",
            open_ms(&b)
        );
        let _ = probe(&b).failure();
        assert!((3900..=4000).contains(&open_ms(&b)));
        let _ = probe(&b).unreachable();
        assert!(
            (900..=1000).contains(&open_ms(&b)),
            "refused: probe again soon"
        );
        for _ in 0..40 {
            let _ = probe(&b).failure();
        }
        assert!(
            (9900..=10_000).contains(&open_ms(&b)),
            "capped at circuit_open"
        );
        assert_eq!(probe(&b).success(), Transition::Closed);
        assert_eq!(b.admit().unwrap().failure(), Transition::Opened);
        assert!(
            (900..=1000).contains(&open_ms(&b)),
            "a closed circuit starts over"
        );
        assert_eq!(
            Breaker::new(1, Duration::from_millis(300))
                .wait(0)
                .as_millis(),
            300
        );
    }

    #[test]
    fn an_abandoned_probe_frees_the_slot() {
        let b = Breaker::new(1, Duration::from_millis(10));
        let _ = b.admit().unwrap().failure();
        std::thread::sleep(Duration::from_millis(20));
        drop(b.admit().unwrap());
        assert!(b.admit().is_some());
    }
}
