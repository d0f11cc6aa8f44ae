//! The TLS server name (SNI) a connection was opened for, carried with each of its requests.

use std::fmt;
use std::sync::Arc;

/// Longest DNS name (RFC 1035), and so the longest SNI Kagami can have a certificate for.
const MAX: usize = 253;

/// A normalised SNI name: lowercase, no trailing dot. One shared allocation per TLS connection
/// (nothing beside a handshake), so that `Client`, which every request carries through several
/// futures, stays small: inline, the name made each of them 250 bytes larger, copied per request.
#[derive(Clone)]
pub struct SniName(Arc<str>);

impl SniName {
    /// `None` for names no certificate could be chosen for (empty, too long, not ASCII).
    pub fn new(name: &str) -> Option<SniName> {
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() || name.len() > MAX || !name.is_ascii() {
            return None;
        }
        Some(SniName(name.to_ascii_lowercase().into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PartialEq for SniName {
    fn eq(&self, other: &SniName) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for SniName {}

impl fmt::Debug for SniName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for SniName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_and_bounded() {
        assert_eq!(
            SniName::new("WWW.Example.JP.").unwrap().as_str(),
            "www.example.jp"
        );
        assert!(SniName::new("").is_none());
        assert!(SniName::new(".").is_none());
        assert!(SniName::new(&"a".repeat(254)).is_none());
        assert!(SniName::new("bücher.example").is_none());
        assert_eq!(SniName::new(&"a".repeat(253)).unwrap().as_str().len(), 253);
    }
}
