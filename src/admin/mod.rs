//! The admin API, on its own listener (`[admin]`): `/healthz`, `/readyz` and the dashboard
//! page `/` for everyone, `/metrics` (Prometheus text), `/status` (JSON), `POST /purge` and
//! `POST /reload` behind the bearer token. Without a token (allowed on loopback only)
//! `/metrics` and `/status` are open and the actions answer 403.

mod auth;
mod dashboard;
mod metrics;
pub mod status;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::AdminConfig;
use crate::proxy::{Proxy, Purge, PurgeError};
use crate::server::Live;

pub use auth::constant_time_eq;

/// Largest admin request body (purge requests are a few hundred bytes).
const MAX_BODY: usize = 64 * 1024;

/// What the admin endpoints see of the running Kagami.
pub struct Admin {
    /// The proxy now serving (it changes on a reload), and the means to reload.
    pub live: Arc<Live>,
    pub token: Option<String>,
    /// The proxy's bound listener ports (a Host naming one of them is keyed without it).
    pub listener_ports: Vec<u16>,
    /// `true` once shutdown (draining) has begun: `/readyz` answers 503.
    pub draining: watch::Receiver<bool>,
    /// Requests refused for their token since the last log line about them: anyone reaching
    /// the listener can send those as fast as they like, so they are logged once a minute
    /// with a count, not once each.
    pub refused: std::sync::atomic::AtomicU64,
    pub refused_logged: crate::metrics::Every,
    /// The store's per-site counts for `/status`, walked at most every `status::USAGE_FOR`.
    pub usage: status::UsageCache,
}

/// Admin connections open at once. They share the process's file descriptors with the public
/// listeners, and anyone who reaches the port can open them (each may idle for the 10 s head
/// timeout): beyond this, new ones are closed at once. Operators and scrapers need a handful.
const MAX_CONNECTIONS: usize = 64;

/// Serves the admin API on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(err) => {
                tracing::warn!(error = %err, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |request| {
                let admin = admin.clone();
                async move { Ok::<_, std::convert::Infallible>(admin.handle(request).await) }
            });
            // One request per connection, and a bounded head: nothing lingers.
            let result = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(err) = result {
                tracing::debug!(%peer, error = %err, "admin connection ended with an error");
            }
        });
    }
}

