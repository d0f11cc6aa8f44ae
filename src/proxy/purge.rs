//! Purging (the admin API's `POST /purge`): one URL, every URL under a prefix, a whole site,
//! or every response carrying a tag. URLs are routed and keyed exactly as a request for them
//! would be, for both schemes, so a purge reaches what requests would be served and nothing
//! of another site.

use std::collections::BTreeSet;

use http::Uri;

use super::tls::HTTPS_KEY_SUFFIX;
use super::{Proxy, Site};
use crate::cache::tags;
use crate::routing::{target, Authority};

/// What a purge is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purge {
    /// Every stored variant of one URL.
    Url(String),
    /// Every URL of the URL's host whose path (and query) starts with the URL's.
    Prefix(String),
    /// Everything stored for the site of that name.
    Site(String),
    /// Every response whose `Surrogate-Key` or `Cache-Tag` names the tag: on the site of
    /// that name, or on every site when none is given (tags are the origins' own words, so
    /// two municipalities may well both tag pages `evacuation`).
    Tag { tag: String, site: Option<String> },
}

/// Why a purge names nothing Kagami serves; nothing was changed. Every one is the caller's
/// mistake (the admin API answers 400, see `admin::purge_refused`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PurgeError {
    #[error("not a URL: {0}")]
    NotAUrl(String),
    #[error("the URL must start with http:// or https://")]
    Scheme,
    #[error("the URL needs a host")]
    NoHost,
    #[error("{0}")]
    BadHost(#[from] crate::routing::AuthorityError),
    #[error("no site is configured for host {0:?}")]
    NoSiteForHost(String),
    #[error("the URL's path is not valid")]
    BadPath,
    #[error("no site is named {0:?}")]
    UnknownSite(String),
    #[error("a tag is one word (no spaces or commas)")]
    BadTag,
}

impl Proxy {
    /// Marks stale (`soft`) or removes what `purge` names, as requested over http or https,
    /// with or without one of `listener_ports` in its Host. Returns how many stored objects
    /// (variants) were affected, or why the purge names nothing Kagami serves. Prefix, site
    /// and tag purges walk the store: call them off the async workers.
    pub fn purge(
        &self,
        purge: &Purge,
        soft: bool,
        listener_ports: &[u16],
    ) -> Result<usize, PurgeError> {
        let all = |_: &crate::cache::Entry| true;
        match purge {
            Purge::Url(url) => {
                let keys = self.url_keys(url, listener_ports)?;
                Ok(keys
                    .iter()
                    .map(|key| self.store.purge_key(key, &all, soft))
                    .sum())
            }
            Purge::Prefix(url) => {
                // Keys are `site NUL host NUL target [NUL https]`: the URL's key without a
                // scheme suffix is a prefix of exactly the keys under that target prefix.
                let prefixes = self.url_keys(url, listener_ports)?;
                let prefixes: Vec<&String> = (prefixes.iter())
                    .filter(|k| !k.ends_with(HTTPS_KEY_SUFFIX))
                    .collect();
                let under = |key: &str| prefixes.iter().any(|p| key.starts_with(p.as_str()));
                Ok(self.store.purge_where(&under, &all, soft))
            }
            Purge::Site(name) => {
                let prefix = site_prefix(self.site_named(name)?);
                Ok(self
                    .store
                    .purge_where(&|key| key.starts_with(&prefix), &all, soft))
            }
            Purge::Tag { tag, site } => {
                if tag.trim().is_empty() || tag.contains([' ', ',']) {
                    return Err(PurgeError::BadTag);
                }
                // Looked up before the walk: an unknown site purges nothing, not everything.
                let prefix = match site {
                    Some(name) => Some(site_prefix(self.site_named(name)?)),
                    None => None,
                };
                let under = |key: &str| prefix.as_ref().is_none_or(|p| key.starts_with(p));
                let tagged = |e: &crate::cache::Entry| tags::has_tag(&e.headers, tag);
                Ok(self.store.purge_where(&under, &tagged, soft))
            }
        }
    }

    fn site_named(&self, name: &str) -> Result<&Site, PurgeError> {
        (self.sites.iter())
            .find(|s| s.config.name == name)
            .ok_or_else(|| PurgeError::UnknownSite(name.to_string()))
    }

    /// Every key a request for `url` may be stored under: both schemes, the host with and
    /// without one of `listener_ports`.
    fn url_keys(&self, url: &str, listener_ports: &[u16]) -> Result<BTreeSet<String>, PurgeError> {
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| PurgeError::NotAUrl(e.to_string()))?;
        let default_port = match uri.scheme_str() {
            Some("http") => 80,
            Some("https") => 443,
            _ => return Err(PurgeError::Scheme),
        };
        let authority = uri.authority().ok_or(PurgeError::NoHost)?;
        let authority = Authority::parse(authority.as_str())?;
        let index = self
            .router
            .route(&authority, default_port)
            .ok_or_else(|| PurgeError::NoSiteForHost(authority.to_string()))?;
        let site = &self.sites[index];
        let raw = uri.path_and_query().map_or("/", |p| p.as_str());
        let target = target::canonical(raw).map_err(|_| PurgeError::BadPath)?;
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
        Ok(keys)
    }

    /// URLs and bytes held by the memory tier.
    pub fn store_usage(&self) -> (u64, u64) {
        (self.store.entry_count(), self.store.weighted_size())
    }
}

/// The start of every key of `site`: its name and the separator no name contains.
pub(super) fn site_prefix(site: &Site) -> String {
    format!("{}\u{0}", site.config.name)
}

/// The site a key belongs to (its first part).
pub fn site_of_key(key: &str) -> Option<&str> {
    key.split_once('\u{0}').map(|(site, _)| site)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, SiteConfig};

    /// Callers (the admin API) tell refusals apart by type, not by parsing a message.
    #[tokio::test]
    async fn refusals_are_typed_and_name_what_is_wrong() {
        let site = SiteConfig::new("a", &["a.test"], "http://127.0.0.1:1").unwrap();
        let config = Config::new(vec!["127.0.0.1:0".parse().unwrap()], vec![site]);
        let proxy = Proxy::new(&config).unwrap();
        let purge = |p: Purge| proxy.purge(&p, true, &[]);
        assert_eq!(
            purge(Purge::Site("b".into())),
            Err(PurgeError::UnknownSite("b".into()))
        );
        let tag = |site: Option<&str>| Purge::Tag {
            tag: "t".into(),
            site: site.map(str::to_string),
        };
        assert_eq!(
            purge(tag(Some("b"))),
            Err(PurgeError::UnknownSite("b".into()))
        );
        assert_eq!(purge(tag(None)), Ok(0));
        let bad_tag = Purge::Tag {
            tag: "two words".into(),
            site: None,
        };
        assert_eq!(purge(bad_tag), Err(PurgeError::BadTag));
        assert_eq!(
            purge(Purge::Url("ftp://a.test/".into())),
            Err(PurgeError::Scheme)
        );
        assert_eq!(
            purge(Purge::Url("http://b.test/".into())),
            Err(PurgeError::NoSiteForHost("b.test".into()))
        );
        assert_eq!(purge(Purge::Url("http://a.test/x".into())), Ok(0));
        assert_eq!(
            PurgeError::UnknownSite("b".into()).to_string(),
            "no site is named \"b\""
        );
    }
}
