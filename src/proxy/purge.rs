//! Purging one URL (the admin API's `POST /purge`): the URL is routed and keyed exactly as a
//! request for it would be, for both schemes.

use std::collections::BTreeSet;

use http::Uri;

use super::tls::HTTPS_KEY_SUFFIX;
use super::Proxy;
use crate::routing::{target, Authority};

impl Proxy {
    /// Marks stale (`soft`) or removes every stored variant of `url`, as requested over http
    /// or https, with or without one of `listener_ports` in its Host. Returns how many stored
    /// objects (variants) were affected, or why the URL is not one Kagami serves.
    pub fn purge_url(
        &self,
        url: &str,
        soft: bool,
        listener_ports: &[u16],
    ) -> Result<usize, String> {
        let uri: Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
        let default_port = match uri.scheme_str() {
            Some("http") => 80,
            Some("https") => 443,
            _ => return Err("the URL must start with http:// or https://".to_string()),
        };
        let authority = uri.authority().ok_or("the URL needs a host")?;
        let authority = Authority::parse(authority.as_str()).map_err(|e| e.to_string())?;
        let index = self
            .router
            .route(&authority, default_port)
            .ok_or_else(|| format!("no site is configured for host {:?}", authority.to_string()))?;
        let site = &self.sites[index];
        let raw = uri.path_and_query().map_or("/", |p| p.as_str());
        let target =
            target::canonical(raw).map_err(|_| "the URL's path is not valid".to_string())?;
        let mut keys = BTreeSet::new();
        for default in [80, 443] {
            let hosts = std::iter::once(authority.normalised(default))
                .chain((listener_ports.iter()).map(|port| authority.normalised_on(default, *port)));
            for host in hosts {
                let key = site.key(&host, &target);
                keys.insert(format!("{key}{HTTPS_KEY_SUFFIX}"));
                keys.insert(key);
            }
        }
        let affected = keys
            .iter()
            .map(|key| match soft {
                true => self.store.mark_stale(key),
                false => self.store.remove(key),
            })
            .sum();
        Ok(affected)
    }

    /// URLs and bytes held by the memory tier.
    pub fn store_usage(&self) -> (u64, u64) {
        (self.store.entry_count(), self.store.weighted_size())
    }
}
