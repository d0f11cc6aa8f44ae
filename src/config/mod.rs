//! Configuration: the TOML file (`raw`) turned into a validated model that the rest of Kagami uses.
//!
//! Validation collects every problem with its key, so that `kagami check-config` can list them all
//! at once: municipal staff fix a file in one pass instead of one error per run.

mod acme;
mod admin;
#[cfg(test)]
mod example;
mod hints;
mod raw;
mod site;
mod tls;
pub mod units;
mod validate;

pub use acme::{dns_names, AcmeConfig};
pub use admin::AdminConfig;
pub use site::{CookiePolicy, OriginProtection, OriginTimeouts, SiteConfig};
pub use tls::{SiteTls, ACME_CHALLENGE_PREFIX};

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use ipnet::IpNet;

use crate::limit::Rate;
use raw::RawConfig;
use units::{parse_duration, parse_size};
pub(crate) use validate::read_page;
use validate::validate;

/// The validated configuration of one Kagami process.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub cache: CacheConfig,
    pub log: LogConfig,
    pub limits: LimitsConfig,
    /// The admin API's listener; `None` (the default of `Config::new`, which tests use) starts
    /// none. A config file gets one on 127.0.0.1:9901 unless it says otherwise.
    pub admin: Option<AdminConfig>,
    /// Where certificates for sites with `acme = true` come from (`[acme]`).
    pub acme: Option<AcmeConfig>,
    pub sites: Vec<SiteConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    /// HTTPS listeners (certificates chosen by SNI from the sites' `tls_cert`).
    pub listen_tls: Vec<SocketAddr>,
    /// Time a client has to send a complete request head (slowloris defence). For HTTP/1 this
    /// also bounds how long a keep-alive connection may sit idle before its next request.
    pub header_read_timeout: Duration,
    /// Connections with no request under way and no response body progress for a whole period
    /// of this length are closed (checked once per period, so between one and two periods after
    /// the last request activity). Bytes sent without a request (HTTP/2 PING) do not count.
    pub idle_timeout: Duration,
    /// Tokio worker threads; `None` means one per core.
    pub worker_threads: Option<usize>,
    /// Largest request head (HTTP/1 read buffer, HTTP/2 header list); larger heads get 431.
    pub max_header_size: u64,
    /// Most header fields in an HTTP/1 request.
    pub max_headers: usize,
    /// Largest request body relayed to an origin; larger ones get 413.
    pub max_request_body: u64,
    /// Client connections open at once; further ones wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Connections open at once from one client address (IPv6: one /64); trusted proxies are
    /// exempt. Further connections from that address are closed at once.
    pub max_connections_per_client: usize,
    /// Requests handled at once; further ones get 503 at once.
    pub max_requests_in_flight: usize,
    /// HTTP/2 streams one connection may have open at once.
    pub h2_max_concurrent_streams: u32,
    /// On SIGTERM, how long requests in flight may take to finish; those still running then
    /// are answered 503 with Retry-After.
    pub drain_timeout: Duration,
}

/// Upper bound for counts such as connection caps (far above any real need, far below what
/// would overflow the semaphores behind them).
pub(crate) const MAX_COUNT: usize = 1_000_000;

/// Per-client rate limits and who counts as a client.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Proxies whose X-Forwarded-For / Forwarded is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Default budget for answers from the cache (`None` = unlimited).
    pub hits: Option<Rate>,
    /// Default budget for requests that would reach the origin.
    pub misses: Option<Rate>,
    /// Bound on the clients each limiter remembers.
    pub max_clients: usize,
    /// The body of 429 answers.
    pub page_429: Bytes,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            trusted_proxies: Vec::new(),
            hits: Some(Rate {
                per_second: 500.0,
                burst: 1000,
            }),
            misses: Some(Rate {
                per_second: 50.0,
                burst: 100,
            }),
            max_clients: 100_000,
            page_429: Bytes::from_static(PAGE_429.as_bytes()),
        }
    }
}

const PAGE_429: &str = "<!doctype html><html lang=\"ja\"><head><meta charset=\"utf-8\">\
<title>アクセスが集中しています / Too many requests</title></head><body>\
<h1>アクセスが集中しています</h1><p>しばらく待ってから、もう一度お試しください。</p>\
<h1 lang=\"en\">Too many requests</h1><p lang=\"en\">Please wait a moment and try again.</p>\
</body></html>\n";

#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Upper bound of the in-memory store, bodies and headers included.
    pub memory: u64,
    /// Upper bound of body bytes held in flight (fills being read, chunks waiting for slow
    /// clients, shared error bodies); `None` means the default (see `Config::inflight_memory`).
    pub inflight_memory: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// One `kagami::access` line per request.
    pub access: bool,
    /// How log lines are written to stdout.
    pub format: LogFormat,
}

