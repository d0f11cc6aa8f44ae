//! The request path, top to bottom: route by Host, choose cache or pass, look up, serve fresh or
//! stale, coalesce misses into one origin fetch, fall back to stale when the origin fails, and
//! label the response (`Cache-Status`, `Via`, access log).
//!
//! Caching must never break the relay to the client: every failure of the cache machinery ends
//! in a plain origin fetch or a clear error status, never a panic.

pub mod body;
mod fill;
mod headers;
pub mod respond;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::header::{
    HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_LOCATION, HOST, IF_MODIFIED_SINCE,
    IF_NONE_MATCH, LAST_MODIFIED, LOCATION,
};
use http::{request, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::cache::coalesce::{Coalescer, Leader, Role, Wait};
use crate::cache::control::{parse_cache_control, response_directives};
use crate::cache::key::primary_key;
use crate::cache::policy::{serve_while_revalidating, stale_on_error, storable, NotStorable};
use crate::cache::{CacheStatus, Entry, Lookup, MemoryStore, Phase, StoreSettings};
use crate::config::{Config, SiteConfig};
use crate::origin::{Origin, OriginError};
use crate::routing::Router;
use body::Body;
use fill::{relay, StoreJob};
use respond::{from_entry, Canned};

/// What a coalesced fetch ended with, as seen by the requests that waited for it.
#[derive(Clone)]
pub enum Outcome {
    Stored(Arc<Entry>),
    /// Not storable: each waiter fetches for itself.
    Uncacheable,
    /// The origin failed: waiters use a stale copy if they may, else this answer.
    Failed(Arc<Failure>),
}

/// An origin failure shared with coalesced waiters.
pub struct Failure {
    /// What to send a client that has no stale copy to fall back on.
    pub answer: Canned,
    /// The origin's status, when it answered at all (for `fwd-status`).
    pub origin_status: Option<StatusCode>,
}

/// A site at run time: its config, its origin client and its storage settings.
pub struct Site {
    pub config: SiteConfig,
    pub origin: Origin,
    settings: StoreSettings,
}

/// Who sent a request.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub peer: SocketAddr,
    pub proto: &'static str,
}

#[derive(Debug, thiserror::Error)]
#[error("site {site}: cannot build its origin client: {source}")]
pub struct BuildError {
    site: String,
    source: reqwest::Error,
}

pub struct Proxy {
    sites: Vec<Site>,
    router: Router,
    pub store: MemoryStore,
    coalescer: Coalescer<Outcome>,
    access_log: bool,
}

