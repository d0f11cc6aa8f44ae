//! Header handling at the proxy boundary (RFC 9110 §7.6): hop-by-hop fields, Via, and the
//! Forwarded / X-Forwarded-* fields sent to the origin.

use std::net::SocketAddr;

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, FORWARDED, IF_MATCH, IF_MODIFIED_SINCE,
    IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, RANGE,
    TE, TRAILER, TRANSFER_ENCODING, UPGRADE, VIA,
};

/// The pseudonym Kagami uses in `Via` (RFC 9110 §7.6.3).
pub const VIA_VALUE: &str = "1.1 kagami";

static HOP_BY_HOP: [HeaderName; 8] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
    HeaderName::from_static("proxy-connection"),
    PROXY_AUTHENTICATE,
];

/// Removes `Connection`, every field it names, and the fixed hop-by-hop fields.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(PROXY_AUTHORIZATION);
}

/// Client preconditions and ranges are answered by Kagami from the full stored response, so
/// they are not sent to the origin on a cache fill.
pub fn strip_conditionals(headers: &mut HeaderMap) {
    for name in [
        IF_MATCH,
        IF_NONE_MATCH,
        IF_MODIFIED_SINCE,
        IF_UNMODIFIED_SINCE,
        IF_RANGE,
        RANGE,
    ] {
        headers.remove(name);
    }
}

/// The `Via` hop Kagami adds to requests it sends to an origin: the pseudonym plus a comment
/// naming this process, so that a request coming back (an origin that points at Kagami, as
/// happens when DNS is switched to Kagami but the origin is still configured by name) is
/// recognised at once. Chains of different Kagamis are unaffected.
pub fn origin_via(instance: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("{VIA_VALUE} ({instance:016x})"))
        .unwrap_or(HeaderValue::from_static(VIA_VALUE))
}

/// Did this request already pass through this very process?
pub fn looped(headers: &HeaderMap, own_hop: &HeaderValue) -> bool {
    let mut vias = headers.get_all(VIA).iter().peekable();
    // Nearly every request comes without Via: then our own hop is not even looked at.
    if vias.peek().is_none() {
        return false;
    }
    let Ok(own) = own_hop.to_str() else {
        return false;
    };
    vias.filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|hop| hop.trim() == own)
}

pub fn append_via(headers: &mut HeaderMap) {
    headers.append(VIA, HeaderValue::from_static(VIA_VALUE));
}

/// Adds X-Forwarded-For / -Proto / -Host and Forwarded (RFC 7239) for the origin.
pub fn add_forwarded(headers: &mut HeaderMap, peer: SocketAddr, host: &str, proto: &'static str) {
    let ip = peer.ip().to_canonical();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => format!("{prior}, {ip}"),
        _ => ip.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    if let Ok(v) = HeaderValue::from_str(host) {
        headers.insert("x-forwarded-host", v);
    }
    let node = if ip.is_ipv6() {
        format!("\"[{ip}]\"")
    } else {
        ip.to_string()
    };
    let element = format!(
        "for={node};proto={proto};host=\"{}\"",
        host.replace(['"', '\\'], "")
    );
    if let Ok(v) = HeaderValue::from_str(&element) {
        headers.append(FORWARDED, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_listed_and_fixed_hop_by_hop_fields_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("close, X-Secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn only_our_own_hop_makes_a_loop() {
        let own = origin_via(0xabc);
        let mut h = HeaderMap::new();
        h.insert(
            VIA,
            HeaderValue::from_static("1.1 cdn, 1.1 kagami (0000000000000def)"),
        );
        assert!(!looped(&h, &own), "another Kagami in a chain is fine");
        h.append(VIA, own.clone());
        assert!(looped(&h, &own));
    }

    #[test]
    fn forwarded_fields_append_to_prior_proxies() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        add_forwarded(
            &mut h,
            "[::1]:4000".parse().unwrap(),
            "www.example.jp",
            "http",
        );
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, ::1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(
            h[FORWARDED],
            "for=\"[::1]\";proto=http;host=\"www.example.jp\""
        );
    }
}
