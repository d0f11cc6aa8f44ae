//! The request path, top to bottom: the front door (`front`: global caps, Host and target
//! normalised once, routing, the response's labels), the lookup with the request borrowed
//! (`lookup`: rate limits, choose cache or pass, look up, serve fresh or stale), then here:
//! coalesce misses into one origin fetch (`forward`), and fall back to stale when the origin
//! fails.
//!
//! Caching must never break the relay to the client: every failure of the cache machinery ends
//! in a plain origin fetch or a clear error status, never a panic.

mod access;
pub mod body;
mod budget;
mod cut;
mod drain;
mod fill;
mod forward;
pub mod forwarding;
mod front;
mod headers;
mod lookup;
mod patience;
mod purge;
pub use purge::{site_of_key, Purge, PurgeError};
mod reload;
pub use reload::BuildError;
pub mod respond;
mod tls;
mod whole;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{request, HeaderMap, Method, Request, Response, StatusCode};
use tokio::task::AbortHandle;

use crate::cache::coalesce::{Coalescer, Leader, Role, Wait};
use crate::cache::control::parse_cache_control;
use crate::cache::key::primary_key;
use crate::cache::policy::{stale_on_error, Grace};
use crate::cache::{CacheStatus, Entry, Lookup, MemoryStore, Phase, StoreSettings};
use crate::config::{Config, SiteConfig};
use crate::limit::{Limiter, TrustedProxies};
use crate::metrics::site::SiteMetrics;
use crate::metrics::Stats;
use crate::origin::{Origin, Slot};
use crate::routing::Router;
use body::Body;
pub use drain::shutting_down;
use front::{default_port, refuse};
use respond::{from_entry, Canned};

/// What a coalesced fetch ended with, as seen by the requests that waited for it.
#[derive(Clone)]
pub enum Outcome {
    Stored(Arc<Entry>),
    /// Not storable: each waiter fetches for itself.
    Uncacheable,
    /// The origin failed: waiters use a stale copy if they may, else this answer.
    Failed(Arc<Failure>),
    /// The origin cut the body short (`cut`): waiters use a stale copy if they may; else one
    /// of them retries, unless this fetch was the retry already.
    Cut {
        retried: bool,
    },
}

/// An origin failure shared with coalesced waiters.
pub struct Failure {
    /// What to send a client that has no stale copy to fall back on; for waiters, it is
    /// Kagami's own error page when the origin's answer may not be shared.
    pub answer: Canned,
    /// The origin's own answer, for the visitor whose request got it only (when it is not
    /// shareable: `private`, `no-store`, a cookie, or an answer to a request with credentials).
    pub own: Option<Canned>,
    /// The origin's status, when it answered at all (for `fwd-status`).
    pub origin_status: Option<StatusCode>,
    /// Why, for Cache-Status.
    pub detail: &'static str,
}

/// A site at run time: its config, origins, limits and storage settings.
pub struct Site {
    pub config: SiteConfig,
    pub origin: Arc<Origin>,
    settings: StoreSettings,
    /// Shared with the proxy a reload builds when the rate stays the same, so that a reload
    /// does not hand every client a fresh budget.
    hits: Option<Arc<Limiter>>,
    misses: Option<Arc<Limiter>>,
    /// The origin's active health checks: handed over with the origin on a reload, aborted
    /// when the site goes or changes (see `reload`).
    health: std::sync::Mutex<Vec<AbortHandle>>,
    /// Answers over the last minute, for `/status` (kept across reloads).
    pub window: Arc<crate::metrics::window::Window>,
    /// This site's `/metrics` counters, bumped by the front door (`front`); kept across
    /// reloads, so counters never go backwards while the process runs.
    pub metrics: Arc<SiteMetrics>,
}

/// Who sent a request. Kept small (it is moved through every level of the request path).
#[derive(Debug, Clone)]
pub struct Client {
    pub peer: SocketAddr,
    pub proto: &'static str,
    /// The TLS server name the connection was opened for (HTTPS only).
    pub sni: Option<crate::tls::SniName>,
    /// The port of the listener the request came in on: a Host naming it means the same page as
    /// a Host naming no port (`Authority::normalised_on`).
    pub local_port: u16,
}

