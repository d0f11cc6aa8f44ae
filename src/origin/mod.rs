//! The origin side of a site: the HTTP client, the origin servers (primary and backups) with
//! their circuit breakers, the cap on concurrent origin requests, and active health checks.

pub mod adaptive;
mod capacity;
mod framing;
mod health;
mod judge;
mod pool;
mod slots;
mod upload;

use framing::Outgoing;
pub use health::{Backoff, Breaker, Transition};
use judge::{Confirm, Confirmation, Evidence, Exchange};
pub use pool::Clients;
pub use slots::Slot;
use upload::ClientSide;
pub use upload::Upload;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use tokio::task::AbortHandle;

use crate::config::SiteConfig;
use crate::metrics::latency::Latency;
use crate::metrics::Stats;

#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("cannot connect to the origin: {0}")]
    Connect(String),
    #[error("the origin did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the origin request failed: {0}")]
    Other(String),
    #[error("every origin's circuit is open")]
    CircuitOpen,
    #[error("every origin slot is taken")]
    Busy,
    #[error("the request body is larger than allowed")]
    TooLarge,
    #[error("the client's request body failed")]
    ClientBody,
    #[error("the request target is not an absolute path")]
    BadTarget,
}

impl OriginError {
    fn from_reqwest(err: reqwest::Error, response_timeout: Duration) -> OriginError {
        if err.is_timeout() {
            OriginError::Timeout(response_timeout)
        } else if err.is_connect() {
            OriginError::Connect(source_chain(&err))
        } else {
            OriginError::Other(source_chain(&err))
        }
    }

    /// The Cache-Status `detail` for this failure.
    pub fn detail(&self) -> &'static str {
        match self {
            OriginError::Connect(_) => "origin-unreachable",
            OriginError::Timeout(_) => "origin-timeout",
            OriginError::Other(_) => "origin-error",
            OriginError::CircuitOpen => "circuit-open",
            OriginError::Busy => "origin-busy",
            OriginError::TooLarge => "body-too-large",
            OriginError::ClientBody => "client-body-failed",
            OriginError::BadTarget => "bad-target",
        }
    }
}

