//! The RFC 9111 / RFC 5861 rules as pure functions over headers and times: what may be stored,
//! for how long it is fresh, how old it is, and when a stale copy may still be served.

use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, AUTHORIZATION, DATE, EXPIRES, LAST_MODIFIED, SET_COOKIE, VARY};
use http::{Method, StatusCode};

use super::control::Directives;
use crate::config::CookiePolicy;

/// RFC 9110 §15.1 / RFC 9111 §4.2.2: status codes that are heuristically cacheable.
pub fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Why a response is not stored; doubles as the Cache-Status `detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStorable {
    Method,
    Status,
    NoStore,
    Private,
    Authorization,
    SetCookie,
    VaryStar,
    NoFreshnessInfo,
    TooLarge,
    /// An error or redirect never replaces a stored 2xx (it stays for outages).
    GoodCopyKept,
}

impl NotStorable {
    pub fn as_str(self) -> &'static str {
        match self {
            NotStorable::Method => "method",
            NotStorable::Status => "status",
            NotStorable::NoStore => "no-store",
            NotStorable::Private => "private",
            NotStorable::Authorization => "authorization",
            NotStorable::SetCookie => "set-cookie",
            NotStorable::VaryStar => "vary-star",
            NotStorable::NoFreshnessInfo => "not-cacheable",
            NotStorable::TooLarge => "too-large",
            NotStorable::GoodCopyKept => "good-copy-kept",
        }
    }
}

/// RFC 9111 §3 for a shared cache, plus the site's cookie policy.
pub fn storable(
    method: &Method,
    request_headers: &HeaderMap,
    status: StatusCode,
    response_headers: &HeaderMap,
    directives: &Directives,
    cookies: CookiePolicy,
) -> Result<(), NotStorable> {
    if method != Method::GET {
        return Err(NotStorable::Method);
    }
    // 206 is never combined or stored here; 304 only ever updates a stored response.
    if status.is_informational()
        || status == StatusCode::PARTIAL_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Err(NotStorable::Status);
    }
    if directives.no_store {
        return Err(NotStorable::NoStore);
    }
    if directives.private {
        return Err(NotStorable::Private);
    }
    if request_headers.contains_key(AUTHORIZATION)
        && !(directives.public || directives.s_maxage.is_some() || directives.must_revalidate)
    {
        return Err(NotStorable::Authorization);
    }
    if cookies == CookiePolicy::Never && response_headers.contains_key(SET_COOKIE) {
        return Err(NotStorable::SetCookie);
    }
    if vary_names(response_headers).iter().any(|n| n == "*") {
        return Err(NotStorable::VaryStar);
    }
    let explicit = directives.public
        || directives.has_explicit_freshness()
        || response_headers.contains_key(EXPIRES);
    if !explicit && !heuristically_cacheable(status) {
        return Err(NotStorable::NoFreshnessInfo);
    }
    Ok(())
}

/// The lowercase field names listed in `Vary` (all lines combined).
pub fn vary_names(headers: &HeaderMap) -> Vec<String> {
    let mut names = Vec::new();
    for value in headers.get_all(VARY) {
        let Ok(text) = value.to_str() else { continue };
        for name in text.split(',') {
            let name = name.trim().to_ascii_lowercase();
            if !name.is_empty() && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

pub fn http_date(headers: &HeaderMap, name: http::header::HeaderName) -> Option<SystemTime> {
    let text = headers.get(name)?.to_str().ok()?;
    httpdate::parse_http_date(text.trim()).ok()
}

/// Site settings that feed the heuristic.
#[derive(Debug, Clone, Copy)]
pub struct Heuristic {
    pub max: Duration,
    pub default_ttl: Duration,
    /// Lifetime of a cacheable non-2xx answer without explicit freshness (`negative_ttl`).
    pub negative_ttl: Duration,
}

/// RFC 9111 §4.2.1: s-maxage > max-age > Expires − Date > heuristic.
/// `response_time` stands in for a missing `Date`. The heuristic and `default_ttl` apply to
/// 2xx only: a 404 for a page not yet published must not outlive its publication, so other
/// answers without explicit freshness get `negative_ttl`.
pub fn freshness_lifetime(
    status: StatusCode,
    headers: &HeaderMap,
    directives: &Directives,
    response_time: SystemTime,
    heuristic: Heuristic,
) -> Duration {
    if directives.no_cache {
        return Duration::ZERO;
    }
    if let Some(s) = directives.s_maxage {
        return Duration::from_secs(s);
    }
    if let Some(m) = directives.max_age {
        return Duration::from_secs(m);
    }
    let date = http_date(headers, DATE).unwrap_or(response_time);
    if headers.contains_key(EXPIRES) {
        // An invalid Expires (e.g. "0") means already expired.
        return match http_date(headers, EXPIRES) {
            Some(expires) => expires.duration_since(date).unwrap_or(Duration::ZERO),
            None => Duration::ZERO,
        };
    }
    if !heuristically_cacheable(status) {
        return Duration::ZERO;
    }
    if !status.is_success() {
        return heuristic.negative_ttl;
    }
    match http_date(headers, LAST_MODIFIED) {
        Some(modified) => date
            .duration_since(modified)
            .map(|age| (age / 10).min(heuristic.max))
            .unwrap_or(Duration::ZERO),
        None => heuristic.default_ttl,
    }
}

/// RFC 9111 §4.2.3: the corrected initial age of a response received at `response_time` for a
/// request sent at `request_time`.
pub fn corrected_initial_age(
    headers: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Duration {
    let date = http_date(headers, DATE).unwrap_or(response_time);
    let apparent_age = response_time.duration_since(date).unwrap_or(Duration::ZERO);
    let age_value = headers
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        // A list (`Age: 7200, 0`) or several lines: the first member counts (RFC 9111 §5.1);
        // an invalid one is ignored.
        .and_then(|v| v.split(',').next())
        // delta-seconds saturate at 2^31 (RFC 9111 §1.2.2): an absurd Age must not overflow.
        .and_then(|v| super::control::parse_delta_seconds(v.trim()))
        .map(Duration::from_secs)
        .unwrap_or(Duration::ZERO);
    let response_delay = response_time
        .duration_since(request_time)
        .unwrap_or(Duration::ZERO);
    apparent_age.max(age_value.saturating_add(response_delay))
}

/// The stale windows and restrictions that travel with a stored response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleRules {
    pub while_revalidate: Duration,
    pub if_error: Duration,
    /// must-revalidate, proxy-revalidate, s-maxage or no-cache: never stale without revalidation
    /// (only the operator's grace may override this, and only when the origin fails).
    pub strict: bool,
}

/// Stale windows from the response, falling back to the site's defaults when it sends none.
pub fn stale_rules(
    directives: &Directives,
    default_swr: Duration,
    default_sie: Duration,
) -> StaleRules {
    StaleRules {
        while_revalidate: directives
            .stale_while_revalidate
            .map(Duration::from_secs)
            .unwrap_or(default_swr),
        if_error: directives
            .stale_if_error
            .map(Duration::from_secs)
            .unwrap_or(default_sie),
        strict: directives.forbids_stale(),
    }
}

/// RFC 5861 §3: may a response `staleness` past its freshness be served while it is revalidated?
pub fn serve_while_revalidating(rules: &StaleRules, staleness: Duration) -> bool {
    !rules.strict && staleness <= rules.while_revalidate
}

/// Why a stale copy was served after the origin failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleOnError {
    /// RFC 5861 stale-if-error (from the response, the request, or the site default).
    IfError,
    /// The operator's grace period.
    Grace,
    /// Grace overrode must-revalidate / proxy-revalidate / s-maxage / no-cache.
    GraceOverride,
}

impl StaleOnError {
    pub fn as_str(self) -> &'static str {
        match self {
            StaleOnError::IfError => "stale-if-error",
            StaleOnError::Grace => "grace",
            StaleOnError::GraceOverride => "grace-overrode-must-revalidate",
        }
    }
}

/// The operator's grace: how long past freshness a copy may stand in for a failing origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grace {
    pub window: Duration,
    /// RFC-strict site: grace never overrides must-revalidate, proxy-revalidate, no-cache or
    /// s-maxage (RFC 9111 §4.2.4 forbids serving those stale); other copies still get grace.
    pub strict: bool,
}

/// May a copy `staleness` past freshness be served because the origin failed?
/// `request_sie` is a client's own `stale-if-error` (RFC 5861 §4).
pub fn stale_on_error(
    rules: &StaleRules,
    staleness: Duration,
    request_sie: Option<Duration>,
    grace: Grace,
) -> Option<StaleOnError> {
    let window = rules.if_error.max(request_sie.unwrap_or(Duration::ZERO));
    if !rules.strict && staleness <= window {
        return Some(StaleOnError::IfError);
    }
    if rules.strict && grace.strict {
        return None;
    }
    if staleness <= grace.window && !grace.window.is_zero() {
        return Some(if rules.strict {
            StaleOnError::GraceOverride
        } else {
            StaleOnError::Grace
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::control::parse_cache_control;
    use http::HeaderValue;

    const H: Heuristic = Heuristic {
        max: Duration::from_secs(86_400),
        default_ttl: Duration::from_secs(300),
        negative_ttl: Duration::from_secs(10),
    };

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn date(secs: u64) -> String {
        httpdate::fmt_http_date(t(secs))
    }

    fn lifetime(status: u16, pairs: &[(&'static str, &str)]) -> u64 {
        let h = headers(pairs);
        let d = parse_cache_control(&h);
        freshness_lifetime(StatusCode::from_u16(status).unwrap(), &h, &d, t(0), H).as_secs()
    }

    #[test]
    fn s_maxage_beats_max_age_beats_expires() {
        let d0 = date(0);
        let d100 = date(100);
        assert_eq!(
            lifetime(
                200,
                &[
                    ("cache-control", "max-age=10, s-maxage=20"),
                    ("expires", &d100)
                ]
            ),
            20
        );
        assert_eq!(
            lifetime(
                200,
                &[
                    ("cache-control", "max-age=10"),
                    ("date", &d0),
                    ("expires", &d100)
                ]
            ),
            10
        );
        assert_eq!(lifetime(200, &[("date", &d0), ("expires", &d100)]), 100);
    }

    #[test]
    fn expires_is_measured_against_date_not_the_local_clock() {
        // Origin clock is 1000 s ahead of ours: still 60 s of freshness.
        let (d, e) = (date(1000), date(1060));
        assert_eq!(lifetime(200, &[("date", &d), ("expires", &e)]), 60);
    }

    #[test]
    fn invalid_expires_means_expired() {
        assert_eq!(lifetime(200, &[("expires", "0")]), 0);
    }

    #[test]
    fn heuristic_is_ten_percent_of_last_modified_age_capped() {
        let lm = httpdate::fmt_http_date(t(0) - Duration::from_secs(1000));
        assert_eq!(lifetime(200, &[("last-modified", &lm)]), 100);
        let old = httpdate::fmt_http_date(t(0) - Duration::from_secs(100 * 86_400));
        assert_eq!(lifetime(200, &[("last-modified", &old)]), 86_400);
    }

    #[test]
    fn heuristic_only_for_heuristically_cacheable_codes() {
        let lm = httpdate::fmt_http_date(t(0) - Duration::from_secs(1000));
        assert_eq!(lifetime(302, &[("last-modified", &lm)]), 0);
        assert_eq!(lifetime(200, &[]), 300, "default_ttl");
    }

    #[test]
    fn errors_and_redirects_without_explicit_freshness_get_negative_ttl_only() {
        let lm = httpdate::fmt_http_date(t(0) - Duration::from_secs(100_000));
        for status in [404, 410, 301, 308] {
            assert_eq!(lifetime(status, &[("last-modified", &lm)]), 10, "{status}");
            assert_eq!(lifetime(status, &[]), 10, "{status}: not default_ttl");
        }
        // Explicit freshness is the origin's choice.
        assert_eq!(lifetime(404, &[("cache-control", "max-age=60")]), 60);
    }

    #[test]
    fn no_cache_means_zero_lifetime() {
        assert_eq!(
            lifetime(200, &[("cache-control", "no-cache, max-age=100")]),
            0
        );
    }

    #[test]
    fn absurd_age_saturates_instead_of_overflowing() {
        let h = headers(&[("age", "18446744073709551615")]);
        assert_eq!(
            corrected_initial_age(&h, t(0), t(0)).as_secs(),
            2_147_483_648
        );
    }

    #[test]
    fn corrected_initial_age_takes_the_larger_of_apparent_and_corrected_age() {
        let h = headers(&[("date", &date(0)), ("age", "30")]);
        // Sent at t=0, received at t=2: corrected age 32 > apparent 2.
        assert_eq!(corrected_initial_age(&h, t(0), t(2)).as_secs(), 32);
        // Date 50 s in the past: apparent age 50 wins.
        let h = headers(&[("date", &date(0)), ("age", "5")]);
        assert_eq!(corrected_initial_age(&h, t(50), t(50)).as_secs(), 50);
        // Date in the future (origin clock ahead): apparent age is 0, not negative.
        let h = headers(&[("date", &date(100))]);
        assert_eq!(corrected_initial_age(&h, t(0), t(0)).as_secs(), 0);
    }

    fn can_store(
        status: u16,
        req: &[(&'static str, &str)],
        resp: &[(&'static str, &str)],
    ) -> Result<(), NotStorable> {
        let (rq, rs) = (headers(req), headers(resp));
        let d = parse_cache_control(&rs);
        storable(
            &Method::GET,
            &rq,
            StatusCode::from_u16(status).unwrap(),
            &rs,
            &d,
            CookiePolicy::Never,
        )
    }

    #[test]
    fn no_store_and_private_are_not_stored() {
        assert_eq!(
            can_store(200, &[], &[("cache-control", "no-store")]),
            Err(NotStorable::NoStore)
        );
        assert_eq!(
            can_store(200, &[], &[("cache-control", "private, max-age=60")]),
            Err(NotStorable::Private)
        );
        assert_eq!(
            can_store(200, &[], &[("cache-control", "max-age=60")]),
            Ok(())
        );
    }

    #[test]
    fn authorization_needs_public_s_maxage_or_must_revalidate() {
        let auth = [("authorization", "Basic eA==")];
        assert_eq!(
            can_store(200, &auth, &[("cache-control", "max-age=60")]),
            Err(NotStorable::Authorization)
        );
        assert_eq!(
            can_store(200, &auth, &[("cache-control", "public, max-age=60")]),
            Ok(())
        );
        assert_eq!(
            can_store(200, &auth, &[("cache-control", "s-maxage=60")]),
            Ok(())
        );
        assert_eq!(
            can_store(200, &auth, &[("cache-control", "must-revalidate")]),
            Ok(())
        );
    }

    #[test]
    fn set_cookie_vary_star_and_status_rules() {
        assert_eq!(
            can_store(200, &[], &[("set-cookie", "a=b")]),
            Err(NotStorable::SetCookie)
        );
        assert_eq!(
            can_store(200, &[], &[("vary", "Accept, *")]),
            Err(NotStorable::VaryStar)
        );
        assert_eq!(can_store(302, &[], &[]), Err(NotStorable::NoFreshnessInfo));
        assert_eq!(
            can_store(302, &[], &[("cache-control", "max-age=5")]),
            Ok(())
        );
        assert_eq!(can_store(500, &[], &[]), Err(NotStorable::NoFreshnessInfo));
        assert_eq!(
            can_store(206, &[], &[("cache-control", "max-age=5")]),
            Err(NotStorable::Status)
        );
        assert_eq!(can_store(404, &[], &[]), Ok(()));
    }

    #[test]
    fn swr_applies_within_its_window_and_never_to_strict_responses() {
        let d = parse_cache_control(&headers(&[(
            "cache-control",
            "max-age=1, stale-while-revalidate=30",
        )]));
        let rules = stale_rules(&d, Duration::ZERO, Duration::ZERO);
        assert!(serve_while_revalidating(&rules, Duration::from_secs(30)));
        assert!(!serve_while_revalidating(&rules, Duration::from_secs(31)));
        let strict = StaleRules {
            strict: true,
            ..rules
        };
        assert!(!serve_while_revalidating(&strict, Duration::from_secs(1)));
    }

    #[test]
    fn site_defaults_apply_only_when_the_origin_is_silent() {
        let none = Directives::default();
        let r = stale_rules(&none, Duration::from_secs(5), Duration::from_secs(50));
        assert_eq!(
            (r.while_revalidate.as_secs(), r.if_error.as_secs()),
            (5, 50)
        );
        let own = parse_cache_control(&headers(&[("cache-control", "stale-while-revalidate=0")]));
        assert_eq!(
            stale_rules(&own, Duration::from_secs(5), Duration::ZERO).while_revalidate,
            Duration::ZERO
        );
    }

    #[test]
    fn stale_if_error_then_grace_then_nothing() {
        let g = |secs| Grace {
            window: Duration::from_secs(secs),
            strict: false,
        };
        let rules = StaleRules {
            while_revalidate: Duration::ZERO,
            if_error: Duration::from_secs(60),
            strict: false,
        };
        let s = Duration::from_secs;
        assert_eq!(
            stale_on_error(&rules, s(60), None, g(0)),
            Some(StaleOnError::IfError)
        );
        assert_eq!(stale_on_error(&rules, s(61), None, g(0)), None);
        assert_eq!(
            stale_on_error(&rules, s(61), Some(s(100)), g(0)),
            Some(StaleOnError::IfError)
        );
        assert_eq!(
            stale_on_error(&rules, s(61), None, g(3600)),
            Some(StaleOnError::Grace)
        );
        let strict = StaleRules {
            strict: true,
            ..rules
        };
        assert_eq!(stale_on_error(&strict, s(1), None, g(0)), None);
        assert_eq!(
            stale_on_error(&strict, s(1), None, g(3600)),
            Some(StaleOnError::GraceOverride)
        );
    }

    #[test]
    fn a_strict_site_never_lets_grace_override_revalidation_but_still_serves_other_stale() {
        let s = Duration::from_secs;
        let strict_site = Grace {
            window: s(3600),
            strict: true,
        };
        let plain = StaleRules {
            while_revalidate: Duration::ZERO,
            if_error: Duration::ZERO,
            strict: false,
        };
        let must_revalidate = StaleRules {
            strict: true,
            ..plain
        };
        assert_eq!(
            stale_on_error(&plain, s(60), None, strict_site),
            Some(StaleOnError::Grace)
        );
        assert_eq!(stale_on_error(&plain, s(3601), None, strict_site), None);
        assert_eq!(
            stale_on_error(&must_revalidate, s(1), None, strict_site),
            None
        );
        assert_eq!(
            stale_on_error(&must_revalidate, s(1), Some(s(60)), strict_site),
            None,
            "a client's stale-if-error does not override must-revalidate either"
        );
    }

    #[test]
    fn a_list_valued_or_repeated_age_uses_its_first_member() {
        let t0 = t(0);
        let later = t(1);
        for pairs in [
            &[("age", "7200, 0")][..],
            &[("age", "7200"), ("age", "0")][..],
            &[("age", " 7200 ,5")][..],
        ] {
            let age = corrected_initial_age(&headers(pairs), t0, later);
            assert_eq!(age.as_secs(), 7201, "{pairs:?}");
        }
        assert_eq!(
            corrected_initial_age(&headers(&[("age", "x, 7200")]), t0, later).as_secs(),
            1,
            "an invalid first member is ignored"
        );
    }
}