/// One GET/HEAD on its way through the cache: owned, so background work can keep it.
struct Req {
    site: usize,
    parts: request::Parts,
    /// The header fields a fill sends the origin (see `Proxy::origin_headers`), computed once
    /// when first needed (`Proxy::sent`): the Vary match on lookup, the stored variant and the
    /// origin request all use this map, so a variant is keyed on exactly what the origin was
    /// sent. A hit on a page without `Vary` never needs it.
    sent: OnceLock<HeaderMap>,
    client: Client,
    host: String,
    /// The rate-limit key of the client.
    ip: IpAddr,
}

pub struct Proxy {
    sites: Vec<Site>,
    router: Router,
    pub store: MemoryStore,
    pub stats: Arc<Stats>,
    /// Body bytes held in flight (`cache.inflight_memory`), see `budget`.
    budget: Arc<budget::Budget>,
    /// How long a client may take nothing of a large stored answer whose entry is gone before
    /// the buffer is let go (see `body::Held`): the idle timeout.
    held_stall: Duration,
    coalescer: Coalescer<Outcome>,
    trusted: TrustedProxies,
    page_429: bytes::Bytes,
    access_log: bool,
    max_in_flight: usize,
    max_request_body: u64,
    /// Shared with reloaded proxies: requests still running on an old one count too.
    in_flight: Arc<AtomicUsize>,
    /// The Via hop this process adds towards origins (see `headers::origin_via`).
    via: HeaderValue,
    loop_logged: crate::metrics::Every,
    /// `/metrics` counters of requests no site took (`metrics::site::NO_SITE`).
    pub unrouted: Arc<SiteMetrics>,
    /// ACME HTTP-01 answers the plain listeners give before routing, and which ACME sites
    /// have their certificate yet (`tls::acme`).
    pub acme: Arc<crate::tls::acme::AcmeState>,
}

type Served = (Response<Body>, CacheStatus);

impl Proxy {
    /// Builds the proxy; must run inside a tokio runtime (health checks start here).
    pub fn new(config: &Config) -> Result<Proxy, BuildError> {
        reload::build(config, None)
    }

    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    /// Charges a request that will reach the origin to the client's origin budget. Over it, a
    /// stale copy is still better than a refusal.
    fn charge_miss(&self, req: &Req, stale: &Option<Arc<Entry>>) -> Option<Served> {
        let wait = check(&self.sites[req.site].misses, req.ip).err()?;
        Some(
            self.stale_after_failure(req, stale, None)
                .unwrap_or_else(|| self.too_many(wait, &req.parts.method)),
        )
    }

