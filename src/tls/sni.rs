//! The TLS server name (SNI) a connection was opened for, carried with each of its requests.

use std::fmt;

/// Longest DNS name (RFC 1035), and so the longest SNI Kagami can have a certificate for.
const MAX: usize = 253;

/// A normalised SNI name: lowercase, no trailing dot. Stored inline so that `Client`, which
/// every request copies around, stays `Copy` and costs no allocation per connection.
#[derive(Clone, Copy)]
pub struct SniName {
    len: u8,
    bytes: [u8; MAX],
}

impl SniName {
    /// `None` for names no certificate could be chosen for (empty, too long, not ASCII).
    pub fn new(name: &str) -> Option<SniName> {
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() || name.len() > MAX || !name.is_ascii() {
            return None;
        }
        let mut bytes = [0; MAX];
        for (slot, byte) in bytes.iter_mut().zip(name.bytes()) {
            *slot = byte.to_ascii_lowercase();
        }
        Some(SniName {
            len: name.len() as u8,
            bytes,
        })
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored, so this never falls back.
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
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
