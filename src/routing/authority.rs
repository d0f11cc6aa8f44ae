//! Request authorities (`Host`, HTTP/2 `:authority`, absolute-form URIs): validated as a DNS name
//! or an IP literal with an optional port, and normalised once. The one normalised value is what
//! routing, the cache key, the origin's `Host` and `X-Forwarded-Host` all use, so that no
//! spelling of a name (case, trailing dot, `0080`, brackets around a name) can reach the origin
//! raw while sharing a cache key with the canonical name.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::rc::Rc;

/// A valid authority: lowercase host without a trailing dot (IPv6 without brackets), and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    host: String,
    port: Option<u16>,
}

/// Why an authority was refused (the request gets 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    #[error("the host is empty")]
    Empty,
    #[error("the host is not a DNS name or an IP address")]
    BadHost,
    #[error("the port is not a number from 1 to 65535")]
    BadPort,
}

impl Authority {
    /// Parses `host[:port]` or `[ipv6][:port]`. User info, paths, brackets around anything but
    /// an IPv6 address, empty labels, leading-zero IPv4 forms and port 0 are all refused.
    pub fn parse(text: &str) -> Result<Authority, AuthorityError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(AuthorityError::Empty);
        }
        if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest.split_once(']').ok_or(AuthorityError::BadHost)?;
            let ip: Ipv6Addr = inside.parse().map_err(|_| AuthorityError::BadHost)?;
            let port = match after {
                "" => None,
                _ => parse_port(after.strip_prefix(':').ok_or(AuthorityError::BadHost)?)?,
            };
            return Ok(Authority {
                host: ip.to_string(),
                port,
            });
        }
        let (host, port) = match text.rsplit_once(':') {
            Some((host, port)) => (host, parse_port(port)?),
            None => (text, None),
        };
        Ok(Authority {
            host: parse_name(host)?,
            port,
        })
    }

    /// The host: lowercase, no trailing dot, IPv6 without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The normalised text, leaving out the port when it is the scheme's `default_port` (so that
    /// `www.example.jp` and `www.example.jp:80` are one name).
    pub fn normalised(&self, default_port: u16) -> String {
        let port = self.port.filter(|p| *p != default_port);
        let bracketed = self.host.contains(':');
        match (bracketed, port) {
            (false, None) => self.host.clone(),
            (false, Some(p)) => format!("{}:{p}", self.host),
            (true, None) => format!("[{}]", self.host),
            (true, Some(p)) => format!("[{}]:{p}", self.host),
        }
    }

    /// [`Authority::normalised`], also leaving out the port when it is `listener_port`, the port
    /// the request arrived on: `www.example.jp:8080` and `www.example.jp` sent to a listener on
    /// 8080 are one page to the cache and to the origin (as nginx's `$host` has no port).
    pub fn normalised_on(&self, default_port: u16, listener_port: u16) -> String {
        match self.port {
            Some(port) if port == listener_port => Authority {
                host: self.host.clone(),
                port: None,
            }
            .normalised(default_port),
            _ => self.normalised(default_port),
        }
    }
}

impl Authority {
    /// [`Authority::normalised_on`], borrowed from the authority in the usual case (a name, no
    /// port left to show): nothing is copied or allocated for it once per request on the hit
    /// path.
    pub fn normalised_ref(&self, default_port: u16, listener_port: u16) -> Cow<'_, str> {
        let port = self
            .port
            .filter(|p| *p != default_port && *p != listener_port);
        match port {
            None if !self.host.contains(':') => Cow::Borrowed(&self.host),
            _ => Cow::Owned(self.normalised_on(default_port, listener_port)),
        }
    }
}

/// Longest text [`Authority::parse_remembered`] keeps: any accepted authority is shorter (a
/// 253-byte name, a port, brackets), so this only bounds the copy a thread holds.
const REMEMBERED_MAX: usize = 272;

thread_local! {
    /// The last authority text this thread accepted, and what it parsed to: a connection's
    /// requests, and most of a busy site's, name the same host byte for byte.
    /// Shared (`Rc`): handing it out costs a count, not a copy of the name.
    static LAST_ACCEPTED: RefCell<(String, Option<Rc<Authority>>)> =
        const { RefCell::new((String::new(), None)) };
}

