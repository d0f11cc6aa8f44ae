//! A stored body: its bytes in one allocation, or in a few whose sizes are each one of the
//! allocator's size classes, so that no stored byte is rounding.
//!
//! Why: jemalloc (the default allocator, `src/cli/allocator.rs`) rounds an allocation up to a
//! size class, four per doubling, so one buffer for a 41 KiB page takes 48 KiB and one for a
//! 600 KiB PDF 640 KiB: a realistic mix of pages lost about 4 KiB per object to rounding, more
//! than the rest of an entry costs. The same 41 KiB kept as 40 KiB + 1 KiB in two allocations
//! rounds nothing. A part costs a `Bytes` handle (and a shared header once a hit clones it,
//! about 64 bytes in all), so bodies are split only where that saves more than it costs, into
//! at most `MAX_PARTS`. With the system allocator (16-byte rounding) a body is one part.

use std::mem::size_of;
use std::ops::RangeInclusive;
use std::sync::{Arc, Weak};

use bytes::{Bytes, BytesMut};

use super::footprint::{self, ALLOCATION};
use super::mapped::Mapping;

/// At most this many allocations per body: a fourth part would save less than a part costs.
/// A body with its pages in a mapping (`super::mapped`) has that and up to this many more.
pub const MAX_PARTS: usize = 4;

/// What another part costs: its `Bytes` handle in the list and the shared header its storage
/// gets when a hit first clones it. A part is split off only when its rounding costs more.
const PART_COST: usize = 64;

/// Bodies larger than this know whether an entry still holds them (`Kept`): the ones a client
/// that does not read may be answered from (`proxy::body::Held`, which charges it once the store
/// has let go). Smaller ones do not pay for it.
pub const KEPT_MIN: usize = 64 * 1024;

/// Shared by the entries that hold one body (a revalidated entry keeps its predecessor's);
/// the body's copies hold it weakly, so that they can tell when no entry holds it any more,
/// however many copies there are.
#[derive(Debug)]
pub struct Kept;

#[derive(Debug, Clone, Default)]
pub struct StoredBody {
    parts: Parts,
    len: usize,
    /// Set when an entry holds a body larger than `KEPT_MIN` (`kept_by_entry`).
    kept: Option<Weak<Kept>>,
}

#[derive(Debug, Clone)]
enum Parts {
    One(Bytes),
    /// Never empty and never a single part; every part but the last is a whole size class.
    Many(Arc<[Bytes]>),
    /// Parts of which one (the first, in a stored body) is a mapping's pages
    /// (`super::mapped`), and the mapping, counted once per holder. Kept so even as one part,
    /// so that `is_unique` can see who else holds the pages.
    Mapped(Arc<[Bytes]>, Arc<Mapping>),
}

impl Default for Parts {
    fn default() -> Parts {
        Parts::One(Bytes::new())
    }
}

/// The lengths a body of `len` bytes is kept in: the largest size class that fits, then the
/// same for what is left, until what is left rounds up by at most `PART_COST`; one part when
/// that would not hold less than one buffer does (the list of parts costs too).
pub fn plan(len: usize) -> Vec<usize> {
    let mut plan = Vec::with_capacity(MAX_PARTS);
    let mut rest = len;
    while rest > 0 {
        if footprint::allocated(rest) - rest <= PART_COST || plan.len() + 1 == MAX_PARTS {
            plan.push(rest);
            break;
        }
        let part = footprint::class_below(rest);
        plan.push(part);
        rest -= part;
    }
    if plan.len() > 1 && held(&plan) >= held(&[len]) {
        return vec![len];
    }
    plan
}

/// What a body kept in `parts` holds (as `StoredBody::footprint` counts it).
fn held(parts: &[usize]) -> usize {
    let each: usize = (parts.iter())
        .map(|&n| footprint::allocated(n) + 32 + ALLOCATION)
        .sum();
    match parts.len() {
        0 | 1 => each,
        n => each + footprint::allocated(16 + n * size_of::<Bytes>()) + ALLOCATION,
    }
}

