//! The cache phase of a response: one value that becomes the `Cache-Status` member (RFC 9211),
//! the access-log label and, later, the metric label.

use std::cell::RefCell;

use http::HeaderValue;

/// How a response was produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Fresh copy from the cache.
    Hit,
    /// Stale copy served without asking the origin (stale-while-revalidate, or the origin is
    /// known to be failing).
    StaleHit,
    /// Not in the cache; fetched.
    Miss,
    /// The URI is cached but not for this request's Vary values; fetched.
    VaryMiss,
    /// A stale copy was revalidated or replaced by the origin.
    Revalidated,
    /// The origin failed and a stale copy was served instead.
    StaleOnError,
    /// Not cacheable for this request (method, Authorization, ...): passed to the origin.
    Pass,
    /// Kagami answered by itself (refused host, bad request, origin unreachable with no copy).
    Error,
    /// Refused by a rate limit (429).
    Limited,
}

impl Phase {
    pub fn label(self) -> &'static str {
        match self {
            Phase::Hit => "hit",
            Phase::StaleHit => "stale-hit",
            Phase::Miss => "miss",
            Phase::VaryMiss => "vary-miss",
            Phase::Revalidated => "revalidated",
            Phase::StaleOnError => "stale-on-error",
            Phase::Pass => "pass",
            Phase::Error => "error",
            Phase::Limited => "rate-limited",
        }
    }
}

/// Everything Kagami reports about one response in its `Cache-Status` member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheStatus {
    pub phase: Phase,
    /// `fwd=` reason token when the request went forward (RFC 9211 §2.2).
    pub fwd: Option<&'static str>,
    pub fwd_status: Option<u16>,
    pub ttl: Option<i64>,
    pub stored: bool,
    pub collapsed: bool,
    pub detail: Option<&'static str>,
}

impl CacheStatus {
    pub fn new(phase: Phase) -> CacheStatus {
        let fwd = match phase {
            Phase::Hit | Phase::StaleHit | Phase::Error | Phase::Limited => None,
            Phase::Miss => Some("uri-miss"),
            Phase::VaryMiss => Some("vary-miss"),
            Phase::Revalidated | Phase::StaleOnError => Some("stale"),
            Phase::Pass => Some("bypass"),
        };
        CacheStatus {
            phase,
            fwd,
            fwd_status: None,
            ttl: None,
            stored: false,
            collapsed: false,
            detail: None,
        }
    }

    pub fn fwd(mut self, reason: &'static str) -> Self {
        self.fwd = Some(reason);
        self
    }
    pub fn fwd_status(mut self, status: u16) -> Self {
        self.fwd_status = Some(status);
        self
    }
    pub fn ttl(mut self, ttl: i64) -> Self {
        self.ttl = Some(ttl);
        self
    }
    pub fn stored(mut self, stored: bool) -> Self {
        self.stored = stored;
        self
    }
    pub fn collapsed(mut self, collapsed: bool) -> Self {
        self.collapsed = collapsed;
        self
    }
    pub fn detail(mut self, detail: &'static str) -> Self {
        self.detail = Some(detail);
        self
    }

    /// The list member, e.g. `kagami; fwd=uri-miss; fwd-status=200; stored`.
    pub fn member(&self) -> String {
        // Built on every answer: sized once, numbers written without the formatting machinery.
        let mut out = String::with_capacity(64);
        let mut number = itoa::Buffer::new();
        out.push_str("kagami");
        if matches!(self.phase, Phase::Hit | Phase::StaleHit) {
            out.push_str("; hit");
        }
        if let Some(fwd) = self.fwd {
            out.push_str("; fwd=");
            out.push_str(fwd);
        }
        if let Some(status) = self.fwd_status {
            out.push_str("; fwd-status=");
            out.push_str(number.format(status));
        }
        if let Some(ttl) = self.ttl {
            out.push_str("; ttl=");
            out.push_str(number.format(ttl));
        }
        if self.stored {
            out.push_str("; stored");
        }
        if self.collapsed {
            out.push_str("; collapsed");
        }
        if let Some(detail) = self.detail {
            out.push_str("; detail=\"");
            out.push_str(detail);
            out.push('"');
        }
        out
    }

    /// `member` as a header value. A plain hit's value is taken from a small per-thread table
    /// by ttl when it is there: a page's hits within one second share their ttl, so most hits
    /// cost a reference count instead of formatting and allocating the value again.
    pub fn header_value(&self) -> Option<HeaderValue> {
        let plain_hit = *self == CacheStatus::new(Phase::Hit).ttl(self.ttl.unwrap_or(0));
        match self.ttl {
            Some(ttl) if plain_hit => HITS.with_borrow_mut(|hits| {
                let slot = &mut hits[ttl.rem_euclid(HIT_SLOTS as i64) as usize];
                if let Some((seen, value)) = slot {
                    if *seen == ttl {
                        return Some(value.clone());
                    }
                }
                let value = self.made_value()?;
                *slot = Some((ttl, value.clone()));
                Some(value)
            }),
            _ => self.made_value(),
        }
    }

    /// `member` as a header value, without copying it again.
    fn made_value(&self) -> Option<HeaderValue> {
        HeaderValue::from_maybe_shared(bytes::Bytes::from(self.member())).ok()
    }
}

/// Slots of the per-thread table of plain hit values (`kagami; hit; ttl=N`), by ttl: enough
/// for the pages busy at the same second not to push each other out, small enough to stay in
/// cache.
const HIT_SLOTS: usize = 64;

thread_local! {
    static HITS: RefCell<[Option<(i64, HeaderValue)>; HIT_SLOTS]> =
        const { RefCell::new([const { None }; HIT_SLOTS]) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_follow_rfc_9211() {
        assert_eq!(
            CacheStatus::new(Phase::Hit).ttl(30).member(),
            "kagami; hit; ttl=30"
        );
        assert_eq!(
            CacheStatus::new(Phase::Miss)
                .fwd_status(200)
                .stored(true)
                .collapsed(true)
                .member(),
            "kagami; fwd=uri-miss; fwd-status=200; stored; collapsed"
        );
        assert_eq!(
            CacheStatus::new(Phase::StaleOnError)
                .fwd_status(503)
                .ttl(-5)
                .detail("grace")
                .member(),
            "kagami; fwd=stale; fwd-status=503; ttl=-5; detail=\"grace\""
        );
        assert_eq!(
            CacheStatus::new(Phase::Pass).fwd("method").member(),
            "kagami; fwd=method"
        );
    }

    #[test]
    fn header_values_from_the_hit_table_match_their_member() {
        for status in [
            CacheStatus::new(Phase::Hit).ttl(30),
            CacheStatus::new(Phase::Hit).ttl(30),
            // The same slot, another ttl.
            CacheStatus::new(Phase::Hit).ttl(30 + HIT_SLOTS as i64),
            CacheStatus::new(Phase::Hit).ttl(-2),
            // Not plain hits: never answered from the table.
            CacheStatus::new(Phase::Hit).ttl(30).collapsed(true),
            CacheStatus::new(Phase::StaleHit).ttl(30).detail("grace"),
            CacheStatus::new(Phase::Hit),
            CacheStatus::new(Phase::Miss).fwd_status(200).ttl(30),
        ] {
            let value = status.header_value().unwrap();
            assert_eq!(value, status.member().as_str(), "{status:?}");
        }
    }
}
