//! Who is to blame for a failed origin exchange: the origin itself, one URL, or the client.
//!
//! Only failures of the origin itself may open a circuit, start the failure back-off or send a
//! request to a backup, because all three change what every visitor of the site gets. A client
//! chooses the URL and paces its own upload, so:
//! - a refused or failed connection is the origin's doing: it counts at once;
//! - a 500/502/503/504 answer, a response timeout or a connection broken mid-exchange may
//!   concern one URL (a broken page, a slow report): it is only *suspect*, and counts once a
//!   confirmation probe (`health_path`, else `GET /`) fails too. The probe's verdict is reused
//!   for `CONFIRMATION_FOR`, so an attacker repeating a broken URL costs the origin at most one
//!   probe per origin server per `CONFIRMATION_FOR`;
//! - while the client's upload is unfinished, a timeout or a 5xx says nothing about the origin
//!   (it is waiting for the body the client does not send): no verdict at all.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http::StatusCode;

use super::is_unhealthy;

/// How long one confirmation probe's verdict stands for later suspect failures.
pub const CONFIRMATION_FOR: Duration = Duration::from_secs(1);

/// What happened to one origin exchange, as far as health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exchange {
    Answered(StatusCode),
    ConnectFailed,
    TimedOut,
    /// Reset or malformed mid-exchange (anything but connect and timeout).
    Broken,
}

/// The evidence an exchange gives about the origin's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    Healthy,
    /// The origin itself failed: counts at once.
    OriginFailed,
    /// May be one URL's problem: counts only if a confirmation probe fails too.
    Suspect,
    /// The client's doing (an unfinished upload): no verdict either way.
    NotJudged,
}

/// The rule above as a pure function. `upload_complete` is true when there was no request body
/// or the client sent all of it.
pub fn evidence(exchange: Exchange, upload_complete: bool) -> Evidence {
    match exchange {
        Exchange::ConnectFailed => Evidence::OriginFailed,
        Exchange::Answered(status) if !is_unhealthy(status) => Evidence::Healthy,
        _ if !upload_complete => Evidence::NotJudged,
        _ => Evidence::Suspect,
    }
}

/// Is a confirmation probe's verdict (`sick`, taken at `probed_at_ms`, 0 = never) still good at
/// `now_ms`? Returns the verdict if so.
pub fn standing_verdict(probed_at_ms: u64, sick: bool, now_ms: u64) -> Option<bool> {
    (probed_at_ms != 0 && now_ms.saturating_sub(probed_at_ms) < CONFIRMATION_FOR.as_millis() as u64)
        .then_some(sick)
}

/// One origin server's latest confirmation probe.
#[derive(Debug, Default)]
pub struct Confirmation {
    probed_at_ms: AtomicU64,
    sick: AtomicBool,
    probing: AtomicBool,
}

/// What the caller should do about a suspect failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirm {
    /// A recent probe already decided: `true` when the origin is sick.
    Known(bool),
    /// Send a probe now and report it with `Confirmation::record`.
    Probe,
    /// Another request's probe is under way: no verdict for this failure.
    Pending,
}

impl Confirmation {
    pub fn ask(&self, now_ms: u64) -> Confirm {
        let at = self.probed_at_ms.load(Ordering::Acquire);
        if let Some(sick) = standing_verdict(at, self.sick.load(Ordering::Acquire), now_ms) {
            return Confirm::Known(sick);
        }
        match self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Confirm::Probe,
            Err(_) => Confirm::Pending,
        }
    }

    /// Reports the probe that `ask` asked for.
    pub fn record(&self, sick: bool, now_ms: u64) {
        self.sick.store(sick, Ordering::Release);
        self.probed_at_ms.store(now_ms.max(1), Ordering::Release);
        self.probing.store(false, Ordering::Release);
    }

    /// A probe asked for was not sent (its future was dropped): let the next failure probe.
    pub fn abandon(&self) {
        self.probing.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> Exchange {
        Exchange::Answered(StatusCode::from_u16(code).unwrap())
    }

    #[test]
    fn connection_failures_are_the_origins_whatever_the_client_did() {
        assert_eq!(
            evidence(Exchange::ConnectFailed, true),
            Evidence::OriginFailed
        );
        assert_eq!(
            evidence(Exchange::ConnectFailed, false),
            Evidence::OriginFailed
        );
    }

    #[test]
    fn server_errors_and_timeouts_are_only_suspect() {
        for exchange in [
            status(500),
            status(502),
            status(503),
            status(504),
            Exchange::TimedOut,
            Exchange::Broken,
        ] {
            assert_eq!(evidence(exchange, true), Evidence::Suspect, "{exchange:?}");
        }
    }

    #[test]
    fn an_unfinished_upload_makes_failures_the_clients() {
        for exchange in [status(500), Exchange::TimedOut, Exchange::Broken] {
            assert_eq!(
                evidence(exchange, false),
                Evidence::NotJudged,
                "{exchange:?}"
            );
        }
        // The origin answered without waiting for the body: it is alive.
        assert_eq!(evidence(status(413), false), Evidence::Healthy);
    }

    #[test]
    fn other_answers_are_healthy() {
        for code in [200, 304, 404, 429, 501, 505] {
            assert_eq!(evidence(status(code), true), Evidence::Healthy, "{code}");
        }
    }

    #[test]
    fn a_probe_verdict_stands_for_a_while_only() {
        assert_eq!(standing_verdict(0, true, 10), None, "never probed");
        assert_eq!(standing_verdict(1_000, true, 1_500), Some(true));
        assert_eq!(standing_verdict(1_000, false, 1_999), Some(false));
        assert_eq!(standing_verdict(1_000, true, 2_000), None);
    }

    #[test]
    fn one_probe_at_a_time_then_its_verdict_is_reused() {
        let c = Confirmation::default();
        assert_eq!(c.ask(100), Confirm::Probe);
        assert_eq!(c.ask(101), Confirm::Pending);
        c.record(false, 150);
        assert_eq!(c.ask(200), Confirm::Known(false));
        assert_eq!(c.ask(1_149), Confirm::Known(false));
        assert_eq!(c.ask(1_150), Confirm::Probe, "the verdict expired");
        c.abandon();
        assert_eq!(
            c.ask(1_151),
            Confirm::Probe,
            "an abandoned probe frees the slot"
        );
        c.record(true, 1_160);
        assert_eq!(c.ask(1_200), Confirm::Known(true));
    }
}
