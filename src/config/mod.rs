//! Configuration: the TOML file (`raw`) turned into a validated model that the rest of Kagami uses.
//!
//! Validation collects every problem with its key, so that `kagami check-config` can list them all
//! at once: municipal staff fix a file in one pass instead of one error per run.

mod raw;
pub mod units;

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderValue;

use crate::routing::HostPattern;
use raw::{RawConfig, RawSite};
use units::{parse_duration, parse_size};

/// The validated configuration of one Kagami process.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub cache: CacheConfig,
    pub log: LogConfig,
    pub sites: Vec<SiteConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    /// Time a client has to send a complete request head (slowloris defence). For HTTP/1 this
    /// also bounds how long a keep-alive connection may sit idle before its next request.
    pub header_read_timeout: Duration,
    /// Connections with no traffic in either direction for this long are closed.
    pub idle_timeout: Duration,
    /// Tokio worker threads; `None` means one per core.
    pub worker_threads: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Upper bound of the in-memory store, bodies and headers included.
    pub memory: u64,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// One `kagami::access` line per request.
    pub access: bool,
}

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

#[derive(Debug, Clone)]
pub struct OriginTimeouts {
    pub connect: Duration,
    /// From sending the request until the response head has arrived.
    pub response: Duration,
    /// Longest pause between two chunks of a response body.
    pub read: Duration,
}

/// One `[[site]]`: the hostnames Kagami answers for, where their origin is, and how to cache it.
#[derive(Debug, Clone)]
pub struct SiteConfig {
    pub name: String,
    pub hosts: Vec<HostPattern>,
    pub origin: reqwest::Url,
    /// `Host` sent to the origin; `None` forwards the client's `Host`.
    pub origin_host: Option<HeaderValue>,
    /// Operator override: how long past expiry a stored copy may be served while the origin is
    /// failing, even when the response said `must-revalidate`. Zero restores strict RFC behaviour.
    pub grace: Duration,
    /// stale-while-revalidate window used when the origin sends none (zero = off).
    pub stale_while_revalidate: Duration,
    /// stale-if-error window used when the origin sends none (zero = off).
    pub stale_if_error: Duration,
    /// Cap on heuristic freshness (10 % of the time since Last-Modified).
    pub heuristic_max: Duration,
    /// Freshness given to heuristically cacheable responses that carry neither explicit
    /// freshness nor Last-Modified.
    pub default_ttl: Duration,
    pub max_object_size: u64,
    pub cache_cookies: CookiePolicy,
    pub timeouts: OriginTimeouts,
    /// After an origin failure, how long stale copies are served without asking the origin.
    pub failure_backoff: Duration,
    /// How long a request waits for another request's fetch of the same page.
    pub coalesce_timeout: Duration,
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
        let site = validate_site(&raw, "site[0]", &mut problems);
        problems.into_result(Path::new("<code>"))?;
        site.ok_or_else(|| ConfigError::Invalid {
            path: PathBuf::from("<code>"),
            problems: Vec::new(),
        })
    }
}

impl Config {
    /// A config with default server and cache settings serving `sites` on `listen`.
    pub fn new(listen: Vec<SocketAddr>, sites: Vec<SiteConfig>) -> Config {
        Config {
            server: ServerConfig {
                listen,
                header_read_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(60),
                worker_threads: None,
            },
            cache: CacheConfig { memory: 256 << 20 },
            log: LogConfig { access: true },
            sites,
        }
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Validates config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        validate(raw, path)
    }
}

/// One problem in a config file: the key it is about and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// TOML syntax errors and unknown keys: the message names the line and the key.
    #[error("{}: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("{}", format_problems(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn format_problems(path: &Path, problems: &[Problem]) -> String {
    let mut out = format!("{}: {} problem(s):", path.display(), problems.len());
    for p in problems {
        out.push_str(&format!("\n  {}: {}: {}", path.display(), p.key, p.reason));
    }
    out
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            reason: reason.into(),
        });
    }

    fn into_result(self, path: &Path) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems: self.0,
            })
        }
    }

    fn duration(&mut self, key: String, value: &Option<String>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(text) => parse_duration(text).unwrap_or_else(|reason| {
                self.add(key, reason);
                default
            }),
        }
    }

    fn size(&mut self, key: String, value: &Option<String>, default: u64) -> u64 {
        match value {
            None => default,
            Some(text) => parse_size(text).unwrap_or_else(|reason| {
                self.add(key, reason);
                default
            }),
        }
    }
}