/// `log.format`: lines for people, or one JSON object per line for a log collector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Config {
    /// A config with default server and cache settings serving `sites` on `listen`.
    pub fn new(listen: Vec<SocketAddr>, sites: Vec<SiteConfig>) -> Config {
        Config {
            server: ServerConfig {
                listen,
                listen_tls: Vec::new(),
                header_read_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(60),
                worker_threads: None,
                max_header_size: 16 * 1024,
                max_headers: 100,
                max_request_body: 10 << 20,
                max_connections: 10_000,
                // Generous: whole neighbourhoods share one address behind carrier-grade NAT.
                max_connections_per_client: 1_000,
                max_requests_in_flight: 10_000,
                h2_max_concurrent_streams: 100,
                drain_timeout: Duration::from_secs(10),
            },
            cache: CacheConfig {
                memory: 256 << 20,
                inflight_memory: None,
            },
            log: LogConfig {
                access: true,
                format: LogFormat::Text,
            },
            limits: LimitsConfig::default(),
            admin: None,
            acme: None,
            sites,
        }
    }

    /// The in-flight budget: as configured, else a quarter of `cache.memory` but never less
    /// than the largest `max_object_size` (so that any storable object can be filled).
    pub fn inflight_memory(&self) -> u64 {
        self.cache.inflight_memory.unwrap_or_else(|| {
            let largest = self.sites.iter().map(|s| s.max_object_size).max();
            (self.cache.memory / 4).max(largest.unwrap_or(0))
        })
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
            message: hints::explain(text, &e),
        })?;
        validate(raw, path)
    }
}

/// One problem in a config file: the key it is about and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub reason: String,
    /// The `name` of the site a `site[i]` key is about, for people who think in names.
    pub site: Option<String>,
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
        out.push_str(&format!("\n  {}: {p}", path.display()));
    }
    out
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.site {
            Some(name) => write!(f, "{} (site {name:?}): {}", self.key, self.reason),
            None => write!(f, "{}: {}", self.key, self.reason),
        }
    }
}

#[derive(Default)]
pub(crate) struct Problems(Vec<Problem>);

impl Problems {
    pub(crate) fn add(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            reason: reason.into(),
            site: None,
        });
    }

    pub(crate) fn into_result(self, path: &Path) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems: self.0,
            })
        }
    }

    pub(crate) fn duration(
        &mut self,
        key: String,
        value: &Option<String>,
        default: Duration,
    ) -> Duration {
        match value {
            None => default,
            Some(text) => parse_duration(text).unwrap_or_else(|reason| {
                self.add(key, reason);
                default
            }),
        }
    }

    /// A rate with an optional burst; `"off"` disables it.
    pub(crate) fn rate(
        &mut self,
        key: String,
        value: &Option<String>,
        burst: Option<u32>,
        default: Option<Rate>,
    ) -> Option<Rate> {
        let rate = match value.as_deref().map(str::trim) {
            None => default,
            Some("off") => None,
            Some(text) => match Rate::parse(text) {
                Ok(rate) => Some(rate),
                Err(reason) => {
                    self.add(key.clone(), reason);
                    default
                }
            },
        };
        match (rate, burst) {
            (Some(rate), Some(0)) => {
                self.add(format!("{key}_burst"), "must be at least 1");
                Some(rate)
            }
            (Some(rate), Some(burst)) => Some(Rate { burst, ..rate }),
            (rate, _) => rate,
        }
    }

    pub(crate) fn size(&mut self, key: String, value: &Option<String>, default: u64) -> u64 {
        match value {
            None => default,
            Some(text) => parse_size(text).unwrap_or_else(|reason| {
                self.add(key, reason);
                default
            }),
        }
    }
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
    fn inflight_memory_defaults_to_a_quarter_of_memory_and_is_validated() {
        let config = Config::parse(MINIMAL, Path::new("k.toml")).unwrap();
        assert_eq!(config.inflight_memory(), 64 << 20);
        let small = MINIMAL.replace("memory = \"256MiB\"", "memory = \"32MiB\"");
        let config = Config::parse(&small, Path::new("k.toml")).unwrap();
        assert_eq!(
            config.inflight_memory(),
            32 << 20,
            "at least the largest max_object_size"
        );
        let set = MINIMAL.replace(
            "memory = \"256MiB\"",
            "memory = \"256MiB\"\ninflight_memory = \"48MiB\"",
        );
        let config = Config::parse(&set, Path::new("k.toml")).unwrap();
        assert_eq!(config.inflight_memory(), 48 << 20);

        let tiny = MINIMAL.replace(
            "memory = \"256MiB\"",
            "memory = \"256MiB\"\ninflight_memory = \"16MiB\"",
        );
        let keys: Vec<String> = problems_of(&tiny).into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            ["site[0].max_object_size"],
            "32MiB objects could never be filled"
        );
        let bad = MINIMAL.replace(
            "memory = \"256MiB\"",
            "memory = \"256MiB\"\ninflight_memory = \"100KiB\"",
        );
        let keys: Vec<String> = problems_of(&bad).into_iter().map(|p| p.key).collect();
        assert!(
            keys.contains(&"cache.inflight_memory".to_string()),
            "{keys:?}"
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Config::parse("[cache]\nmemroy = \"1GiB\"\n", Path::new("k.toml")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("k.toml") && text.contains("memroy"), "{text}");
    }

    #[test]
    fn only_forwarding_headers_kagami_does_not_set_may_be_passed() {
        let ok = format!("{MINIMAL}pass_forwarding_headers = [\"X-Forwarded-Prefix\"]\n");
        let config = Config::parse(&ok, Path::new("k.toml")).unwrap();
        assert_eq!(
            config.sites[0].pass_forwarding_headers,
            [http::HeaderName::from_static("x-forwarded-prefix")]
        );
        let bad = format!(
            "{MINIMAL}pass_forwarding_headers = [\"X-Forwarded-Host\", \"Accept\", \"a b\"]\n"
        );
        let keys: Vec<String> = problems_of(&bad).into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "site[0].pass_forwarding_headers[0]",
                "site[0].pass_forwarding_headers[1]",
                "site[0].pass_forwarding_headers[2]"
            ]
        );
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
        assert!(site::parse_origin("http://a.example/base/").is_err());
        assert!(site::parse_origin("https://a.example").is_ok());
    }
}
