//! Rate limits: per-client budgets (governor's GCRA, keyed by client address) for cache hits and
//! for requests that would reach the origin, kept bounded in memory.

mod budgets;
pub mod client_ip;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

pub use budgets::log_budgets;
pub use client_ip::{client_ip, limit_key, TrustedProxies};

/// A budget: `per_second` sustained, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl Rate {
    /// Parses `"50/s"`, `"600/m"`, `"3600/h"`; `burst` defaults to one second's worth (at least 1).
    pub fn parse(text: &str) -> Result<Rate, String> {
        let hint = "write e.g. \"50/s\", \"600/m\" or \"off\"";
        let (count, unit) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not a rate; {hint}"))?;
        let count: f64 = count
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not a rate; {hint}"))?;
        let seconds = match unit.trim() {
            "s" | "sec" | "second" => 1.0,
            "m" | "min" | "minute" => 60.0,
            "h" | "hour" => 3600.0,
            other => return Err(format!("unknown rate unit {other:?}; {hint}")),
        };
        if !(count.is_finite() && count > 0.0) {
            return Err(format!(
                "{text:?} must be more than zero; use \"off\" to disable"
            ));
        }
        let per_second = count / seconds;
        if per_second < 1.0 / 3600.0 {
            return Err(format!("{text:?} is below the smallest rate, \"1/h\""));
        }
        Ok(Rate {
            per_second,
            burst: per_second.ceil().max(1.0) as u32,
        })
    }

    fn quota(&self) -> Quota {
        let period = Duration::from_secs_f64(1.0 / self.per_second);
        let burst = NonZeroU32::new(self.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst)
    }
}

/// One keyed budget. Keys that have refilled are dropped periodically, and early when the
/// number of keys passes `max_keys`, so spoofed or rotating addresses cannot exhaust memory.
pub struct Limiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    /// What it was built for: a reload keeps a limiter whose rate did not change.
    rate: Rate,
    max_keys: usize,
    epoch: Instant,
    last_cleanup_ms: AtomicU64,
    checks: AtomicU64,
}

const CLEANUP_EVERY: Duration = Duration::from_secs(10);

impl Limiter {
    pub fn new(rate: Rate, max_keys: usize) -> Limiter {
        Limiter {
            limiter: DefaultKeyedRateLimiter::keyed(rate.quota()),
            rate,
            max_keys: max_keys.max(1),
            epoch: Instant::now(),
            last_cleanup_ms: AtomicU64::new(0),
            checks: AtomicU64::new(0),
        }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// The `max_keys` it was built with (at least 1).
    pub fn capacity(&self) -> usize {
        self.max_keys
    }

    /// Spends one unit of `key`'s budget, or says how long until one is available.
    pub fn check(&self, key: IpAddr) -> Result<(), Duration> {
        self.maybe_cleanup();
        self.limiter
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    fn maybe_cleanup(&self) {
        // Look at the clock only every 256 checks: this runs on every request.
        if self.checks.fetch_add(1, Ordering::Relaxed) % 256 != 0 {
            return;
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_cleanup_ms.load(Ordering::Relaxed);
        let due = now.saturating_sub(last) >= CLEANUP_EVERY.as_millis() as u64;
        // Over the cap: clean at most every 100 ms, so a flood does not turn into a cleanup loop.
        let crowded = self.limiter.len() > self.max_keys && now.saturating_sub(last) >= 100;
        if (due || crowded)
            && self
                .last_cleanup_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
    }

    pub fn keys(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(
            Rate::parse("50/s").unwrap(),
            Rate {
                per_second: 50.0,
                burst: 50
            }
        );
        assert_eq!(Rate::parse("600/m").unwrap().per_second, 10.0);
        assert_eq!(Rate::parse("1/h").unwrap().burst, 1);
        assert!(Rate::parse("fast").is_err());
        assert!(Rate::parse("0/s").is_err());
        assert!(Rate::parse("5/fortnight").is_err());
        assert!(Rate::parse("0.00000000000000000001/s").is_err());
    }

    #[test]
    fn budget_is_per_key_and_says_when_to_retry() {
        let limiter = Limiter::new(
            Rate {
                per_second: 1.0,
                burst: 2,
            },
            100,
        );
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(limiter.check(a).is_ok());
        assert!(limiter.check(a).is_ok());
        let wait = limiter.check(a).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(limiter.check(b).is_ok(), "another client keeps its budget");
    }

    #[test]
    fn keys_stay_bounded_under_many_addresses() {
        let limiter = Limiter::new(
            Rate {
                per_second: 1000.0,
                burst: 1,
            },
            1000,
        );
        for i in 0..50_000u32 {
            let _ = limiter.check(IpAddr::from(i.to_be_bytes()));
            if i % 1000 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        std::thread::sleep(Duration::from_millis(120));
        let _ = limiter.check("192.0.2.9".parse().unwrap());
        assert!(
            limiter.keys() < 50_000,
            "cleanup ran: {} keys",
            limiter.keys()
        );
    }
}