/// Binds the admin listener. A default (unconfigured) address that is taken is skipped with a
/// warning, so that several Kagamis can share a machine; `Ok(None)` then.
pub async fn bind(config: &AdminConfig) -> std::io::Result<Option<(TcpListener, SocketAddr)>> {
    match TcpListener::bind(config.listen).await {
        Ok(listener) => {
            let local = listener.local_addr()?;
            tracing::info!(%local, token = config.token.is_some(), "admin API listening");
            Ok(Some((listener, local)))
        }
        Err(err) if !config.configured => {
            tracing::warn!(addr = %config.listen, error = %err, "admin API not started");
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

fn answer(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_str(content_type).expect("a valid content type"),
    );
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    answer(status, "text/plain; charset=utf-8", format!("{body}\n"))
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    answer(status, "application/json", format!("{value}\n"))
}

impl Admin {
    /// The proxy now serving.
    fn proxy(&self) -> Arc<Proxy> {
        self.live.proxy()
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_string();
        let method = request.method().clone();
        match path.as_str() {
            "/healthz" => return text(StatusCode::OK, "ok"),
            "/readyz" => {
                return match *self.draining.borrow() {
                    true => text(StatusCode::SERVICE_UNAVAILABLE, "draining"),
                    false => text(StatusCode::OK, "ready"),
                }
            }
            _ => {}
        }
        // Without a token nothing but the Host tells a rebinding page from the operator.
        if self.token.is_none() && !auth::loopback_host(request.headers()) {
            return text(
                StatusCode::FORBIDDEN,
                "without admin.token the admin API answers only Host 127.0.0.1, [::1] or \
                 localhost (DNS rebinding)",
            );
        }
        // The page holds no data: it asks for the token and then fetches `/status`.
        if path == "/" && (method == Method::GET || method == Method::HEAD) {
            return dashboard::page();
        }
        match &self.token {
            Some(token) if !auth::authorized(request.headers(), token) => {
                let refused = 1 + self.refused.fetch_add(1, Ordering::Relaxed);
                if self.refused_logged.every(Duration::from_secs(60)) {
                    self.refused.fetch_sub(refused, Ordering::Relaxed);
                    tracing::warn!(
                        %method,
                        // What a guesser sent: it must not split or reorder the log line.
                        path = %crate::log_text::clip(&path),
                        refused,
                        "admin request refused: no or wrong token"
                    );
                }
                let mut response = text(StatusCode::UNAUTHORIZED, "admin token required");
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer realm=\"kagami-admin\""),
                );
                return response;
            }
            Some(_) => {}
            // Read-only views are open on a loopback listener without a token.
            // Without a token only the probes and `/metrics` are served (as issue 11 specifies):
            // `/status` names every site, host and origin, which is the token holders' business.
            None if path == "/metrics" => {}
            None => {
                return text(
                    StatusCode::FORBIDDEN,
                    "no admin token is configured: set admin.token, admin.token_file or \
                     KAGAMI_ADMIN_TOKEN",
                )
            }
        }
        match (method, path.as_str()) {
            (Method::GET, "/metrics") => answer(
                StatusCode::OK,
                metrics::CONTENT_TYPE,
                metrics::render(&self.proxy()),
            ),
            (Method::GET, "/status") => self.status().await,
            (Method::POST, "/purge") => self.purge(request).await,
            (Method::POST, "/reload") => self.reload().await,
            (_, "/" | "/metrics" | "/status" | "/purge" | "/reload") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "wrong method")
            }
            _ => text(StatusCode::NOT_FOUND, "no such admin endpoint"),
        }
    }

    /// Re-reads the config file, as SIGHUP does: 200 with what changed, or 422 with every
    /// problem of the new file (the old config keeps serving).
    async fn reload(&self) -> Response<Full<Bytes>> {
        match self.live.reload_file().await {
            Ok(report) => json(
                StatusCode::OK,
                serde_json::json!({ "reloaded": true, "report": report }),
            ),
            Err(err) => {
                let status = match err {
                    crate::server::ReloadError::NoFile => StatusCode::CONFLICT,
                    _ => StatusCode::UNPROCESSABLE_ENTITY,
                };
                json(
                    status,
                    serde_json::json!({ "reloaded": false, "problems": err.problems() }),
                )
            }
        }
    }

    async fn purge(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        // A JSON content type cannot be sent cross-site without a CORS preflight, so a page
        // in an operator's browser cannot forge a purge (SECURITY-NOTES §6).
        let is_json = (request.headers().get(header::CONTENT_TYPE))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return text(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send the purge as Content-Type: application/json",
            );
        }
        let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return text(StatusCode::BAD_REQUEST, "unreadable or too large body"),
        };
        let (purge, soft) = match parse_purge(&body) {
            Ok(parsed) => parsed,
            Err(error) => {
                return json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({ "error": error }),
                )
            }
        };
        let (kind, value, scope) = match &purge {
            Purge::Url(v) => ("url", v.clone(), None),
            Purge::Prefix(v) => ("prefix", v.clone(), None),
            Purge::Site(v) => ("site", v.clone(), None),
            Purge::Tag { tag, site } => ("tag", tag.clone(), site.clone()),
        };
        // The body's text is logged; JSON lets it carry any character.
        let logged = crate::log_text::clip(&value);
        // Prefix, site and tag purges walk the whole store: not on an async worker.
        let proxy = self.proxy();
        let ports = self.listener_ports.clone();
        let done = tokio::task::spawn_blocking(move || proxy.purge(&purge, soft, &ports)).await;
        match done {
            Ok(Ok(purged)) => {
                // An operator checking `/status` right after a purge expects to see it.
                self.usage.clear().await;
                let site = scope.as_deref().map(crate::log_text::clip);
                tracing::info!(
                    kind,
                    value = logged,
                    site = site.as_deref(),
                    soft,
                    purged,
                    "purged"
                );
                let mut answer = serde_json::json!({ kind: value, "soft": soft, "purged": purged });
                if let Some(site) = scope {
                    answer["site"] = site.into();
                }
                json(StatusCode::OK, answer)
            }
            Ok(Err(refusal)) => {
                let error = refusal.to_string();
                tracing::warn!(kind, value = logged, error = %crate::log_text::clip(&error), "purge refused");
                json(
                    purge_refused(&refusal),
                    serde_json::json!({ "error": error }),
                )
            }
            Err(err) => {
                tracing::error!(kind, value = logged, error = %err, "purge failed");
                text(StatusCode::INTERNAL_SERVER_ERROR, "the purge failed")
            }
        }
    }

    async fn status(&self) -> Response<Full<Bytes>> {
        let proxy = self.proxy();
        let status = (self.usage.get(&proxy).await)
            .map(|usage| serde_json::to_string(&status::collect(&proxy, &usage)));
        match status {
            Ok(Ok(body)) => answer(StatusCode::OK, "application/json", body),
            Ok(Err(err)) => {
                tracing::error!(error = %err, "status not serialisable");
                text(StatusCode::INTERNAL_SERVER_ERROR, "status unavailable")
            }
            Err(err) => {
                tracing::error!(error = %err, "status failed");
                text(StatusCode::INTERNAL_SERVER_ERROR, "status unavailable")
            }
        }
    }
}

