//! Routing: which configured site answers for a request's Host (or :authority).
//!
//! Kagami only ever talks to the origins in its config, so a Host that no site lists is refused:
//! it can never be used as an open proxy.

mod authority;
pub mod target;

use std::collections::HashMap;
use std::fmt;

pub use authority::{Authority, AuthorityError};

/// A `hosts` entry of a site: an exact name or a `*.example.jp` wildcard, with or without a port.
/// An entry with a port only matches requests for that port; one without matches any port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact {
        host: String,
        port: Option<u16>,
    },
    /// `suffix` keeps its leading dot: `*.example.jp` is stored as `.example.jp`.
    Wildcard {
        suffix: String,
        port: Option<u16>,
    },
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let text = text.trim();
        if let Some(rest) = text.strip_prefix("*.") {
            let parsed = Authority::parse(rest)
                .ok()
                .filter(|a| !a.host().contains(':'));
            let Some(parsed) = parsed else {
                return Err(format!(
                    "{text:?} is not a valid wildcard; write e.g. \"*.city.example.jp\""
                ));
            };
            return Ok(HostPattern::Wildcard {
                suffix: format!(".{}", parsed.host()),
                port: parsed.port(),
            });
        }
        // A bare IPv6 address is accepted in the config for convenience.
        let parsed = match text.parse::<std::net::Ipv6Addr>() {
            Ok(ip) => Authority::parse(&format!("[{ip}]")),
            Err(_) => Authority::parse(text),
        };
        let parsed = parsed.map_err(|err| {
            format!("{text:?} is not a hostname or IP address, optionally with :port ({err})")
        })?;
        Ok(HostPattern::Exact {
            host: parsed.host().to_string(),
            port: parsed.port(),
        })
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, port) = match self {
            HostPattern::Exact { host, port } => (host.clone(), port),
            HostPattern::Wildcard { suffix, port } => (format!("*{suffix}"), port),
        };
        match port {
            Some(p) if name.contains(':') => write!(f, "[{name}]:{p}"),
            Some(p) => write!(f, "{name}:{p}"),
            None => write!(f, "{name}"),
        }
    }
}

/// Host -> site index table, built once from the config.
#[derive(Debug, Default)]
pub struct Router {
    /// host -> (port or any port, site); a specific port is preferred over "any port".
    /// foldhash rather than SipHash: every request hashes its host here, and the keys are the
    /// operator's names (a client's Host only looks up, it can never crowd a bucket).
    exact: HashMap<String, Vec<(Option<u16>, usize)>, foldhash::fast::RandomState>,
    wildcards: Vec<(String, Option<u16>, usize)>,
}

impl Router {
    pub fn new<'a>(sites: impl IntoIterator<Item = &'a [HostPattern]>) -> Router {
        let mut router = Router::default();
        for (index, patterns) in sites.into_iter().enumerate() {
            for pattern in patterns {
                match pattern {
                    HostPattern::Exact { host, port } => {
                        router
                            .exact
                            .entry(host.clone())
                            .or_default()
                            .push((*port, index));
                    }
                    HostPattern::Wildcard { suffix, port } => {
                        router.wildcards.push((suffix.clone(), *port, index));
                    }
                }
            }
        }
        // Longest suffix first, so that `*.a.example.jp` wins over `*.example.jp`.
        router
            .wildcards
            .sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        router
    }

    /// The site for a request authority (`Host` value or URI authority), if any. A request that
    /// names no port means `default_port` (so `example.jp:80` in `hosts` matches `example.jp`).
    pub fn route(&self, authority: &Authority, default_port: u16) -> Option<usize> {
        let (host, port) = (authority.host(), authority.port().or(Some(default_port)));
        if let Some(entries) = self.exact.get(host) {
            let with_port = entries.iter().find(|(p, _)| p.is_some() && *p == port);
            if let Some((_, i)) = with_port.or_else(|| entries.iter().find(|(p, _)| p.is_none())) {
                return Some(*i);
            }
        }
        self.wildcards
            .iter()
            .find(|(suffix, p, _)| {
                (p.is_none() || *p == port)
                    && host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
            })
            .map(|(_, _, i)| *i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(sites: &[&[&str]]) -> Router {
        let parsed: Vec<Vec<HostPattern>> = sites
            .iter()
            .map(|hosts| {
                hosts
                    .iter()
                    .map(|h| HostPattern::parse(h).unwrap())
                    .collect()
            })
            .collect();
        Router::new(parsed.iter().map(|v| v.as_slice()))
    }

    fn route(router: &Router, authority: &str) -> Option<usize> {
        router.route(&Authority::parse(authority).ok()?, 80)
    }

    #[test]
    fn exact_names_match_any_port_unless_a_port_is_given() {
        let r = router(&[&["www.pref.iwate.example", "127.0.0.1:8080"]]);
        assert_eq!(route(&r, "www.pref.iwate.example"), Some(0));
        assert_eq!(route(&r, "WWW.Pref.Iwate.Example:8443"), Some(0));
        assert_eq!(route(&r, "www.pref.iwate.example."), Some(0));
        assert_eq!(route(&r, "127.0.0.1:8080"), Some(0));
        assert_eq!(route(&r, "127.0.0.1:9090"), None);
        assert_eq!(route(&r, "127.0.0.1"), None);
        let r = router(&[&["www.example.jp:80"]]);
        assert_eq!(
            route(&r, "www.example.jp"),
            Some(0),
            "no port means the default"
        );
        assert_eq!(route(&r, "www.example.jp:80"), Some(0));
        assert_eq!(route(&r, "www.example.jp:8080"), None);
        assert_eq!(route(&r, "evil.example"), None);
    }

    #[test]
    fn wildcards_match_subdomains_only_and_longest_wins() {
        let r = router(&[&["*.example.jp"], &["*.city.example.jp"]]);
        assert_eq!(route(&r, "www.example.jp"), Some(0));
        assert_eq!(route(&r, "a.b.example.jp"), Some(0));
        assert_eq!(route(&r, "www.city.example.jp"), Some(1));
        assert_eq!(route(&r, "example.jp"), None);
        assert_eq!(route(&r, "badexample.jp"), None);
    }

    #[test]
    fn ipv6_authorities() {
        let r = router(&[&["[::1]:8080"], &["::2"]]);
        assert_eq!(route(&r, "[::1]:8080"), Some(0));
        assert_eq!(route(&r, "[::2]:1"), Some(1));
        assert_eq!(route(&r, "[::1"), None);
        assert_eq!(
            route(&r, "::2"),
            None,
            "a Host must bracket an IPv6 address"
        );
    }

    #[test]
    fn bad_patterns_are_rejected() {
        assert!(HostPattern::parse("*.").is_err());
        assert!(HostPattern::parse("a b").is_err());
        assert!(HostPattern::parse("*.*.jp").is_err());
        assert!(HostPattern::parse("a/b.jp").is_err());
        assert_eq!(
            HostPattern::parse("*.x.jp:81").unwrap().to_string(),
            "*.x.jp:81"
        );
    }
}
