//! Large bodies' whole pages in anonymous mappings of their own, not in the allocator's heap:
//! the buffer a fill collects a body in (`FillBuffer`) and the mapping a stored body keeps.
//!
//! Why: jemalloc keeps bookkeeping for every page of a large allocation, about 18 bytes a page
//! (1.1 KiB per stored 256 KiB body, 4.1 KiB per 1 MiB one, measured against the same blocks
//! `mmap`ed directly, which cost 0.01 KiB); the store does not count it, and it was most of what
//! a large object cost besides its body. A mapping needs none of it, and an evicted body's pages
//! go back to the kernel at once instead of waiting in the allocator. The kernel merges
//! neighbouring anonymous mappings; Kagami keeps at most `MAX_MAPPINGS` at once, so it never
//! nears `vm.max_map_count` (where an unmap that splits a merged mapping would fail and leak
//! it), and when the kernel refuses one the body goes to the heap as before. Only the whole pages of
//! a body of at least `MAPPED_MIN` are mapped, and only when its length is known before its
//! first byte: the rest (less than a page) is split into size classes as any body
//! (`StoredBody::from_buffer`). Measured with `cargo bench --bench memory` (README "Memory").

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use memmap2::{MmapMut, MmapOptions};

use super::body::StoredBody;

/// Bodies with at least this many bytes of whole pages get a mapping (glibc's own threshold for
/// giving an allocation its own mapping, as Kagami sets it in builds with the system allocator).
/// Below it the bookkeeping saved is under 0.3 KiB a body, not worth two system calls a fill.
pub const MAPPED_MIN: usize = 128 * 1024;

/// At most this many mappings at once (a quarter of Linux's default `vm.max_map_count`, 65,530,
/// which the rest of the process needs some of): each is at most one of the process's memory
/// areas, merged or not, so Kagami's stay below it. Past it a body goes to the heap.
pub const MAX_MAPPINGS: usize = 16_384;

/// Pages up to this size are populated when mapped (one system call instead of a fault per
/// page: 86 against 132 us for 256 KiB); larger ones fault in as the body arrives, so that a
/// fill announcing a large body does not hold a worker thread while the kernel zeroes it all.
const POPULATE_MAX: usize = 1 << 20;

/// Mappings this large are unmapped on the blocking pool, not on the worker thread that let go
/// of them (an eviction during a request): the kernel frees every page then.
const UNMAP_ASIDE: usize = 1 << 20;

/// Mappings alive now (`Pages`).
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Mappings alive now: a body's pages, in a fill or in the store.
pub fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// One anonymous mapping, counted in `LIVE` while it exists.
#[derive(Debug)]
struct Pages(Option<MmapMut>);

impl Pages {
    /// `len` bytes (whole pages) of fresh zeroed memory, unless `MAX_MAPPINGS` are alive or the
    /// kernel refuses.
    fn map(len: usize) -> Option<Pages> {
        Pages::map_within(len, MAX_MAPPINGS)
    }

    fn map_within(len: usize, max: usize) -> Option<Pages> {
        if LIVE.fetch_add(1, Ordering::Relaxed) >= max {
            LIVE.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let mut options = MmapOptions::new();
        options.len(len);
        if len <= POPULATE_MAX {
            options.populate();
        }
        match options.map_anon() {
            Ok(map) => Some(Pages(Some(map))),
            Err(_) => {
                LIVE.fetch_sub(1, Ordering::Relaxed);
                None
            }
        }
    }
}

impl Deref for Pages {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.as_deref().unwrap_or_default()
    }
}

impl DerefMut for Pages {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().unwrap_or_default()
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        let Some(map) = self.0.take() else { return };
        LIVE.fetch_sub(1, Ordering::Relaxed);
        if map.len() >= UNMAP_ASIDE {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn_blocking(move || drop(map));
            }
        }
    }
}

/// The kernel's page size, read once.
fn page() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf only reads a system setting.
        match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            size if size > 0 => size as usize,
            _ => 4096,
        }
    })
}

/// A stored body's pages. Shared by every `Bytes` of them (one owner) and by every
/// `StoredBody` that holds them (one count each), so that `StoredBody::is_unique` can tell
/// whether the store is the only holder.
#[derive(Debug)]
pub struct Mapping(Pages);

/// The owner of a mapping's `Bytes`: whatever holds a slice of the pages keeps them mapped.
struct Shared(Arc<Mapping>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0 .0
    }
}

