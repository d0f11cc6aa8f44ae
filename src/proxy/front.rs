//! The front door of the request path: the global in-flight cap, request-loop detection, the
//! Host and request target validated and normalised once, routing to a site, and the label
//! every response leaves with (`Cache-Status`, `Via`, the access log). What is behind the door
//! (`Proxy::serve` onwards) only ever sees the normalised values.

use std::borrow::Cow;
use std::future::{ready, Ready};
use std::net::IpAddr;
use std::ops::Deref;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, Either};
use http::header::{HeaderValue, CONTENT_LENGTH, HOST, RETRY_AFTER};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::body::Body;
use super::respond::{self, Canned};
use super::{access, budget, headers, tls, Client, Proxy, Served, Step};

/// The Cache-Status field (RFC 9211), named once: a name made from a string is parsed again
/// on every use.
const CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("cache-status");
use crate::cache::{CacheStatus, Phase};
use crate::limit::{client_ip, limit_key};
use crate::routing::{target, Authority};

/// A request's answer: ready at once (a hit, a refusal), or the fetch or pass still to run.
pub type Handling = Either<Ready<Response<Body>>, BoxFuture<'static, Response<Body>>>;

/// What the answer's label and the access log need from the request, kept while it is served.
struct Opened {
    started: Instant,
    /// The path and host for the access log (only when it is on).
    logged: Option<(String, Option<String>)>,
    method: Method,
    peer: IpAddr,
    owner: budget::Owner,
}

impl Proxy {
    /// Handles one request from `client`. Not an `async fn`: everything up to the answer of a
    /// hit runs here, in hyper's call of the service, so the request (whose header values are
    /// slices of the connection's read buffer) is gone before hyper reads the connection again.
    /// Held in a future instead, it made hyper allocate a fresh 8 KiB read buffer per request
    /// (the old one was still shared), and hyper moved that kilobytes-large future into place.
    ///
    /// The proxy and the client are borrowed: a hit needs no handle of its own on either (the
    /// connection holds both), only work that outlives this call clones them.
    pub fn handle(self: &Arc<Self>, request: Request<Incoming>, client: &Client) -> Handling {
        let started = Instant::now();
        let method = request.method().clone();
        let authority = RawAuthority::of(&request);
        let authority = authority.as_ref().and_then(RawAuthority::as_str);
        // Only the access log needs the path and host; the hit path should not pay for them.
        let logged = self.access_log.then(|| {
            (
                crate::log_text::clip(request.uri().path()),
                authority.map(crate::log_text::clip),
            )
        });
        let ip = limit_key(client_ip(
            client.peer.ip(),
            request.headers(),
            &self.trusted,
        ));
        let opened = Opened {
            started,
            logged,
            method,
            peer: client.peer.ip(),
            owner: budget::Owner::Client(ip),
        };

        let guard = self.enter();
        let (step, site) = match guard {
            None => {
                self.stats.add(&self.stats.overloaded);
                (Step::Done(overloaded(&opened.method)), None)
            }
            Some(_) if headers::looped(request.headers(), &self.via) => {
                // Once a minute is enough to tell staff; a loop (or a forged header) repeats fast.
                if self.loop_logged.every(Duration::from_secs(60)) {
                    tracing::error!(
                        host = authority.unwrap_or("-"),
                        "request loop: a site's origin points back at this Kagami; configure \
                         the origin by IP address or an internal name, not the public one"
                    );
                }
                let refused = refuse(
                    StatusCode::LOOP_DETECTED,
                    "kagami: request loop (an origin points back at Kagami)",
                    &opened.method,
                );
                (Step::Done(refused), None)
            }
            Some(_) => self.admit(request, client, authority, ip),
        };
        match step {
            Step::Done(served) => {
                drop(guard);
                Either::Left(ready(self.answered(served, site, opened)))
            }
            Step::Later(pending) => {
                // The admission is held until the answer is ready, as before.
                let guard = guard.map(|g| g.owned(self.clone()));
                let proxy = self.clone();
                Either::Right(Box::pin(async move {
                    let served = pending.await;
                    drop(guard);
                    proxy.answered(served, site, opened)
                }))
            }
        }
    }

