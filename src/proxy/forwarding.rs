//! Forwarding headers written by clients (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`,
//! `X-Original-URL`, `X-HTTP-Method-Override`, ...): which of them may reach the origin.
//!
//! Origins and their frameworks believe these fields (Flask's ProxyFix builds script URLs from
//! `X-Forwarded-Prefix`, IIS and Symfony route by `X-Original-URL`), yet they are not part of the
//! cache key, so one visitor's forged value would be stored and served to everyone. They are
//! dropped unless the TCP peer is a trusted proxy; Kagami then sets its own `Forwarded` and
//! `X-Forwarded-For/-Proto/-Host`. An operator may let named ones through from visitors
//! (`site.pass_forwarding_headers`); requests carrying one then bypass the cache.

use http::header::{HeaderMap, HeaderName};

/// Forwarding fields known by exact name (lowercase), beyond the prefixes below.
const NAMES: [&str; 27] = [
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "client-ip",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "x-proxyuser-ip",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-host",
    "x-http-host-override",
    "front-end-https",
    "x-scheme",
    "x-url-scheme",
    // WSGI "ReverseProxied" recipes turn this into SCRIPT_NAME: every generated URL's prefix.
    "x-script-name",
    "x-arr-ssl",
    "x-arr-log-id",
    "cf-connecting-ip",
    "cf-visitor",
    "fastly-client-ip",
    "x-envoy-original-path",
    "x-envoy-external-address",
];

/// `X-Forwarded`, `X-Forwarded-For`, `-Prefix`, `-Port`, `-Scheme`, `-Ssl`, `-Server`, ...;
/// `X-Original-URL`, `-URI`, `-Host`, `-Method`, ...
const PREFIXES: [&str; 2] = ["x-forwarded", "x-original-"];

/// The fields Kagami always writes itself: never taken from a visitor, whatever the config.
const OWN: [&str; 4] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

/// Is `name` a field by which a proxy tells the origin about the client or the original URL?
pub fn is_forwarding(name: &HeaderName) -> bool {
    let name = name.as_str();
    NAMES.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Removes every forwarding field except the `passed` ones (from visitors that are not trusted
/// proxies). Kagami's own fields go whatever `passed` says (a visitor's `Forwarded` element
/// would precede Kagami's, and origins read the first); Kagami adds them afterwards.
pub fn strip_client_forwarding(headers: &mut HeaderMap, passed: &[HeaderName]) {
    let drop: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            is_forwarding(name) && (!passed.contains(name) || OWN.contains(&name.as_str()))
        })
        .cloned()
        .collect();
    for name in drop {
        headers.remove(name);
    }
}

/// Does the request carry one of the `passed` fields (which then reaches the origin unkeyed)?
pub fn carries_passed(headers: &HeaderMap, passed: &[HeaderName]) -> bool {
    passed.iter().any(|name| headers.contains_key(name))
}

/// Validates one `pass_forwarding_headers` entry.
pub fn passable(text: &str) -> Result<HeaderName, String> {
    let name = HeaderName::from_bytes(text.trim().as_bytes())
        .map_err(|_| format!("{text:?} is not a header name"))?;
    if OWN.contains(&name.as_str()) {
        return Err(format!(
            "{text:?} is always set by Kagami itself and cannot be passed from visitors"
        ));
    }
    if !is_forwarding(&name) {
        return Err(format!(
            "{text:?} is not a forwarding header; other headers reach the origin anyway"
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn every_forwarding_field_is_recognised_and_others_are_not() {
        for name in [
            "forwarded",
            "x-forwarded-for",
            "x-forwarded-prefix",
            "x-forwarded-port",
            "x-forwarded-scheme",
            "x-forwarded-ssl",
            "x-forwarded-server",
            "x-forwarded",
            "x-real-ip",
            "x-original-url",
            "x-original-host",
            "x-rewrite-url",
            "x-http-method-override",
            "x-host",
            "front-end-https",
        ] {
            assert!(is_forwarding(&HeaderName::from_static(name)), "{name}");
        }
        for name in ["host", "x-requested-with", "accept", "x-hostname", "cookie"] {
            assert!(!is_forwarding(&HeaderName::from_static(name)), "{name}");
        }
    }

    #[test]
    fn client_fields_are_dropped_except_the_passed_ones() {
        let mut h = HeaderMap::new();
        for name in [
            "forwarded",
            "x-forwarded-prefix",
            "x-original-url",
            "x-real-ip",
            "x-kept",
        ] {
            h.insert(name, HeaderValue::from_static("v"));
        }
        let passed = [
            HeaderName::from_static("x-real-ip"),
            HeaderName::from_static("forwarded"),
        ];
        strip_client_forwarding(&mut h, &passed);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["x-kept", "x-real-ip"]);
    }

    #[test]
    fn only_forwarding_fields_that_kagami_does_not_set_may_be_passed() {
        assert_eq!(
            passable("X-Forwarded-Prefix").unwrap(),
            HeaderName::from_static("x-forwarded-prefix")
        );
        assert!(passable("X-Forwarded-Host").is_err());
        assert!(passable("Forwarded").is_err());
        assert!(passable("Accept-Language").is_err());
        assert!(passable("bad name").is_err());
    }
}
