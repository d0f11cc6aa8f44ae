//! What HTTPS changes for a request: a Host that the connection's SNI name does not cover gets
//! 421 (so a connection opened for one municipality never serves another's pages), plain-HTTP
//! requests of an `https_redirect` site get 301, HTTPS answers carry the site's HSTS, and
//! answers fetched for HTTPS are stored apart from those fetched for plain HTTP; and ACME
//! HTTP-01 challenges Kagami is taking part in are answered on plain HTTP.

use http::header::{HeaderValue, LOCATION, STRICT_TRANSPORT_SECURITY};
use http::{Method, Response, StatusCode, Uri};

use super::body::Body;
use super::respond::Canned;
use super::{refuse, Client, Proxy, Served, Site};
use crate::cache::key::primary_key_into;
use crate::cache::{CacheStatus, Phase};
use crate::config::{SiteConfig, ACME_CHALLENGE_PREFIX};
use crate::routing::Authority;

/// The key authorization for an ACME HTTP-01 challenge this Kagami published, on plain HTTP
/// only (the CA never validates over HTTPS; RFC 8555 §8.3). Never cached, never routed.
pub(super) fn acme_challenge<B>(
    challenges: &crate::tls::acme::AcmeState,
    client: &Client,
    request: &http::Request<B>,
) -> Option<Served> {
    if client.proto != "http"
        || !matches!(*request.method(), Method::GET | Method::HEAD)
        // The path first: it rules out nearly every request without parsing the Host.
        || !request.uri().path().starts_with(ACME_CHALLENGE_PREFIX)
    {
        return None;
    }
    // Only for the name the token was issued to prove: the CA asks on that name.
    let host = Authority::parse(super::front::raw_authority(request)?).ok()?;
    let answer = challenges.answer(request.uri().path(), host.host())?;
    let mut canned = Canned::error(StatusCode::OK, "");
    canned.body = answer.into();
    canned.headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    canned.headers.insert(
        http::header::CONTENT_LENGTH,
        HeaderValue::from(canned.body.len()),
    );
    Some((
        canned.response(request.method()),
        CacheStatus::new(Phase::Error).detail("acme-challenge"),
    ))
}

/// 421 when the request names a host other than the one the TLS connection was opened for.
/// The certificate was chosen for the SNI name; answering for another name on the same
/// connection would let routing and certificate choice disagree. Clients that reused a
/// connection (HTTP/2 coalescing) retry on a new one when they get 421.
pub(super) fn misdirected(
    client: &Client,
    authority: &Authority,
    method: &Method,
) -> Option<Served> {
    let sni = client.sni.as_ref()?;
    if authority.host() == sni.as_str() {
        return None;
    }
    Some(refuse(
        StatusCode::MISDIRECTED_REQUEST,
        &format!(
            "kagami: this connection was opened for {sni:?}, not for {:?}",
            authority.host()
        ),
        method,
    ))
}

/// 301 to the same target over https for plain-HTTP requests of a site with
/// `https_redirect`. ACME HTTP-01 challenges are fetched over plain HTTP and pass, and so do
/// requests for IP-address hosts.
pub(super) fn redirect(
    site: &SiteConfig,
    client: &Client,
    authority: &Authority,
    uri: &Uri,
    method: &Method,
) -> Option<Served> {
    if client.proto != "http" || !site.tls.https_redirect {
        return None;
    }
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    // An IP address is never served over HTTPS (no SNI), so there is nowhere to send it.
    let ip = authority.host().parse::<std::net::IpAddr>().is_ok();
    if ip || target.starts_with(ACME_CHALLENGE_PREFIX) {
        return None;
    }
    let host = match authority.host() {
        ip6 if ip6.contains(':') => format!("[{ip6}]"),
        name => name.to_string(),
    };
    // The request's own port belongs to the plain listener; the https one is configured.
    let location = match site.tls.https_port {
        Some(port) => format!("https://{host}:{port}{target}"),
        None => format!("https://{host}{target}"),
    };
    let value = HeaderValue::from_str(&location).ok()?;
    let mut canned = Canned::error(
        StatusCode::MOVED_PERMANENTLY,
        &format!("kagami: this site is served over HTTPS: {location}"),
    );
    canned.headers.insert(LOCATION, value);
    Some((
        canned.response(method),
        CacheStatus::new(Phase::Error).detail("https-redirect"),
    ))
}

/// The site's `Strict-Transport-Security` on HTTPS answers only: browsers ignore it over
/// plain HTTP (RFC 6797 §8.1), and an HSTS pin must come from a connection they trust.
pub(super) fn add_hsts(site: &SiteConfig, client: &Client, response: &mut Response<Body>) {
    if client.proto != "https" {
        return;
    }
    if let Some(value) = &site.tls.hsts {
        response
            .headers_mut()
            .insert(STRICT_TRANSPORT_SECURITY, value.clone());
    }
}

/// Appended to the keys of answers fetched for HTTPS requests. The origin is told the scheme
/// (`X-Forwarded-Proto`, `Forwarded`) and may answer differently (a redirect to https,
/// absolute links), so an answer fetched over one scheme must never be served over the other.
/// A suffix after a NUL cannot be mistaken for anything else: targets never contain a NUL.
pub(super) const HTTPS_KEY_SUFFIX: &str = "\u{0}https";

impl Site {
    /// The cache key of a request that came in over `proto` (see `Site::key`).
    pub(super) fn key_for(&self, proto: &str, host: &str, target: &str) -> String {
        let mut key = String::new();
        self.key_into(&mut key, proto, host, target);
        key
    }

    /// [`Site::key_for`], written over `key`.
    pub(super) fn key_into(&self, key: &mut String, proto: &str, host: &str, target: &str) {
        let suffix = if proto == "https" {
            HTTPS_KEY_SUFFIX
        } else {
            ""
        };
        primary_key_into(key, &self.config.name, self.key_host(host), target, suffix);
    }
}

impl Proxy {
    /// Invalidates a target for both schemes: a change made through one is a change for both.
    pub(super) fn invalidate_target(&self, site: &Site, host: &str, target: &str) {
        // Marked stale, not deleted: grace still has the copies when the origin fails.
        let key = site.key(host, target);
        if site.config.tls.cert.is_some() {
            self.store.mark_stale(&format!("{key}{HTTPS_KEY_SUFFIX}"));
        }
        self.store.mark_stale(&key);
    }
}
