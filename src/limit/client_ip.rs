//! Who the client is, for rate limiting: the TCP peer, or, when the peer is a trusted proxy,
//! the right-most untrusted address of `X-Forwarded-For` / `Forwarded` (the left-most is
//! whatever the client chose to write, so it is never believed).

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> TrustedProxies {
        TrustedProxies(nets)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Addresses a header chain names, left to right. `None` marks an entry that does not parse
/// (`unknown`, an obfuscated identifier, garbage).
fn chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let xff: Vec<Option<IpAddr>> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| parse_node(s.trim()))
        .collect();
    if !xff.is_empty() {
        return xff;
    }
    headers
        .get_all(http::header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|element| {
            element
                .split(';')
                .filter_map(|pair| pair.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                .and_then(|(_, v)| parse_node(v.trim().trim_matches('"')))
        })
        .collect()
}

/// `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]:4711`, `2001:db8::1`.
fn parse_node(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    text.rsplit_once(':')?.0.parse().ok()
}

/// The address to key limits on for a request that arrived from `peer`.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let peer = peer.to_canonical();
    if trusted.is_empty() || !trusted.contains(peer) {
        return peer;
    }
    let mut client = peer;
    for node in chain(headers).into_iter().rev() {
        match node {
            // A hop we cannot read: the last address we could vouch for is the best we know.
            None => return client,
            Some(ip) => {
                let ip = ip.to_canonical();
                client = ip;
                if !trusted.contains(ip) {
                    return ip;
                }
            }
        }
    }
    client
}

/// The limiter key for an address: IPv6 clients are keyed per /64, the block one subscriber
/// usually holds, so rotating through a prefix does not buy more budget.
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn trusted() -> TrustedProxies {
        TrustedProxies::new(vec![
            "10.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ])
    }

    fn xff(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peers_are_keyed_on_their_own_address() {
        assert_eq!(
            client_ip(ip("203.0.113.7"), &xff("1.2.3.4"), &trusted()),
            ip("203.0.113.7")
        );
        assert_eq!(
            client_ip(ip("10.1.1.1"), &xff("1.2.3.4"), &TrustedProxies::default()),
            ip("10.1.1.1")
        );
    }

    #[test]
    fn right_most_untrusted_address_wins() {
        // The client wrote 6.6.6.6 itself; 198.51.100.2 is who connected to our trusted proxy.
        let h = xff("6.6.6.6, 198.51.100.2, 10.0.0.9");
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &trusted()),
            ip("198.51.100.2")
        );
    }

    #[test]
    fn all_trusted_chain_gives_the_left_most_and_garbage_stops_the_walk() {
        assert_eq!(
            client_ip(ip("10.0.0.1"), &xff("10.0.0.5, 10.0.0.6"), &trusted()),
            ip("10.0.0.5")
        );
        assert_eq!(
            client_ip(
                ip("10.0.0.1"),
                &xff("1.1.1.1, garbage, 10.0.0.6"),
                &trusted()
            ),
            ip("10.0.0.6")
        );
    }

    #[test]
    fn forwarded_is_used_when_there_is_no_x_forwarded_for() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::FORWARDED,
            HeaderValue::from_static("for=192.0.2.60;proto=http, for=\"[2001:db8::7]:4711\""),
        );
        assert_eq!(client_ip(ip("::1"), &h, &trusted()), ip("2001:db8::7"));
    }

    #[test]
    fn ipv6_is_keyed_per_64() {
        assert_eq!(limit_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(limit_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }
}