    /// Counts an answer and gives it its labels (`Cache-Status`, `Via`) and its access log line.
    fn answered(&self, served: Served, site: Option<usize>, opened: Opened) -> Response<Body> {
        let (response, status) = served;
        self.stats.record(status.phase, status.collapsed);
        let metrics = site.map_or(&self.unrouted, |index| &self.sites[index].metrics);
        // One clock read for both: the latency and the `/status` second.
        let answered = Instant::now();
        metrics.record(
            response.status(),
            &status,
            answered.saturating_duration_since(opened.started),
        );
        if let Some(index) = site {
            // The last minute, for `/status`.
            self.sites[index].window.record_answered(answered, &status);
        }
        // A large body that shares a stored entry's buffer must not pin it uncounted once the
        // entry is evicted (see `body::Held`).
        let mut response =
            response.map(|body| body.guarded(&self.budget, opened.owner, self.held_stall));
        let headers = response.headers_mut();
        // Purge tags stay stored but are the origin's business only (see `cache::tags`).
        crate::cache::tags::strip(headers);
        if let Some(v) = status.header_value() {
            headers.append(CACHE_STATUS, v);
        }
        headers::append_via(headers);
        if let Some((path, host)) = opened.logged {
            let line = access::Line {
                started: opened.started,
                client: opened.peer,
                method: opened.method,
                host,
                path,
                status: response.status(),
                cache: status,
            };
            response = response
                .map(|body| Body::Logged(Box::new(access::Logged::new(body, &metrics.name, line))));
        }
        response
    }

    /// Validates and normalises the request's authority and target once, routes it, and
    /// serves it. Everything after this uses only the normalised values, so the cache key, the
    /// origin's `Host` and the origin's request target always agree.
    fn admit(
        self: &Arc<Self>,
        mut request: Request<Incoming>,
        client: &Client,
        authority: Option<&str>,
        ip: IpAddr,
    ) -> (Step, Option<usize>) {
        let method = request.method().clone();
        // Before the Host is even looked at: the CA may name the site in any form.
        if let Some(answer) = tls::acme_challenge(&self.acme, client, &request, authority) {
            return (Step::Done(answer), None);
        }
        let Some(authority) = authority.and_then(|a| Authority::parse_remembered(a).ok()) else {
            let refused = refuse(
                StatusCode::BAD_REQUEST,
                "kagami: the request needs exactly one valid Host",
                &method,
            );
            return (Step::Done(refused), None);
        };
        if let Some(refused) = tls::misdirected(client, &authority, &method) {
            return (Step::Done(refused), None);
        }
        let default_port = default_port(client.proto);
        let Some(index) = self.router.route(&authority, default_port) else {
            let refused = refuse(
                StatusCode::MISDIRECTED_REQUEST,
                &format!(
                    "kagami: no site is configured for host {:?}",
                    authority.to_string()
                ),
                &method,
            );
            return (Step::Done(refused), None);
        };
        let raw_target = request.uri().path_and_query().map_or("/", |p| p.as_str());
        if raw_target == "*" {
            return (Step::Done(asterisk(&method)), Some(index));
        }
        let canonical = match target::canonical(raw_target) {
            // Nearly always: the target is canonical already.
            Ok(Cow::Borrowed(_)) => None,
            Ok(Cow::Owned(t)) => Some(http::Uri::try_from(t).ok()),
            Err(_) => Some(None),
        };
        match canonical {
            None => {}
            Some(Some(uri)) => *request.uri_mut() = uri,
            Some(None) => {
                let refused = refuse(
                    StatusCode::BAD_REQUEST,
                    "kagami: the request target must be an absolute path, with % followed by two hex digits",
                    &method,
                );
                return (Step::Done(refused), Some(index));
            }
        }
        let site = &self.sites[index].config;
        // An ACME site is redirected only once it has a certificate to be redirected to.
        let secure = !site.tls.acme || self.acme.has_certificate(&site.name);
        if let Some(redirect) = secure
            .then(|| tls::redirect(site, client, &authority, request.uri(), &method))
            .flatten()
        {
            return (Step::Done(redirect), Some(index));
        }
        let host = authority.into_normalised_on(default_port, client.local_port);
        let step = match self.serve(index, request, client, host, ip) {
            Step::Done(mut served) => {
                tls::add_hsts(&self.sites[index].config, client, &mut served.0);
                Step::Done(served)
            }
            Step::Later(pending) => {
                let (proxy, client) = (self.clone(), client.clone());
                Step::Later(Box::pin(async move {
                    let mut served = pending.await;
                    tls::add_hsts(&proxy.sites[index].config, &client, &mut served.0);
                    served
                }))
            }
        };
        (step, Some(index))
    }

