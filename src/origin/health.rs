//! Passive origin health: after a failure, stale copies are served for a short back-off without
//! asking the origin again, so a sick origin is not hit by every request (a known nginx
//! weakness). Once the back-off has passed, the next request tries the origin again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

#[derive(Debug, Default)]
pub struct Health {
    /// Milliseconds since `epoch()` until which the origin counts as failing; 0 when healthy.
    failing_until: AtomicU64,
}

impl Health {
    pub fn record_failure(&self, backoff: Duration) {
        let until = now_ms() + backoff.as_millis() as u64;
        self.failing_until
            .fetch_max(until.max(1), Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_is_remembered_for_the_backoff_only() {
        let h = Health::default();
        assert!(!h.is_failing());
        h.record_failure(Duration::from_millis(30));
        assert!(h.is_failing());
        std::thread::sleep(Duration::from_millis(40));
        assert!(!h.is_failing());
        h.record_failure(Duration::from_secs(60));
        h.record_success();
        assert!(!h.is_failing());
    }
}
