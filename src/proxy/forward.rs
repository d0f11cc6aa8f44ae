//! The origin side of the request path: cache fills (conditional when a stale copy has
//! validators), the store decision, relaying uncacheable requests, invalidation after unsafe
//! methods, and the answers Kagami gives when the origin cannot.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use http::header::{
    HeaderValue, ACCEPT, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_LOCATION, CONTENT_TYPE, EXPECT,
    HOST, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, LOCATION, RETRY_AFTER, SET_COOKIE,
};
use http::{HeaderMap, Method, Request, StatusCode};
use hyper::body::Incoming;

use super::budget::{Budget, Charge, Owner};
use super::fill::{relay, RelayLimits, StoreJob};
use super::respond::{self, from_entry, Canned};
use super::whole;
use super::{
    default_port, forwarding, headers, path_and_query, Client, Failure, Outcome, Proxy, Req,
    Served, Site,
};
use crate::cache::coalesce::Leader;
use crate::cache::control::response_directives;
use crate::cache::policy::{storable, NotStorable};
use crate::cache::share::{error_shareable, explicitly_shareable, has_credentials};
use crate::cache::{CacheStatus, Entry, Phase};
use crate::limit::{client_ip, limit_key};
use crate::origin::{is_failure, OriginError, Slot, Upload};
use crate::routing::{target, Authority};

/// Largest origin error body shared with coalesced waiters; larger ones get a generic answer.
const SHARED_ERROR_BODY: u64 = 64 * 1024;

