//! One `[[site]]`: validated hostnames, origins, caching and origin-protection settings.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use super::raw::RawSite;
use super::{read_page, ConfigError, LimitsConfig, Problems};
use crate::limit::Rate;
use crate::routing::HostPattern;

/// What to do with responses that set cookies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookiePolicy {
    /// Responses carrying `Set-Cookie` are passed through and never stored (the safe default:
    /// a cookie is usually meant for one visitor only).
    Never,
    /// Such responses are stored with `Set-Cookie` removed; only the visitor whose request
    /// fetched the page receives the cookie.
    Strip,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginTimeouts {
    pub connect: Duration,
    /// From sending the request until the response head has arrived.
    pub response: Duration,
    /// Longest pause between two chunks of a response body.
    pub read: Duration,
}

/// How Kagami shields a site's origins from a surge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginProtection {
    /// Origin requests under way at once for this site, all origins together.
    pub concurrency: usize,
    /// Of those, how many one client address may hold at once (its rate-limit key).
    pub concurrency_per_client: usize,
    /// How long a request without a stale copy waits for a free origin slot.
    pub queue_timeout: Duration,
    /// Consecutive failures of one origin that open its circuit.
    pub circuit_failures: u32,
    /// How long an open circuit keeps requests away before one probe is let through.
    pub circuit_open: Duration,
    /// Path probed on every origin at `health_interval` (active health checks), if any.
    pub health_path: Option<String>,
    pub health_interval: Duration,
    /// Adapt the cap to the origin's real capacity (`origin::adaptive`); `concurrency` stays
    /// the ceiling.
    pub adaptive: bool,
}

/// One `[[site]]`: the hostnames Kagami answers for, where their origin is, and how to cache it.
#[derive(Debug, Clone)]
pub struct SiteConfig {
    pub name: String,
    pub hosts: Vec<HostPattern>,
    /// The primary origin first, then backups tried in order for idempotent requests.
    pub origins: Vec<reqwest::Url>,
    /// `Host` sent to the origin; `None` forwards the client's `Host`.
    pub origin_host: Option<HeaderValue>,
    /// Forwarding headers (`X-Forwarded-Prefix`, `X-Real-IP`, ...) that visitors who are not
    /// trusted proxies may send to the origin; requests carrying one bypass the cache. Every
    /// other client forwarding header is dropped.
    pub pass_forwarding_headers: Vec<HeaderName>,
    /// Operator override: how long past expiry a stored copy may be served while the origin is
    /// failing, even when the response said `must-revalidate` (unless `strict`). Zero: never.
    pub grace: Duration,
    /// RFC-strict: grace never overrides must-revalidate, proxy-revalidate, no-cache or
    /// s-maxage (those get 504 when the origin fails); other stale copies still get grace.
    pub strict: bool,
    /// stale-while-revalidate window used when the origin sends none (zero = off).
    pub stale_while_revalidate: Duration,
    /// stale-if-error window used when the origin sends none (zero = off).
    pub stale_if_error: Duration,
    /// Cap on heuristic freshness (10 % of the time since Last-Modified).
    pub heuristic_max: Duration,
    /// Freshness given to heuristically cacheable responses that carry neither explicit
    /// freshness nor Last-Modified.
    pub default_ttl: Duration,
    /// Lifetime of cacheable answers other than 2xx (404, 410, redirects) that carry no
    /// explicit freshness: short, so a page published after a 404 is seen at once.
    pub negative_ttl: Duration,
    pub max_object_size: u64,
    pub cache_cookies: CookiePolicy,
    pub timeouts: OriginTimeouts,
    /// After an origin failure, how long stale copies are served without asking the origin.
    pub failure_backoff: Duration,
    /// How long a request waits for another request's fetch of the same page.
    pub coalesce_timeout: Duration,
    /// How long a visitor with a servable stored copy waits for its revalidation before being
    /// given the copy while the fetch finishes in the background (zero: as long as it takes).
    pub origin_patience: Duration,
    pub protection: OriginProtection,
    /// Served with 503 when nothing is cached and the origin is unavailable. Loaded at start, so
    /// it never depends on the origin.
    pub emergency_page: Bytes,
    /// Per-client budget for answers from the cache (`None` = unlimited).
    pub limit_hits: Option<Rate>,
    /// Per-client budget for requests that would reach the origin.
    pub limit_misses: Option<Rate>,
    /// HTTPS: certificate, redirect, HSTS, trust for the origin.
    pub tls: super::SiteTls,
}