/// Origin status codes that count as failures (RFC 5861 §4).
fn is_failure(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

/// Largest origin error body shared with coalesced waiters; larger ones get a generic answer.
const SHARED_ERROR_BODY: u64 = 64 * 1024;

type Served = (Response<Body>, CacheStatus);

impl Proxy {
    pub fn new(config: &Config) -> Result<Proxy, BuildError> {
        let sites = config
            .sites
            .iter()
            .map(|c| {
                Ok(Site {
                    origin: Origin::new(c).map_err(|source| BuildError {
                        site: c.name.clone(),
                        source,
                    })?,
                    settings: StoreSettings::of(c),
                    config: c.clone(),
                })
            })
            .collect::<Result<Vec<_>, BuildError>>()?;
        Ok(Proxy {
            router: Router::new(sites.iter().map(|s| s.config.hosts.as_slice())),
            sites,
            store: MemoryStore::new(config.cache.memory),
            coalescer: Coalescer::default(),
            access_log: config.log.access,
        })
    }

    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    /// Handles one request from `client`.
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        client: Client,
    ) -> Response<Body> {
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let authority = authority_of(&request);

        let (mut response, status) = match authority.as_deref().map(|a| (a, self.router.route(a))) {
            None => refuse(
                StatusCode::BAD_REQUEST,
                "kagami: the request has no Host",
                &method,
            ),
            Some((host, None)) => refuse(
                StatusCode::MISDIRECTED_REQUEST,
                &format!("kagami: no site is configured for host {host:?}"),
                &method,
            ),
            Some((host, Some(index))) => {
                let host = host.to_string();
                self.serve(index, request, client, &host).await
            }
        };

        let headers = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&status.member()) {
            headers.append("cache-status", v);
        }
        headers::append_via(headers);
        if self.access_log {
            tracing::info!(
                target: "kagami::access",
                client = %client.peer.ip(),
                method = %method,
                host = authority.as_deref().unwrap_or("-"),
                path = %path,
                status = response.status().as_u16(),
                cache = status.phase.label(),
                bytes = response.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).unwrap_or("-"),
                ms = format_args!("{:.3}", started.elapsed().as_secs_f64() * 1000.0),
            );
        }
        response
    }

    async fn serve(
        self: &Arc<Self>,
        index: usize,
        request: Request<Incoming>,
        client: Client,
        host: &str,
    ) -> Served {
        let method = request.method().clone();
        match method {
            Method::GET | Method::HEAD if !request.headers().contains_key(AUTHORIZATION) => {
                let (parts, _) = request.into_parts();
                self.lookup(index, parts, client, host).await
            }
            Method::GET | Method::HEAD => self.pass(index, request, client, host, "bypass").await,
            Method::CONNECT | Method::TRACE => refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "kagami: method not allowed",
                &method,
            ),
            _ => self.pass(index, request, client, host, "method").await,
        }
    }

    /// GET/HEAD: answer from the cache when allowed, else fetch (coalesced).
    async fn lookup(
        self: &Arc<Self>,
        index: usize,
        parts: request::Parts,
        client: Client,
        host: &str,
    ) -> Served {
        let site = &self.sites[index];
        let key = primary_key(&site.config.name, path_and_query(&parts));
        let now = SystemTime::now();
        let (stale, phase) = match self.store.lookup(&key, &parts.headers) {
            Lookup::Found(entry) if entry.is_fresh(now) => {
                let status = CacheStatus::new(Phase::Hit).ttl(entry.ttl(now));
                return (from_entry(&entry, &parts, now), status);
            }
            Lookup::Found(entry) => {
                let staleness = entry.staleness(now);
                if serve_while_revalidating(&entry.stale, staleness) {
                    self.revalidate_in_background(index, key, &parts, client, host, entry.clone());
                    let status = CacheStatus::new(Phase::StaleHit)
                        .ttl(entry.ttl(now))
                        .detail("stale-while-revalidate");
                    return (from_entry(&entry, &parts, now), status);
                }
                if site.origin.health.is_failing() {
                    let reason = stale_on_error(
                        &entry.stale,
                        staleness,
                        request_sie(&parts),
                        site.config.grace,
                    );
                    if let Some(reason) = reason {
                        let status = CacheStatus::new(Phase::StaleHit)
                            .ttl(entry.ttl(now))
                            .detail(reason.as_str());
                        return (from_entry(&entry, &parts, now), status);
                    }
                }
                (Some(entry), Phase::Revalidated)
            }
            Lookup::VaryMiss => (None, Phase::VaryMiss),
            Lookup::Miss => (None, Phase::Miss),
        };
        self.fetch_coalesced(index, key, parts, client, host, stale, phase)
            .await
    }

    /// Joins or leads the fetch of `key`. Waiters are woken when the leader finishes.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_coalesced(
        self: &Arc<Self>,
        index: usize,
        key: String,
        parts: request::Parts,
        client: Client,
        host: &str,
        stale: Option<Arc<Entry>>,
        phase: Phase,
    ) -> Served {
        let site = &self.sites[index];
        // Two rounds at most: a leader that vanished gets one replacement, then we fetch alone.
        for _ in 0..2 {
            match self.coalescer.join(&key) {
                Role::Leader(leader) => {
                    // Another leader may have stored the page between our lookup and now.
                    if let Lookup::Found(entry) = self.store.lookup(&key, &parts.headers) {
                        let now = SystemTime::now();
                        if entry.is_fresh(now)
                            && stale.as_ref().is_none_or(|s| !Arc::ptr_eq(s, &entry))
                        {
                            drop(leader);
                            let status = CacheStatus::new(Phase::Hit)
                                .ttl(entry.ttl(now))
                                .collapsed(true);
                            return (from_entry(&entry, &parts, now), status);
                        }
                    }
                    return self
                        .fetch(index, key, &parts, client, host, stale, phase, Some(leader))
                        .await;
                }
                Role::Waiter(waiter) => match waiter.wait(site.config.coalesce_timeout).await {
                    Wait::Done(Outcome::Stored(entry)) if entry.matches(&parts.headers) => {
                        let now = SystemTime::now();
                        let status = CacheStatus::new(phase)
                            .fwd_status(entry.status.as_u16())
                            .ttl(entry.ttl(now))
                            .collapsed(true);
                        return (from_entry(&entry, &parts, now), status);
                    }
                    Wait::Done(Outcome::Stored(_)) => {}
                    Wait::Done(Outcome::Uncacheable) => break,
                    Wait::Done(Outcome::Failed(failure)) => {
                        if let Some(served) =
                            self.stale_after_failure(index, &stale, &parts, failure.origin_status)
                        {
                            return (served.0, served.1.collapsed(true));
                        }
                        let mut status = CacheStatus::new(Phase::Error)
                            .fwd(fwd_of(phase))
                            .collapsed(true);
                        if let Some(s) = failure.origin_status {
                            status = status.fwd_status(s.as_u16());
                        }
                        return (failure.answer.response(&parts.method), status);
                    }
                    Wait::Abandoned | Wait::TimedOut => {
                        if let Some(served) = self.stale_after_failure(index, &stale, &parts, None)
                        {
                            return (served.0, served.1.collapsed(true));
                        }
                    }
                },
            }
        }
        self.fetch(index, key, &parts, client, host, stale, phase, None)
            .await
    }

    /// Serves a stale copy after an origin failure, if stale-if-error or grace allows it.
    fn stale_after_failure(
        &self,
        index: usize,
        stale: &Option<Arc<Entry>>,
        parts: &request::Parts,
        origin_status: Option<StatusCode>,
    ) -> Option<Served> {
        let entry = stale.as_ref()?;
        let now = SystemTime::now();
        let grace = self.sites[index].config.grace;
        let reason = stale_on_error(
            &entry.stale,
            entry.staleness(now),
            request_sie(parts),
            grace,
        )?;
        let mut status = CacheStatus::new(Phase::StaleOnError)
            .ttl(entry.ttl(now))
            .detail(reason.as_str());
        if let Some(s) = origin_status {
            status = status.fwd_status(s.as_u16());
        }
        Some((from_entry(entry, parts, now), status))
    }

    /// Fetches `key` from the origin (conditionally when a stale copy has validators), stores
    /// what may be stored, and answers the client. With `leader`, the outcome is published to
    /// the requests waiting on it.
    #[allow(clippy::too_many_arguments)]
    async fn fetch(
        &self,
        index: usize,
        key: String,
        parts: &request::Parts,
        client: Client,
        host: &str,
        stale: Option<Arc<Entry>>,
        phase: Phase,
        leader: Option<Leader<Outcome>>,
    ) -> Served {
        let site = &self.sites[index];
        let mut headers = parts.headers.clone();
        headers::strip_conditionals(&mut headers);
        self.prepare_origin_headers(site, &mut headers, client, host);
        if let Some(entry) = &stale {
            if let Some(etag) = entry.headers.get(http::header::ETAG) {
                headers.insert(IF_NONE_MATCH, etag.clone());
            }
            if let Some(modified) = entry.headers.get(LAST_MODIFIED) {
                headers.insert(IF_MODIFIED_SINCE, modified.clone());
            }
        }
        let request_time = SystemTime::now();
        // HEAD is filled with GET, so the stored copy can answer both.
        let result = site
            .origin
            .send(Method::GET, path_and_query(parts), headers, None)
            .await;
        let response_time = SystemTime::now();

        let response = match result {
            Ok(response) if !is_failure(response.status()) => response,
            failed => {
                site.origin
                    .health
                    .record_failure(site.config.failure_backoff);
                let failure = Arc::new(match failed {
                    Err(err) => {
                        tracing::warn!(site = %site.config.name, error = %err, "origin fetch failed");
                        Failure {
                            answer: origin_error_answer(&err),
                            origin_status: None,
                        }
                    }
                    Ok(response) => Failure {
                        origin_status: Some(response.status()),
                        answer: shared_error(response).await,
                    },
                });
                let origin_status = failure.origin_status;
                if let Some(leader) = leader {
                    leader.finish(Outcome::Failed(failure.clone()));
                }
                if let Some(served) = self.stale_after_failure(index, &stale, parts, origin_status)
                {
                    return served;
                }
                let mut status = CacheStatus::new(Phase::Error).fwd(fwd_of(phase));
                if let Some(s) = origin_status {
                    status = status.fwd_status(s.as_u16());
                }
                return (failure.answer.response(&parts.method), status);
            }
        };
        site.origin.health.record_success();
        let status = response.status();

        if status == StatusCode::NOT_MODIFIED {
            if let Some(entry) = &stale {
                let refreshed = Arc::new(entry.refreshed(
                    response.headers(),
                    request_time,
                    response_time,
                    &site.settings,
                ));
                self.store.insert(key, refreshed.clone());
                if let Some(leader) = leader {
                    leader.finish(Outcome::Stored(refreshed.clone()));
                }
                let now = SystemTime::now();
                let cache_status = CacheStatus::new(Phase::Revalidated)
                    .fwd_status(304)
                    .ttl(refreshed.ttl(now))
                    .stored(true);
                return (from_entry(&refreshed, parts, now), cache_status);
            }
        }

        let mut response_headers = response.headers().clone();
        headers::strip_hop_by_hop(&mut response_headers);
        let directives = response_directives(&response_headers);
        let mut verdict = storable(
            &Method::GET,
            &parts.headers,
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
        let mut cache_status = CacheStatus::new(phase).fwd_status(status.as_u16());
        let (job, leader) = match verdict {
            Ok(()) => {
                cache_status = cache_status.stored(true);
                let job = StoreJob {
                    store: self.store.clone(),
                    key,
                    status,
                    headers: response_headers.clone(),
                    request_headers: parts.headers.clone(),
                    request_time,
                    response_time,
                    settings: site.settings,
                    max_size: site.config.max_object_size,
                };
                (Some(job), leader)
            }
            Err(reason) => {
                cache_status = cache_status.detail(reason.as_str());
                if stale.is_some() {
                    // The origin's current answer may not be stored: the old copy is outdated.
                    self.store.invalidate(&key);
                }
                if let Some(leader) = leader {
                    leader.finish(Outcome::Uncacheable);
                }
                (None, None)
            }
        };
        let body = relay(response, job, leader, parts.method != Method::HEAD);
        (respond::build(status, response_headers, body), cache_status)
    }

    /// stale-while-revalidate: one background fetch per key; errors never touch the stored copy.
    fn revalidate_in_background(
        self: &Arc<Self>,
        index: usize,
        key: String,
        parts: &request::Parts,
        client: Client,
        host: &str,
        stale: Arc<Entry>,
    ) {
        let Some(leader) = self.coalescer.try_lead(&key) else {
            return;
        };
        let proxy = self.clone();
        let mut parts = head_copy(parts);
        parts.method = Method::GET;
        let host = host.to_string();
        tokio::spawn(async move {
            let (response, _) = proxy
                .fetch(
                    index,
                    key,
                    &parts,
                    client,
                    &host,
                    Some(stale),
                    Phase::Revalidated,
                    Some(leader),
                )
                .await;
            // The body task keeps storing without a reader.
            drop(response);
        });
    }

    /// Non-cacheable requests: relayed to the origin as they are. A successful unsafe method
    /// invalidates the stored target URI and same-site Location / Content-Location (RFC 9111 §4.4).
    async fn pass(
        &self,
        index: usize,
        request: Request<Incoming>,
        client: Client,
        host: &str,
        reason: &'static str,
    ) -> Served {
        let site = &self.sites[index];
        let (parts, incoming) = request.into_parts();
        let mut headers = parts.headers.clone();
        self.prepare_origin_headers(site, &mut headers, client, host);
        let body = match parts.method {
            Method::GET | Method::HEAD => None,
            _ => Some(reqwest::Body::wrap(incoming)),
        };
        let cache_status = CacheStatus::new(Phase::Pass).fwd(reason);
        let response = match site
            .origin
            .send(parts.method.clone(), path_and_query(&parts), headers, body)
            .await
        {
            Ok(response) => response,
            Err(err) => {
                tracing::warn!(site = %site.config.name, error = %err, "origin request failed");
                return (
                    origin_error_answer(&err).response(&parts.method),
                    cache_status,
                );
            }
        };
        let status = response.status();
        let unsafe_method = !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        if unsafe_method && (status.is_success() || status.is_redirection()) {
            self.invalidate_after_unsafe(index, &parts, host, response.headers());
        }
        let mut response_headers = response.headers().clone();
        headers::strip_hop_by_hop(&mut response_headers);
        let body = relay(response, None, None, parts.method != Method::HEAD);
        (
            respond::build(status, response_headers, body),
            cache_status.fwd_status(status.as_u16()),
        )
    }

    fn invalidate_after_unsafe(
        &self,
        index: usize,
        parts: &request::Parts,
        host: &str,
        response: &http::HeaderMap,
    ) {
        let name = &self.sites[index].config.name;
        self.store
            .invalidate(&primary_key(name, path_and_query(parts)));
        for field in [LOCATION, CONTENT_LOCATION] {
            let Some(target) = response.get(field).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            let Ok(uri) = target.parse::<http::Uri>() else {
                continue;
            };
            // Only URIs of the same origin may be invalidated (RFC 9111 §4.4).
            let same_origin = match uri.authority() {
                None => true,
                Some(a) => a.as_str().eq_ignore_ascii_case(host),
            };
            if same_origin && (uri.authority().is_some() || target.starts_with('/')) {
                let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
                self.store.invalidate(&primary_key(name, pq));
            }
        }
    }

    /// Hop-by-hop fields out; Host, Forwarded / X-Forwarded-* and Via in.
    fn prepare_origin_headers(
        &self,
        site: &Site,
        headers: &mut http::HeaderMap,
        client: Client,
        host: &str,
    ) {
        headers::strip_hop_by_hop(headers);
        headers::add_forwarded(headers, client.peer, host, client.proto);
        headers::append_via(headers);
        let host_value = match &site.config.origin_host {
            Some(value) => Some(value.clone()),
            None => HeaderValue::from_str(host).ok(),
        };
        if let Some(value) = host_value {
            headers.insert(HOST, value);
        }
    }
}