impl Authority {
    /// [`Authority::parse`], remembering per thread the last text it accepted: the same bytes
    /// again get the same answer without being parsed again (the parse is a pure function of
    /// the text, and only an accepted text is kept, so a refusal is always the full parser's).
    /// What is kept is a copy of the text, never a slice of the request's buffer.
    /// The authority this thread accepted last, when `raw` (a `Host` value or a URI's
    /// authority as received) is its text byte for byte. Only text that was read as a header
    /// value's text (visible ASCII), trimmed and then accepted is ever remembered, so the
    /// same bytes need none of that again: the answer is what [`Authority::parse_remembered`]
    /// would give for them.
    pub fn remembered(raw: &[u8]) -> Option<Rc<Authority>> {
        LAST_ACCEPTED.with_borrow(|(seen, parsed)| {
            parsed.as_ref().filter(|_| seen.as_bytes() == raw).cloned()
        })
    }

    /// Shared with the thread's memory (an `Rc`, so it stays on this thread: whatever outlives
    /// the request takes its own copy of the normalised text).
    pub fn parse_remembered(text: &str) -> Result<Rc<Authority>, AuthorityError> {
        LAST_ACCEPTED.with_borrow_mut(|(seen, parsed)| {
            if let Some(parsed) = parsed.as_ref().filter(|_| seen.as_str() == text) {
                return Ok(parsed.clone());
            }
            let fresh = Rc::new(Authority::parse(text)?);
            if text.len() <= REMEMBERED_MAX {
                seen.clear();
                seen.push_str(text);
                *parsed = Some(fresh.clone());
            }
            Ok(fresh)
        })
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.normalised(0))
    }
}

/// An empty port (`host:`) is allowed by RFC 3986 and means the default; leading zeros are
/// harmless once the number is normalised.
fn parse_port(text: &str) -> Result<Option<u16>, AuthorityError> {
    if text.is_empty() {
        return Ok(None);
    }
    if text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AuthorityError::BadPort);
    }
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(AuthorityError::BadPort),
        Ok(port) => Ok(Some(port)),
    }
}