    /// Admits a request under the global in-flight cap.
    fn enter(&self) -> Option<InFlightGuard<&Proxy>> {
        let now = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        let guard = InFlightGuard(self);
        self.stats
            .requests_in_flight
            .store(now as u64, Ordering::Relaxed);
        (now <= self.max_in_flight).then_some(guard)
    }
}

/// One request counted in flight until dropped; `P` is how it holds the proxy (borrowed while
/// the answer is made at once, owned by the future of an answer that takes longer).
struct InFlightGuard<P: Deref<Target = Proxy>>(P);

impl InFlightGuard<&Proxy> {
    /// The same count, held by a future that outlives the call that admitted the request.
    fn owned(self, proxy: Arc<Proxy>) -> InFlightGuard<Arc<Proxy>> {
        // The count passes to the new guard: this one must not give it back too.
        std::mem::forget(self);
        InFlightGuard(proxy)
    }
}

impl<P: Deref<Target = Proxy>> Drop for InFlightGuard<P> {
    fn drop(&mut self) {
        let now = self.0.in_flight.fetch_sub(1, Ordering::AcqRel) - 1;
        self.0
            .stats
            .requests_in_flight
            .store(now as u64, Ordering::Relaxed);
    }
}

/// The request's authority as sent: the URI's (absolute form, HTTP/2 :authority), else the
/// one `Host`. A handle on the request's own bytes (a reference count, not a copy), so that it
/// outlives the request moving on without costing an allocation per request.
enum RawAuthority {
    Uri(http::uri::Authority),
    Host(HeaderValue),
}

impl RawAuthority {
    fn of<B>(request: &Request<B>) -> Option<RawAuthority> {
        if let Some(authority) = request.uri().authority() {
            return Some(RawAuthority::Uri(authority.clone()));
        }
        // Two Host lines: which one counts is exactly what cache-poisoning attacks play on.
        let mut hosts = request.headers().get_all(HOST).iter();
        let host = hosts.next()?;
        if hosts.next().is_some() {
            return None;
        }
        Some(RawAuthority::Host(host.clone()))
    }

    /// The text, trimmed; `None` for an empty or non-text Host.
    fn as_str(&self) -> Option<&str> {
        match self {
            RawAuthority::Uri(authority) => Some(authority.as_str()),
            RawAuthority::Host(host) => host.to_str().ok().map(str::trim).filter(|h| !h.is_empty()),
        }
    }
}

/// The port a client means when it names none.
pub(super) fn default_port(proto: &str) -> u16 {
    match proto {
        "https" => 443,
        _ => 80,
    }
}

/// `OPTIONS *` asks about the server itself (RFC 9110 §9.3.7): Kagami answers it. The asterisk
/// form is meaningless with any other method.
fn asterisk(method: &Method) -> Served {
    if method != Method::OPTIONS {
        return refuse(
            StatusCode::BAD_REQUEST,
            "kagami: the asterisk target is only for OPTIONS",
            method,
        );
    }
    let mut response = respond::build(StatusCode::OK, HeaderMap::new(), Body::empty());
    let headers = response.headers_mut();
    headers.insert(
        http::header::ALLOW,
        HeaderValue::from_static("GET, HEAD, OPTIONS, POST, PUT, PATCH, DELETE"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    (response, CacheStatus::new(Phase::Error))
}

pub(super) fn refuse(status: StatusCode, text: &str, method: &Method) -> Served {
    (
        Canned::error(status, text).response(method),
        CacheStatus::new(Phase::Error),
    )
}

fn overloaded(method: &Method) -> Served {
    let mut canned = Canned::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "kagami: too many requests at once, try again",
    );
    canned
        .headers
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    (
        canned.response(method),
        CacheStatus::new(Phase::Error).detail("overloaded"),
    )
}