impl Proxy {
    /// Fetches `key` from the origin, stores what may be stored, and answers the client. With
    /// `leader`, the outcome is published to the requests waiting on it. `permit` is an origin
    /// slot already held; without one, the request queues for a slot (or is answered from a
    /// stale copy at once when every slot is taken).
    pub(super) async fn fetch(
        &self,
        req: &Req,
        key: String,
        stale: Option<Arc<Entry>>,
        phase: Phase,
        leader: Option<Leader<Outcome>>,
        permit: Option<Slot>,
    ) -> Served {
        let site = &self.sites[req.site];
        let permit = match permit.or_else(|| site.origin.try_slot(Some(req.ip))) {
            Some(permit) => permit,
            None => {
                if let Some(served) = self.stale_after_failure(req, &stale, None) {
                    let failure = self.unavailable(site, &OriginError::Busy);
                    finish(leader, Outcome::Failed(Arc::new(failure)));
                    return served;
                }
                match site.origin.slot(Some(req.ip)).await {
                    Ok(permit) => permit,
                    Err(err) => {
                        let failure = self.unavailable(site, &err);
                        return self.origin_failed(req, stale, phase, leader, failure);
                    }
                }
            }
        };

        let mut headers = self.sent(req).clone();
        // Only a shared copy may be revalidated for this visitor: a 304 would hand them a copy
        // that may be another visitor's page (one fetched with their cookie).
        let base = stale.as_ref().filter(|entry| entry.shared);
        if let Some(entry) = base {
            if let Some(etag) = entry.headers.get(&http::header::ETAG) {
                headers.insert(IF_NONE_MATCH, etag);
            }
            if let Some(modified) = entry.headers.get(&LAST_MODIFIED) {
                headers.insert(IF_MODIFIED_SINCE, modified);
            }
        }
        let request_time = SystemTime::now();
        // HEAD is filled with GET, so the stored copy can answer both.
        let result = site
            .origin
            .send(Method::GET, path_and_query(&req.parts), headers, None)
            .await;
        let response_time = SystemTime::now();

        let response = match result {
            Ok(response) if !is_failure(response.status()) => response,
            // The origin's health (circuit, back-off) was judged in `Origin::send`.
            failed => {
                let failure = match failed {
                    Err(err) => {
                        log_origin_error(site, &err);
                        self.unavailable(site, &err)
                    }
                    Ok(response) => {
                        let status = response.status();
                        let shareable = error_shareable(
                            &req.parts.headers,
                            response.headers(),
                            &response_directives(response.headers()),
                        );
                        let own = shared_error(response, &self.budget).await;
                        let (answer, own) = if shareable {
                            (own, None)
                        } else {
                            // The waiters get Kagami's own page, never this visitor's.
                            let generic = Canned::error(
                                status,
                                "kagami: the origin server reported an error",
                            );
                            (generic, Some(own))
                        };
                        Failure {
                            origin_status: Some(status),
                            answer,
                            own,
                            detail: "origin-error",
                        }
                    }
                };
                drop(permit);
                return self.origin_failed(req, stale, phase, leader, failure);
            }
        };
        let status = response.status();

        if status == StatusCode::NOT_MODIFIED {
            if let Some(entry) = stale.as_ref().filter(|entry| entry.shared) {
                let mut update = response.headers().clone();
                headers::strip_hop_by_hop(&mut update);
                // A cookie on a 304 is for this visitor only: never merged into the shared copy.
                let cookies: Vec<HeaderValue> =
                    update.get_all(SET_COOKIE).iter().cloned().collect();
                update.remove(SET_COOKIE);
                let refreshed = Arc::new(entry.refreshed(
                    &update,
                    &req.parts.headers,
                    request_time,
                    response_time,
                    &site.settings,
                ));
                let now = SystemTime::now();
                let mut cache_status = CacheStatus::new(Phase::Revalidated)
                    .fwd_status(304)
                    .ttl(refreshed.ttl(now));
                // The merged headers decide: a 304 that makes the copy private, no-store,
                // Vary: * ... removes it, and this visitor's answer is theirs alone.
                let merged = refreshed.headers.to_map(0, None);
                match storable(
                    &Method::GET,
                    &req.parts.headers,
                    refreshed.status,
                    &merged,
                    &response_directives(&merged),
                    site.settings.cookies,
                ) {
                    Ok(()) => {
                        self.store.insert(key, refreshed.clone());
                        finish(leader, Outcome::Stored(refreshed.clone()));
                        cache_status = cache_status.stored(true);
                    }
                    Err(reason) => {
                        self.store.remove_variant(&key, entry);
                        finish(leader, Outcome::Uncacheable);
                        cache_status = cache_status.detail(reason.as_str());
                    }
                }
                let mut answer = from_entry(&refreshed, &req.parts.method, &req.parts.headers, now);
                for cookie in cookies {
                    answer.headers_mut().append(SET_COOKIE, cookie);
                }
                return (answer, cache_status);
            }
        }

        let mut response_headers = response.headers().clone();
        headers::strip_hop_by_hop(&mut response_headers);
        let directives = response_directives(&response_headers);
        let mut verdict = storable(
            &Method::GET,
            &req.parts.headers,
            status,
            &response_headers,
            &directives,
            site.settings.cookies,
        );
        if verdict.is_ok()
            && response
                .content_length()
                .is_some_and(|len| len > site.config.max_object_size)
        {
            verdict = Err(NotStorable::TooLarge);
        }
        // A real new answer replaces the page; a refusal (403, 405, ...) says nothing about it, so
        // it is neither stored over a good copy nor allowed to remove it (kept for outages).
        let replaces_page = status.is_success()
            || status.is_redirection()
            || status == StatusCode::NOT_FOUND
            || status == StatusCode::GONE;
        if verdict.is_ok() && stale.is_some() && !replaces_page {
            verdict = Err(NotStorable::Status);
        }
        // A 404 or redirect (perhaps provoked by a header outside the key) never replaces a
        // stored 2xx: that copy is marked stale below and stays for outages.
        if verdict.is_ok() && !status.is_success() && self.store.has_success(&key) {
            verdict = Err(NotStorable::GoodCopyKept);
        }
        // The fill's claim on the in-flight budget: all of it now when the length is known.
        let mut fill = self.budget.charge(Owner::Shared);
        let fill_refused = verdict.is_ok()
            && response
                .content_length()
                .is_some_and(|len| !fill.try_grow(len));
        // A page fetched with a visitor's cookie that the origin did not mark shareable is that
        // visitor's; it never replaces a shared good copy (which grace still needs).
        if verdict.is_ok()
            && has_credentials(&req.parts.headers)
            && !explicitly_shareable(&directives, &response_headers)
            && self.store.has_shared_success(&key)
        {
            verdict = Err(NotStorable::GoodCopyKept);
        }
        let mut cache_status = CacheStatus::new(phase).fwd_status(status.as_u16());
        let (job, leader) = match verdict {
            Ok(()) if fill_refused => {
                // Too many bodies in flight: relay this one without storing it.
                cache_status = cache_status.detail("inflight-memory-full");
                finish(leader, Outcome::Uncacheable);
                (None, None)
            }
            Ok(()) => {
                let job = StoreJob {
                    store: self.store.clone(),
                    key,
                    status,
                    headers: response_headers.clone(),
                    // Kept for as long as the fill runs: not the client's read buffer.
                    request_headers: crate::cache::footprint::compact_headers(self.sent(req)),
                    request_time,
                    response_time,
                    settings: site.settings,
                    max_size: site.config.max_object_size,
                    fill,
                };
                if response
                    .content_length()
                    .is_some_and(|len| len <= whole::HOLD_BEFORE_ANSWER)
                {
                    response_headers.remove(respond::CDN_CACHE_CONTROL);
                    let want_body = req.parts.method != Method::HEAD;
                    let (body, stored) =
                        whole::fill(response, job, leader, want_body, permit).await;
                    let answer = respond::build(status, response_headers, body);
                    return (answer, cache_status.stored(stored));
                }
                // Streamed: the head goes out before the body is known to be complete, so it
                // cannot say `stored`.
                (Some(job), leader)
            }
            Err(reason) => {
                cache_status = cache_status.detail(reason.as_str());
                // A real new answer that may not be stored makes the old copy outdated: it
                // must be revalidated, but a visitor must not be able to delete the outage copy.
                if stale.is_some() && replaces_page {
                    self.store.mark_stale(&key);
                }
                finish(leader, Outcome::Uncacheable);
                (None, None)
            }
        };
        response_headers.remove(respond::CDN_CACHE_CONTROL);
        let body = relay(
            response,
            job,
            leader,
            req.parts.method != Method::HEAD,
            Some(permit),
            self.relay_limits(site, req.ip),
        );
        (respond::build(status, response_headers, body), cache_status)
    }