impl StoredBody {
    /// The body a fill collected, split as `plan` says. The first part stays in the fill's own
    /// buffer, shrunk (in place when it is whole pages: the allocator gives a large
    /// allocation's tail back without moving it; a small one is moved); the parts after it,
    /// together smaller than a quarter of the body, are copied out first. A buffer that grew by doubling keeps no spare capacity either way.
    pub fn from_buffer(buffer: BytesMut) -> StoredBody {
        let len = buffer.len();
        let plan = plan(len);
        let mut first = Vec::from(buffer);
        if plan.len() <= 1 {
            if first.capacity() > first.len() {
                first.shrink_to_fit();
            }
            return StoredBody::from(Bytes::from(first));
        }
        let mut parts = Vec::with_capacity(plan.len());
        let mut at = plan[0];
        let mut rest = Vec::with_capacity(plan.len() - 1);
        for &n in &plan[1..] {
            rest.push(Bytes::copy_from_slice(&first[at..at + n]));
            at += n;
        }
        first.truncate(plan[0]);
        first.shrink_to_fit();
        parts.push(Bytes::from(first));
        parts.extend(rest);
        StoredBody {
            parts: Parts::Many(parts.into()),
            len,
            kept: None,
        }
    }

    /// A body whose whole pages are `pages` (a fill's mapping, full) and whose rest, less
    /// than a page, is `rest`, split as `from_buffer` splits any body.
    pub fn mapped(pages: Mapping, rest: BytesMut) -> StoredBody {
        let (pages, mapping) = pages.share();
        let len = pages.len() + rest.len();
        let rest = StoredBody::from_buffer(rest);
        let parts: Vec<Bytes> = std::iter::once(pages)
            .chain(rest.parts().iter().filter(|p| !p.is_empty()).cloned())
            .collect();
        StoredBody {
            parts: Parts::Mapped(parts.into(), mapping),
            len,
            kept: None,
        }
    }

    /// An entry takes this body: the hold it keeps for as long as it lives (shared with the
    /// entries that already hold the same body), for bodies larger than `KEPT_MIN`.
    pub fn kept_by_entry(&mut self) -> Option<Arc<Kept>> {
        if self.len <= KEPT_MIN {
            return None;
        }
        let kept = (self.kept.as_ref())
            .and_then(Weak::upgrade)
            .unwrap_or_else(|| Arc::new(Kept));
        self.kept = Some(Arc::downgrade(&kept));
        Some(kept)
    }

