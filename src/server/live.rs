//! The configuration being served, replaceable while serving: a reload (SIGHUP, `POST /reload`)
//! re-reads the config file, builds the successor proxy (`Proxy::reloaded`: same store, same
//! origin state for unchanged origins), swaps in the new certificates and then the proxy.
//! Listeners and the admin API read the current proxy per request, so new requests see the new
//! config while requests and downloads in flight finish on the proxy they started on.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use tokio::sync::watch;

use crate::config::{Config, ConfigError, SiteConfig};
use crate::proxy::{BuildError, Proxy};
use crate::tls::{CertTable, SniResolver};

/// The proxy now serving, its certificates, and what a reload needs to build the next one.
pub struct Live {
    proxy: ArcSwap<Proxy>,
    certificates: Option<Arc<SniResolver>>,
    /// The config the process was started with: settings only a restart applies are compared
    /// against it, so a reload keeps saying so until the restart happens. The lock also keeps
    /// two reloads (a SIGHUP and a `POST /reload`) from interleaving.
    started: tokio::sync::Mutex<Config>,
    /// The file a reload re-reads (`None` for configs built in code: tests, the demo).
    path: Option<PathBuf>,
    /// Tells the ACME manager, if one runs, the sites with `acme = true` after each reload.
    acme_sites: watch::Sender<Vec<SiteConfig>>,
}

/// What a successful reload changed, by site name.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadReport {
    /// Sites in the new file only.
    pub added: Vec<String>,
    /// Sites in the old config only; their stored pages stay until evicted or purged.
    pub removed: Vec<String>,
    /// Sites in both: they serve with their new settings.
    pub kept: Vec<String>,
    /// Of `kept`, those whose origin state (pool, circuits, health, adaptive limit) carried
    /// over because nothing about their origin changed.
    pub origin_state_kept: Vec<String>,
    /// Sites with a certificate in the new table.
    pub certificates: usize,
    /// Keys whose new value needs a restart; the running value stays until then.
    pub needs_restart: Vec<&'static str>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no config file to re-read: this Kagami was started from a config built in code")]
    NoFile,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Build(#[from] BuildError),
}

impl ReloadError {
    /// Every problem, one line each, worded as `kagami check-config` words them.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ReloadError::Config(ConfigError::Invalid { path, problems }) => problems
                .iter()
                .map(|p| format!("{}: {p}", path.display()))
                .collect(),
            other => vec![other.to_string()],
        }
    }
}

impl Live {
    pub(super) fn new(
        proxy: Arc<Proxy>,
        certificates: Option<Arc<SniResolver>>,
        started: Config,
        path: Option<PathBuf>,
        acme_sites: watch::Sender<Vec<SiteConfig>>,
    ) -> Live {
        Live {
            proxy: ArcSwap::new(proxy),
            certificates,
            started: tokio::sync::Mutex::new(started),
            path,
            acme_sites,
        }
    }

    /// The proxy new requests go to.
    pub fn proxy(&self) -> Arc<Proxy> {
        self.proxy.load_full()
    }

    /// [`Live::proxy`] for the length of one call: a hit is answered within its service call,
    /// and this takes no reference count (two atomic operations per request) unless the guard
    /// is kept long or many are held at once. Work that outlives the call clones the `Arc`.
    pub fn proxy_now(&self) -> arc_swap::Guard<Arc<Proxy>> {
        self.proxy.load()
    }

    /// Re-reads the config file and applies it; logs the outcome either way.
    pub async fn reload_file(&self) -> Result<ReloadReport, ReloadError> {
        let Some(path) = self.path.clone() else {
            tracing::error!("reload refused: {}", ReloadError::NoFile);
            return Err(ReloadError::NoFile);
        };
        // Certificate files are read and checked too: blocking work, off the runtime's threads.
        let loaded = tokio::task::spawn_blocking(move || Config::load(&path)).await;
        let loaded = match loaded {
            Ok(loaded) => loaded,
            // Loading panicked: the old config stays, and the panic is logged by tokio.
            Err(err) => Err(ConfigError::Io {
                path: self.path.clone().unwrap_or_default(),
                source: std::io::Error::other(err.to_string()),
            }),
        };
        match loaded {
            Ok(config) => self.reload(&config).await,
            Err(err) => {
                let err = ReloadError::from(err);
                log_refusal(&err);
                Err(err)
            }
        }
    }

    /// Applies `config` for new requests; logs the outcome either way.
    pub async fn reload(&self, config: &Config) -> Result<ReloadReport, ReloadError> {
        let started = self.started.lock().await;
        let old = self.proxy();
        let proxy = match old.reloaded(config) {
            Ok(proxy) => Arc::new(proxy),
            Err(err) => {
                let err = ReloadError::from(err);
                log_refusal(&err);
                return Err(err);
            }
        };
        let mut report = report(&old, &proxy);
        report.needs_restart = needs_restart(&started, config);
        if let Some(resolver) = &self.certificates {
            crate::tls::log_expiry(config);
            resolver.replace(CertTable::new(&config.sites));
        }
        report.certificates = config.sites.iter().filter(|s| s.tls.cert.is_some()).count();
        let names: Vec<&str> = config.sites.iter().map(|s| s.name.as_str()).collect();
        proxy.stats.origin_limits.retain(&names);
        self.proxy.store(proxy);
        // After the swap, so that an added site is served (plain HTTP) before its certificate.
        self.acme_sites
            .send_replace(crate::tls::acme::acme_sites(config));
        for key in &report.needs_restart {
            tracing::warn!(
                key,
                "config reload: {key} changed, which needs a restart; the running value stays \
                 until then"
            );
        }
        tracing::info!(
            added = ?report.added,
            removed = ?report.removed,
            kept = report.kept.len(),
            origin_state_kept = report.origin_state_kept.len(),
            certificates = report.certificates,
            "config reloaded: new requests use it"
        );
        Ok(report)
    }
}