/// The status for a purge that named nothing Kagami serves. Each is a mistake in the request
/// (400, as a malformed body is); listed one by one so that a new kind of refusal must be
/// given its status here.
fn purge_refused(refusal: &PurgeError) -> StatusCode {
    match refusal {
        PurgeError::NotAUrl(_)
        | PurgeError::Scheme
        | PurgeError::NoHost
        | PurgeError::BadHost(_)
        | PurgeError::NoSiteForHost(_)
        | PurgeError::BadPath
        | PurgeError::UnknownSite(_)
        | PurgeError::BadTag => StatusCode::BAD_REQUEST,
    }
}

/// What to purge and whether softly (the default), from `POST /purge`'s JSON body: exactly
/// one of `url`, `prefix`, `site` or `tag` (a tag with a `site` is purged on that site only),
/// and optionally `soft`.
fn parse_purge(body: &[u8]) -> Result<(Purge, bool), String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        url: Option<String>,
        prefix: Option<String>,
        site: Option<String>,
        tag: Option<String>,
        soft: Option<bool>,
    }
    const FORMS: &str = "expected one of {\"url\": \"https://host/path\"}, {\"prefix\": \
                         \"https://host/news/\"}, {\"site\": \"name\"} or {\"tag\": \"name\"} \
                         (with \"site\": \"name\" for one site's), with \"soft\": true (the \
                         default) or false";
    let body: Body = serde_json::from_slice(body).map_err(|e| format!("{FORMS}: {e}"))?;
    // With a tag, `site` scopes it; alone, it names a site purge.
    let (site, scope) = match body.tag {
        Some(_) => (None, body.site),
        None => (body.site, None),
    };
    let kinds = [
        body.url.map(Purge::Url),
        body.prefix.map(Purge::Prefix),
        site.map(Purge::Site),
        body.tag.map(|tag| Purge::Tag { tag, site: scope }),
    ];
    let mut named = kinds.into_iter().flatten();
    match (named.next(), named.next()) {
        (Some(purge), None) => Ok((purge, body.soft.unwrap_or(true))),
        _ => Err(FORMS.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_purge_names_exactly_one_thing() {
        let parsed = parse_purge(br#"{"prefix": "http://h/news/"}"#).unwrap();
        assert_eq!(parsed, (Purge::Prefix("http://h/news/".into()), true));
        let parsed = parse_purge(br#"{"tag": "evacuation", "soft": false}"#).unwrap();
        let tag = |site: Option<&str>| Purge::Tag {
            tag: "evacuation".into(),
            site: site.map(str::to_string),
        };
        assert_eq!(parsed, (tag(None), false));
        let parsed = parse_purge(br#"{"site": "a", "tag": "evacuation"}"#).unwrap();
        assert_eq!(parsed, (tag(Some("a")), true));
        assert!(parse_purge(br#"{"url": "http://h/", "tag": "b"}"#).is_err());
        assert!(parse_purge(br#"{"prefix": "http://h/", "site": "a"}"#).is_err());
        assert!(parse_purge(br#"{"soft": true}"#).is_err());
        assert!(parse_purge(br#"{"site": "a", "hard": true}"#).is_err());
    }
}
