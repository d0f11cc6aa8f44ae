//! Building a proxy, from scratch or as the successor of a running one (a config reload): the
//! successor shares the store, the statistics, the in-flight budgets and counters, and keeps
//! each unchanged site's origin (its pool, circuit breakers, health checks and adaptive limit)
//! and rate limiters, so a reload forgets nothing that did not change.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use tokio::task::AbortHandle;

use crate::cache::coalesce::Coalescer;
use crate::cache::{MemoryStore, StoreSettings};
use crate::config::{Config, SiteConfig};
use crate::limit::{Limiter, Rate, TrustedProxies};
use crate::metrics::site::SiteMetrics;
use crate::metrics::Stats;
use crate::origin::{Clients, Origin};
use crate::routing::Router;

use super::{budget, headers, Proxy, Site};

#[derive(Debug, thiserror::Error)]
#[error("site {site}: cannot build its origin client: {source}")]
pub struct BuildError {
    site: String,
    source: reqwest::Error,
}

/// Builds the proxy for `config`; with `previous`, as its successor (see the module comment).
/// The previous proxy keeps serving the requests it has; its health checks are handed over
/// or stopped here, as they are only useful to the proxy that gets new requests.
pub(super) fn build(config: &Config, previous: Option<&Proxy>) -> Result<Proxy, BuildError> {
    let stats = previous.map_or_else(|| Arc::new(Stats::default()), |p| p.stats.clone());
    let mut sites = Vec::new();
    // Sites on the same origin share its connection pool.
    let mut clients = Clients::for_sites(&config.sites);
    for c in &config.sites {
        let kept = previous.and_then(|p| p.sites.iter().find(|s| s.config.name == c.name));
        let max_clients = config.limits.max_clients;
        let limiter = |rate: Option<Rate>, old: Option<&Option<Arc<Limiter>>>| {
            let rate = rate?;
            match old.and_then(Option::as_ref) {
                Some(limiter) if limiter.rate() == rate && max_clients == limiter.capacity() => {
                    Some(limiter.clone())
                }
                _ => Some(Arc::new(Limiter::new(rate, max_clients))),
            }
        };
        let hits = limiter(c.limit_hits, kept.map(|s| &s.hits));
        let misses = limiter(c.limit_misses, kept.map(|s| &s.misses));
        let (origin, health) = match kept.filter(|s| same_origin(&s.config, c)) {
            Some(old) => (old.origin.clone(), take_health(old)),
            None => {
                let client = clients.client(c).map_err(|source| BuildError {
                    site: c.name.clone(),
                    source,
                })?;
                let origin = Arc::new(Origin::with_client(c, client, stats.clone()));
                let health = match &c.protection.health_path {
                    Some(path) => origin.spawn_health_checks(path, c.protection.health_interval),
                    None => Vec::new(),
                };
                (origin, health)
            }
        };
        sites.push(Site {
            origin,
            settings: StoreSettings::of(c),
            hits,
            misses,
            health: Mutex::new(health),
            window: kept.map_or_else(Default::default, |s| s.window.clone()),
            metrics: kept.map_or_else(
                || Arc::new(SiteMetrics::new(&c.name)),
                |s| s.metrics.clone(),
            ),
            config: c.clone(),
        });
    }
    // Whatever the new sites did not take over belongs to origins nobody asks any more.
    for old in previous.iter().flat_map(|p| p.sites.iter()) {
        for task in take_health(old) {
            task.abort();
        }
    }
    let store = previous.map_or_else(
        || MemoryStore::new(config.cache.memory),
        |p| p.store.clone(),
    );
    let budget = previous.map_or_else(
        || budget::Budget::new(config.inflight_memory(), stats.clone()),
        |p| p.budget.clone(),
    );
    Ok(Proxy {
        router: Router::new(sites.iter().map(|s| s.config.hosts.as_slice())),
        sites,
        store,
        budget,
        // Tied to the connections' idle timeout, which only a restart changes.
        held_stall: previous.map_or(config.server.idle_timeout, |p| p.held_stall),
        stats,
        // Fills under way finish with the proxy that started them; a request arriving after
        // the swap joins the new proxy's fills (at worst one extra origin fetch per page).
        coalescer: Coalescer::default(),
        trusted: TrustedProxies::new(config.limits.trusted_proxies.clone()),
        page_429: config.limits.page_429.clone(),
        access_log: config.log.access,
        max_in_flight: config.server.max_requests_in_flight,
        max_request_body: config.server.max_request_body,
        in_flight: previous.map_or_else(|| Arc::new(AtomicUsize::new(0)), |p| p.in_flight.clone()),
        via: previous.map_or_else(|| headers::origin_via(instance_id()), |p| p.via.clone()),
        loop_logged: crate::metrics::Every::default(),
        // Challenges being answered and certificates obtained belong to the process, not to
        // one config; `Live` tells the ACME manager the sites of each reload.
        acme: previous.map_or_else(Arc::default, |p| p.acme.clone()),
        unrouted: previous.map_or_else(
            || Arc::new(SiteMetrics::new(crate::metrics::site::NO_SITE)),
            |p| p.unrouted.clone(),
        ),
    })
}

