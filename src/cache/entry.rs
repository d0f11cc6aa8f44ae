//! A stored response: status, headers, body, its secondary (Vary) key and its freshness facts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{
    HeaderMap, HeaderName, HeaderValue, ACCEPT_RANGES, AGE, CONTENT_LENGTH, ETAG, LAST_MODIFIED,
    SET_COOKIE,
};
use http::StatusCode;

use super::body::{Kept, StoredBody};
use super::control::response_directives;
use super::fields::Fields;
use super::footprint;
use super::policy::{
    corrected_initial_age, freshness_lifetime, stale_rules, vary_names, Heuristic, StaleRules,
};
use super::share::{explicitly_shareable, has_credentials, shareable};
use crate::config::{CookiePolicy, SiteConfig};

/// The request's values of the fields a response varies on, normalised: repeated lines are
/// combined and white space around list members is dropped.
pub type Variant = Vec<(String, Option<String>)>;

pub fn variant_of(names: &[String], request: &HeaderMap) -> Variant {
    names
        .iter()
        .map(|name| {
            let mut parts: Vec<&str> = Vec::new();
            for value in request.get_all(name.as_str()) {
                let text = value.to_str().unwrap_or("");
                parts.extend(text.split(',').map(str::trim).filter(|s| !s.is_empty()));
            }
            let value = if request.contains_key(name.as_str()) {
                Some(parts.join(","))
            } else {
                None
            };
            (name.clone(), value)
        })
        .collect()
}

/// What a site decides about storing, gathered from its config once.
#[derive(Debug, Clone, Copy)]
pub struct StoreSettings {
    pub heuristic: Heuristic,
    pub default_swr: Duration,
    pub default_sie: Duration,
    pub cookies: CookiePolicy,
}

