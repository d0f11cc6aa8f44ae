//! The admin bearer token, compared in constant time.

use http::header::AUTHORIZATION;
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
}