    /// Joins or leads the fetch of `key`. Waiters are woken when the leader finishes.
    async fn fetch_coalesced(
        self: &Arc<Self>,
        req: Req,
        key: String,
        stale: Option<Arc<Entry>>,
        phase: Phase,
    ) -> Served {
        let site = &self.sites[req.site];
        // Two rounds at most: a leader that vanished gets one replacement, then we fetch alone.
        // A leader whose body was cut gets one retry, then its waiters share the failure.
        let mut retry = false;
        for round in 0..2 {
            match self.coalescer.join(&key) {
                Role::Leader(mut leader) => {
                    if retry {
                        leader.set_retry();
                    }
                    // Another leader may have stored the page between our lookup and now.
                    if let Lookup::Found(entry) = self.store.lookup_with(&key, || self.sent(&req)) {
                        let now = SystemTime::now();
                        if entry.serves_fresh(now)
                            && stale.as_ref().is_none_or(|s| !Arc::ptr_eq(s, &entry))
                        {
                            drop(leader);
                            let status = CacheStatus::new(Phase::Hit)
                                .ttl(entry.ttl(now))
                                .collapsed(true);
                            return (
                                from_entry(&entry, &req.parts.method, &req.parts.headers, now),
                                status,
                            );
                        }
                    }
                    if let Some(refused) = self.charge_miss(&req, &stale) {
                        return refused;
                    }
                    return self
                        .fetch(&req, key, stale, phase, Some(leader), None)
                        .await;
                }
                Role::Waiter(waiter) => {
                    // A waiter costs the origin nothing, so it spends the cheap budget.
                    if let Err(wait) = check(&site.hits, req.ip) {
                        return self.too_many(wait, &req.parts.method);
                    }
                    match waiter.wait(site.config.coalesce_timeout).await {
                        // Only a shareable copy goes to the waiters; another one may be the
                        // leader's visitor's own page, so each waiter fetches for itself.
                        Wait::Done(Outcome::Stored(entry))
                            if entry.shared && entry.matches(self.sent(&req)) =>
                        {
                            let now = SystemTime::now();
                            let status = CacheStatus::new(phase)
                                .fwd_status(entry.status.as_u16())
                                .ttl(entry.ttl(now))
                                .collapsed(true);
                            return (
                                from_entry(&entry, &req.parts.method, &req.parts.headers, now),
                                status,
                            );
                        }
                        Wait::Done(Outcome::Stored(_)) => {}
                        Wait::Done(Outcome::Uncacheable) => break,
                        Wait::Done(Outcome::Failed(failure)) => {
                            if let Some((response, status)) =
                                self.stale_after_failure(&req, &stale, failure.origin_status)
                            {
                                return (response, status.collapsed(true));
                            }
                            return self.failed(&req, phase, &failure, true);
                        }
                        Wait::Done(Outcome::Cut { retried }) => {
                            let spent = retried || round > 0;
                            if let Some(served) = self.after_cut(&req, &stale, phase, spent) {
                                return served;
                            }
                            retry = true;
                        }
                        Wait::Abandoned | Wait::TimedOut => {
                            if let Some((response, status)) =
                                self.stale_after_failure(&req, &stale, None)
                            {
                                return (response, status.collapsed(true));
                            }
                        }
                    }
                }
            }
        }
        if let Some(refused) = self.charge_miss(&req, &stale) {
            return refused;
        }
        self.fetch(&req, key, stale, phase, None, None).await
    }

    /// Serves a stale copy after an origin failure, if stale-if-error or grace allows it.
    fn stale_after_failure(
        &self,
        req: &Req,
        stale: &Option<Arc<Entry>>,
        origin_status: Option<StatusCode>,
    ) -> Option<Served> {
        // Never a copy that may be somebody else's page, nor a stored error.
        let entry = stale.as_ref().filter(|e| e.may_serve_stale())?;
        let now = SystemTime::now();
        let grace = self.sites[req.site].grace();
        let reason = stale_on_error(
            &entry.stale,
            entry.staleness(now),
            request_sie(&req.parts.headers),
            grace,
        )?;
        let mut status = CacheStatus::new(Phase::StaleOnError)
            .ttl(entry.ttl(now))
            .detail(reason.as_str());
        if let Some(s) = origin_status {
            status = status.fwd_status(s.as_u16());
        }
        Some((
            from_entry(entry, &req.parts.method, &req.parts.headers, now),
            status,
        ))
    }

    /// The answer when the origin failed and no stale copy may be served.
    fn failed(&self, req: &Req, phase: Phase, failure: &Failure, collapsed: bool) -> Served {
        let mut status = CacheStatus::new(Phase::Error)
            .fwd(fwd_of(phase))
            .detail(failure.detail)
            .collapsed(collapsed);
        let answer = match &failure.own {
            Some(own) if !collapsed => own,
            _ => &failure.answer,
        };
        let mut response = answer.response(&req.parts.method);
        match failure.origin_status {
            Some(s) => status = status.fwd_status(s.as_u16()),
            None => {
                self.stats.add(&self.stats.emergency_pages);
                // A stored copy existed but may not be served stale (must-revalidate and no
                // grace): RFC 9111 §5.2.2.2 asks for 504.
                if phase == Phase::Revalidated {
                    *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
                }
            }
        }
        (response, status)
    }

