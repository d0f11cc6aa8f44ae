//! Routing: which configured site answers for a request's Host (or :authority).
//!
//! Kagami only ever talks to the origins in its config, so a Host that no site lists is refused:
//! it can never be used as an open proxy.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

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
        let (host, port) = split_authority(text)
            .ok_or_else(|| format!("{text:?} is not a hostname, optionally with :port"))?;
        let host = host.into_owned();
        if let Some(rest) = host.strip_prefix("*.") {
            if rest.is_empty() || rest.contains('*') || !valid_hostname(rest) {
                return Err(format!(
                    "{text:?} is not a valid wildcard; write e.g. \"*.city.example.jp\""
                ));
            }
            return Ok(HostPattern::Wildcard {
                suffix: format!(".{rest}"),
                port,
            });
        }
        if !valid_hostname(&host) {
            return Err(format!("{text:?} is not a valid hostname"));
        }
        Ok(HostPattern::Exact { host, port })
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

fn valid_hostname(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'))
}

/// Splits `host[:port]` / `[v6]:port` into a lowercase host (no brackets, no trailing dot) and port.
/// Borrows when the host is already lowercase, as it nearly always is: this runs per request.
pub fn split_authority(text: &str) -> Option<(Cow<'_, str>, Option<u16>)> {
    let text = text.trim();
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let end = rest.find(']')?;
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        (&rest[..end], port)
    } else {
        match text.rsplit_once(':') {
            // More than one colon without brackets: a bare IPv6 address.
            Some((h, _)) if h.contains(':') => (text, None),
            Some((h, p)) => (h, Some(p.parse().ok()?)),
            None => (text, None),
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    };
    Some((host, port))
}

/// Host -> site index table, built once from the config.
#[derive(Debug, Default)]
pub struct Router {
    /// host -> (port or any port, site); a specific port is preferred over "any port".
    exact: HashMap<String, Vec<(Option<u16>, usize)>>,
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

    /// The site for a request authority (`Host` value or URI authority), if any.
    pub fn route(&self, authority: &str) -> Option<usize> {
        let (host, port) = split_authority(authority)?;
        if let Some(entries) = self.exact.get(host.as_ref()) {
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

    #[test]
    fn exact_names_match_any_port_unless_a_port_is_given() {
        let r = router(&[&["www.pref.iwate.example", "127.0.0.1:8080"]]);
        assert_eq!(r.route("www.pref.iwate.example"), Some(0));
        assert_eq!(r.route("WWW.Pref.Iwate.Example:8443"), Some(0));
        assert_eq!(r.route("www.pref.iwate.example."), Some(0));
        assert_eq!(r.route("127.0.0.1:8080"), Some(0));
        assert_eq!(r.route("127.0.0.1:9090"), None);
        assert_eq!(r.route("127.0.0.1"), None);
        assert_eq!(r.route("evil.example"), None);
    }

    #[test]
    fn wildcards_match_subdomains_only_and_longest_wins() {
        let r = router(&[&["*.example.jp"], &["*.city.example.jp"]]);
        assert_eq!(r.route("www.example.jp"), Some(0));
        assert_eq!(r.route("a.b.example.jp"), Some(0));
        assert_eq!(r.route("www.city.example.jp"), Some(1));
        assert_eq!(r.route("example.jp"), None);
        assert_eq!(r.route("badexample.jp"), None);
    }

    #[test]
    fn ipv6_authorities() {
        let r = router(&[&["[::1]:8080"], &["::2"]]);
        assert_eq!(r.route("[::1]:8080"), Some(0));
        assert_eq!(r.route("[::2]:1"), Some(1));
        assert_eq!(split_authority("[::1"), None);
        assert_eq!(split_authority("host:notaport"), None);
        assert_eq!(
            split_authority("A.Example:80"),
            Some((Cow::Borrowed("a.example"), Some(80)))
        );
    }

    #[test]
    fn bad_patterns_are_rejected() {
        assert!(HostPattern::parse("*.").is_err());
        assert!(HostPattern::parse("a b").is_err());
        assert!(HostPattern::parse("*.*.jp").is_err());
        assert_eq!(
            HostPattern::parse("*.x.jp:81").unwrap().to_string(),
            "*.x.jp:81"
        );
    }
}
