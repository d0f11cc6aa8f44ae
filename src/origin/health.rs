//! Origin health, passive and active.
//!
//! `Backoff`: after any failure, requests that have a stale copy are answered from it for a
//! short while without asking the origin, so a sick origin is not hit by every request (a known
//! nginx weakness).
//!
//! `Breaker`: a circuit per origin server. Consecutive failures open it; while open, nothing is
//! sent there; once `open_for` has passed, exactly one request at a time is let through as a
//! probe, and the first success closes the circuit.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

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
    open_for: Duration,
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
        self.fail(false)
    }

    fn fail(&self, probe: bool) -> Transition {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let transition = if probe || failures >= self.threshold {
            let until = now_ms() + self.open_for.as_millis() as u64;
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
        let transition = self.breaker.fail(self.probe);
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
    fn an_abandoned_probe_frees_the_slot() {
        let b = Breaker::new(1, Duration::from_millis(10));
        let _ = b.admit().unwrap().failure();
        std::thread::sleep(Duration::from_millis(20));
        drop(b.admit().unwrap());
        assert!(b.admit().is_some());
    }
}
