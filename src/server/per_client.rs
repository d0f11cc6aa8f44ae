//! The cap on connections open at once from one client address, so that one address cannot
//! take every connection (`max_connections`) and lock everyone else out. IPv6 clients are
//! counted per /64 (one subscriber's prefix), like the rate limits; trusted proxies are exempt,
//! since they carry many clients.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::limit::{limit_key, TrustedProxies};

pub struct PerClient {
    max: usize,
    trusted: TrustedProxies,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One counted connection; uncounted when dropped.
pub struct ClientConnection {
    key: Option<IpAddr>,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for ClientConnection {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        let Ok(mut open) = self.open.lock() else {
            return;
        };
        if let Some(count) = open.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&key);
            }
        }
    }
}

impl PerClient {
    pub fn new(max: usize, trusted: TrustedProxies) -> PerClient {
        PerClient {
            max: max.max(1),
            trusted,
            open: Arc::default(),
        }
    }

    /// Counts a new connection from `peer`, or returns None when that address is at its cap.
    pub fn admit(&self, peer: IpAddr) -> Option<ClientConnection> {
        if self.trusted.contains(peer) {
            return Some(ClientConnection {
                key: None,
                open: self.open.clone(),
            });
        }
        let key = limit_key(peer);
        let mut open = self.open.lock().ok()?;
        let count = open.entry(key).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        drop(open);
        Some(ClientConnection {
            key: Some(key),
            open: self.open.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn each_address_has_its_own_cap() {
        let cap = PerClient::new(2, TrustedProxies::default());
        let a1 = cap.admit(ip("192.0.2.1")).unwrap();
        let _a2 = cap.admit(ip("192.0.2.1")).unwrap();
        assert!(cap.admit(ip("192.0.2.1")).is_none());
        assert!(cap.admit(ip("192.0.2.2")).is_some());
        drop(a1);
        assert!(
            cap.admit(ip("192.0.2.1")).is_some(),
            "a closed one frees a place"
        );
    }

    #[test]
    fn ipv6_is_counted_per_64_and_forgotten_when_closed() {
        let cap = PerClient::new(1, TrustedProxies::default());
        let a = cap.admit(ip("2001:db8:1:2::1")).unwrap();
        assert!(cap.admit(ip("2001:db8:1:2::ffff")).is_none(), "same /64");
        assert!(cap.admit(ip("2001:db8:1:3::1")).is_some(), "another /64");
        drop(a);
        assert!(cap.open.lock().unwrap().is_empty());
    }

    #[test]
    fn trusted_proxies_are_exempt() {
        let cap = PerClient::new(1, TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]));
        let held: Vec<_> = (0..5).map(|_| cap.admit(ip("10.1.2.3")).unwrap()).collect();
        assert_eq!(held.len(), 5);
        assert!(cap.open.lock().unwrap().is_empty());
    }
}