    /// Revalidates `key` for nobody in particular (stale-while-revalidate, `origin_patience`):
    /// the body task keeps storing without a reader, and errors never touch the stored copy.
    async fn refresh(
        self: Arc<Self>,
        req: Req,
        key: String,
        stale: Arc<Entry>,
        leader: Leader<Outcome>,
        permit: Slot,
    ) {
        let (response, _) = self
            .fetch(
                &req,
                key,
                Some(stale),
                Phase::Revalidated,
                Some(leader),
                Some(permit),
            )
            .await;
        drop(response);
    }

    /// 429 with Retry-After and the configured page.
    fn too_many(&self, wait: Duration, method: &Method) -> Served {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from(wait.as_secs_f64().ceil().max(1.0) as u64),
        );
        headers.insert(CONTENT_LENGTH, HeaderValue::from(self.page_429.len()));
        let canned = Canned {
            status: StatusCode::TOO_MANY_REQUESTS,
            headers,
            body: self.page_429.clone(),
        };
        (
            canned.response(method),
            CacheStatus::new(Phase::Limited).detail("rate-limited"),
        )
    }
}

impl Proxy {
    /// The header fields a fill of `req` sends the origin, built on first use.
    fn sent<'r>(&self, req: &'r Req) -> &'r HeaderMap {
        req.sent.get_or_init(|| {
            let site = &self.sites[req.site];
            self.origin_headers(site, &req.parts.headers, &req.client, &req.host, true)
        })
    }
}

impl Req {
    /// An owned copy as `method`, for work that outlives this request (a background refresh
    /// is a GET).
    fn copy_as(&self, method: Method) -> Req {
        let p = &self.parts;
        let mut parts = head_copy(&p.method, &p.uri, p.version, &p.headers);
        parts.method = method;
        Req {
            site: self.site,
            parts,
            sent: self.sent.clone(),
            client: self.client.clone(),
            host: self.host.clone(),
            ip: self.ip,
        }
    }
}

impl Site {
    fn grace(&self) -> Grace {
        Grace {
            window: self.config.grace,
            strict: self.config.strict,
        }
    }

    /// The cache key for a canonical target (`routing::target`) requested as `host` (the
    /// normalised authority, `routing::Authority::normalised`). The host is part of the key
    /// unless the origin is always sent the same Host: otherwise one site's hostnames (and every
    /// name a wildcard matches) could be answered with another's pages.
    pub fn key(&self, host: &str, target: &str) -> String {
        primary_key(&self.config.name, self.key_host(host), target)
    }

    /// The host part of this site's keys: none when the origin is always sent the same Host.
    fn key_host<'h>(&self, host: &'h str) -> &'h str {
        match self.config.origin_host {
            Some(_) => "",
            None => host,
        }
    }
}

fn check(limiter: &Option<Arc<Limiter>>, ip: IpAddr) -> Result<(), Duration> {
    limiter.as_ref().map_or(Ok(()), |l| l.check(ip))
}

fn path_and_query(parts: &request::Parts) -> &str {
    parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
}

/// A client's own `Cache-Control: stale-if-error=N` (RFC 5861 §4).
fn request_sie(headers: &HeaderMap) -> Option<Duration> {
    parse_cache_control(headers)
        .stale_if_error
        .map(Duration::from_secs)
}

fn fwd_of(phase: Phase) -> &'static str {
    CacheStatus::new(phase).fwd.unwrap_or("miss")
}

/// An owned copy of a request head (without extensions), for work that outlives the request.
fn head_copy(
    method: &Method,
    uri: &http::Uri,
    version: http::Version,
    headers: &HeaderMap,
) -> request::Parts {
    let (mut copy, ()) = Request::new(()).into_parts();
    copy.method = method.clone();
    copy.uri = uri.clone();
    copy.version = version;
    // Own copies: the client's values are slices of its connection's read buffer.
    copy.headers = crate::cache::footprint::compact_headers(headers);
    copy
}
#[cfg(test)]
mod future_size;