fn validate(raw: RawConfig, path: &Path) -> Result<Config, ConfigError> {
    let mut problems = Problems::default();
    let mut config = Config::new(Vec::new(), Vec::new());

    let server = raw.server.unwrap_or_default();
    let listen = server
        .listen
        .unwrap_or_else(|| vec!["127.0.0.1:8080".to_string()]);
    if listen.is_empty() {
        problems.add(
            "server.listen",
            "needs at least one address such as \"0.0.0.0:80\"",
        );
    }
    for (i, addr) in listen.iter().enumerate() {
        match addr.parse::<SocketAddr>() {
            Ok(a) => config.server.listen.push(a),
            Err(_) => problems.add(
                format!("server.listen[{i}]"),
                format!("{addr:?} is not an IP:port address such as \"0.0.0.0:80\" or \"[::]:80\""),
            ),
        }
    }
    config.server.header_read_timeout = problems.duration(
        "server.header_read_timeout".into(),
        &server.header_read_timeout,
        config.server.header_read_timeout,
    );
    config.server.idle_timeout = problems.duration(
        "server.idle_timeout".into(),
        &server.idle_timeout,
        config.server.idle_timeout,
    );
    for (key, value) in [
        (
            "server.header_read_timeout",
            config.server.header_read_timeout,
        ),
        ("server.idle_timeout", config.server.idle_timeout),
    ] {
        if value.is_zero() && !problems.0.iter().any(|p| p.key == key) {
            problems.add(key, "must be longer than 0s");
        }
    }
    if server.worker_threads == Some(0) {
        problems.add(
            "server.worker_threads",
            "must be at least 1 (omit it for one per core)",
        );
    }
    config.server.worker_threads = server.worker_threads.filter(|n| *n > 0);

    let cache = raw.cache.unwrap_or_default();
    config.cache.memory = problems.size("cache.memory".into(), &cache.memory, config.cache.memory);
    if config.cache.memory < 1 << 20 {
        problems.add("cache.memory", "must be at least 1MiB");
    }
    config.log.access = raw.log.and_then(|l| l.access).unwrap_or(true);

    if raw.site.is_empty() {
        problems.add(
            "site",
            "no [[site]] table: add one with name, hosts and origin",
        );
    }
    let mut names = HashSet::new();
    let mut hosts = HashSet::new();
    for (i, raw_site) in raw.site.iter().enumerate() {
        let prefix = format!("site[{i}]");
        if let Some(site) = validate_site(raw_site, &prefix, &mut problems) {
            if !names.insert(site.name.clone()) {
                problems.add(
                    format!("{prefix}.name"),
                    format!("{:?} is used by another site", site.name),
                );
            }
            for host in &site.hosts {
                if !hosts.insert(host.to_string()) {
                    problems.add(
                        format!("{prefix}.hosts"),
                        format!("{host} is listed by another site"),
                    );
                }
            }
            if site.max_object_size > config.cache.memory {
                problems.add(
                    format!("{prefix}.max_object_size"),
                    "is larger than cache.memory; objects that size could never be stored",
                );
            }
            config.sites.push(site);
        }
    }
    problems.into_result(path)?;
    Ok(config)
}