/// Can the new config of a site keep the old one's origin state (`Origin`: pool, breakers,
/// health, adaptive limit)? Only when nothing `Origin::with_client` or its client is built
/// from has changed. For `origin_ca` that is the certificates the file holds now, not only its
/// name: a file replaced under the same name is how new trust gets in on a reload.
fn same_origin(old: &SiteConfig, new: &SiteConfig) -> bool {
    old.origins == new.origins
        && old.origin_host == new.origin_host
        && old.hosts == new.hosts
        && old.timeouts == new.timeouts
        && old.protection == new.protection
        && old.failure_backoff == new.failure_backoff
        && old.tls.origin_ca_file == new.tls.origin_ca_file
        && old.tls.origin_ca_der == new.tls.origin_ca_der
}

fn take_health(site: &Site) -> Vec<AbortHandle> {
    match site.health.lock() {
        Ok(mut tasks) => std::mem::take(&mut *tasks),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    }
}

pub(super) fn abort_health(site: &mut Site) {
    let tasks = match site.health.get_mut() {
        Ok(tasks) => std::mem::take(tasks),
        Err(poisoned) => std::mem::take(poisoned.into_inner()),
    };
    for task in tasks {
        task.abort();
    }
}

impl Proxy {
    /// The successor of this proxy for `config` (a reload): see the module comment.
    /// `cache.memory` and `cache.inflight_memory` stay as they were (the store and the budget
    /// are kept); the caller reports them as needing a restart.
    pub fn reloaded(&self, config: &Config) -> Result<Proxy, BuildError> {
        build(config, Some(self))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for site in &mut self.sites {
            abort_health(site);
        }
    }
}

/// A random-enough identifier for this process (std's per-process hash seed plus the time).
fn instance_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(b_origin: &str, a_ttl: Duration) -> Config {
        let mut a = SiteConfig::new("a", &["a.test"], "http://127.0.0.1:1").unwrap();
        a.default_ttl = a_ttl;
        let b = SiteConfig::new("b", &["b.test"], b_origin).unwrap();
        Config::new(vec!["127.0.0.1:0".parse().unwrap()], vec![a, b])
    }

    #[tokio::test]
    async fn a_successor_keeps_what_did_not_change_and_shares_the_store() {
        let old = Proxy::new(&config("http://127.0.0.1:2", Duration::from_secs(1))).unwrap();
        let new = old
            .reloaded(&config("http://127.0.0.1:3", Duration::from_secs(9)))
            .unwrap();
        let (a, b) = (&new.sites[0], &new.sites[1]);
        // A caching setting is not an origin setting: a keeps its origin state.
        assert!(Arc::ptr_eq(&a.origin, &old.sites[0].origin));
        assert_eq!(a.config.default_ttl, Duration::from_secs(9));
        assert!(
            !Arc::ptr_eq(&b.origin, &old.sites[1].origin),
            "b's origin moved"
        );
        let (old_hits, new_hits) = (old.sites[0].hits.as_ref(), a.hits.as_ref());
        assert!(
            Arc::ptr_eq(old_hits.unwrap(), new_hits.unwrap()),
            "same rate, same budget"
        );
        assert!(Arc::ptr_eq(&old.stats, &new.stats));
        assert!(Arc::ptr_eq(&old.in_flight, &new.in_flight));
        assert!(Arc::ptr_eq(&old.budget, &new.budget));
        // One gauge per site, the rebuilt origin's.
        assert_eq!(new.stats.origin_limits.now().len(), 2);
    }

    #[test]
    fn an_origin_ca_keeps_the_origin_state_while_the_file_holds_the_same_certificates() {
        let with_ca = |der: &[u8]| {
            let mut site = SiteConfig::new("a", &["a.test"], "https://127.0.0.1:1").unwrap();
            site.tls.origin_ca_file = Some("ca.pem".into());
            site.tls.origin_ca_der = vec![der.to_vec().into()];
            site
        };
        assert!(same_origin(&with_ca(b"one"), &with_ca(b"one")));
        assert!(
            !same_origin(&with_ca(b"one"), &with_ca(b"two")),
            "replaced file"
        );
        let mut moved = with_ca(b"one");
        moved.tls.origin_ca_file = Some("other.pem".into());
        assert!(!same_origin(&with_ca(b"one"), &moved));
        let plain = SiteConfig::new("a", &["a.test"], "https://127.0.0.1:1").unwrap();
        assert!(!same_origin(&plain, &with_ca(b"one")));
    }
}
