//! What kept things really cost in memory, and copies of header fields that own their bytes.
//!
//! Two mistakes this module exists to avoid. (1) Header values parsed by hyper are slices of the
//! connection's read buffer, so a stored entry (or anything else kept past the exchange) that
//! holds such a value keeps that whole buffer (8 KiB to several hundred KiB) alive: kept fields
//! are copied into one allocation of their own. (2) A store that weighs entries by body length
//! alone holds several times its budget with small objects: every entry also costs its key,
//! header map, variant values, the structs around it and the store's own bookkeeping.

use std::mem::size_of;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Bookkeeping the allocator adds to every allocation (glibc: 8-16 bytes of header, and sizes
/// rounded up to 16), counted once per allocation we know of.
pub const ALLOCATION: usize = 16;

/// moka's own cost per cached key, estimated from moka 0.12's structures: the key moved into
/// an `Arc` (16 + the `String`'s 24), the concurrent hash table's bucket (a boxed key/value
/// pair plus its slot, about 48), `ValueEntry` (value, two shared pointers, ~40), `EntryInfo`
/// (key hash, weight, timestamps and flags, ~72), the `Mutex<DeqNodes>` (~48) and the
/// access-order deque node (~32), each its own allocation, plus the per-entry share of the
/// frequency sketch and of the write-operation queue. Rounded up, because undercounting is
/// what lets a store exceed its budget.
pub const STORE_ENTRY: usize = 384;

/// An owned, compact copy of `headers`: every value lives in one allocation owned by the copy,
/// and the map has no spare capacity. Names that are not standard are copied by `http` itself
/// when parsed, so only values need copying.
pub fn compact_headers(headers: &HeaderMap) -> HeaderMap {
    let total: usize = headers.values().map(|v| v.len()).sum();
    let mut buffer = BytesMut::with_capacity(total);
    for value in headers.values() {
        buffer.extend_from_slice(value.as_bytes());
    }
    let buffer: Bytes = buffer.freeze();
    let mut copy = HeaderMap::with_capacity(headers.keys_len());
    let mut at = 0;
    for (name, value) in headers {
        let len = value.len();
        let mut owned = HeaderValue::from_maybe_shared(buffer.slice(at..at + len))
            // The bytes come from a valid value, so this cannot fail; keep the value if it did.
            .unwrap_or_else(|_| value.clone());
        owned.set_sensitive(value.is_sensitive());
        copy.append(name.clone(), owned);
        at += len;
    }
    copy
}

/// Bytes a header map holds: its index and entry tables, values and custom names.
pub fn headers_footprint(headers: &HeaderMap) -> usize {
    // `capacity()` is the usable capacity; the index table has a third more slots.
    let slots = headers.capacity() + headers.capacity() / 3;
    // An entry: hash, name, value and the links to extra values.
    let entry = size_of::<(u16, HeaderName, HeaderValue, Option<(usize, usize)>)>();
    let extra = size_of::<(HeaderValue, usize, usize)>();
    let extras = headers.len() - headers.keys_len();
    let tables = slots * 4 + headers.capacity() * entry + extras * extra + 3 * ALLOCATION;
    let values: usize = headers.values().map(|v| v.len()).sum();
    // Custom names own an allocation each (shared `Bytes` storage: a header and the bytes).
    let names: usize = headers
        .keys()
        .filter(|n| !is_standard(n))
        .map(|n| n.as_str().len() + 32 + ALLOCATION)
        .sum();
    // Values share one allocation (see `compact_headers`), with a `Bytes` shared header.
    tables + values + 32 + ALLOCATION + names
}

/// Bytes a list of `(name, value)` strings holds (a stored variant's secondary key).
pub fn strings_footprint(pairs: &[(String, Option<String>)]) -> usize {
    std::mem::size_of_val(pairs)
        + ALLOCATION
        + pairs
            .iter()
            .map(|(n, v)| {
                n.capacity() + ALLOCATION + v.as_ref().map_or(0, |v| v.capacity() + ALLOCATION)
            })
            .sum::<usize>()
}

/// jemalloc's page on x86-64 Linux (its build's `LG_PAGE`; 64 KiB on aarch64 builds). Only a
/// first guess for `class_below`, which asks jemalloc whether the guess is exact.
const PAGE: usize = 4096;

/// The size of the allocation that holds `len` bytes, as jemalloc (the default allocator, see
/// `src/cli/allocator.rs`) answers it (`nallocx`), so it is exact for the build's page size and
/// for an operator's `_RJEM_MALLOC_CONF`. With 4 KiB pages: up to 14 KiB a size class, four
/// per doubling above 128 bytes (a 1,025-byte body takes 1,280); above that whole pages, since
/// the bundled jemalloc 5.3.1 has its large size classes off (`opt.disable_large_size_classes`,
/// its stats print it), so a 600 KiB body takes 600 KiB, not the 640 KiB class. The system
/// allocator rounds to 16 bytes, counted in `ALLOCATION`.
pub fn allocated(len: usize) -> usize {
    if len <= 128 {
        return len;
    }
    jemalloc_size(len)
}

/// The largest allocation size at most `len` that `allocated` does not round (`len` itself
/// without jemalloc, or when no guess is exact): whole pages, or the size class below.
pub fn class_below(len: usize) -> usize {
    if !cfg!(feature = "jemalloc") || len <= 128 {
        return len;
    }
    // The class spacing is a quarter of the power of two at or just below `len`.
    let spacing = 1usize << ((usize::BITS - 1 - len.leading_zeros()) - 2);
    [len / PAGE * PAGE, len / spacing * spacing]
        .into_iter()
        .filter(|&size| size > 0 && allocated(size) == size)
        .max()
        .unwrap_or(len)
}

#[cfg(feature = "jemalloc")]
fn jemalloc_size(len: usize) -> usize {
    // SAFETY: nallocx only computes a size and allocates nothing; `len` is not 0.
    match unsafe { tikv_jemalloc_sys::nallocx(len, 0) } {
        0 => len,
        size => size,
    }
}

#[cfg(not(feature = "jemalloc"))]
fn jemalloc_size(len: usize) -> usize {
    len
}

/// Whether jemalloc's pages are 4 KiB, for tests whose figures assume them.
#[cfg(all(test, feature = "jemalloc"))]
pub fn four_kib_pages() -> bool {
    allocated(PAGE + 1) == 2 * PAGE
}

/// Bytes an `Arc<T>` holds besides `T`'s own heap data.
pub fn arc_footprint<T>() -> usize {
    size_of::<T>() + 2 * size_of::<usize>() + ALLOCATION
}

/// Whether `name` is one of `http`'s standard names (stored inline, no allocation).
pub(super) fn is_standard(name: &HeaderName) -> bool {
    // `http` offers no query for it; the names origins commonly send are checked, and any other
    // name is counted as allocated (over, never under).
    KNOWN.iter().any(|k| k == name)
}

/// The names origins commonly send, all standard in `http`. Stored fields name them by their
/// index here (`cache::fields`).
pub(super) const KNOWN: [HeaderName; 29] = [
    http::header::ACCEPT_RANGES,
    http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
    http::header::AGE,
    http::header::ALT_SVC,
    http::header::CACHE_CONTROL,
    http::header::CONNECTION,
    http::header::CONTENT_DISPOSITION,
    http::header::CONTENT_ENCODING,
    http::header::CONTENT_LANGUAGE,
    http::header::CONTENT_LENGTH,
    http::header::CONTENT_LOCATION,
    http::header::CONTENT_RANGE,
    http::header::CONTENT_SECURITY_POLICY,
    http::header::CONTENT_TYPE,
    http::header::DATE,
    http::header::ETAG,
    http::header::EXPIRES,
    http::header::LAST_MODIFIED,
    http::header::LINK,
    http::header::LOCATION,
    http::header::PRAGMA,
    http::header::REFERRER_POLICY,
    http::header::SERVER,
    http::header::SET_COOKIE,
    http::header::STRICT_TRANSPORT_SECURITY,
    http::header::VARY,
    http::header::X_CONTENT_TYPE_OPTIONS,
    http::header::X_FRAME_OPTIONS,
    http::header::X_XSS_PROTECTION,
];

/// Bytes a vector of `capacity` `Arc`s holds (the pointers; not what they point to).
pub fn arc_vec_footprint(capacity: usize) -> usize {
    capacity * size_of::<Arc<()>>() + ALLOCATION
}

#[cfg(all(test, feature = "jemalloc"))]
mod tests {
    use super::{allocated, class_below, jemalloc_size};

    /// What a body is counted at is never less than what jemalloc gives it, and the size a
    /// body is split at is one jemalloc does not round, whatever the build's page size.
    #[test]
    fn the_weigher_never_counts_less_than_jemalloc_gives() {
        for len in (129..80_000).chain((80_000..4_000_000).step_by(997)) {
            assert!(allocated(len) >= jemalloc_size(len), "{len}");
            let below = class_below(len);
            assert!(below <= len && below > 0, "{len}: {below}");
            assert_eq!(allocated(below), below, "{len}: {below}");
            assert!(
                below == 128 || jemalloc_size(below) == below,
                "{len}: {below}"
            );
        }
    }

    #[test]
    fn bodies_are_counted_at_their_jemalloc_size_class_or_in_pages() {
        if !super::four_kib_pages() {
            return;
        }
        for (len, class) in [
            (1, 1),
            (128, 128),
            (129, 160),
            (1000, 1024),
            (1024, 1024),
            (1025, 1280),
            (14_336, 14_336),
            (14_337, 16_384),
            (16_384, 16_384),
            (16_385, 20_480),
            (41_300, 45_056),
            (600 * 1024 + 1, 604 * 1024),
            (1 << 20, 1 << 20),
        ] {
            assert_eq!(allocated(len), class, "{len} bytes");
        }
        for (len, class) in [
            (100, 100),
            (129, 128),
            (1000, 896),
            (1024, 1024),
            (14_337, 12_288),
            (16_385, 16_384),
            (41_300, 40_960),
            (1 << 20, 1 << 20),
        ] {
            assert_eq!(class_below(len), class, "{len} bytes");
            assert_eq!(allocated(class), class, "{len} bytes");
        }
    }
}