fn validate_site(raw: &RawSite, prefix: &str, problems: &mut Problems) -> Option<SiteConfig> {
    let key = |k: &str| format!("{prefix}.{k}");
    let name = match raw.name.as_deref().map(str::trim) {
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
    let origin = match &raw.origin {
        None => {
            problems.add(
                key("origin"),
                "missing: the URL of the real web server, e.g. \"http://10.0.0.5:80\"",
            );
            None
        }
        Some(text) => match parse_origin(text) {
            Ok(url) => Some(url),
            Err(reason) => {
                problems.add(key("origin"), reason);
                None
            }
        },
    };
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
    // Keep validating with a placeholder so every other problem is reported too.
    let origin_ok = origin.is_some();
    let placeholder = reqwest::Url::parse("http://invalid.invalid/").ok()?;
    let site = SiteConfig {
        name,
        hosts,
        origin: origin.unwrap_or(placeholder),
        origin_host,
        grace: problems.duration(key("grace"), &raw.grace, Duration::from_secs(7 * 86_400)),
        stale_while_revalidate: problems.duration(
            key("stale_while_revalidate"),
            &raw.stale_while_revalidate,
            Duration::ZERO,
        ),
        stale_if_error: problems.duration(
            key("stale_if_error"),
            &raw.stale_if_error,
            Duration::ZERO,
        ),
        heuristic_max: problems.duration(
            key("heuristic_max"),
            &raw.heuristic_max,
            Duration::from_secs(86_400),
        ),
        default_ttl: problems.duration(key("default_ttl"), &raw.default_ttl, Duration::ZERO),
        max_object_size: problems.size(key("max_object_size"), &raw.max_object_size, 32 << 20),
        cache_cookies,
        timeouts: OriginTimeouts {
            connect: problems.duration(
                key("connect_timeout"),
                &raw.connect_timeout,
                Duration::from_secs(5),
            ),
            response: problems.duration(
                key("response_timeout"),
                &raw.response_timeout,
                Duration::from_secs(30),
            ),
            read: problems.duration(
                key("read_timeout"),
                &raw.read_timeout,
                Duration::from_secs(30),
            ),
        },
        failure_backoff: problems.duration(
            key("failure_backoff"),
            &raw.failure_backoff,
            Duration::from_secs(2),
        ),
        coalesce_timeout: problems.duration(
            key("coalesce_timeout"),
            &raw.coalesce_timeout,
            Duration::from_secs(10),
        ),
    };
    for (k, v) in [
        ("connect_timeout", site.timeouts.connect),
        ("response_timeout", site.timeouts.response),
        ("read_timeout", site.timeouts.read),
        ("coalesce_timeout", site.coalesce_timeout),
    ] {
        if v.is_zero() {
            problems.add(key(k), "must be longer than 0s");
        }
    }
    if site.max_object_size == 0 {
        problems.add(key("max_object_size"), "must be larger than 0");
    }
    origin_ok.then_some(site)
}

fn parse_origin(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text.trim())
        .map_err(|e| format!("{text:?} is not a URL ({e}); write e.g. \"http://10.0.0.5:80\""))?;
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
    use super::*;

    const MINIMAL: &str = r#"
[server]
listen = ["127.0.0.1:8080"]

[cache]
memory = "256MiB"

[[site]]
name = "iwate"
hosts = ["www.pref.iwate.example", "127.0.0.1:8080"]
origin = "http://127.0.0.1:8081"
"#;

    fn problems_of(text: &str) -> Vec<Problem> {
        match Config::parse(text, Path::new("k.toml")) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected invalid config, got {other:?}"),
        }
    }

    #[test]
    fn minimal_file_from_the_issue_works_with_defaults() {
        let config = Config::parse(MINIMAL, Path::new("k.toml")).unwrap();
        assert_eq!(
            config.server.listen,
            vec!["127.0.0.1:8080".parse().unwrap()]
        );
        assert_eq!(config.cache.memory, 256 << 20);
        let site = &config.sites[0];
        assert_eq!(site.name, "iwate");
        assert_eq!(site.hosts.len(), 2);
        assert_eq!(site.grace, Duration::from_secs(7 * 86_400));
        assert_eq!(site.stale_while_revalidate, Duration::ZERO);
        assert_eq!(site.cache_cookies, CookiePolicy::Never);
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let problems = problems_of(
            r#"
[server]
listen = ["nowhere"]
[cache]
memory = "lots"
[[site]]
hosts = []
origin = "ftp://x"
grace = "forever"
"#,
        );
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "server.listen[0]",
            "cache.memory",
            "site[0].name",
            "site[0].hosts",
            "site[0].origin",
        ] {
            assert!(keys.contains(&key), "missing {key} in {keys:?}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Config::parse("[cache]\nmemroy = \"1GiB\"\n", Path::new("k.toml")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("k.toml") && text.contains("memroy"), "{text}");
    }

    #[test]
    fn duplicate_hosts_and_names_are_rejected() {
        let text = format!("{MINIMAL}\n[[site]]\nname = \"iwate\"\nhosts = [\"www.pref.iwate.example\"]\norigin = \"http://127.0.0.1:9\"\n");
        let problems = problems_of(&text);
        assert!(problems.iter().any(|p| p.key == "site[1].name"));
        assert!(problems.iter().any(|p| p.key == "site[1].hosts"));
    }

    #[test]
    fn origin_with_path_is_rejected() {
        assert!(parse_origin("http://a.example/base/").is_err());
        assert!(parse_origin("https://a.example").is_ok());
    }
}