impl StoreSettings {
    pub fn of(site: &SiteConfig) -> StoreSettings {
        StoreSettings {
            heuristic: Heuristic {
                max: site.heuristic_max,
                default_ttl: site.default_ttl,
                negative_ttl: site.negative_ttl,
            },
            default_swr: site.stale_while_revalidate,
            default_sie: site.stale_if_error,
            cookies: site.cache_cookies,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub status: StatusCode,
    /// Headers as they will be sent, without hop-by-hop fields and without `Age`.
    pub headers: Fields,
    pub body: StoredBody,
    pub variant: Variant,
    pub response_time: SystemTime,
    pub initial_age: Duration,
    pub lifetime: Duration,
    pub stale: StaleRules,
    /// May be given to visitors other than the one it was fetched for without the origin
    /// confirming it for them (`share::shareable`). Otherwise it only serves as the base of a
    /// conditional request.
    pub shared: bool,
    /// Marked stale by an unsafe request or an answer that could not replace it: it must be
    /// revalidated (no stale-while-revalidate), but stays for grace when the origin fails.
    pub invalidated: bool,
    /// When this variant was last looked up, for the per-URI variant cap.
    pub last_used: LastUse,
    /// This entry's hold on a large body (`StoredBody::kept_by_entry`): while any entry keeps
    /// it, a client answered from the body is not charged for it.
    kept: Option<Arc<Kept>>,
}

/// A logical clock of variant use: a process-wide counter, so order is exact even for uses in
/// the same millisecond.
#[derive(Debug)]
pub struct LastUse(AtomicU64);

static USE_CLOCK: AtomicU64 = AtomicU64::new(0);

impl LastUse {
    fn now() -> LastUse {
        LastUse(AtomicU64::new(USE_CLOCK.fetch_add(1, Ordering::Relaxed)))
    }

    pub fn touch(&self) {
        self.0
            .store(USE_CLOCK.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Clone for LastUse {
    fn clone(&self) -> LastUse {
        LastUse(AtomicU64::new(self.get()))
    }
}

/// Fields a 304 must not overwrite in the stored response (RFC 9111 §3.2): they describe the
/// stored body, which the 304 did not resend.
const KEEP_ON_UPDATE: [HeaderName; 4] = [
    CONTENT_LENGTH,
    http::header::CONTENT_ENCODING,
    http::header::CONTENT_RANGE,
    http::header::TRANSFER_ENCODING,
];

impl Entry {
    /// Builds an entry from a complete origin response. `headers` must already be free of
    /// hop-by-hop fields. `body` is usually a fill's `StoredBody::from_buffer`; a `Bytes` is
    /// kept as it is.
    pub fn new(
        status: StatusCode,
        mut headers: HeaderMap,
        body: impl Into<StoredBody>,
        request_headers: &HeaderMap,
        request_time: SystemTime,
        response_time: SystemTime,
        settings: &StoreSettings,
    ) -> Entry {
        let body = body.into();
        let variant = variant_of(&vary_names(&headers), request_headers);
        let credentials = has_credentials(request_headers);
        if settings.cookies == CookiePolicy::Strip {
            headers.remove(SET_COOKIE);
        }
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        if status == StatusCode::OK {
            // Stored 200s answer single byte ranges (see proxy::respond).
            headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        }
        Entry::from_parts(
            status,
            headers,
            body,
            variant,
            credentials,
            (request_time, response_time),
            settings,
        )
    }

    fn from_parts(
        status: StatusCode,
        mut headers: HeaderMap,
        mut body: StoredBody,
        variant: Variant,
        credentials: bool,
        (request_time, response_time): (SystemTime, SystemTime),
        settings: &StoreSettings,
    ) -> Entry {
        let directives = response_directives(&headers);
        let lifetime = freshness_lifetime(
            status,
            &headers,
            &directives,
            response_time,
            settings.heuristic,
        );
        let initial_age = corrected_initial_age(&headers, request_time, response_time);
        headers.remove(AGE);
        let shared = shareable(
            credentials,
            explicitly_shareable(&directives, &headers),
            lifetime,
        );
        let kept = body.kept_by_entry();
        Entry {
            kept,
            status,
            // Own copies: the values parsed by hyper are slices of the origin connection's read
            // buffer, and would keep all of it alive for as long as the entry is stored.
            headers: Fields::copy_of(&headers),
            body,
            variant,
            response_time,
            initial_age,
            lifetime,
            stale: stale_rules(&directives, settings.default_swr, settings.default_sie),
            shared,
            invalidated: false,
            last_used: LastUse::now(),
        }
    }

    /// The entry after a 304 Not Modified (RFC 9111 §4.3.4): the 304's fields replace the
    /// stored ones, the body stays, and freshness starts again from the 304. The origin has
    /// confirmed the body for `request`, so whether it carried credentials is what counts now.
    pub fn refreshed(
        &self,
        not_modified: &HeaderMap,
        request: &HeaderMap,
        request_time: SystemTime,
        response_time: SystemTime,
        settings: &StoreSettings,
    ) -> Entry {
        let mut headers = self.headers.to_map(0, None);
        for name in not_modified.keys() {
            if KEEP_ON_UPDATE.contains(name) {
                continue;
            }
            if settings.cookies == CookiePolicy::Strip && name == SET_COOKIE {
                continue;
            }
            headers.remove(name);
            for value in not_modified.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        let mut entry = Entry::from_parts(
            self.status,
            headers,
            self.body.clone(),
            self.variant.clone(),
            has_credentials(request),
            (request_time, response_time),
            settings,
        );
        // A copy already shared stays shared: the 304 confirms the same body, whoever asked
        // (a 304 that makes it private is caught by the caller's storability check). Without
        // this, one request with a dummy cookie took the outage copy out of grace.
        entry.shared |= self.shared;
        entry
    }

    /// This entry marked stale now (RFC 9111 §4.4 invalidation without deleting the outage
    /// copy): freshness ends at its current age, so grace counts from now.
    pub fn marked_stale(&self, now: SystemTime) -> Entry {
        let mut entry = self.clone();
        entry.lifetime = self.lifetime.min(self.age(now));
        entry.invalidated = true;
        entry
    }

    /// May this copy be served to anyone without revalidation (a fresh hit or a waiter)?
    pub fn serves_fresh(&self, now: SystemTime) -> bool {
        self.serves_fresh_at(self.age(now))
    }

    /// [`Entry::serves_fresh`] at an age read already (the hit path reads the clock once).
    pub fn serves_fresh_at(&self, age: Duration) -> bool {
        self.shared && self.lifetime > age
    }

    /// May this copy be served stale (grace, stale-if-error, over a budget)? Only a shareable
    /// 2xx: errors and redirects are never served stale.
    pub fn may_serve_stale(&self) -> bool {
        self.shared && self.status.is_success()
    }

    /// May this copy be served stale while it is revalidated in the background?
    pub fn may_serve_while_revalidating(&self) -> bool {
        self.may_serve_stale() && !self.invalidated
    }

    /// Current age (RFC 9111 §4.2.3).
    pub fn age(&self, now: SystemTime) -> Duration {
        let resident = now
            .duration_since(self.response_time)
            .unwrap_or(Duration::ZERO);
        self.initial_age.saturating_add(resident)
    }

    pub fn is_fresh(&self, now: SystemTime) -> bool {
        self.lifetime > self.age(now)
    }

    /// How long past its freshness the entry is (zero while fresh).
    pub fn staleness(&self, now: SystemTime) -> Duration {
        self.age(now).saturating_sub(self.lifetime)
    }

    /// Remaining freshness in whole seconds, negative once stale (Cache-Status `ttl`).
    pub fn ttl(&self, now: SystemTime) -> i64 {
        self.ttl_at(self.age(now))
    }

    /// [`Entry::ttl`] at an age read already.
    pub fn ttl_at(&self, age: Duration) -> i64 {
        self.lifetime.as_secs() as i64 - age.as_secs() as i64
    }

    pub fn etag(&self) -> Option<&str> {
        self.headers.get_str(&ETAG)
    }

    pub fn last_modified(&self) -> Option<SystemTime> {
        let text = self.headers.get_str(&LAST_MODIFIED)?;
        httpdate::parse_http_date(text.trim()).ok()
    }

    pub fn has_validator(&self) -> bool {
        self.headers.contains_key(&ETAG) || self.headers.contains_key(&LAST_MODIFIED)
    }

    /// Does this variant answer a request with these headers (RFC 9111 §4.1)?
    pub fn matches(&self, request: &HeaderMap) -> bool {
        self.variant.is_empty() || {
            let names: Vec<String> = self.variant.iter().map(|(n, _)| n.clone()).collect();
            variant_of(&names, request) == self.variant
        }
    }

    /// The memory this entry holds, for the store's capacity: the `Arc<Entry>` and the struct,
    /// the header map with its values and names, the body, and the variant's strings. Small
    /// objects cost more in overhead than in body, so leaving any of this out lets the store
    /// hold several times its budget.
    pub fn weight(&self) -> u32 {
        let bytes = footprint::arc_footprint::<Entry>()
            + self.headers.footprint()
            + self.body.footprint()
            + self
                .kept
                .as_ref()
                .map_or(0, |_| footprint::arc_footprint::<Kept>())
            + footprint::strings_footprint(&self.variant);
        bytes.min(u32::MAX as usize) as u32
    }
}

#[cfg(test)]
mod tests {
    /// The first value of `name` (which must be there).
    fn field(fields: &Fields, name: &str) -> HeaderValue {
        let name = http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        fields.get(&name).unwrap()
    }

    use super::*;
    use bytes::Bytes;

    fn settings() -> StoreSettings {
        StoreSettings {
            heuristic: Heuristic {
                max: Duration::from_secs(3600),
                default_ttl: Duration::ZERO,
                negative_ttl: Duration::from_secs(10),
            },
            default_swr: Duration::ZERO,
            default_sie: Duration::ZERO,
            cookies: CookiePolicy::Never,
        }
    }

    fn entry(pairs: &[(&'static str, &str)], request: &HeaderMap) -> Entry {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        let now = SystemTime::now();
        Entry::new(
            StatusCode::OK,
            h,
            StoredBody::from("body"),
            request,
            now,
            now,
            &settings(),
        )
    }

    #[test]
    fn age_grows_and_ttl_goes_negative() {
        let e = entry(
            &[("cache-control", "max-age=10"), ("age", "4")],
            &HeaderMap::new(),
        );
        let now = e.response_time;
        assert_eq!(e.age(now).as_secs(), 4);
        assert_eq!(e.ttl(now), 6);
        assert!(e.is_fresh(now));
        let later = now + Duration::from_secs(20);
        assert_eq!(e.ttl(later), -14);
        assert_eq!(e.staleness(later).as_secs(), 14);
        assert!(!e.headers.contains_key(&AGE));
    }

    #[test]
    fn stale_on_arrival_when_age_exceeds_max_age() {
        let e = entry(
            &[("cache-control", "max-age=10"), ("age", "50")],
            &HeaderMap::new(),
        );
        assert!(!e.is_fresh(e.response_time));
    }

    #[test]
    fn vary_values_are_normalised() {
        let mut req = HeaderMap::new();
        req.append("accept-language", HeaderValue::from_static("ja ,  en"));
        let e = entry(
            &[("vary", "Accept-Language"), ("cache-control", "max-age=60")],
            &req,
        );
        let mut other = HeaderMap::new();
        other.append("accept-language", HeaderValue::from_static("ja"));
        other.append("accept-language", HeaderValue::from_static("en"));
        assert!(e.matches(&other));
        let mut english = HeaderMap::new();
        english.append("accept-language", HeaderValue::from_static("en"));
        assert!(!e.matches(&english));
        assert!(!e.matches(&HeaderMap::new()));
    }

    #[test]
    fn refresh_keeps_body_and_framing_and_takes_new_headers() {
        let e = entry(
            &[
                ("cache-control", "max-age=0"),
                ("etag", "\"v1\""),
                ("x-a", "old"),
            ],
            &HeaderMap::new(),
        );
        let mut not_modified = HeaderMap::new();
        not_modified.insert("cache-control", HeaderValue::from_static("max-age=60"));
        not_modified.insert("x-a", HeaderValue::from_static("new"));
        not_modified.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let now = SystemTime::now();
        let r = e.refreshed(&not_modified, &HeaderMap::new(), now, now, &settings());
        assert_eq!(r.body, e.body);
        assert_eq!(field(&r.headers, "x-a"), "new");
        assert_eq!(field(&r.headers, "content-length"), "4");
        assert_eq!(r.etag(), Some("\"v1\""));
        assert!(r.is_fresh(now));
    }

    #[test]
    fn a_copy_fetched_with_a_cookie_is_shared_only_when_explicit_or_confirmed_for_others() {
        let mut cookie = HeaderMap::new();
        cookie.insert("cookie", HeaderValue::from_static("session=a"));
        let lm = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(36_000));
        let personal = entry(&[("last-modified", &lm), ("etag", "\"p\"")], &cookie);
        let now = SystemTime::now();
        assert!(personal.is_fresh(now), "heuristically fresh");
        assert!(!personal.serves_fresh(now) && !personal.may_serve_stale());
        // A 304 to the same visitor changes nothing; one to a visitor without credentials
        // confirms the body is what anyone gets.
        let again = personal.refreshed(&HeaderMap::new(), &cookie, now, now, &settings());
        assert!(!again.shared);
        let public = entry(&[("cache-control", "max-age=60")], &HeaderMap::new());
        let confirmed = public.refreshed(&HeaderMap::new(), &cookie, now, now, &settings());
        assert!(
            confirmed.shared,
            "a 304 to a visitor with a cookie keeps it shared"
        );
        let anonymous =
            personal.refreshed(&HeaderMap::new(), &HeaderMap::new(), now, now, &settings());
        assert!(anonymous.shared);
        let public = entry(&[("cache-control", "max-age=60")], &cookie);
        assert!(public.serves_fresh(now));
    }

    #[test]
    fn never_fresh_copies_and_errors_are_never_served_stale() {
        let never_fresh = entry(&[], &HeaderMap::new());
        assert!(!never_fresh.shared && !never_fresh.may_serve_stale());
        let mut not_found = entry(&[("cache-control", "max-age=60")], &HeaderMap::new());
        not_found.status = StatusCode::NOT_FOUND;
        assert!(not_found.shared && !not_found.may_serve_stale());
        let good = entry(&[("cache-control", "max-age=60")], &HeaderMap::new());
        let marked = good.marked_stale(SystemTime::now());
        assert!(!marked.is_fresh(SystemTime::now()));
        assert!(marked.may_serve_stale() && !marked.may_serve_while_revalidating());
    }

    /// Whether `value`'s bytes lie inside `buffer`.
    fn inside(value: &HeaderValue, buffer: &Bytes) -> bool {
        let start = buffer.as_ptr() as usize;
        let at = value.as_bytes().as_ptr() as usize;
        (start..start + buffer.len()).contains(&at)
    }

    #[test]
    fn stored_header_values_do_not_keep_the_read_buffer_alive() {
        // What hyper does: every value is a slice of the connection's read buffer.
        let mut read_buffer = b"max-age=60\"v1\"text/html".to_vec();
        read_buffer.resize(64 * 1024, b' ');
        let read_buffer = Bytes::from(read_buffer);
        let slice = |range: std::ops::Range<usize>| {
            HeaderValue::from_maybe_shared(read_buffer.slice(range)).unwrap()
        };
        let mut headers = HeaderMap::new();
        headers.insert("cache-control", slice(0..10));
        headers.insert("etag", slice(10..14));
        headers.insert("content-type", slice(14..23));
        assert!(inside(&headers["etag"], &read_buffer));
        let now = SystemTime::now();
        let stored = Entry::new(
            StatusCode::OK,
            headers.clone(),
            StoredBody::from("body"),
            &HeaderMap::new(),
            now,
            now,
            &settings(),
        );
        for (name, value) in stored.headers.iter() {
            assert!(
                !inside(&value, &read_buffer),
                "{name} still points into the read buffer"
            );
        }
        assert_eq!(field(&stored.headers, "etag"), "\"v1\"");
        assert_eq!(field(&stored.headers, "content-type"), "text/html");

        // The same after a 304 merges its own (buffer-backed) fields.
        let mut not_modified = HeaderMap::new();
        not_modified.insert("cache-control", slice(0..10));
        let refreshed = stored.refreshed(&not_modified, &HeaderMap::new(), now, now, &settings());
        assert!(!inside(
            &field(&refreshed.headers, "cache-control"),
            &read_buffer
        ));
        assert_eq!(field(&refreshed.headers, "cache-control"), "max-age=60");
    }

    #[test]
    fn weight_counts_overhead_beyond_the_body() {
        let mut req = HeaderMap::new();
        req.insert("accept-language", HeaderValue::from_static("ja"));
        let small = entry(&[("cache-control", "max-age=60")], &HeaderMap::new());
        // A 4-byte body still costs the struct, the Arc and a header map.
        let base = small.weight() as usize;
        assert!(base >= 4 + std::mem::size_of::<Entry>() + 100, "{base}");

        // Every header, value byte and variant value adds to it.
        let more = entry(
            &[
                ("cache-control", "max-age=60"),
                ("x-custom-field", &"v".repeat(300)),
                ("vary", "accept-language"),
            ],
            &req,
        );
        assert!(
            more.weight() as usize >= base + 300 + "x-custom-field".len(),
            "{}",
            more.weight()
        );
        assert!(!more.variant.is_empty());
    }
}