impl Mapping {
    /// The pages as `Bytes`, and the count a `StoredBody` keeps; the `Bytes` own one more.
    pub fn share(self) -> (Bytes, Arc<Mapping>) {
        let mapping = Arc::new(self);
        (Bytes::from_owner(Shared(mapping.clone())), mapping)
    }

    /// The pages.
    pub fn pages(&self) -> &[u8] {
        &self.0
    }

    /// Holders of `mapping` besides its `Bytes`: the `StoredBody`s that keep it.
    pub fn holders(mapping: &Arc<Mapping>) -> usize {
        Arc::strong_count(mapping).saturating_sub(1)
    }

    /// Memory a mapping costs besides its pages: the `Arc` around it and the `Bytes` owner.
    pub const COST: usize = 2 * 32;
}

/// The buffer a fill collects a body in: the body's whole pages in a mapping when it is large
/// and its length was announced, written first, then the rest in an ordinary buffer (all of
/// it without a mapping).
#[derive(Debug, Default)]
pub struct FillBuffer {
    pages: Option<(Pages, usize)>,
    rest: BytesMut,
}

impl FillBuffer {
    /// A buffer for a body of `expected` bytes (mapped when large enough), or for a body of
    /// unknown length (`None`: it grows as it is written).
    pub fn for_length(expected: Option<usize>) -> FillBuffer {
        let len = expected.unwrap_or(0);
        let whole = len / page() * page();
        let pages = (whole >= MAPPED_MIN).then(|| Pages::map(whole)).flatten();
        match pages {
            Some(map) => FillBuffer {
                pages: Some((map, 0)),
                rest: BytesMut::with_capacity(len - whole),
            },
            None => FillBuffer::heap(len),
        }
    }

    /// A buffer on the allocator's heap with room for `capacity` bytes.
    pub fn heap(capacity: usize) -> FillBuffer {
        FillBuffer {
            pages: None,
            rest: BytesMut::with_capacity(capacity),
        }
    }

    pub fn len(&self) -> usize {
        self.pages.as_ref().map_or(0, |(_, written)| *written) + self.rest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.pages.as_ref().map_or(0, |(map, _)| map.len()) + self.rest.capacity()
    }

    /// Whether the body's pages are in a mapping.
    pub fn is_mapped(&self) -> bool {
        self.pages.is_some()
    }

    /// Room for at least `additional` more bytes (only the part after the pages grows).
    pub fn reserve(&mut self, additional: usize) {
        let room = (self.pages.as_ref()).map_or(0, |(map, written)| map.len() - written);
        if additional > room + (self.rest.capacity() - self.rest.len()) {
            self.rest.reserve(additional - room);
        }
    }

    /// Appends `chunk`: into the pages while they have room, then after them.
    pub fn extend_from_slice(&mut self, mut chunk: &[u8]) {
        if let Some((map, written)) = &mut self.pages {
            let n = (map.len() - *written).min(chunk.len());
            map[*written..*written + n].copy_from_slice(&chunk[..n]);
            *written += n;
            chunk = &chunk[n..];
        }
        self.rest.extend_from_slice(chunk);
    }

    /// The body as stored: the pages (when full) as its first part, the rest split as any
    /// body's (`StoredBody::from_buffer`).
    pub fn into_stored(self) -> StoredBody {
        match self.pages {
            None => StoredBody::from_buffer(self.rest),
            Some((map, written)) if written == map.len() => {
                StoredBody::mapped(Mapping(map), self.rest)
            }
            // Fewer bytes than announced (a fill stores only complete bodies, so this is a
            // caller's mistake): copied to the heap rather than keeping unwritten pages.
            Some((map, written)) => {
                let mut buffer = BytesMut::with_capacity(written + self.rest.len());
                buffer.extend_from_slice(&map[..written]);
                buffer.extend_from_slice(&self.rest);
                StoredBody::from_buffer(buffer)
            }
        }
    }