    /// Whether the store no longer holds this body, so that what it holds is its holders'
    /// alone: no entry holds it any more (however many other copies there are), or, for a body
    /// no entry ever followed, this handle is the only one.
    pub fn let_go_by_store(&self) -> bool {
        match &self.kept {
            Some(kept) => kept.strong_count() == 0,
            None => self.is_unique(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The parts in order (one for most bodies).
    pub fn parts(&self) -> &[Bytes] {
        match &self.parts {
            Parts::One(bytes) => std::slice::from_ref(bytes),
            Parts::Many(parts) | Parts::Mapped(parts, _) => parts,
        }
    }

    /// The body as one `Bytes` when it is kept in one part, else the body back.
    /// A followed body (`kept_by_entry`) stays whole, so that its copies can still tell.
    pub fn into_single(self) -> Result<Bytes, StoredBody> {
        match self.parts {
            Parts::One(bytes) if self.kept.is_none() => Ok(bytes),
            _ => Err(self),
        }
    }

    /// Whether nothing else holds any of this body's storage (this handle is the last).
    pub fn is_unique(&self) -> bool {
        match &self.parts {
            Parts::One(bytes) => bytes.is_unique(),
            // A slice handed out by `range` shares a part's storage, not the list.
            Parts::Many(parts) => {
                Arc::strong_count(parts) == 1 && parts.iter().all(Bytes::is_unique)
            }
            // The pages' `Bytes` never say they are unique (they have an owner); the mapping's
            // count of holders does. Slices in flight to a client are not counted: a body
            // that waits for a slow client (`proxy::body::Held`) copies what it sends.
            Parts::Mapped(parts, mapping) => {
                Arc::strong_count(parts) == 1
                    && Mapping::holders(mapping) == 1
                    && parts
                        .iter()
                        .filter(|p| !is_mapping(p, mapping))
                        .all(Bytes::is_unique)
            }
        }
    }

    /// Bytes `start..end` copied into a buffer of their own (`end` is clamped to the length).
    pub fn copy_range(&self, start: usize, end: usize) -> Bytes {
        let end = end.min(self.len);
        if start >= end {
            return Bytes::new();
        }
        if let Parts::One(bytes) = &self.parts {
            return Bytes::copy_from_slice(&bytes[start..end]);
        }
        let mut out = BytesMut::with_capacity(end - start);
        self.for_each_in(start, end, |piece| out.extend_from_slice(piece));
        out.freeze()
    }

    /// Bytes `range` without a copy (a Range answer); `range` must lie within the body (it is
    /// clamped to it, which would leave the answer shorter than its Content-Range says).
    pub fn slice(&self, range: RangeInclusive<usize>) -> StoredBody {
        debug_assert!(
            *range.end() < self.len,
            "range {range:?} beyond {}",
            self.len
        );
        let (start, end) = (*range.start(), range.end().saturating_add(1).min(self.len));
        if start >= end {
            return StoredBody::default();
        }
        let kept = self.kept.clone();
        if let Parts::One(bytes) = &self.parts {
            return StoredBody {
                kept,
                ..StoredBody::from(bytes.slice(start..end))
            };
        }
        let mut pieces: Vec<Bytes> = Vec::new();
        let mut offset = 0;
        for part in self.parts() {
            let (from, to) = (offset, offset + part.len());
            offset = to;
            if to <= start || from >= end {
                continue;
            }
            pieces.push(part.slice(start.max(from) - from..end.min(to) - from));
        }
        match &self.parts {
            Parts::Mapped(_, mapping) if pieces.iter().any(|p| is_mapping(p, mapping)) => {
                StoredBody {
                    len: end - start,
                    parts: Parts::Mapped(pieces.into(), mapping.clone()),
                    kept,
                }
            }
            _ => StoredBody {
                kept,
                ..StoredBody::from_pieces(pieces)
            },
        }
    }

    /// Memory the body holds: each part's allocation (at its size class) and storage header,
    /// and the list of parts.
    pub fn footprint(&self) -> usize {
        let parts: usize = (self.parts().iter())
            .filter(|p| !p.is_empty())
            .map(|p| footprint::allocated(p.len()) + 32 + ALLOCATION)
            .sum();
        match &self.parts {
            Parts::One(_) => parts,
            Parts::Many(list) => {
                parts + footprint::allocated(16 + std::mem::size_of_val(&**list)) + ALLOCATION
            }
            Parts::Mapped(list, _) => {
                parts
                    + footprint::allocated(16 + std::mem::size_of_val(&**list))
                    + ALLOCATION
                    + Mapping::COST
            }
        }
    }

    /// The whole body in one buffer (tests, and callers that need contiguous bytes).
    pub fn to_bytes(&self) -> Bytes {
        match &self.parts {
            Parts::One(bytes) => bytes.clone(),
            Parts::Many(_) | Parts::Mapped(..) => self.copy_range(0, self.len),
        }
    }

    fn from_pieces(mut pieces: Vec<Bytes>) -> StoredBody {
        if pieces.len() <= 1 {
            return StoredBody::from(pieces.pop().unwrap_or_default());
        }
        let len = pieces.iter().map(Bytes::len).sum();
        StoredBody {
            parts: Parts::Many(pieces.into()),
            len,
            kept: None,
        }
    }

    /// Calls `f` with the parts' bytes that lie in `start..end`, in order.
    fn for_each_in(&self, start: usize, end: usize, mut f: impl FnMut(&[u8])) {
        let mut offset = 0;
        for part in self.parts() {
            let (from, to) = (offset, offset + part.len());
            offset = to;
            if to > start && from < end {
                f(&part[start.max(from) - from..end.min(to) - from]);
            }
        }
    }
}

/// Whether `part` is (a slice of) `mapping`'s pages.
fn is_mapping(part: &Bytes, mapping: &Mapping) -> bool {
    let pages = mapping.pages();
    let (start, end) = (
        pages.as_ptr() as usize,
        pages.as_ptr() as usize + pages.len(),
    );
    let at = part.as_ptr() as usize;
    !part.is_empty() && at >= start && at < end
}

impl From<Bytes> for StoredBody {
    fn from(bytes: Bytes) -> StoredBody {
        StoredBody {
            len: bytes.len(),
            parts: Parts::One(bytes),
            kept: None,
        }
    }
}

impl From<&'static str> for StoredBody {
    fn from(text: &'static str) -> StoredBody {
        StoredBody::from(Bytes::from_static(text.as_bytes()))
    }
}

impl PartialEq<[u8]> for StoredBody {
    fn eq(&self, other: &[u8]) -> bool {
        if other.len() != self.len {
            return false;
        }
        let mut at = 0;
        self.parts().iter().all(|part| {
            let same = other[at..at + part.len()] == part[..];
            at += part.len();
            same
        })
    }
}

impl PartialEq<&str> for StoredBody {
    fn eq(&self, other: &&str) -> bool {
        *self == *other.as_bytes()
    }
}

impl PartialEq for StoredBody {
    fn eq(&self, other: &StoredBody) -> bool {
        *self == *other.to_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    fn stored(len: usize) -> (Vec<u8>, StoredBody) {
        let bytes = content(len);
        let mut buffer = BytesMut::with_capacity(len);
        buffer.extend_from_slice(&bytes);
        (bytes, StoredBody::from_buffer(buffer))
    }

    #[test]
    fn a_plan_adds_up_to_the_body_and_rounds_at_most_a_part_cost() {
        for len in [
            0, 1, 100, 1024, 1300, 16_000, 16_385, 41_300, 262_144, 1_000_000,
        ] {
            let plan = plan(len);
            assert_eq!(plan.iter().sum::<usize>(), len, "{len}");
            assert!(plan.len() <= MAX_PARTS, "{len}: {plan:?}");
            let (last, whole) = plan.split_last().map_or((0, &[][..]), |(l, w)| (*l, w));
            for &part in whole {
                assert_eq!(footprint::allocated(part), part, "{len}: {plan:?}");
            }
            if plan.len() < MAX_PARTS {
                assert!(
                    footprint::allocated(last) - last <= PART_COST,
                    "{len}: {plan:?}"
                );
            }
        }
    }

    #[cfg(feature = "jemalloc")]
    #[test]
    fn bodies_of_unlucky_sizes_are_split_at_size_classes() {
        if !footprint::four_kib_pages() {
            return;
        }
        // Splitting would hold more than it saves: the list of parts costs too.
        assert_eq!(plan(1200), vec![1200]);
        assert_eq!(plan(41_300), vec![40_960, 340]);
        assert_eq!(plan(1_000_000), vec![999_424, 576]);
        assert_eq!(plan(1_024_000), vec![1_024_000]);
        assert_eq!(plan(16_000), vec![12_288, 3_584, 128]);
        assert_eq!(plan(16_384), vec![16_384]);
        assert_eq!(plan(1024), vec![1024]);
    }

    #[cfg(not(feature = "jemalloc"))]
    #[test]
    fn with_the_system_allocator_a_body_is_one_part() {
        assert_eq!(plan(41_300), vec![41_300]);
    }

    /// What `proxy::body::Held` asks: a large body's copies know when no entry holds it any
    /// more, however many of them there are; a small body is not followed.
    #[test]
    fn copies_of_a_large_body_know_when_no_entry_holds_it() {
        for len in [KEPT_MIN + 1, 300_000] {
            let (_, mut stored) = stored(len);
            let entry = stored.kept_by_entry().expect("a hold");
            let (a, b) = (stored.clone(), stored.clone());
            let range = stored.slice(10..=KEPT_MIN);
            assert!(!a.let_go_by_store() && !range.let_go_by_store(), "{len}");
            assert!(a.clone().into_single().is_err(), "{len}: stays followed");
            // A revalidated entry keeps the same body: one hold between them.
            let mut again = stored.clone();
            let successor = again.kept_by_entry().expect("a hold");
            assert!(Arc::ptr_eq(&entry, &successor));
            drop(entry);
            assert!(!a.let_go_by_store(), "{len}: the successor still holds it");
            drop(successor);
            drop((stored, again));
            for copy in [&a, &b, &range] {
                assert!(copy.let_go_by_store(), "{len}");
                assert!(!copy.is_unique(), "{len}: two copies, neither the only one");
            }
        }
        let (_, mut small) = stored(1000);
        assert!(small.kept_by_entry().is_none());
        let copy = small.clone();
        assert!(!small.let_go_by_store());
        drop(copy);
        assert!(small.let_go_by_store(), "unfollowed: the only handle");
    }

    #[test]
    fn split_bodies_keep_their_bytes_and_no_spare_capacity() {
        for len in [0, 10, 1000, 16_000, 16_385, 41_300, 300_001, 1_000_000] {
            let (bytes, body) = stored(len);
            assert_eq!(body.len(), len);
            assert!(body == bytes[..], "{len}");
            assert_eq!(body.to_bytes(), bytes, "{len}");
            assert_eq!(body.parts().len(), plan(len).len().max(1), "{len}");
            // (An empty body is a static one, which nobody owns.)
            assert!(body.is_unique() || len == 0, "{len}");
        }
        // A buffer that doubled past its length is shrunk.
        let mut buffer = BytesMut::with_capacity(64 * 1024);
        buffer.extend_from_slice(&content(40_000));
        let body = StoredBody::from_buffer(buffer);
        assert!(body == content(40_000)[..]);
        // Each part's own buffer (the handles are the only ones once the body is dropped, so
        // `Vec::from` takes the buffer rather than copying it).
        let parts = body.parts().to_vec();
        drop(body);
        let held: usize = parts.into_iter().map(|p| Vec::from(p).capacity()).sum();
        assert_eq!(held, 40_000, "spare capacity kept");
    }

    #[test]
    fn copies_and_slices_across_parts_are_the_same_bytes() {
        let len = 16_000;
        let (bytes, body) = stored(len);
        for (start, end) in [
            (0, 1),
            (0, len),
            (12_280, 12_290),
            (12_280, 15_900),
            (15_880, len),
            (5, 5),
        ] {
            assert_eq!(
                body.copy_range(start, end),
                bytes[start..end],
                "{start}..{end}"
            );
            if start < end {
                let slice = body.slice(start..=end - 1);
                assert_eq!(slice.len(), end - start);
                assert!(slice == bytes[start..end], "{start}..={}", end - 1);
            }
        }
        assert_eq!(body.copy_range(len - 3, len + 100), bytes[len - 3..]);
    }

    #[test]
    fn a_body_with_a_slice_handed_out_is_not_unique() {
        let (_, body) = stored(41_300);
        let slice = body.slice(10..=20);
        assert!(!body.is_unique());
        drop(slice);
        assert!(body.is_unique());
        let other = body.clone();
        assert!(!body.is_unique());
        drop(other);
        assert!(body.is_unique());
    }

    #[test]
    fn the_footprint_counts_every_part_at_its_size_class() {
        let (_, body) = stored(41_300);
        let parts: usize = body
            .parts()
            .iter()
            .map(|p| footprint::allocated(p.len()))
            .sum();
        assert!(body.footprint() >= parts + 32 * body.parts().len());
        assert_eq!(StoredBody::default().footprint(), 0);
    }
}