impl SiteConfig {
    /// A site with Kagami's defaults, for code that builds configs (tests, the demo).
    pub fn new(name: &str, hosts: &[&str], origin: &str) -> Result<SiteConfig, ConfigError> {
        let raw = RawSite {
            name: Some(name.to_string()),
            hosts: Some(hosts.iter().map(|h| h.to_string()).collect()),
            origin: Some(origin.to_string()),
            ..RawSite::default()
        };
        let mut problems = Problems::default();
        let site = validate_site(
            &raw,
            "site[0]",
            &LimitsConfig::default(),
            Path::new("."),
            &mut problems,
        );
        problems.into_result(Path::new("<code>"))?;
        site.ok_or_else(|| ConfigError::Invalid {
            path: "<code>".into(),
            problems: Vec::new(),
        })
    }

    /// The primary origin.
    pub fn origin(&self) -> &reqwest::Url {
        &self.origins[0]
    }
}

/// The page served when there is nothing to serve: bilingual, and free of any origin resource.
fn default_emergency_page(name: &str) -> Bytes {
    let name = name.replace(['<', '>', '&', '"'], "");
    Bytes::from(format!(
        "<!doctype html><html lang=\"ja\"><head><meta charset=\"utf-8\">\
         <title>{name}: 一時的に表示できません / Temporarily unavailable</title></head><body>\
         <h1>ただいまアクセスが集中しています</h1>\
         <p>このページは一時的に表示できません。しばらくしてから再度お試しください。\
         緊急の情報はラジオ・テレビ・防災無線でもご確認ください。</p>\
         <h1 lang=\"en\">This page is temporarily unavailable</h1>\
         <p lang=\"en\">The site is under heavy load. Please try again in a few minutes, and \
         follow radio, TV and emergency broadcasts for urgent information.</p></body></html>\n"
    ))
}