    /// Publishes a failure to the waiters, then serves a stale copy if allowed, else the failure.
    fn origin_failed(
        &self,
        req: &Req,
        stale: Option<Arc<Entry>>,
        phase: Phase,
        leader: Option<Leader<Outcome>>,
        failure: Failure,
    ) -> Served {
        let failure = Arc::new(failure);
        finish(leader, Outcome::Failed(failure.clone()));
        if let Some(served) = self.stale_after_failure(req, &stale, failure.origin_status) {
            return served;
        }
        self.failed(req, phase, &failure, false)
    }

    /// Kagami's own answer when the origin cannot be used: the site's emergency page, with the
    /// status that says why (503 unavailable, 504 timeout, 502 bad answer).
    pub(super) fn unavailable(&self, site: &Site, err: &OriginError) -> Failure {
        let status = match err {
            OriginError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            OriginError::Other(_) => StatusCode::BAD_GATEWAY,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("10"));
        headers.insert(
            CONTENT_LENGTH,
            HeaderValue::from(site.config.emergency_page.len()),
        );
        Failure {
            answer: Canned {
                status,
                headers,
                body: site.config.emergency_page.clone(),
            },
            own: None,
            origin_status: None,
            detail: err.detail(),
        }
    }

    /// Non-cacheable requests: relayed to the origin as they are. A successful unsafe method
    /// invalidates the stored target URI and same-site Location / Content-Location (RFC 9111 §4.4):
    /// marked stale, not deleted, so that grace still has them when the origin fails.
    pub(super) async fn pass(
        &self,
        index: usize,
        request: Request<Incoming>,
        client: Client,
        host: &str,
        reason: &'static str,
    ) -> Served {
        let site = &self.sites[index];
        let (parts, incoming) = request.into_parts();
        let cache_status = CacheStatus::new(Phase::Pass).fwd(reason);
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_request_body) {
            let answer = Canned::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "kagami: request body too large",
            );
            return (
                answer.response(&parts.method),
                cache_status.detail("body-too-large"),
            );
        }
        let headers = self.origin_headers(site, &parts.headers, &client, host, false);
        let body = match parts.method {
            Method::GET | Method::HEAD => None,
            _ => Some(Upload::new(incoming, self.max_request_body)),
        };
        let failed = |err: &OriginError| {
            let answer = match err {
                // The client's own doing: a plain answer, not the emergency page.
                OriginError::TooLarge => Canned::error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "kagami: request body too large",
                ),
                OriginError::ClientBody => Canned::error(
                    StatusCode::BAD_REQUEST,
                    "kagami: the request body was incomplete",
                ),
                OriginError::BadTarget => Canned::error(
                    StatusCode::BAD_REQUEST,
                    "kagami: the request target must be an absolute path",
                ),
                _ => {
                    self.stats.add(&self.stats.emergency_pages);
                    self.unavailable(site, err).answer
                }
            };
            (
                answer.response(&parts.method),
                cache_status.clone().detail(err.detail()),
            )
        };
        // Origin slots are shared per client address (the rate-limit key).
        let ip = limit_key(client_ip(client.peer.ip(), &parts.headers, &self.trusted));
        let permit = match site.origin.slot(Some(ip)).await {
            Ok(permit) => permit,
            Err(err) => return failed(&err),
        };
        let response = match site
            .origin
            .send(parts.method.clone(), path_and_query(&parts), headers, body)
            .await
        {
            Ok(response) => response,
            Err(err) => {
                log_origin_error(site, &err);
                return failed(&err);
            }
        };
        let status = response.status();
        let unsafe_method = !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        if unsafe_method && (status.is_success() || status.is_redirection()) {
            let same = (host, client.local_port);
            self.invalidate_after_unsafe(site, path_and_query(&parts), same, response.headers());
        }
        let mut response_headers = response.headers().clone();
        headers::strip_hop_by_hop(&mut response_headers);
        response_headers.remove(respond::CDN_CACHE_CONTROL);
        // The rate-limit key, so that clients behind a trusted proxy each get their share.
        let ip = limit_key(client_ip(client.peer.ip(), &parts.headers, &self.trusted));
        let body = relay(
            response,
            None,
            None,
            parts.method != Method::HEAD,
            Some(permit),
            self.relay_limits(site, ip),
        );
        (
            respond::build(status, response_headers, body),
            cache_status.fwd_status(status.as_u16()),
        )
    }

    /// A relay's share of the in-flight budget; it may wait on its client as long as the
    /// origin may pause between two reads.
    fn relay_limits(&self, site: &Site, client: IpAddr) -> RelayLimits {
        RelayLimits {
            budget: self.budget.clone(),
            client,
            stall: site.config.timeouts.read,
        }
    }

    /// `host` is the request's key host and the port of the listener it came in on, which a
    /// `Location` naming that port means too (`Authority::normalised_on`).
    fn invalidate_after_unsafe(
        &self,
        site: &Site,
        path: &str,
        (host, local_port): (&str, u16),
        response: &HeaderMap,
    ) {
        self.invalidate_target(site, host, path);
        for field in [LOCATION, CONTENT_LOCATION] {
            let Some(location) = response.get(field).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            let Ok(uri) = location.parse::<http::Uri>() else {
                continue;
            };
            // Only URIs of the same origin may be invalidated (RFC 9111 §4.4).
            let same_origin = match uri.authority() {
                None => location.starts_with('/'),
                Some(a) => Authority::parse(a.as_str()).is_ok_and(|a| {
                    let default = default_port(uri.scheme_str().unwrap_or("http"));
                    a.normalised_on(default, local_port) == host
                }),
            };
            let pq = uri.path_and_query().map_or("/", |p| p.as_str());
            if let (true, Ok(target)) = (same_origin, target::canonical(pq)) {
                self.invalidate_target(site, host, &target);
            }
        }
    }
}