fn log_refusal(err: &ReloadError) {
    for problem in err.problems() {
        tracing::error!("config reload refused, the old config keeps serving: {problem}");
    }
}

fn report(old: &Proxy, new: &Proxy) -> ReloadReport {
    let find = |proxy: &Proxy, name: &str| {
        (proxy.sites().iter())
            .find(|s| s.config.name == name)
            .map(|s| s.origin.clone())
    };
    let mut report = ReloadReport::default();
    for site in new.sites() {
        let name = site.config.name.clone();
        match find(old, &name) {
            None => report.added.push(name),
            Some(origin) => {
                if Arc::ptr_eq(&origin, &site.origin) {
                    report.origin_state_kept.push(name.clone());
                }
                report.kept.push(name);
            }
        }
    }
    for site in old.sites() {
        if find(new, &site.config.name).is_none() {
            report.removed.push(site.config.name.clone());
        }
    }
    report
}

/// The keys whose running value is fixed at start: listeners, the runtime, connection
/// handling, the store's size and the admin API.
fn needs_restart(started: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&started.server, &new.server);
    let fixed = [
        ("server.listen", a.listen != b.listen),
        ("server.listen_tls", a.listen_tls != b.listen_tls),
        (
            "server.worker_threads",
            a.worker_threads != b.worker_threads,
        ),
        (
            "server.header_read_timeout",
            a.header_read_timeout != b.header_read_timeout,
        ),
        ("server.idle_timeout", a.idle_timeout != b.idle_timeout),
        (
            "server.max_header_size",
            a.max_header_size != b.max_header_size,
        ),
        ("server.max_headers", a.max_headers != b.max_headers),
        (
            "server.max_connections",
            a.max_connections != b.max_connections,
        ),
        (
            "server.max_connections_per_client",
            a.max_connections_per_client != b.max_connections_per_client,
        ),
        (
            "server.h2_max_concurrent_streams",
            a.h2_max_concurrent_streams != b.h2_max_concurrent_streams,
        ),
        ("server.drain_timeout", a.drain_timeout != b.drain_timeout),
        ("cache.memory", started.cache.memory != new.cache.memory),
        (
            "cache.inflight_memory",
            started.inflight_memory() != new.inflight_memory(),
        ),
        // The sites with `acme = true` follow a reload; the CA, account and state_dir do not.
        ("acme", started.acme != new.acme),
        (
            // Requests use the new list at once; the per-client connection cap's exemption
            // was fixed when the listeners started.
            "limits.trusted_proxies (connection cap)",
            started.limits.trusted_proxies != new.limits.trusted_proxies,
        ),
        (
            "admin.listen",
            started.admin.as_ref().map(|a| a.listen) != new.admin.as_ref().map(|a| a.listen),
        ),
        (
            "admin.token",
            started.admin.as_ref().map(|a| &a.token) != new.admin.as_ref().map(|a| &a.token),
        ),
    ];
    fixed
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SiteConfig;

    fn config() -> Config {
        let site = SiteConfig::new("a", &["a.test"], "http://127.0.0.1:1").unwrap();
        Config::new(vec!["127.0.0.1:0".parse().unwrap()], vec![site])
    }

    #[test]
    fn only_settings_fixed_at_start_need_a_restart() {
        let started = config();
        let mut new = config();
        new.server.max_request_body = 1;
        new.log.access = false;
        // Sites, ACME ones included, follow a reload.
        new.sites[0].tls.acme = true;
        assert!(needs_restart(&started, &new).is_empty());
        new.server.listen = vec!["127.0.0.1:1".parse().unwrap()];
        new.cache.memory = 1 << 20;
        new.acme = Some(crate::config::AcmeConfig {
            directory: "https://127.0.0.1:14000/dir".into(),
            email: None,
            state_dir: "acme".into(),
            ca_bundle: Vec::new(),
            ca_bundle_file: None,
        });
        assert_eq!(
            needs_restart(&started, &new),
            [
                "server.listen",
                "cache.memory",
                "cache.inflight_memory",
                "acme"
            ]
        );
    }

    #[test]
    fn problems_are_listed_one_per_line_as_check_config_does() {
        let text = "[[site]]\nname = \"a\"\nhosts = []\norigin = \"ftp://x\"\n";
        let err = Config::parse(text, std::path::Path::new("k.toml")).unwrap_err();
        let problems = ReloadError::from(err).problems();
        assert!(problems.len() >= 2, "{problems:?}");
        assert!(problems.iter().all(|p| p.starts_with("k.toml: site[0]")));
    }
}