pub(super) fn validate_site(
    raw: &RawSite,
    prefix: &str,
    limits: &LimitsConfig,
    base: &Path,
    problems: &mut Problems,
) -> Option<SiteConfig> {
    let key = |k: &str| format!("{prefix}.{k}");
    let name = match raw.name.as_deref().map(str::trim) {
        // Cache keys are `name NUL host NUL target`, and purges and `/status` find a site's
        // keys by that prefix: a NUL (or any control character) in a name would blur it.
        Some(n) if n.chars().any(char::is_control) => {
            problems.add(
                key("name"),
                "must not contain control characters; give the site a short name such as \
                 \"iwate\"",
            );
            String::new()
        }
        Some(n) if !n.is_empty() => n.to_string(),
        Some(_) => {
            problems.add(key("name"), "must not be empty");
            String::new()
        }
        None => {
            problems.add(
                key("name"),
                "missing: give the site a short name such as \"iwate\"",
            );
            String::new()
        }
    };
    let mut hosts = Vec::new();
    match &raw.hosts {
        None => problems.add(
            key("hosts"),
            "missing: list the hostnames this site answers for",
        ),
        Some(list) if list.is_empty() => {
            problems.add(key("hosts"), "must list at least one hostname")
        }
        Some(list) => {
            for (j, h) in list.iter().enumerate() {
                match HostPattern::parse(h) {
                    Ok(p) => hosts.push(p),
                    Err(reason) => problems.add(format!("{prefix}.hosts[{j}]"), reason),
                }
            }
        }
    }
    let origins = validate_origins(raw, prefix, problems);
    let origin_host = match &raw.origin_host {
        None => None,
        Some(h) => match HeaderValue::from_str(h.trim()) {
            Ok(v) if !h.trim().is_empty() => Some(v),
            _ => {
                problems.add(
                    key("origin_host"),
                    format!("{h:?} is not a valid Host value"),
                );
                None
            }
        },
    };
    let mut pass_forwarding_headers = Vec::new();
    for (j, text) in raw.pass_forwarding_headers.iter().flatten().enumerate() {
        match crate::proxy::forwarding::passable(text) {
            Ok(name) => pass_forwarding_headers.push(name),
            Err(reason) => problems.add(format!("{prefix}.pass_forwarding_headers[{j}]"), reason),
        }
    }
    let cache_cookies = match raw.cache_cookies.as_deref() {
        None | Some("never") => CookiePolicy::Never,
        Some("strip") => CookiePolicy::Strip,
        Some(other) => {
            problems.add(
                key("cache_cookies"),
                format!("{other:?} is not one of \"never\", \"strip\""),
            );
            CookiePolicy::Never
        }
    };
    let emergency_page = match (&raw.emergency_page, &raw.emergency_html) {
        (Some(_), Some(_)) => {
            problems.add(
                key("emergency_html"),
                "give emergency_page (a file) or emergency_html, not both",
            );
            None
        }
        (Some(file), None) => read_page(problems, &key("emergency_page"), base, file),
        (None, Some(html)) => Some(Bytes::from(html.clone())),
        (None, None) => None,
    }
    .unwrap_or_else(|| default_emergency_page(&name));
    let health_path = match raw.health_path.as_deref() {
        None => None,
        Some(p) if p.starts_with('/') && p.parse::<http::uri::PathAndQuery>().is_ok() => {
            Some(p.to_string())
        }
        Some(p) => {
            problems.add(
                key("health_path"),
                format!("{p:?} must be a path starting with /"),
            );
            None
        }
    };
    let d = |problems: &mut Problems, k: &str, v: &Option<String>, default: u64| {
        problems.duration(key(k), v, Duration::from_secs(default))
    };
    let ms = |problems: &mut Problems, k: &str, v: &Option<String>, default: u64| {
        problems.duration(key(k), v, Duration::from_millis(default))
    };
    let tls = super::tls::site(raw, prefix, base, &hosts, origins.as_ref(), problems);
    let site = SiteConfig {
        name,
        hosts,
        origins: origins.clone().unwrap_or_default(),
        origin_host,
        pass_forwarding_headers,
        grace: d(problems, "grace", &raw.grace, 7 * 86_400),
        strict: raw.strict.unwrap_or(false),
        stale_while_revalidate: d(
            problems,
            "stale_while_revalidate",
            &raw.stale_while_revalidate,
            0,
        ),
        stale_if_error: d(problems, "stale_if_error", &raw.stale_if_error, 0),
        heuristic_max: d(problems, "heuristic_max", &raw.heuristic_max, 86_400),
        default_ttl: d(problems, "default_ttl", &raw.default_ttl, 0),
        negative_ttl: d(problems, "negative_ttl", &raw.negative_ttl, 10),
        max_object_size: problems.size(key("max_object_size"), &raw.max_object_size, 32 << 20),
        cache_cookies,
        timeouts: OriginTimeouts {
            connect: d(problems, "connect_timeout", &raw.connect_timeout, 5),
            response: d(problems, "response_timeout", &raw.response_timeout, 30),
            read: d(problems, "read_timeout", &raw.read_timeout, 30),
        },
        failure_backoff: d(problems, "failure_backoff", &raw.failure_backoff, 2),
        coalesce_timeout: d(problems, "coalesce_timeout", &raw.coalesce_timeout, 10),
        // Ten times what a fast (< 50 ms) origin takes: only a struggling origin ever hits it.
        origin_patience: ms(problems, "origin_patience", &raw.origin_patience, 500),
        protection: OriginProtection {
            concurrency: raw.origin_concurrency.unwrap_or(32),
            // A quarter of the site's slots: a browser's parallel misses fit, and one client can
            // never hold them all.
            concurrency_per_client: raw
                .origin_concurrency_per_client
                .unwrap_or_else(|| raw.origin_concurrency.unwrap_or(32).div_ceil(4)),
            queue_timeout: ms(
                problems,
                "origin_queue_timeout",
                &raw.origin_queue_timeout,
                2_000,
            ),
            circuit_failures: raw.circuit_failures.unwrap_or(5),
            circuit_open: d(problems, "circuit_open", &raw.circuit_open, 10),
            health_path,
            health_interval: d(problems, "health_interval", &raw.health_interval, 5),
            adaptive: raw.adaptive_concurrency.unwrap_or(true),
        },
        emergency_page,
        limit_hits: problems.rate(
            key("limit_hits"),
            &raw.limit_hits,
            raw.limit_hits_burst,
            limits.hits,
        ),
        limit_misses: problems.rate(
            key("limit_misses"),
            &raw.limit_misses,
            raw.limit_misses_burst,
            limits.misses,
        ),
        tls,
    };
    for (k, v) in [
        ("connect_timeout", site.timeouts.connect),
        ("response_timeout", site.timeouts.response),
        ("read_timeout", site.timeouts.read),
        ("coalesce_timeout", site.coalesce_timeout),
        ("circuit_open", site.protection.circuit_open),
        ("health_interval", site.protection.health_interval),
    ] {
        if v.is_zero() {
            problems.add(key(k), "must be longer than 0s");
        }
    }
    if site.max_object_size == 0 {
        problems.add(key("max_object_size"), "must be larger than 0");
    }
    if !(1..=super::MAX_COUNT).contains(&site.protection.concurrency) {
        problems.add(
            key("origin_concurrency"),
            format!("must be between 1 and {}", super::MAX_COUNT),
        );
    }
    let per_client = site.protection.concurrency_per_client;
    if per_client == 0 || per_client > site.protection.concurrency {
        problems.add(
            key("origin_concurrency_per_client"),
            "must be between 1 and origin_concurrency",
        );
    }
    if site.protection.circuit_failures == 0 {
        problems.add(key("circuit_failures"), "must be at least 1");
    }
    // Validation went on with what was readable; without an origin there is no site.
    origins.map(|_| site)
}