/// Real origin errors are warnings; "circuit open" and "slots busy" are Kagami protecting the
/// origin, once per request during an outage, so they stay at debug to keep the log readable.
fn log_origin_error(site: &Site, err: &OriginError) {
    match err {
        OriginError::CircuitOpen | OriginError::Busy => {
            tracing::debug!(site = %site.config.name, error = %err, "origin not asked")
        }
        _ => tracing::warn!(site = %site.config.name, error = %err, "origin request failed"),
    }
}

fn finish(leader: Option<Leader<Outcome>>, outcome: Outcome) {
    if let Some(leader) = leader {
        leader.finish(outcome);
    }
}

impl Proxy {
    /// The header fields an origin request carries: the client's end-to-end fields without
    /// hop-by-hop ones (and those its `Connection` lists), without client forwarding headers
    /// unless the peer is a trusted proxy; then Host, Forwarded / X-Forwarded-* and Via. For a
    /// cache `fill` the client's preconditions, ranges and framing go too (Kagami answers those
    /// from the full stored response, and a fill has no body).
    pub(super) fn origin_headers(
        &self,
        site: &Site,
        client_headers: &HeaderMap,
        client: &Client,
        host: &str,
        fill: bool,
    ) -> HeaderMap {
        let mut headers = client_headers.clone();
        headers::strip_hop_by_hop(&mut headers);
        if !self.trusted.contains(client.peer.ip()) {
            forwarding::strip_client_forwarding(&mut headers, &site.config.pass_forwarding_headers);
        }
        if fill {
            headers::strip_conditionals(&mut headers);
            // As `Origin::send` will for a request without a body; removed here already so
            // that the Vary key sees what is sent.
            headers.remove(CONTENT_LENGTH);
            headers.remove(EXPECT);
        }
        // With `origin_host`, the origin is always told that name (the one in the key), never
        // the alias a visitor used.
        let forwarded_host = site
            .config
            .origin_host
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or(host);
        headers::add_forwarded(&mut headers, client.peer, forwarded_host, client.proto);
        headers.append(http::header::VIA, self.via.clone());
        let host_value = match &site.config.origin_host {
            Some(value) => Some(value.clone()),
            None => HeaderValue::from_str(host).ok(),
        };
        if let Some(value) = host_value {
            headers.insert(HOST, value);
        }
        // The origin client adds this to requests without one; written here so that a
        // `Vary: Accept` variant is keyed on the value the origin really saw.
        headers
            .entry(ACCEPT)
            .or_insert(HeaderValue::from_static("*/*"));
        headers
    }
}

