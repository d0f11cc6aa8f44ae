//! The admin bearer token, compared in constant time; and, without a token, the Host check
//! that keeps a DNS-rebinding page out of the loopback listener.

use http::header::{AUTHORIZATION, HOST};
use http::HeaderMap;

/// Whether `headers` carry `Authorization: Bearer <expected>`.
pub fn authorized(headers: &HeaderMap, expected: &str) -> bool {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let Some(given) = value.as_bytes().strip_prefix(b"Bearer ") else {
        return false;
    };
    constant_time_eq(given, expected.as_bytes())
}

/// Whether the request names a loopback host by itself (`127.x.y.z`, `[::1]`, `localhost`).
/// A tokenless admin API is bound to loopback, but a web page whose own domain is made to
/// resolve to 127.0.0.1 (DNS rebinding) reaches it as a same-origin page and could read
/// `/status` and `/metrics`: its requests still carry that domain in `Host`.
pub fn loopback_host(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(HOST).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let Ok(authority) = value.to_str().unwrap_or("").parse::<http::uri::Authority>() else {
        return false;
    };
    let host = authority.host();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// Equality whose time depends only on the lengths, not on where the bytes differ.
pub fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        // Compare against every expected byte even when `given` is shorter.
        let g = given.get(i).copied().unwrap_or(!e);
        diff |= g ^ e;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_whole_tokens() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret1", b"secret"));
        assert!(!constant_time_eq(b"secre", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
    }

    #[test]
    fn needs_exactly_one_bearer_header() {
        let mut headers = HeaderMap::new();
        assert!(!authorized(&headers, "t"));
        headers.insert(AUTHORIZATION, "Bearer t".parse().unwrap());
        assert!(authorized(&headers, "t"));
        headers.append(AUTHORIZATION, "Bearer t".parse().unwrap());
        assert!(!authorized(&headers, "t"));
        headers.insert(AUTHORIZATION, "Basic t".parse().unwrap());
        assert!(!authorized(&headers, "t"));
    }

    #[test]
    fn only_loopback_hosts_pass_without_a_token() {
        let host = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(HOST, value.parse().unwrap());
            loopback_host(&headers)
        };
        for good in [
            "127.0.0.1:9901",
            "127.1.2.3",
            "[::1]:9901",
            "localhost",
            "LocalHost:1",
        ] {
            assert!(host(good), "{good}");
        }
        for bad in [
            "evil.example",
            "127.0.0.1.evil.example",
            "localhost.evil",
            "10.0.0.1",
            "",
        ] {
            assert!(!host(bad), "{bad}");
        }
        assert!(!loopback_host(&HeaderMap::new()));
    }
}
