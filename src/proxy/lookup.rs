//! The hit path, with the request only borrowed: `serve` sorts a request (cacheable, refused,
//! passed), `lookup` answers it from the store when it may, and only what goes on to the
//! origin takes the request over (`onward`), so a hit moves none of it.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use http::header::AUTHORIZATION;
use http::{HeaderMap, Method, Request, StatusCode};
use hyper::body::Incoming;

use super::front::refuse;
use super::respond::from_entry_reusing;
use super::{
    check, forwarding, head_copy, path_and_query, request_sie, Client, Proxy, Req, Served,
};
use crate::cache::policy::{serve_while_revalidating, stale_on_error};
use crate::cache::{CacheStatus, Entry, Lookup, Phase};

/// What `Proxy::serve` leaves for the origin once the request is taken over (`Proxy::onward`).
pub(super) enum Onward {
    /// Fetch (coalesced) with this stale copy, if any, and the fields the lookup built for
    /// the origin already (a page with `Vary`).
    Fetch {
        stale: Option<Arc<Entry>>,
        phase: Phase,
        sent: OnceLock<HeaderMap>,
    },
    /// Relay to the origin uncached.
    Pass { reason: &'static str },
}

/// A GET/HEAD as the lookup sees it: the request borrowed, so that a hit moves none of it
/// (the large request value is taken over, as a `Req`, only when it goes on to the origin).
pub(super) struct Asked<'r> {
    site: usize,
    request: &'r mut Request<Incoming>,
    /// As `Req::sent`, and handed on to it.
    sent: OnceLock<HeaderMap>,
    client: &'r Client,
    host: &'r str,
    ip: IpAddr,
    /// When the request began (`Proxy::handle`), for the wall clock (`clock::wall_at`).
    started: Instant,
}

impl Asked<'_> {
    /// The request's path and query, the part of the cache key the request gives.
    fn target(&self) -> &str {
        (self.request.uri().path_and_query()).map_or("/", |p| p.as_str())
    }
}

