//! The config file exactly as serde reads it: every value optional or a string, so that
//! validation (in `config::validate`) can report every problem at once with its key.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub server: Option<RawServer>,
    pub cache: Option<RawCache>,
    pub log: Option<RawLog>,
    #[serde(default)]
    pub site: Vec<RawSite>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Vec<String>>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub worker_threads: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub memory: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub access: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSite {
    pub name: Option<String>,
    pub hosts: Option<Vec<String>>,
    pub origin: Option<String>,
    pub origin_host: Option<String>,
    pub grace: Option<String>,
    pub stale_while_revalidate: Option<String>,
    pub stale_if_error: Option<String>,
    pub heuristic_max: Option<String>,
    pub default_ttl: Option<String>,
    pub max_object_size: Option<String>,
    pub cache_cookies: Option<String>,
    pub connect_timeout: Option<String>,
    pub response_timeout: Option<String>,
    pub read_timeout: Option<String>,
    pub failure_backoff: Option<String>,
    pub coalesce_timeout: Option<String>,
}
