//! Wall-clock time for the hit path, worked out from the monotonic reading a request takes
//! anyway (its start, for the latency metric), instead of a second clock read.
//!
//! Why: on virtual machines a clock read costs tens of nanoseconds (about 60 ns on the bench
//! machine: a hit's four reads were 2 % of its CPU), and a hit needs the wall clock only for
//! `Age` and freshness, which RFC 9111 counts in whole seconds. nginx does the same: it reads
//! the time once per event-loop turn and every request of that turn uses it.
//!
//! Each thread keeps an anchor (a monotonic instant and the wall-clock time read with it) and
//! reads the wall clock again when the anchor is older than `REANCHOR`, so a step of the wall
//! clock (NTP, a resumed VM) is seen within that, and the rate difference of the two clocks
//! (NTP slews at most 0.05 %) adds well under a millisecond.

use std::cell::Cell;
use std::time::{Duration, Instant, SystemTime};

/// How long an anchor serves before the wall clock is read again.
const REANCHOR: Duration = Duration::from_millis(250);

thread_local! {
    static ANCHOR: Cell<Option<(Instant, SystemTime)>> = const { Cell::new(None) };
}

/// The wall-clock time at `at` (a monotonic reading taken just now, such as a request's
/// start), to well within a millisecond.
pub fn wall_at(at: Instant) -> SystemTime {
    ANCHOR
        .try_with(|anchor| match anchor.get() {
            Some((base, wall)) => match at.checked_duration_since(base) {
                Some(since) if since < REANCHOR => wall + since,
                _ => reanchor(anchor, at),
            },
            None => reanchor(anchor, at),
        })
        // The thread is being torn down: no anchor, read the clock.
        .unwrap_or_else(|_| SystemTime::now())
}

/// Reads the wall clock and makes it this thread's anchor, paired with `at`: `at` was read
/// moments before, so the pair is off by that moment (microseconds), which every time derived
/// from this anchor shares.
fn reanchor(anchor: &Cell<Option<(Instant, SystemTime)>>, at: Instant) -> SystemTime {
    let wall = SystemTime::now();
    anchor.set(Some((at, wall)));
    wall
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apart(a: SystemTime, b: SystemTime) -> Duration {
        a.duration_since(b)
            .or_else(|_| b.duration_since(a))
            .unwrap_or_default()
    }

    #[test]
    fn derived_times_follow_the_wall_clock() {
        for _ in 0..5 {
            let at = Instant::now();
            let derived = wall_at(at);
            let read = SystemTime::now();
            assert!(
                apart(derived, read) < Duration::from_millis(5),
                "{derived:?} {read:?}"
            );
            std::thread::sleep(Duration::from_millis(120));
        }
    }

    #[test]
    fn within_an_anchor_time_moves_as_the_instants_do() {
        let first = Instant::now();
        let a = wall_at(first);
        let later = first + Duration::from_millis(100);
        assert_eq!(wall_at(later), a + Duration::from_millis(100));
    }

    #[test]
    fn an_old_anchor_or_an_earlier_instant_reads_the_clock_again() {
        let start = Instant::now();
        wall_at(start);
        // Past `REANCHOR`: a fresh reading, not the anchor plus the gap.
        let far = start + REANCHOR * 40;
        let derived = wall_at(far);
        assert!(apart(derived, SystemTime::now()) < Duration::from_millis(5));
        // An instant before the anchor (another request's start, read earlier) reads too.
        let before = wall_at(start);
        assert!(apart(before, SystemTime::now()) < Duration::from_millis(5));
    }
}
