//! A stored entry's header fields: a plain list in the origin's order, sized exactly, whose
//! values share one allocation the entry owns.
//!
//! Why not a `HeaderMap`: its hash table is sized in powers of two with a quarter kept free, so
//! seven fields cost the table for twelve (about 1.4 KiB per entry, more than a small page's
//! body), and a stored entry is only ever looked up by a handful of names (validators, dates)
//! or copied whole into an answer. A list of seven costs 560 bytes and is searched as fast.

use std::mem::size_of;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::footprint::ALLOCATION;

#[derive(Debug, Clone, Default)]
pub struct Fields(Box<[(HeaderName, HeaderValue)]>);

impl Fields {
    /// An owned, compact copy of `headers`. Values parsed by hyper are slices of a connection's
    /// read buffer and would keep the whole buffer alive: they are copied into one allocation.
    /// Names that are not standard were already copied by `http` when parsed.
    pub fn copy_of(headers: &HeaderMap) -> Fields {
        let total: usize = headers.values().map(|v| v.len()).sum();
        let mut buffer = BytesMut::with_capacity(total);
        for value in headers.values() {
            buffer.extend_from_slice(value.as_bytes());
        }
        let buffer: Bytes = buffer.freeze();
        let mut at = 0;
        let fields = headers
            .iter()
            .map(|(name, value)| {
                let len = value.len();
                let mut owned = HeaderValue::from_maybe_shared(buffer.slice(at..at + len))
                    // The bytes come from a valid value, so this cannot fail; keep it if it did.
                    .unwrap_or_else(|_| value.clone());
                owned.set_sensitive(value.is_sensitive());
                at += len;
                (name.clone(), owned)
            })
            .collect();
        Fields(fields)
    }

    /// The first value of `name`.
    pub fn get(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a HeaderValue> {
        self.0
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v)
    }

    pub fn contains_key(&self, name: &HeaderName) -> bool {
        self.get(name).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.0.iter().map(|(n, v)| (n, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The fields as a header map with room for `extra` more, leaving out `skip`.
    pub fn to_map(&self, extra: usize, skip: Option<&HeaderName>) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(self.0.len() + extra);
        for (name, value) in self.0.iter() {
            if Some(name) != skip {
                headers.append(name.clone(), value.clone());
            }
        }
        headers
    }

    /// Bytes these fields hold: the list, the values' shared buffer and custom names.
    pub fn footprint(&self) -> usize {
        if self.0.is_empty() {
            return 0;
        }
        let list = self.0.len() * size_of::<(HeaderName, HeaderValue)>() + ALLOCATION;
        let values: usize = self.0.iter().map(|(_, v)| v.len()).sum();
        // A custom name owns an allocation (shared `Bytes` storage: a header and the bytes).
        let names: usize = (self.0.iter())
            .filter(|(n, _)| !super::footprint::is_standard(n))
            .map(|(n, _)| n.as_str().len() + 32 + ALLOCATION)
            .sum();
        list + values + 32 + ALLOCATION + names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, SET_COOKIE};

    fn map() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
        h.append(SET_COOKIE, HeaderValue::from_static("a=1"));
        h.append(SET_COOKIE, HeaderValue::from_static("b=2"));
        h.insert("x-custom", HeaderValue::from_static("yes"));
        h.insert(ETAG, HeaderValue::from_static("\"v1\""));
        h
    }

    #[test]
    fn a_copy_keeps_every_value_in_order() {
        let fields = Fields::copy_of(&map());
        assert_eq!(fields.len(), 5);
        assert_eq!(fields.get(&ETAG).unwrap(), "\"v1\"");
        let cookies: Vec<_> = fields.get_all(&SET_COOKIE).collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert!(fields.contains_key(&HeaderName::from_static("x-custom")));
        assert!(!fields.contains_key(&CACHE_CONTROL));
        let back = fields.to_map(4, Some(&HeaderName::from_static("x-custom")));
        assert_eq!(back.len(), 4);
        assert_eq!(back.get_all(SET_COOKIE).iter().count(), 2);
        assert!(back.capacity() >= 8, "room for the fields an answer adds");
    }

    #[test]
    fn the_values_do_not_keep_the_parsed_buffer_alive() {
        // Values that are slices of one large buffer (as hyper parses them).
        let buffer = Bytes::from(vec![b'v'; 64 * 1024]);
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_maybe_shared(buffer.slice(0..9)).unwrap(),
        );
        let fields = Fields::copy_of(&headers);
        drop(headers);
        // The copy's value must live in a small allocation of its own: once the buffer is the
        // only owner left, it can be turned back into a unique vector.
        assert!(buffer.try_into_mut().is_ok());
        assert_eq!(fields.get(&CONTENT_TYPE).unwrap(), "vvvvvvvvv");
    }

    #[test]
    fn the_list_costs_far_less_than_a_map() {
        let fields = Fields::copy_of(&map());
        let as_map = super::super::footprint::headers_footprint(&map());
        assert!(
            fields.footprint() < as_map,
            "{} vs {as_map}",
            fields.footprint()
        );
        assert!(fields.footprint() >= 5 * size_of::<(HeaderName, HeaderValue)>());
    }
}
