//! One origin client, and so one connection pool, per origin (issue 9, "one pool per site": 500
//! sites on one origin each had a client of their own and together opened about 4,100 origin
//! connections).
//!
//! Sites share a client when they have the same origin servers and the same client settings.
//! Only the connect and read timeouts are client settings (reqwest sets them per client, not
//! per request); everything else a site changes (Host, headers, response timeout) is per
//! request. Two sites on one origin with different timeouts therefore still get two clients,
//! and two pools. Anything that becomes a per-site client setting later (TLS options, say) must
//! join `Key`, or one site's setting would silently apply to another (`origin_ca` does).
//!
//! Inside a client, reqwest keeps idle connections per origin host, at most `idle_cap`: the
//! largest `origin_concurrency` (at least 8) among the sites sharing it. That is about what the
//! busiest of them can use at once; connections a burst opened beyond it are closed when they
//! fall idle instead of lingering for a minute.

use std::collections::HashMap;
use std::time::Duration;

use crate::config::SiteConfig;

/// Fewest idle connections kept per origin host, however small the sites' caps.
const MIN_IDLE: usize = 8;

/// What makes two sites' origin clients interchangeable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    /// `scheme://host:port` of each origin server, sorted.
    origins: Vec<String>,
    connect: Duration,
    read: Duration,
    /// `origin_ca`: trust is a client setting, so only sites trusting the same CA file share.
    origin_ca: Option<std::path::PathBuf>,
}

impl Key {
    fn of(site: &SiteConfig) -> Key {
        let mut origins: Vec<String> = site
            .origins
            .iter()
            .map(|url| {
                format!(
                    "{}://{}:{}",
                    url.scheme(),
                    url.host_str().unwrap_or(""),
                    url.port_or_known_default().unwrap_or(0)
                )
            })
            .collect();
        origins.sort();
        origins.dedup();
        Key {
            origins,
            connect: site.timeouts.connect,
            read: site.timeouts.read,
            origin_ca: site.tls.origin_ca_file.clone(),
        }
    }
}

/// The origin clients of one proxy, shared between the sites that may share them.
#[derive(Default)]
pub struct Clients {
    /// The idle cap of each group of sites, known before any client is built.
    caps: HashMap<Key, usize>,
    clients: HashMap<Key, reqwest::Client>,
}

impl Clients {
    /// Prepares clients for `sites` (built on first use).
    pub fn for_sites(sites: &[SiteConfig]) -> Clients {
        let mut caps: HashMap<Key, usize> = HashMap::new();
        for site in sites {
            let cap = caps.entry(Key::of(site)).or_insert(MIN_IDLE);
            *cap = (*cap).max(site.protection.concurrency);
        }
        Clients {
            caps,
            clients: HashMap::new(),
        }
    }

    /// The client for `site`: the one its group already uses, else a new one.
    pub fn client(&mut self, site: &SiteConfig) -> Result<reqwest::Client, reqwest::Error> {
        let key = Key::of(site);
        if let Some(client) = self.clients.get(&key) {
            return Ok(client.clone());
        }
        let cap = self
            .caps
            .get(&key)
            .copied()
            .unwrap_or_else(|| site.protection.concurrency.max(MIN_IDLE));
        let client = build(&key, cap, &site.tls.origin_ca)?;
        self.clients.insert(key, client.clone());
        Ok(client)
    }

    /// Distinct clients built so far.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

fn build(
    key: &Key,
    idle_cap: usize,
    origin_ca: &[reqwest::Certificate],
) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        // Redirects are the client's business: a proxy relays them.
        .redirect(reqwest::redirect::Policy::none())
        // Never route origin traffic through an environment proxy.
        .no_proxy()
        .connect_timeout(key.connect)
        .read_timeout(key.read)
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(idle_cap)
        .tcp_nodelay(true);
    // `origin_ca`: a private CA trusted in addition to the public roots, for these origins
    // only. The origin URL's host is what the certificate must name (and the SNI).
    for ca in origin_ca {
        builder = builder.add_root_certificate(ca.clone());
    }
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(name: &str, origin: &str) -> SiteConfig {
        SiteConfig::new(name, &[&format!("{name}.example")], origin).unwrap()
    }

    #[test]
    fn sites_on_one_origin_share_a_client_unless_their_timeouts_differ() {
        let mut a = site("a", "http://10.0.0.1:8080/");
        let b = site("b", "http://10.0.0.1:8080");
        let other = site("c", "http://10.0.0.2:8080");
        let mut slow = site("d", "http://10.0.0.1:8080");
        slow.timeouts.read = Duration::from_secs(300);
        a.protection.concurrency = 100;
        assert_eq!(
            Key::of(&a),
            Key::of(&b),
            "a trailing slash is the same origin"
        );
        assert_ne!(Key::of(&a), Key::of(&other));
        assert_ne!(Key::of(&a), Key::of(&slow));
        let sites = [a, b, other, slow];
        let mut clients = Clients::for_sites(&sites);
        for s in &sites {
            clients.client(s).unwrap();
        }
        assert_eq!(clients.len(), 3);
        assert_eq!(clients.caps[&Key::of(&sites[0])], 100, "the largest cap");
        assert_eq!(clients.caps[&Key::of(&sites[2])], 32);
    }

    #[test]
    fn the_default_port_is_the_same_origin_and_backups_in_any_order_too() {
        let plain = site("a", "http://10.0.0.1");
        let explicit = site("b", "http://10.0.0.1:80");
        assert_eq!(Key::of(&plain), Key::of(&explicit));
        let mut one = site("c", "http://10.0.0.1");
        let mut two = site("d", "http://10.0.0.2");
        one.origins.push("http://10.0.0.2".parse().unwrap());
        two.origins.push("http://10.0.0.1".parse().unwrap());
        assert_eq!(Key::of(&one), Key::of(&two));
    }
}
