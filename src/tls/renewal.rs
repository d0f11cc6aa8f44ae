//! When the ACME manager next orders a certificate for a site: at its certificate's renewal
//! point, but never sooner than the backoff allows. The backoff (1 minute, doubling up to
//! 6 hours) grows with each failed order and with each order whose certificate came out
//! already old, so a CA or a clock that keeps producing such certificates gets one order per
//! backoff step instead of one a second. Pure functions of the time, for unit tests.

use std::time::{Duration, SystemTime};

/// The first wait after a failure: public CAs limit failed validations (Let's Encrypt: 5 per
/// name and hour), and a name whose DNS does not point here yet would otherwise use them up.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(60);
pub const BACKOFF_MAX: Duration = Duration::from_secs(6 * 3600);

/// The validity of a certificate, as the manager needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    fn life(&self) -> Duration {
        (self.not_after.duration_since(self.not_before)).unwrap_or(Duration::ZERO)
    }

    /// When to renew: with a third of the lifetime left (30 of 90 days for Let's Encrypt), so
    /// that weeks of failed attempts still end before visitors see an expired certificate.
    pub fn renew_at(&self) -> SystemTime {
        self.not_before + self.life() * 2 / 3
    }

    /// Whether a certificate received at `now` was already more than halfway through its life
    /// (a CA that backdates short certificates, or a clock ahead of the CA's): renewing it as
    /// usual would mean ordering again almost at once, and again, for ever.
    pub fn came_old(&self, now: SystemTime) -> bool {
        let lived = now
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        lived > self.life() / 2
    }
}

/// No order before `hold_until`; `backoff` is the hold the next unsuccessful order adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub hold_until: SystemTime,
    pub backoff: Duration,
}

/// What an order ended with.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    Failed,
    Issued(Validity),
}

impl Schedule {
    /// At start: free to order at once.
    pub fn new(now: SystemTime) -> Schedule {
        Schedule {
            hold_until: now,
            backoff: BACKOFF_FIRST,
        }
    }

    /// The schedule after an order that ended at `now` with `outcome`. A failure, or a
    /// certificate that came already old, holds the next order for the backoff, which doubles;
    /// a good certificate ends the backoff.
    pub fn after(self, now: SystemTime, outcome: Outcome) -> Schedule {
        match outcome {
            Outcome::Issued(validity) if !validity.came_old(now) => Schedule::new(now),
            Outcome::Issued(_) | Outcome::Failed => Schedule {
                hold_until: now + self.backoff,
                backoff: (self.backoff * 2).min(BACKOFF_MAX),
            },
        }
    }

    /// When the next order is due, for a site holding a certificate of `validity` (none:
    /// as soon as the hold allows).
    pub fn due(&self, validity: Option<Validity>) -> SystemTime {
        let renew = validity.map_or(SystemTime::UNIX_EPOCH, |v| v.renew_at());
        renew.max(self.hold_until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    /// Runs the manager's loop for `span` against a CA that answers each order at `now` with
    /// `issue(now)`; returns the times orders were made.
    fn orders(span: Duration, issue: impl Fn(SystemTime) -> Outcome) -> Vec<SystemTime> {
        let start = at(0);
        let mut now = start;
        let mut schedule = Schedule::new(now);
        let mut held = None;
        let mut made = Vec::new();
        // Bounded: at most one order a second (the loop's shortest sleep) for the span.
        for _ in 0..span.as_secs() + 1 {
            now = schedule.due(held).max(now + Duration::from_secs(1));
            if now >= start + span {
                break;
            }
            made.push(now);
            let outcome = issue(now);
            if let Outcome::Issued(validity) = outcome {
                held = Some(validity);
            }
            schedule = schedule.after(now, outcome);
        }
        made
    }

    fn gaps(made: &[SystemTime]) -> Vec<Duration> {
        made.windows(2)
            .map(|w| w[1].duration_since(w[0]).unwrap())
            .collect()
    }

    #[test]
    fn a_certificate_that_comes_old_is_reordered_once_per_backoff_step() {
        // 90-minute certificates backdated by an hour: two-thirds through on arrival.
        let made = orders(DAY, |now| {
            let not_before = now - Duration::from_secs(3600);
            Outcome::Issued(Validity {
                not_before,
                not_after: not_before + Duration::from_secs(5400),
            })
        });
        let minutes: Vec<u64> = gaps(&made).iter().map(|g| g.as_secs() / 60).collect();
        assert_eq!(&minutes[..9], &[1, 2, 4, 8, 16, 32, 64, 128, 256]);
        assert!(minutes[9..].iter().all(|m| *m == 360), "{minutes:?}");
        assert!(made.len() <= 15, "{} orders in a day", made.len());
    }

    #[test]
    fn failures_back_off_from_a_minute_to_six_hours_and_a_good_certificate_resets_it() {
        let made = orders(DAY, |_| Outcome::Failed);
        let gaps = gaps(&made);
        assert_eq!(gaps[0], BACKOFF_FIRST);
        assert!(gaps.windows(2).all(|w| w[1] == (w[0] * 2).min(BACKOFF_MAX)));
        assert_eq!(*gaps.last().unwrap(), BACKOFF_MAX);

        let failed = Schedule::new(at(0)).after(at(0), Outcome::Failed);
        let failed = failed.after(at(60), Outcome::Failed);
        assert_eq!(failed.backoff, BACKOFF_FIRST * 4);
        let good = Validity {
            not_before: at(200),
            not_after: at(200) + 90 * DAY,
        };
        let renewed = failed.after(at(200), Outcome::Issued(good));
        assert_eq!(renewed, Schedule::new(at(200)));
        assert_eq!(renewed.due(Some(good)), at(200) + 60 * DAY);
    }

    #[test]
    fn good_certificates_are_renewed_at_two_thirds_of_their_life() {
        // Short but fresh certificates (9 s, as in tests/acme.rs) are renewed every 6 s.
        let made = orders(Duration::from_secs(60), |now| {
            Outcome::Issued(Validity {
                not_before: now,
                not_after: now + Duration::from_secs(9),
            })
        });
        assert!(gaps(&made).iter().all(|g| *g == Duration::from_secs(6)));
        // A 90-day certificate: twice in 130 days, at day 60 and day 120.
        let made = orders(130 * DAY, |now| {
            Outcome::Issued(Validity {
                not_before: now,
                not_after: now + 90 * DAY,
            })
        });
        assert_eq!(gaps(&made), vec![60 * DAY, 60 * DAY]);
    }

    #[test]
    fn a_certificate_is_old_past_half_its_life() {
        let v = Validity {
            not_before: at(0),
            not_after: at(100),
        };
        assert!(!v.came_old(at(50)));
        assert!(v.came_old(at(51)));
        assert_eq!(v.renew_at(), at(0) + Duration::from_nanos(66_666_666_666));
    }
}