/// A DNS name (letters, digits, `-`, `_`; labels of 1 to 63 characters; at most 253 in all) or
/// a dotted IPv4 address, lowercased and without its trailing dot.
fn parse_name(text: &str) -> Result<String, AuthorityError> {
    let name = text.strip_suffix('.').unwrap_or(text);
    if name.is_empty() {
        return Err(AuthorityError::Empty);
    }
    if name.len() > 253 {
        return Err(AuthorityError::BadHost);
    }
    // One pass over the bytes (this runs for every request): labels of 1 to 63 allowed bytes.
    let mut label = 0;
    let mut last_label_digits = true;
    for b in name.bytes() {
        if b == b'.' {
            if label == 0 {
                return Err(AuthorityError::BadHost);
            }
            label = 0;
            last_label_digits = true;
        } else if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            label += 1;
            last_label_digits &= b.is_ascii_digit();
            if label > 63 {
                return Err(AuthorityError::BadHost);
            }
        } else {
            return Err(AuthorityError::BadHost);
        }
    }
    if label == 0 {
        return Err(AuthorityError::BadHost);
    }
    // A name whose last label is all digits can only be an IPv4 address (no top-level domain
    // is numeric); it must then be one in its plain dotted form (no `127.1`, no `0177.0.0.1`).
    if last_label_digits {
        // std's parser takes exactly four decimal octets without leading zeros, the text its
        // Display writes: the text is the canonical form already (no formatting per request).
        let _: Ipv4Addr = name.parse().map_err(|_| AuthorityError::BadHost)?;
        return Ok(name.to_owned());
    }
    Ok(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(text: &str) -> Result<String, AuthorityError> {
        Authority::parse(text).map(|a| a.normalised(80))
    }

    /// Spellings of `www.pref.test` on port 80.
    const SPELLINGS: [&str; 6] = [
        "www.pref.test",
        "WWW.PREF.TEST.",
        "www.pref.test:80",
        "www.pref.test:0080",
        "www.pref.test:",
        " www.pref.test ",
    ];

    #[test]
    fn spellings_of_one_name_normalise_to_one_value() {
        for spelling in SPELLINGS {
            assert_eq!(norm(spelling).as_deref(), Ok("www.pref.test"), "{spelling}");
        }
        assert_eq!(
            norm("www.pref.test:8080").as_deref(),
            Ok("www.pref.test:8080")
        );
        assert_eq!(norm("127.0.0.1:80").as_deref(), Ok("127.0.0.1"));
        assert_eq!(norm("[::1]:8080").as_deref(), Ok("[::1]:8080"));
        assert_eq!(norm("[0:0::1]").as_deref(), Ok("[::1]"));
        assert_eq!(
            Authority::parse("a.example:443").unwrap().normalised(443),
            "a.example"
        );
    }

    #[test]
    fn the_listener_port_is_implied() {
        let on = |text: &str, listener| {
            let parsed = Authority::parse(text).unwrap();
            let by_ref = parsed.normalised_ref(80, listener);
            let owned = parsed.normalised_on(80, listener);
            assert_eq!(by_ref, owned, "{text} on {listener}");
            owned
        };
        assert_eq!(on("www.pref.test:8080", 8080), "www.pref.test");
        assert_eq!(on("www.pref.test", 8080), "www.pref.test");
        assert_eq!(on("www.pref.test:80", 8080), "www.pref.test");
        assert_eq!(on("www.pref.test:9090", 8080), "www.pref.test:9090");
        assert_eq!(on("[::1]:8080", 8080), "[::1]");
    }

    #[test]
    fn anything_but_a_name_or_an_ip_literal_is_refused() {
        for bad in [
            "",
            "evil.example/x.city.test",
            "[www.pref.test]",
            "user@www.pref.test",
            "www.pref.test:0",
            "www.pref.test:65536",
            "www.pref.test:8o",
            "www..pref.test",
            ".www.pref.test",
            "www.pref.test..",
            "a b.test",
            "a\"b.test",
            "::1",
            "[::1",
            "[::1]x",
            "[fe80::1%25eth0]",
            "127.1",
            "0177.0.0.1",
            "256.0.0.1",
            "*.pref.test",
        ] {
            assert!(Authority::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let long = format!("{}.test", "a".repeat(64));
        assert!(Authority::parse(&long).is_err());
    }

    /// What the front door does with a `Host` value without the thread's memory: read it as
    /// header text, trim it, parse it.
    fn slow(raw: &[u8]) -> Option<Authority> {
        let value = http::HeaderValue::from_bytes(raw).ok()?;
        let text = value.to_str().ok()?.trim();
        (!text.is_empty()).then(|| Authority::parse(text).ok())?
    }

    #[test]
    fn remembered_raw_bytes_agree_with_the_slow_path() {
        let raws: Vec<Vec<u8>> = [
            &b"www.pref.test"[..],
            b"WWW.pref.test",
            b" www.pref.test",
            b"www.pref.test ",
            b"www.pref.test\t",
            b"\twww.pref.test",
            b"www.pref.test:80",
            b"www.pref.test:8080",
            b"[::1]:8080",
            b"127.0.0.1",
            b"",
            b" ",
            b"www.pref.t\xc3\xa9st",
            b"www.pref.test\x7f",
            b"a b.test",
        ]
        .iter()
        .map(|r| r.to_vec())
        .collect();
        for accepted in &raws {
            for raw in &raws {
                // The thread accepts `accepted` as the front door would, then is asked `raw`.
                if let Some(text) = http::HeaderValue::from_bytes(accepted)
                    .ok()
                    .and_then(|v| v.to_str().ok().map(|t| t.trim().to_string()))
                {
                    let _ = Authority::parse_remembered(&text);
                }
                if let Some(fast) = Authority::remembered(raw) {
                    assert_eq!(
                        Some((*fast).clone()),
                        slow(raw),
                        "{raw:?} after {accepted:?}"
                    );
                }
            }
        }
        // The usual case does take the fast path.
        let _ = Authority::parse_remembered("www.pref.test:8080");
        assert!(Authority::remembered(b"www.pref.test:8080").is_some());
        assert!(Authority::remembered(b" www.pref.test:8080").is_none());
    }

    #[test]
    fn remembered_parses_agree_with_the_full_parser() {
        let mut texts: Vec<String> = SPELLINGS.iter().map(|t| t.to_string()).collect();
        texts.extend(
            [
                "www.pref.test:8080",
                "127.0.0.1",
                "127.0.0.1:8080",
                "127.1",
                "0177.0.0.1",
                "256.0.0.1",
                "[::1]:8080",
                "[0:0::1]",
                "[::1",
                "::1",
                "",
                " ",
                "a b.test",
                "user@www.pref.test",
                "www..pref.test",
                "www.pref.test:0",
                "www.pref.test:65536",
                "*.pref.test",
            ]
            .map(String::from),
        );
        texts.push(format!("{}.test", "a".repeat(63)));
        texts.push(format!("{}.test", "a".repeat(64)));
        texts.push(format!("{}.test", "a.".repeat(130)));
        texts.push("a".repeat(REMEMBERED_MAX + 1));
        // Every pair in both orders, each text twice in a row: the remembered answer is asked
        // after an accepted text, after a refused one and after itself.
        for a in &texts {
            for b in &texts {
                for text in [a, a, b, b, a] {
                    assert_eq!(
                        Authority::parse_remembered(text).map(|a| (*a).clone()),
                        Authority::parse(text),
                        "{text:?} after {a:?} / {b:?}"
                    );
                }
            }
        }
    }
}