/// The request's authority: the URI's (absolute form, HTTP/2 :authority), else `Host`.
fn authority_of<B>(request: &Request<B>) -> Option<String> {
    if let Some(authority) = request.uri().authority() {
        return Some(authority.as_str().to_string());
    }
    // Two Host lines: which one counts is exactly what cache-poisoning attacks play on.
    let mut hosts = request.headers().get_all(HOST).iter();
    let host = hosts.next()?;
    if hosts.next().is_some() {
        return None;
    }
    host.to_str()
        .ok()
        .filter(|h| !h.trim().is_empty())
        .map(|h| h.trim().to_string())
}

fn path_and_query(parts: &request::Parts) -> &str {
    parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
}

/// A client's own `Cache-Control: stale-if-error=N` (RFC 5861 §4).
fn request_sie(parts: &request::Parts) -> Option<Duration> {
    parse_cache_control(&parts.headers)
        .stale_if_error
        .map(Duration::from_secs)
}

fn fwd_of(phase: Phase) -> &'static str {
    CacheStatus::new(phase).fwd.unwrap_or("miss")
}

fn refuse(status: StatusCode, text: &str, method: &Method) -> Served {
    (
        Canned::error(status, text).response(method),
        CacheStatus::new(Phase::Error),
    )
}

/// Kagami's own answer when the origin could not be reached at all.
fn origin_error_answer(err: &OriginError) -> Canned {
    match err {
        OriginError::Timeout(_) => Canned::error(
            StatusCode::GATEWAY_TIMEOUT,
            "kagami: the origin server did not answer in time",
        ),
        _ => Canned::error(
            StatusCode::BAD_GATEWAY,
            "kagami: the origin server cannot be reached",
        ),
    }
}

/// An origin error response, kept whole when small so coalesced waiters get the same answer.
async fn shared_error(response: reqwest::Response) -> Canned {
    let status = response.status();
    let mut headers = response.headers().clone();
    headers::strip_hop_by_hop(&mut headers);
    if response
        .content_length()
        .is_some_and(|len| len <= SHARED_ERROR_BODY)
    {
        if let Ok(body) = response.bytes().await {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
            return Canned {
                status,
                headers,
                body,
            };
        }
    }
    Canned::error(status, "kagami: the origin server reported an error")
}

/// An owned copy of a request head (without extensions), for work that outlives the request.
fn head_copy(parts: &request::Parts) -> request::Parts {
    let (mut copy, ()) = Request::new(()).into_parts();
    copy.method = parts.method.clone();
    copy.uri = parts.uri.clone();
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy
}
