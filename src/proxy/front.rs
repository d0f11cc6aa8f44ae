//! The front door of the request path: the global in-flight cap, request-loop detection, the
//! Host and request target validated and normalised once, routing to a site, and the label
//! every response leaves with (`Cache-Status`, `Via`, the access log). What is behind the door
//! (`Proxy::serve` onwards) only ever sees the normalised values.

use std::borrow::Cow;
use std::future::{ready, Ready};
use std::net::IpAddr;
use std::ops::Deref;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, Either};
use http::header::{HeaderValue, CONTENT_LENGTH, HOST, RETRY_AFTER};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::body::Body;
use super::respond::{self, Canned};
use super::{access, budget, headers, tls, Client, Proxy, Served};

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
    pub fn handle(self: &Arc<Self>, mut request: Request<Incoming>, client: &Client) -> Handling {
        let started = Instant::now();
        let method = request.method().clone();
        // Only the access log needs the path and host; the hit path should not pay for them.
        let logged = self.access_log.then(|| {
            (
                crate::log_text::clip(request.uri().path()),
                raw_authority(&request).map(crate::log_text::clip),
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
        let (served, site) = match guard {
            None => {
                self.stats.add(&self.stats.overloaded);
                (overloaded(&opened.method), None)
            }
            Some(_) if headers::looped(request.headers(), &self.via) => {
                // Once a minute is enough to tell staff; a loop (or a forged header) repeats fast.
                if self.loop_logged.every(Duration::from_secs(60)) {
                    tracing::error!(
                        host = raw_authority(&request).unwrap_or("-"),
                        "request loop: a site's origin points back at this Kagami; configure \
                         the origin by IP address or an internal name, not the public one"
                    );
                }
                let refused = refuse(
                    StatusCode::LOOP_DETECTED,
                    "kagami: request loop (an origin points back at Kagami)",
                    &opened.method,
                );
                (refused, None)
            }
            Some(_) => match self.admit(&mut request, client) {
                Err(refused) => refused,
                Ok((index, authority)) => {
                    let host =
                        authority.normalised_ref(default_port(client.proto), client.local_port);
                    // The request stays borrowed through the lookup (`serve`), so a hit moves
                    // none of it; only what goes on to the origin takes it over (`onward`).
                    match self.serve(index, &mut request, client, &host, ip, started) {
                        // Answered here, not through the match's value: a response not moved
                        // once more per hit.
                        Ok((mut response, status)) => {
                            tls::add_hsts(&self.sites[index].config, client, &mut response);
                            drop(guard);
                            let response = self.answered(response, status, Some(index), opened);
                            return Either::Left(ready(response));
                        }
                        Err(onward) => {
                            let host = host.into_owned();
                            let pending = self.onward(onward, index, request, client, host, ip);
                            return self.later(guard, pending, index, client, opened);
                        }
                    }
                }
            },
        };
        drop(guard);
        let (response, status) = served;
        Either::Left(ready(self.answered(response, status, site, opened)))
    }

    /// An answer that needs the origin: the admission is held until it is ready, as before.
    fn later(
        self: &Arc<Self>,
        guard: Option<InFlightGuard<&Proxy>>,
        pending: BoxFuture<'static, Served>,
        index: usize,
        client: &Client,
        opened: Opened,
    ) -> Handling {
        let guard = guard.map(|g| g.owned(self.clone()));
        let (proxy, client) = (self.clone(), client.clone());
        Either::Right(Box::pin(async move {
            let (mut response, status) = pending.await;
            tls::add_hsts(&proxy.sites[index].config, &client, &mut response);
            drop(guard);
            proxy.answered(response, status, Some(index), opened)
        }))
    }

    /// Counts an answer and gives it its labels (`Cache-Status`, `Via`) and its access log line.
    fn answered(
        &self,
        mut response: Response<Body>,
        status: CacheStatus,
        site: Option<usize>,
        opened: Opened,
    ) -> Response<Body> {
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
        // entry is evicted (see `body::Held`). In place: `Response::map` would move the whole
        // response twice.
        (response.body_mut()).guard(&self.budget, opened.owner, self.held_stall);
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
            let body = std::mem::replace(response.body_mut(), Body::empty());
            *response.body_mut() =
                Body::Logged(Box::new(access::Logged::new(body, &metrics.name, line)));
        }
        response
    }

    /// Validates and normalises the request's authority and target once, and routes it: the
    /// site's index and the parsed authority, or the refusal (and the site, when known).
    /// Everything after this uses only the normalised values, so the cache key, the origin's
    /// `Host` and the origin's request target always agree.
    // The refusal is kept inline: boxed, every refusal (a bad Host, a redirect) would cost an
    // allocation, and the result is written in place either way.
    #[allow(clippy::result_large_err)]
    fn admit(
        &self,
        request: &mut Request<Incoming>,
        client: &Client,
    ) -> Result<(usize, Rc<Authority>), (Served, Option<usize>)> {
        let method = request.method().clone();
        // Before the Host is even looked at: the CA may name the site in any form.
        if let Some(answer) = tls::acme_challenge(&self.acme, client, request) {
            return Err((answer, None));
        }
        // The bytes this thread accepted last need no reading as text again (`remembered`).
        let authority = raw_authority_bytes(request).and_then(|raw| {
            Authority::remembered(raw).or_else(|| {
                raw_authority(request).and_then(|a| Authority::parse_remembered(a).ok())
            })
        });
        let Some(authority) = authority else {
            let refused = refuse(
                StatusCode::BAD_REQUEST,
                "kagami: the request needs exactly one valid Host",
                &method,
            );
            return Err((refused, None));
        };
        if let Some(refused) = tls::misdirected(client, &authority, &method) {
            return Err((refused, None));
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
            return Err((refused, None));
        };
        let raw_target = request.uri().path_and_query().map_or("/", |p| p.as_str());
        if raw_target == "*" {
            return Err((asterisk(&method), Some(index)));
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
                return Err((refused, Some(index)));
            }
        }
        let site = &self.sites[index].config;
        // An ACME site is redirected only once it has a certificate to be redirected to.
        let secure = !site.tls.acme || self.acme.has_certificate(&site.name);
        if let Some(redirect) = secure
            .then(|| tls::redirect(site, client, &authority, request.uri(), &method))
            .flatten()
        {
            return Err((redirect, Some(index)));
        }
        Ok((index, authority))
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
/// one `Host`, trimmed; `None` for two Host lines (which one counts is exactly what
/// cache-poisoning attacks play on) and for an empty or non-text Host. Borrowed from the
/// request: nothing is copied or counted per request.
pub(super) fn raw_authority<B>(request: &Request<B>) -> Option<&str> {
    if let Some(authority) = request.uri().authority() {
        return Some(authority.as_str());
    }
    let host = only_host(request)?;
    host.to_str().ok().map(str::trim).filter(|h| !h.is_empty())
}

/// The bytes [`raw_authority`] reads, as received (not yet read as text nor trimmed).
fn raw_authority_bytes<B>(request: &Request<B>) -> Option<&[u8]> {
    if let Some(authority) = request.uri().authority() {
        return Some(authority.as_str().as_bytes());
    }
    only_host(request).map(HeaderValue::as_bytes)
}

/// The request's one `Host`; `None` for none or several.
fn only_host<B>(request: &Request<B>) -> Option<&HeaderValue> {
    let mut hosts = request.headers().get_all(HOST).iter();
    let host = hosts.next()?;
    match hosts.next() {
        Some(_) => None,
        None => Some(host),
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