/// An origin error response, kept whole when small so coalesced waiters get the same answer.
async fn shared_error(response: reqwest::Response, budget: &Arc<Budget>) -> Canned {
    let status = response.status();
    // Kept while waiters use it: own copies, not slices of the origin connection's buffer.
    let mut headers = crate::cache::footprint::compact_headers(response.headers());
    headers::strip_hop_by_hop(&mut headers);
    // Shared with every waiter: nothing meant for one visitor.
    headers.remove(SET_COOKIE);
    headers.remove(respond::CDN_CACHE_CONTROL);
    // Counted in the in-flight budget for as long as any waiter holds the body.
    let mut held = budget.charge(Owner::Shared);
    if response
        .content_length()
        .is_some_and(|len| len <= SHARED_ERROR_BODY && held.try_grow(len))
    {
        if let Ok(body) = response.bytes().await {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
            // An own copy (not a slice of the origin's read buffer) that gives the budget back
            // when the last waiter is done with it.
            let body = Bytes::from_owner(CountedBody {
                bytes: body.to_vec(),
                _held: held,
            });
            return Canned {
                status,
                headers,
                body,
            };
        }
    }
    Canned::error(status, "kagami: the origin server reported an error")
}

/// A body that keeps its claim on the in-flight budget while it lives.
struct CountedBody {
    bytes: Vec<u8>,
    _held: Charge,
}

impl AsRef<[u8]> for CountedBody {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}