fn validate_origins(
    raw: &RawSite,
    prefix: &str,
    problems: &mut Problems,
) -> Option<Vec<reqwest::Url>> {
    let hint = "the URL of the real web server, e.g. \"http://10.0.0.5:80\"";
    let listed: Vec<(String, &String)> = match (&raw.origin, &raw.origins) {
        (Some(_), Some(_)) => {
            problems.add(
                format!("{prefix}.origins"),
                "give origin or origins, not both",
            );
            return None;
        }
        (None, None) => {
            problems.add(format!("{prefix}.origin"), format!("missing: {hint}"));
            return None;
        }
        (Some(one), None) => vec![(format!("{prefix}.origin"), one)],
        (None, Some(list)) if list.is_empty() => {
            problems.add(
                format!("{prefix}.origins"),
                format!("must list at least one origin: {hint}"),
            );
            return None;
        }
        (None, Some(list)) => list
            .iter()
            .enumerate()
            .map(|(i, o)| (format!("{prefix}.origins[{i}]"), o))
            .collect(),
    };
    let mut origins = Vec::new();
    for (key, text) in listed {
        match parse_origin(text) {
            Ok(url) => origins.push(url),
            Err(reason) => problems.add(key, reason),
        }
    }
    (!origins.is_empty() && origins.len() == raw.origins.as_ref().map_or(1, Vec::len))
        .then_some(origins)
}

