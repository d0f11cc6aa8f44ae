//! The config file exactly as serde reads it: every value optional or a string, so that
//! validation (in `config::validate`) can report every problem at once with its key.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub server: Option<RawServer>,
    pub cache: Option<RawCache>,
    pub log: Option<RawLog>,
    pub limits: Option<RawLimits>,
    pub admin: Option<RawAdmin>,
    pub acme: Option<RawAcme>,
    #[serde(default)]
    pub site: Vec<RawSite>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Vec<String>>,
    pub listen_tls: Option<Vec<String>>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub worker_threads: Option<usize>,
    pub max_header_size: Option<String>,
    pub max_headers: Option<usize>,
    pub max_request_body: Option<String>,
    pub max_connections: Option<usize>,
    pub max_connections_per_client: Option<usize>,
    pub max_requests_in_flight: Option<usize>,
    pub h2_max_concurrent_streams: Option<u32>,
    pub drain_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub trusted_proxies: Option<Vec<String>>,
    pub hits: Option<String>,
    pub hits_burst: Option<u32>,
    pub misses: Option<String>,
    pub misses_burst: Option<u32>,
    pub max_clients: Option<usize>,
    pub page_429: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub memory: Option<String>,
    pub inflight_memory: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub access: Option<bool>,
    pub format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSite {
    pub name: Option<String>,
    pub hosts: Option<Vec<String>>,
    pub origin: Option<String>,
    pub origins: Option<Vec<String>>,
    pub origin_host: Option<String>,
    pub pass_forwarding_headers: Option<Vec<String>>,
    pub grace: Option<String>,
    pub strict: Option<bool>,
    pub stale_while_revalidate: Option<String>,
    pub stale_if_error: Option<String>,
    pub heuristic_max: Option<String>,
    pub default_ttl: Option<String>,
    pub negative_ttl: Option<String>,
    pub max_object_size: Option<String>,
    pub cache_cookies: Option<String>,
    pub connect_timeout: Option<String>,
    pub response_timeout: Option<String>,
    pub read_timeout: Option<String>,
    pub failure_backoff: Option<String>,
    pub coalesce_timeout: Option<String>,
    pub origin_concurrency: Option<usize>,
    pub origin_concurrency_per_client: Option<usize>,
    pub origin_queue_timeout: Option<String>,
    pub adaptive_concurrency: Option<bool>,
    pub origin_patience: Option<String>,
    pub circuit_failures: Option<u32>,
    pub circuit_open: Option<String>,
    pub health_path: Option<String>,
    pub health_interval: Option<String>,
    pub emergency_page: Option<String>,
    pub emergency_html: Option<String>,
    pub limit_hits: Option<String>,
    pub limit_hits_burst: Option<u32>,
    pub limit_misses: Option<String>,
    pub limit_misses_burst: Option<u32>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub https_redirect: Option<bool>,
    pub hsts: Option<String>,
    pub origin_ca: Option<String>,
    pub acme: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    pub directory: Option<String>,
    pub email: Option<String>,
    pub state_dir: Option<String>,
    pub ca_bundle: Option<String>,
}