thread_local! {
    /// The buffer `Proxy::lookup` writes cache keys into (see there).
    static LOOKUP_KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

impl Proxy {
    /// Answers a hit (or a refusal) at once, with the request only borrowed: a hit moves none
    /// of it. What needs the origin comes back as `Onward`, for `onward` to take the request
    /// over.
    pub(super) fn serve(
        self: &Arc<Self>,
        index: usize,
        request: &mut Request<Incoming>,
        client: &Client,
        host: &str,
        // The rate-limit key, worked out once by the front door (`limit_key(client_ip(..))`).
        ip: IpAddr,
        started: Instant,
    ) -> Result<Served, Onward> {
        let method = request.method().clone();
        // A forwarding header the operator lets visitors send reaches the origin unkeyed, so
        // such a request is neither answered from nor stored in the shared cache.
        let unkeyed = !self.trusted.contains(client.peer.ip())
            && forwarding::carries_passed(
                request.headers(),
                &self.sites[index].config.pass_forwarding_headers,
            );
        match method {
            Method::GET | Method::HEAD
                if !request.headers().contains_key(AUTHORIZATION) && !unkeyed =>
            {
                let asked = Asked {
                    site: index,
                    request,
                    sent: OnceLock::new(),
                    client,
                    host,
                    ip,
                    started,
                };
                self.lookup(asked)
            }
            // PRI is HTTP/2's preface, never a real HTTP/1 method (RFC 9113 §3.4, §11.6): an
            // origin that sniffs for the preface must not be handed one.
            _ if matches!(method, Method::CONNECT | Method::TRACE) || method.as_str() == "PRI" => {
                Ok(refuse(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "kagami: method not allowed",
                    &method,
                ))
            }
            _ => {
                let site = &self.sites[index];
                if let Err(wait) = check(&site.misses, ip) {
                    return Ok(self.too_many(wait, &method));
                }
                let reason = if method == Method::GET || method == Method::HEAD {
                    "bypass"
                } else {
                    "method"
                };
                Err(Onward::Pass { reason })
            }
        }
    }

    /// The work `serve` left for the origin, with the request now owned: a fetch (coalesced)
    /// or a pass.
    pub(super) fn onward(
        self: &Arc<Self>,
        onward: Onward,
        index: usize,
        request: Request<Incoming>,
        client: &Client,
        host: String,
        ip: IpAddr,
    ) -> futures_util::future::BoxFuture<'static, Served> {
        let proxy = self.clone();
        match onward {
            Onward::Pass { reason } => {
                let client = client.clone();
                Box::pin(async move { proxy.pass(index, request, client, &host, reason).await })
            }
            Onward::Fetch { stale, phase, sent } => {
                let (parts, _) = request.into_parts();
                let req = Req {
                    site: index,
                    parts,
                    sent,
                    client: client.clone(),
                    host,
                    ip,
                };
                let site = &self.sites[index];
                let key = site.key_for(req.client.proto, &req.host, path_and_query(&req.parts));
                Box::pin(async move { proxy.fetch_patiently(req, key, stale, phase).await })
            }
        }
    }

    /// GET/HEAD: answer from the cache when allowed, else what to fetch (coalesced).
    fn lookup(self: &Arc<Self>, asked: Asked<'_>) -> Result<Served, Onward> {
        let site = &self.sites[asked.site];
        // Moments after `started`: the wall clock from that reading, not one of its own.
        let now = crate::clock::wall_at(asked.started);
        // The key is written into a buffer this thread reuses: a hit needs it for the lookup
        // only, and what keeps a key (a fetch, a background refresh) builds its own copy.
        let found = LOOKUP_KEY.with_borrow_mut(|buffer| {
            site.key_into(buffer, asked.client.proto, asked.host, asked.target());
            self.store.lookup_with(buffer, || self.sent_for(&asked))
        });
        let (stale, phase) = match found {
            Lookup::Found(entry) => {
                // One clock reading and one age for every question below.
                let age = entry.age(now);
                if entry.serves_fresh_at(age) {
                    if let Err(wait) = check(&site.hits, asked.ip) {
                        return Ok(self.too_many(wait, asked.request.method()));
                    }
                    let status = CacheStatus::new(Phase::Hit).ttl(entry.ttl_at(age));
                    // The request ends here: its header map is the answer's (`from_entry_reusing`).
                    return Ok((from_entry_reusing(&entry, asked.request, age, now), status));
                }
                let staleness = entry.staleness(now);
                let detail = if entry.may_serve_while_revalidating()
                    && serve_while_revalidating(&entry.stale, staleness)
                {
                    self.revalidate_in_background(&asked, entry.clone());
                    Some("stale-while-revalidate")
                } else if site.origin.avoid() && entry.may_serve_stale() {
                    stale_on_error(
                        &entry.stale,
                        staleness,
                        request_sie(asked.request.headers()),
                        site.grace(),
                    )
                    .map(|reason| reason.as_str())
                } else {
                    None
                };
                if let Some(detail) = detail {
                    if let Err(wait) = check(&site.hits, asked.ip) {
                        return Ok(self.too_many(wait, asked.request.method()));
                    }
                    let status = CacheStatus::new(Phase::StaleHit)
                        .ttl(entry.ttl_at(age))
                        .detail(detail);
                    // The request ends here: its header map is the answer's (`from_entry_reusing`).
                    return Ok((from_entry_reusing(&entry, asked.request, age, now), status));
                }
                (Some(entry), Phase::Revalidated)
            }
            Lookup::VaryMiss => (None, Phase::VaryMiss),
            Lookup::Miss => (None, Phase::Miss),
        };
        Err(Onward::Fetch {
            stale,
            phase,
            sent: asked.sent,
        })
    }

    /// stale-while-revalidate: one background fetch per key, only when an origin slot is free;
    /// errors never touch the stored copy.
    fn revalidate_in_background(self: &Arc<Self>, asked: &Asked<'_>, stale: Arc<Entry>) {
        let site = &self.sites[asked.site];
        let key = site.key_for(asked.client.proto, asked.host, asked.target());
        let Some(leader) = self.coalescer.try_lead(&key) else {
            return;
        };
        // A busy origin is not asked for a refresh nobody is waiting for.
        let Some(permit) = site.origin.try_slot(Some(asked.ip)) else {
            return;
        };
        let request = &asked.request;
        let mut parts = head_copy(
            request.method(),
            request.uri(),
            request.version(),
            request.headers(),
        );
        parts.method = Method::GET;
        let req = Req {
            site: asked.site,
            parts,
            sent: asked.sent.clone(),
            client: asked.client.clone(),
            host: asked.host.to_string(),
            ip: asked.ip,
        };
        tokio::spawn(self.clone().refresh(req, key, stale, leader, permit));
    }

    /// [`Proxy::sent`] for a request still borrowed by the lookup.
    fn sent_for<'a>(&self, asked: &'a Asked<'_>) -> &'a HeaderMap {
        asked.sent.get_or_init(|| {
            let site = &self.sites[asked.site];
            let headers = asked.request.headers();
            self.origin_headers(site, headers, asked.client, asked.host, true)
        })
    }
}
