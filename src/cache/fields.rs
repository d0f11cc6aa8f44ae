//! A stored entry's header fields: a plain list in the origin's order, sized exactly, whose
//! values share one allocation the entry owns.
//!
//! Why not a `HeaderMap`: its hash table is sized in powers of two with a quarter kept free, so
//! seven fields cost the table for twelve (about 1.4 KiB per entry, more than a small page's
//! body), and a stored entry is only ever looked up by a handful of names (validators, dates)
//! or copied whole into an answer. A list of seven costs 84 bytes (see `Field`) and is
//! searched as fast.

use std::mem::size_of;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::footprint::{ALLOCATION, KNOWN};

/// One field: which name it has and where its value lies in the shared buffer. The name is an
/// index (into `footprint::KNOWN`, the names origins commonly send, or past its end into the
/// entry's own list of other names), and the value a range rather than a `HeaderValue` (40
/// bytes each, most of it a `Bytes` handle pointing at the same buffer): a field costs 12
/// bytes, where a `HeaderName` alone is 32, so ten fields take a 128-byte allocation instead
/// of 448.
#[derive(Debug, Clone, Copy)]
struct Field {
    name: u16,
    start: u32,
    end: u32,
}

/// Header fields in the origin's order. Values are never marked sensitive (that flag only
/// matters to HTTP/2 header compression, and origin responses never carry it).
#[derive(Debug, Clone, Default)]
pub struct Fields {
    values: Bytes,
    fields: Box<[Field]>,
    /// The names not in `KNOWN`, each once (most entries have none or one or two).
    names: Box<[HeaderName]>,
}

impl Fields {
    /// An owned, compact copy of `headers`. Values parsed by hyper are slices of a connection's
    /// read buffer and would keep the whole buffer alive: they are copied into one allocation.
    /// Names that are not standard were already copied by `http` when parsed.
    pub fn copy_of(headers: &HeaderMap) -> Fields {
        let total: usize = headers.values().map(|v| v.len()).sum();
        if total > u32::MAX as usize || headers.keys_len() > usize::from(u16::MAX) - KNOWN.len() {
            // Cannot happen with hyper's head size limits; an empty copy is safe, a wrong one not.
            return Fields::default();
        }
        let mut buffer = BytesMut::with_capacity(total);
        let mut names: Vec<HeaderName> = Vec::new();
        let fields = headers
            .iter()
            .map(|(name, value)| {
                let start = buffer.len() as u32;
                buffer.extend_from_slice(value.as_bytes());
                let index = match KNOWN.iter().position(|k| k == name) {
                    Some(known) => known,
                    None => {
                        let own = names.iter().position(|n| n == name).unwrap_or_else(|| {
                            names.push(name.clone());
                            names.len() - 1
                        });
                        KNOWN.len() + own
                    }
                };
                Field {
                    // At most `u16::MAX` (checked above: fewer distinct names than that).
                    name: index as u16,
                    start,
                    end: buffer.len() as u32,
                }
            })
            .collect();
        Fields {
            values: buffer.freeze(),
            fields,
            names: names.into_boxed_slice(),
        }
    }

    fn name(&self, field: &Field) -> &HeaderName {
        let index = usize::from(field.name);
        KNOWN
            .get(index)
            .or_else(|| self.names.get(index - KNOWN.len()))
            // Every index was made from one of the two lists; an empty name never matches.
            .unwrap_or(&EMPTY_NAME)
    }

    fn bytes(&self, field: &Field) -> &[u8] {
        self.values
            .get(field.start as usize..field.end as usize)
            .unwrap_or_default()
    }