    /// What was written, as pieces in order, without a copy (a fill that stops storing hands
    /// them to the client that fell behind).
    pub fn into_pieces(self) -> Vec<Bytes> {
        let mut pieces = Vec::with_capacity(2);
        if let Some((map, written)) = self.pages {
            let (bytes, _) = Mapping(map).share();
            pieces.push(bytes.slice(..written));
        }
        pieces.push(self.rest.freeze());
        pieces.retain(|p| !p.is_empty());
        pieces
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// Writes `content` in chunks of `chunk` bytes.
    fn filled(expected: Option<usize>, content: &[u8], chunk: usize) -> FillBuffer {
        let mut buffer = FillBuffer::for_length(expected);
        for piece in content.chunks(chunk) {
            buffer.reserve(piece.len());
            buffer.extend_from_slice(piece);
        }
        buffer
    }

    #[test]
    fn only_large_bodies_of_known_length_are_mapped() {
        assert!(FillBuffer::for_length(Some(MAPPED_MIN + 100)).is_mapped());
        assert!(!FillBuffer::for_length(Some(MAPPED_MIN - 1)).is_mapped());
        assert!(!FillBuffer::for_length(None).is_mapped());
        assert!(!FillBuffer::for_length(Some(0)).is_mapped());
        let buffer = FillBuffer::for_length(Some(300_001));
        assert_eq!(buffer.capacity(), 300_001);
        assert!(buffer.is_empty());
    }

    #[test]
    fn past_the_most_mappings_a_body_goes_to_the_heap() {
        assert!(Pages::map_within(MAPPED_MIN, 0).is_none());
        let pages = Pages::map_within(MAPPED_MIN, usize::MAX).expect("a mapping");
        assert_eq!(pages.len(), MAPPED_MIN);
        assert!(live() >= 1);
    }

    /// Large mappings are unmapped on the blocking pool from within the runtime, at once
    /// without one; both leave every byte readable until then.
    #[tokio::test]
    async fn large_mappings_are_unmapped_off_the_worker() {
        for len in [UNMAP_ASIDE, 3 * UNMAP_ASIDE + 4096] {
            let bytes = content(len);
            let body = filled(Some(len), &bytes, 65_536).into_stored();
            assert!(body == bytes[..]);
            let slice = body.slice(len - 10..=len - 1);
            drop(body);
            assert!(slice == bytes[len - 10..]);
            drop(slice);
        }
        let outside = std::thread::spawn(|| drop(Pages::map(UNMAP_ASIDE)));
        assert!(outside.join().is_ok());
    }

    #[test]
    fn a_mapped_body_keeps_its_bytes_in_pages_then_size_classes() {
        for len in [MAPPED_MIN, MAPPED_MIN + 1, 300_001, 1_000_000, 262_144] {
            let bytes = content(len);
            for chunk in [1000, 16_384, 65_536, len] {
                let buffer = filled(Some(len), &bytes, chunk);
                assert_eq!(buffer.len(), len);
                assert_eq!(buffer.capacity(), len, "{len}: no spare room");
                let body = buffer.into_stored();
                assert!(body == bytes[..], "{len} in chunks of {chunk}");
                assert_eq!(body.len(), len);
                let first = &body.parts()[0];
                assert_eq!(first.len(), len / page() * page(), "{len}");
                assert!(body.parts()[1..].iter().all(|p| p.len() < page()));
                assert!(body.is_unique(), "{len}: the store's copy is the only one");
            }
        }
    }

    #[test]
    fn more_than_announced_goes_after_the_pages() {
        let bytes = content(200_000);
        let body = filled(Some(150_000), &bytes, 7_000).into_stored();
        assert!(body == bytes[..]);
    }

    #[test]
    fn fewer_than_announced_is_kept_on_the_heap() {
        let bytes = content(100_000);
        let body = filled(Some(300_000), &bytes, 7_000).into_stored();
        assert!(body == bytes[..]);
        assert!(body.parts().len() <= crate::cache::body::MAX_PARTS);
    }

    #[test]
    fn pieces_of_a_stopped_fill_are_what_was_written() {
        for (expected, written) in [(Some(300_000), 200_000), (Some(300_000), 300_000)] {
            let bytes = content(written);
            let pieces = filled(expected, &bytes, 9_000).into_pieces();
            assert_eq!(pieces.concat(), bytes);
        }
        assert!(FillBuffer::default().into_pieces().is_empty());
    }

    #[test]
    fn a_copy_or_a_slice_of_a_mapped_body_is_seen_as_a_holder() {
        let bytes = content(300_000);
        let body = filled(Some(300_000), &bytes, 65_536).into_stored();
        assert!(body.is_unique());
        let copy = body.clone();
        assert!(!body.is_unique() && !copy.is_unique());
        drop(copy);
        assert!(body.is_unique());
        // A Range answer over the pages alone, and one over the pages and the tail.
        for range in [10..=20_000, 100..=299_999] {
            let slice = body.slice(range.clone());
            assert!(slice == bytes[range.clone()], "{range:?}");
            assert!(!body.is_unique(), "{range:?}");
            drop(slice);
            assert!(body.is_unique(), "{range:?}");
        }
        // The store lets go while a slice is still being sent: the slice keeps the pages.
        let slice = body.slice(0..=299_999);
        drop(body);
        assert!(slice.is_unique());
        assert!(slice == bytes[..]);
    }
}
