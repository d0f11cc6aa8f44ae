//! Who may be given a copy: the pure rules that decide whether a stored or fetched response may
//! reach a visitor other than the one it was fetched for (fresh hits, collapsed waiters, grace,
//! stale-while-revalidate, over-budget clients) and whether an origin error may be shared.

use std::time::Duration;

use http::header::{HeaderMap, AUTHORIZATION, COOKIE, EXPIRES, SET_COOKIE};

use super::control::Directives;

/// Did the request carry credentials, so that its answer may be personal?
pub fn has_credentials(request_headers: &HeaderMap) -> bool {
    request_headers.contains_key(COOKIE) || request_headers.contains_key(AUTHORIZATION)
}

/// Did the origin explicitly mark the response as shareable: `public`, `s-maxage`, or
/// `max-age` / `Expires` without `private` or `no-cache`?
pub fn explicitly_shareable(directives: &Directives, response_headers: &HeaderMap) -> bool {
    directives.public
        || directives.s_maxage.is_some()
        || ((directives.max_age.is_some() || response_headers.contains_key(EXPIRES))
            && !directives.private
            && !directives.no_cache)
}

/// May a copy be given to a visitor other than the one it was fetched for without the origin
/// confirming it for that visitor first (fresh hit, collapsed waiter, grace, SWR)? Only when
/// the origin marked it shareable, or when it was fetched without credentials and was fresh
/// when stored. A page fetched with `Cookie` / `Authorization`, or one that was never fresh
/// (typical of PHP or Express pages without Cache-Control), may be somebody's own page.
pub fn shareable(credentials: bool, explicit: bool, lifetime: Duration) -> bool {
    explicit || (!credentials && !lifetime.is_zero())
}

/// May an origin error be handed to the requests that waited on the one that got it? Not when
/// it is `private` / `no-store`, carries a cookie, or answers a request with credentials
/// without being explicitly shareable: it may echo that visitor's own data.
pub fn error_shareable(
    request_headers: &HeaderMap,
    response_headers: &HeaderMap,
    directives: &Directives,
) -> bool {
    !directives.no_store
        && !directives.private
        && !response_headers.contains_key(SET_COOKIE)
        && (!has_credentials(request_headers) || explicitly_shareable(directives, response_headers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::control::parse_cache_control;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn share(req: &[(&'static str, &str)], resp: &[(&'static str, &str)], lifetime: u64) -> bool {
        let (rq, rs) = (headers(req), headers(resp));
        let d = parse_cache_control(&rs);
        shareable(
            has_credentials(&rq),
            explicitly_shareable(&d, &rs),
            Duration::from_secs(lifetime),
        )
    }

    #[test]
    fn credentials_need_explicit_shareability() {
        let cookie = [("cookie", "session=a")];
        assert!(
            !share(&cookie, &[], 300),
            "heuristic freshness is not enough"
        );
        assert!(!share(&[("authorization", "Basic eA==")], &[], 300));
        assert!(share(&cookie, &[("cache-control", "public")], 0));
        assert!(share(&cookie, &[("cache-control", "s-maxage=60")], 60));
        assert!(share(&cookie, &[("cache-control", "max-age=60")], 60));
        assert!(share(&cookie, &[("expires", "0")], 0));
        assert!(!share(
            &cookie,
            &[("cache-control", "no-cache, max-age=60")],
            0
        ));
    }

    #[test]
    fn a_never_fresh_copy_is_not_shared_unless_explicit() {
        assert!(!share(&[], &[], 0), "PHP-style page without Cache-Control");
        assert!(!share(&[], &[("cache-control", "no-cache")], 0));
        assert!(share(&[], &[("cache-control", "max-age=0")], 0));
        assert!(share(&[], &[], 300), "fresh by heuristic, no credentials");
    }

    #[test]
    fn errors_are_shared_only_when_nothing_personal() {
        let ok = |req: &[(&'static str, &str)], resp: &[(&'static str, &str)]| {
            let (rq, rs) = (headers(req), headers(resp));
            error_shareable(&rq, &rs, &parse_cache_control(&rs))
        };
        assert!(ok(&[], &[]));
        assert!(!ok(&[], &[("cache-control", "private, no-store")]));
        assert!(!ok(&[], &[("cache-control", "no-store")]));
        assert!(!ok(&[], &[("set-cookie", "a=b")]));
        assert!(!ok(&[("cookie", "s=1")], &[]));
        assert!(ok(&[("cookie", "s=1")], &[("cache-control", "public")]));
    }
}