    fn value(&self, field: &Field) -> HeaderValue {
        let bytes = self
            .values
            .slice(field.start as usize..(field.end as usize).min(self.values.len()));
        // The bytes were a valid value when copied, so this cannot fail.
        HeaderValue::from_maybe_shared(bytes).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The first value of `name`, as raw bytes.
    pub fn get_bytes(&self, name: &HeaderName) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|f| self.name(f) == name)
            .map(|f| self.bytes(f))
    }

    /// The first value of `name`, when it is visible ASCII text (as `HeaderValue::to_str`).
    pub fn get_str(&self, name: &HeaderName) -> Option<&str> {
        as_text(self.get_bytes(name)?)
    }

    /// Every value of `name` that is visible ASCII text, in order.
    pub fn get_all_str<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |f| self.name(f) == name)
            .filter_map(|f| as_text(self.bytes(f)))
    }

    /// The first value of `name`.
    pub fn get(&self, name: &HeaderName) -> Option<HeaderValue> {
        self.fields
            .iter()
            .find(|f| self.name(f) == name)
            .map(|f| self.value(f))
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = HeaderValue> + 'a {
        self.fields
            .iter()
            .filter(move |f| self.name(f) == name)
            .map(|f| self.value(f))
    }

    pub fn contains_key(&self, name: &HeaderName) -> bool {
        self.fields.iter().any(|f| self.name(f) == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, HeaderValue)> {
        self.fields.iter().map(|f| (self.name(f), self.value(f)))
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The fields as a header map with room for `extra` more, leaving out `skip`.
    pub fn to_map(&self, extra: usize, skip: Option<&HeaderName>) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(self.fields.len() + extra);
        self.fill(&mut headers, extra, skip);
        headers
    }

    /// `to_map` written into `headers`, which is emptied first (its tables are kept).
    pub fn fill(&self, headers: &mut HeaderMap, extra: usize, skip: Option<&HeaderName>) {
        headers.clear();
        headers.reserve(self.fields.len() + extra);
        for field in self.fields.iter() {
            let name = self.name(field);
            if Some(name) != skip {
                headers.append(name.clone(), self.value(field));
            }
        }
    }

    /// Bytes these fields hold: the list, the values' shared buffer and the names not in
    /// `KNOWN` (the list of them, and the allocation each name that `http` does not know owns).
    pub fn footprint(&self) -> usize {
        if self.fields.is_empty() {
            return 0;
        }
        let list = self.fields.len() * size_of::<Field>() + ALLOCATION;
        let names = match self.names.len() {
            0 => 0,
            n => n * size_of::<HeaderName>() + ALLOCATION,
        };
        // A custom name owns an allocation (shared `Bytes` storage: a header and the bytes);
        // a standard one outside `KNOWN` is counted so too (over, never under).
        let custom: usize = (self.names.iter())
            .map(|n| n.as_str().len() + 32 + ALLOCATION)
            .sum();
        list + names + custom + self.values.len() + 32 + ALLOCATION
    }
}

/// What `Fields::name` answers for an index that is in neither list (never made).
static EMPTY_NAME: HeaderName = HeaderName::from_static("x-kagami-none");

/// `bytes` as text when every byte is visible ASCII or a tab (as `HeaderValue::to_str`).
fn as_text(bytes: &[u8]) -> Option<&str> {
    bytes
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        .then(|| std::str::from_utf8(bytes).ok())
        .flatten()
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
    fn names_known_and_unknown_come_back_in_order_and_repeated_ones_are_kept_once() {
        let mut h = HeaderMap::new();
        h.append("x-b", HeaderValue::from_static("1"));
        h.append(CONTENT_TYPE, HeaderValue::from_static("text/html"));
        h.append("x-a", HeaderValue::from_static("2"));
        h.append("x-b", HeaderValue::from_static("3"));
        h.append(http::header::WARNING, HeaderValue::from_static("4"));
        let fields = Fields::copy_of(&h);
        let got: Vec<(String, HeaderValue)> = (fields.iter())
            .map(|(n, v)| (n.as_str().to_string(), v))
            .collect();
        let want: Vec<(String, HeaderValue)> = (h.iter())
            .map(|(n, v)| (n.as_str().to_string(), v.clone()))
            .collect();
        assert_eq!(got, want);
        // Content-Type is one of the known names; x-a, x-b and Warning are the entry's own.
        assert_eq!(fields.names.len(), 3);
        let x_b = HeaderName::from_static("x-b");
        assert_eq!(fields.get_all_str(&x_b).collect::<Vec<_>>(), ["1", "3"]);
        assert_eq!(fields.to_map(0, None), h);
        assert!(!fields.contains_key(&ETAG));
    }

    #[test]
    fn filling_a_used_map_leaves_only_the_fields() {
        let fields = Fields::copy_of(&map());
        let mut used = HeaderMap::with_capacity(32);
        used.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        used.append(SET_COOKIE, HeaderValue::from_static("old=1"));
        let room = used.capacity();
        fields.fill(&mut used, 4, Some(&ETAG));
        assert_eq!(used.len(), 4);
        assert!(!used.contains_key(CACHE_CONTROL) && !used.contains_key(ETAG));
        let cookies: Vec<_> = used.get_all(SET_COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(
            used.capacity(),
            room,
            "the map's tables are reused, not replaced"
        );
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
        assert!(fields.footprint() >= 5 * size_of::<Field>());
    }
}