/// reqwest's top-level message is generic; the cause is at the bottom of the chain.
pub fn source_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Origin answers that a cache treats as failures: never stored, never replacing a good copy,
/// and answered from a stale copy when one may be served. RFC 5861 §4 names 500, 502, 503 and
/// 504; every 5xx (RFC 9111 §4.3.3 allows it) and 429 (an overloaded origin) are treated alike.
pub fn is_failure(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

/// Origin answers that say the origin itself is unwell, for circuit breakers, failover and the
/// failure back-off. Narrower than `is_failure`: a 429 or 501 may concern one client or one
/// method, and must not let one client take a whole site's origin out of service.
pub fn is_unhealthy(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

/// One origin server of a site.
pub struct Server {
    /// `scheme://host[:port]` with no trailing slash; the request's path is appended as is.
    pub base: String,
    pub breaker: Breaker,
    /// The latest probe that confirmed (or cleared) a suspect failure; see `judge`.
    confirmation: Confirmation,
}

/// One site's origins.
pub struct Origin {
    site: String,
    client: reqwest::Client,
    pub servers: Vec<Server>,
    response_timeout: Duration,
    pub backoff: Backoff,
    failure_backoff: Duration,
    /// Probed to confirm a suspect failure (`judge`): the health path, else `/`.
    confirm_path: String,
    /// The Host the confirmation probe names: the site's own (`origin_host`, else its first
    /// exact `hosts` name), never a visitor's, so that a made-up name under a wildcard whose
    /// virtual host the origin does not serve cannot get the whole site judged sick.
    probe_host: Option<http::HeaderValue>,
    slots: slots::Slots,
    /// The adaptive limit on `slots` (`capacity`).
    capacity: capacity::Capacity,
    queue_timeout: Duration,
    stats: Arc<Stats>,
    /// Time to each response head (every attempt, failures included), for `/metrics`.
    latency: Latency,
}

impl Origin {
    /// A site's origins with a client of their own (see `Clients` for sharing one).
    pub fn new(site: &SiteConfig, stats: Arc<Stats>) -> Result<Origin, reqwest::Error> {
        let client = Clients::for_sites(std::slice::from_ref(site)).client(site)?;
        Ok(Origin::with_client(site, client, stats))
    }

    /// A site's origins using `client`, which may be shared with other sites on the same
    /// origins (`Clients`).
    pub fn with_client(site: &SiteConfig, client: reqwest::Client, stats: Arc<Stats>) -> Origin {
        let protection = &site.protection;
        Origin {
            site: site.name.clone(),
            client,
            servers: site
                .origins
                .iter()
                .map(|url| Server {
                    base: url.as_str().trim_end_matches('/').to_string(),
                    breaker: Breaker::new(protection.circuit_failures, protection.circuit_open),
                    confirmation: Confirmation::default(),
                })
                .collect(),
            response_timeout: site.timeouts.response,
            backoff: Backoff::default(),
            failure_backoff: site.failure_backoff,
            confirm_path: protection
                .health_path
                .clone()
                .unwrap_or_else(|| "/".to_string()),
            probe_host: site.origin_host.clone().or_else(|| {
                site.hosts.iter().find_map(|pattern| match pattern {
                    crate::routing::HostPattern::Exact { .. } => {
                        http::HeaderValue::from_str(&pattern.to_string()).ok()
                    }
                    crate::routing::HostPattern::Wildcard { .. } => None,
                })
            }),
            slots: slots::Slots::new(protection.concurrency, protection.concurrency_per_client),
            capacity: capacity::Capacity::new(
                protection.concurrency,
                protection.adaptive,
                stats
                    .origin_limits
                    .register(&site.name, protection.concurrency as u64),
            ),
            queue_timeout: protection.queue_timeout,
            stats,
            latency: Latency::default(),
        }
    }

    /// True when requests that have a stale copy should be answered from it without asking
    /// the origin: just after a failure, or while every circuit is open.
    pub fn avoid(&self) -> bool {
        self.backoff.is_failing() || self.servers.iter().all(|s| s.breaker.rejecting())
    }

    /// Is the origin under stress: every slot of its adaptive limit taken, or its latency
    /// showing queueing against its own baseline? Expired pages are then served from their copies at once.
    pub fn stressed(&self) -> bool {
        self.capacity.stressed(&self.slots)
    }

    /// The adaptive origin concurrency limit now (the ceiling when adaptation is off).
    pub fn limit(&self) -> usize {
        self.slots.limit()
    }

    /// Time to the origin's response heads, every attempt counted.
    pub fn latency(&self) -> &Latency {
        &self.latency
    }

    /// Are the servers' circuits open (`(base URL, open)` in configured order)?
    pub fn circuits(&self) -> impl Iterator<Item = (&str, bool)> {
        self.servers
            .iter()
            .map(|s| (s.base.as_str(), s.breaker.is_open()))
    }

    /// A free origin slot for `client` (its rate-limit key; None for Kagami's own work), if
    /// there is one right now within the site's cap and the client's share of it.
    pub fn try_slot(&self, client: Option<IpAddr>) -> Option<Slot> {
        self.slots.try_take(client)
    }

    /// An origin slot, waiting in line at most the site's queue timeout. A client over its own
    /// share waits too, and is told "busy" like everyone when every slot is taken: only that
    /// client is affected.
    pub async fn slot(&self, client: Option<IpAddr>) -> Result<Slot, OriginError> {
        if let Some(slot) = self.try_slot(client) {
            return Ok(slot);
        }
        self.stats.add(&self.stats.origin_busy);
        self.wait_for_slot(self.slots.take(client)).await
    }

    /// An origin slot for a background refresh: behind every waiting visitor, at most the
    /// site's queue timeout.
    pub async fn background_slot(&self, client: Option<IpAddr>) -> Result<Slot, OriginError> {
        self.wait_for_slot(self.slots.take_behind_visitors(client))
            .await
    }

    /// Waits for `take` at most the queue timeout (`Capacity::wait_for_slot`).
    async fn wait_for_slot(
        &self,
        take: impl std::future::Future<Output = Option<Slot>>,
    ) -> Result<Slot, OriginError> {
        let waited =
            (self.capacity).wait_for_slot(&self.site, &self.slots, self.queue_timeout, take);
        waited.await.ok_or(OriginError::Busy)
    }

    /// Sends a request, trying backups in order when it is idempotent and has no body (so it
    /// can be repeated), and waits at most the response timeout for each response head.
    /// Failures caused by the client's upload are returned as such and never count against an
    /// origin's health.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        mut headers: HeaderMap,
        upload: Option<Upload>,
    ) -> Result<reqwest::Response, OriginError> {
        // A target that cannot form a URL is the request's fault, never the origin's: refused
        // before any breaker or back-off can count it (`OPTIONS *` once opened circuits).
        if !path_and_query.starts_with('/') {
            return Err(OriginError::BadTarget);
        }
        // Every origin request passes here: whatever framing the client wrote, the origin gets
        // the framing of the body that is really sent.
        let outgoing = match &upload {
            None => Outgoing::None,
            Some(upload) => upload
                .exact_len()
                .map_or(Outgoing::Streamed, Outgoing::Exact),
        };
        framing::frame_request(&mut headers, outgoing);
        let (mut body, upload_state) = match upload.map(Upload::into_parts) {
            Some((body, state)) => (Some(body), Some(state)),
            None => (None, None),
        };
        let repeatable = body.is_none() && method.is_idempotent();
        let mut last: Option<Result<reqwest::Response, OriginError>> = None;
        for server in &self.servers {
            let Some(ticket) = server.breaker.admit() else {
                continue;
            };
            if last.is_some() {
                self.stats.add(&self.stats.failovers);
            }
            let started = std::time::Instant::now();
            let result = {
                let _in_flight = self.stats.origin_started();
                self.send_to(
                    server,
                    method.clone(),
                    path_and_query,
                    headers.clone(),
                    body.take(),
                )
                .await
            };
            let took = started.elapsed();
            self.latency.observe(took);
            // The client's side failed: not the origin's fault, so no verdict on its health.
            match upload_state.as_ref().map(|s| s.client_side()) {
                Some(ClientSide::TooLarge) => return Err(OriginError::TooLarge),
                Some(ClientSide::Failed) => return Err(OriginError::ClientBody),
                _ => {}
            }
            let upload_complete = upload_state.as_ref().is_none_or(|s| s.complete());
            let exchange = match &result {
                Ok(response) => Exchange::Answered(response.status()),
                Err(OriginError::Connect(_)) => Exchange::ConnectFailed,
                Err(OriginError::Timeout(_)) => Exchange::TimedOut,
                Err(_) => Exchange::Broken,
            };
            let origin_failed = match judge::evidence(exchange, upload_complete) {
                Evidence::Healthy => {
                    self.note(server, ticket.success());
                    self.backoff.record_success();
                    self.learn(&result, took, false, upload_state.is_none());
                    return result;
                }
                // The origin was left waiting for a body the client never finished sending.
                Evidence::NotJudged => return result.or(Err(OriginError::ClientBody)),
                Evidence::OriginFailed => true,
                Evidence::Suspect => self.confirm(server).await,
            };
            if !origin_failed {
                // One URL's (or one request's) trouble: relayed as it is, with no verdict on
                // the origin, no back-off and no second try on a backup.
                return result;
            }
            self.learn(&result, took, true, upload_state.is_none());
            self.stats.add(&self.stats.origin_failures);
            let transition = match exchange {
                Exchange::ConnectFailed => ticket.unreachable(),
                _ => ticket.failure(),
            };
            self.note(server, transition);
            self.backoff.record_failure(self.failure_backoff);
            if !repeatable {
                return result;
            }
            last = Some(result);
        }
        last.unwrap_or(Err(OriginError::CircuitOpen))
    }

    async fn send_to(
        &self,
        server: &Server,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Option<reqwest::Body>,
    ) -> Result<reqwest::Response, OriginError> {
        let url = format!("{}{}", server.base, path_and_query);
        let mut request = self.client.request(method, url).headers(headers);
        if let Some(body) = body {
            request = request.body(body);
        }
        match tokio::time::timeout(self.response_timeout, request.send()).await {
            Err(_) => Err(OriginError::Timeout(self.response_timeout)),
            Ok(Err(err)) => Err(OriginError::from_reqwest(err, self.response_timeout)),
            Ok(Ok(mut response)) => {
                let status = response.status();
                match framing::frame_response(status, response.headers_mut()) {
                    Ok(()) => Ok(response),
                    // Never relayed: a 101 would switch the client's connection to a protocol
                    // nobody asked for (h2 clients see a protocol error).
                    Err(reason) => Err(OriginError::Other(reason)),
                }
            }
        }
    }

    /// Is a suspect failure the origin's? Asks `server` for the confirmation path (with the
    /// site's own Host), unless a recent probe has already told. A probe under way for another
    /// request gives no verdict.
    ///
    /// The probe takes no slot of its own: it goes out on the slot of the request whose failure
    /// it confirms, whose own exchange is over (answered, or given up on), so Kagami never has
    /// more origin requests under way than the limit because of it.
    async fn confirm(&self, server: &Server) -> bool {
        let probe = match server.confirmation.ask(health::now_ms()) {
            Confirm::Known(sick) => return sick,
            Confirm::Pending => return false,
            Confirm::Probe => Abandon(&server.confirmation),
        };
        let url = format!("{}{}", server.base, self.confirm_path);
        let mut request = self
            .client
            .get(url)
            .header("user-agent", "kagami-health-check");
        if let Some(host) = &self.probe_host {
            request = request.header(http::header::HOST, host.clone());
        }
        let sick = match tokio::time::timeout(self.response_timeout, request.send()).await {
            Ok(Ok(response)) => is_unhealthy(response.status()),
            _ => true,
        };
        tracing::debug!(site = %self.site, origin = %server.base, sick, "confirmation probe");
        server.confirmation.record(sick, health::now_ms());
        std::mem::forget(probe);
        if !sick {
            // A real success of the origin, as from an active health check: it also ends a
            // half-open circuit, so a broken URL cannot hog the one probe slot.
            self.note(server, server.breaker.record_success());
            self.backoff.record_success();
        }
        sick
    }

    fn note(&self, server: &Server, transition: Transition) {
        match transition {
            Transition::Opened => {
                self.stats.add(&self.stats.circuit_opened);
                tracing::warn!(site = %self.site, origin = %server.base, "origin circuit opened");
            }
            Transition::Closed => {
                tracing::info!(site = %self.site, origin = %server.base, "origin circuit closed");
            }
            Transition::None => {}
        }
    }

    /// Active health checks: every `interval`, GET `path` on each server; 2xx/3xx counts as
    /// healthy. Returns the tasks' handles; they hold only this origin, never the proxy.
    pub fn spawn_health_checks(
        self: &Arc<Self>,
        path: &str,
        interval: Duration,
    ) -> Vec<AbortHandle> {
        (0..self.servers.len())
            .map(|index| {
                let origin = Arc::downgrade(self);
                let path = path.to_string();
                tokio::spawn(async move {
                    let mut ticker = tokio::time::interval(interval);
                    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        ticker.tick().await;
                        let Some(origin) = origin.upgrade() else {
                            return;
                        };
                        // Probes count against the origin's cap like any request; when every
                        // slot is busy the origin is evidently answering, so skip this round.
                        let Some(_slot) = origin.try_slot(None) else {
                            continue;
                        };
                        let server = &origin.servers[index];
                        let url = format!("{}{}", server.base, path);
                        let probe = origin
                            .client
                            .get(url)
                            .header("user-agent", "kagami-health-check");
                        let healthy = matches!(
                            tokio::time::timeout(origin.response_timeout, probe.send()).await,
                            Ok(Ok(r)) if r.status().is_success() || r.status().is_redirection()
                        );
                        let transition = if healthy {
                            server.breaker.record_success()
                        } else {
                            server.breaker.record_failure()
                        };
                        origin.note(server, transition);
                    }
                })
                .abort_handle()
            })
            .collect()
    }
}

/// Frees a confirmation probe's turn if the probing request is dropped before it reports.
struct Abandon<'a>(&'a Confirmation);

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        self.0.abandon();
    }
}