pub(super) fn parse_origin(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text.trim());
    // Messages quote the URL; a password in it must not reach the terminal or a log.
    let text = &*super::hints::hide_password(text);
    let url =
        url.map_err(|e| format!("{text:?} is not a URL ({e}); write e.g. \"http://10.0.0.5:80\""))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!("{text:?} must start with http:// or https://"));
    }
    if url.host_str().is_none() {
        return Err(format!("{text:?} has no host"));
    }
    if url.path() != "/" || url.query().is_some() {
        return Err(format!(
            "{text:?} must not have a path or query; the client's path is appended as it is"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{text:?} must not contain credentials"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError};

    fn site(extra: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:8080\"]\n{extra}\n[[site]]\nname = \"a\"\n\
             hosts = [\"a.example\"]\norigin = \"http://127.0.0.1:8081\"\n"
        );
        Config::parse(&text, Path::new("k.toml"))
    }

    fn site_with(keys: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:8080\"]\n[[site]]\nname = \"a\"\n\
             hosts = [\"a.example\"]\norigin = \"http://127.0.0.1:8081\"\n{keys}\n"
        );
        Config::parse(&text, Path::new("k.toml"))
    }

    fn problem_keys(result: Result<Config, ConfigError>) -> Vec<String> {
        match result {
            Err(ConfigError::Invalid { problems, .. }) => {
                problems.into_iter().map(|p| p.key).collect()
            }
            other => panic!("expected invalid config, got {other:?}"),
        }
    }

    #[test]
    fn site_names_never_hold_the_cache_key_separator() {
        // Keys are `name NUL host NUL target`: a name holding a NUL would make a site purge
        // (and `/status`) of "a" take in the pages of a site named "a\0b".
        for name in ["a\\u0000b", "a\\nb", "a\\u007fb"] {
            let text = format!(
                "[server]\nlisten = [\"127.0.0.1:8080\"]\n[[site]]\nname = \"{name}\"\n\
                 hosts = [\"a.example\"]\norigin = \"http://127.0.0.1:8081\"\n"
            );
            let parsed = Config::parse(&text, Path::new("k.toml"));
            assert_eq!(problem_keys(parsed), ["site[0].name"], "{name}");
        }
    }

    #[test]
    fn per_client_caps_have_generous_defaults() {
        let config = site("").unwrap();
        assert_eq!(config.server.max_connections_per_client, 1_000);
        assert_eq!(config.sites[0].protection.concurrency_per_client, 8);
        let small = site_with("origin_concurrency = 6").unwrap();
        assert_eq!(small.sites[0].protection.concurrency_per_client, 2);
    }

    #[test]
    fn adaptive_concurrency_and_origin_patience_have_defaults_and_can_be_set() {
        let config = site("").unwrap();
        assert!(config.sites[0].protection.adaptive);
        assert_eq!(
            config.sites[0].origin_patience,
            std::time::Duration::from_millis(500)
        );
        let set = site_with("adaptive_concurrency = false\norigin_patience = \"2s\"").unwrap();
        assert!(!set.sites[0].protection.adaptive);
        assert_eq!(
            set.sites[0].origin_patience,
            std::time::Duration::from_secs(2)
        );
        let keys = problem_keys(site_with("origin_patience = \"soon\""));
        assert_eq!(keys, vec!["site[0].origin_patience"]);
    }

    #[test]
    fn per_client_caps_are_validated() {
        let keys = problem_keys(site_with(
            "origin_concurrency = 4\norigin_concurrency_per_client = 5",
        ));
        assert_eq!(keys, vec!["site[0].origin_concurrency_per_client"]);
        let keys = problem_keys(site_with("origin_concurrency_per_client = 0"));
        assert_eq!(keys, vec!["site[0].origin_concurrency_per_client"]);
        let keys = problem_keys(site("max_connections_per_client = 0"));
        assert_eq!(keys, vec!["server.max_connections_per_client"]);
    }
}
