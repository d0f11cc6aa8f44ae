//! What the process's allocator holds, for `/metrics` (`kagami_allocator_bytes{kind}`): jemalloc's
//! own counts when it is the allocator (the default build, `src/cli/allocator.rs`), nothing
//! otherwise. Why: RSS above `cache.memory` can be the store, the allocator's rounding and
//! half-empty pages, its bookkeeping, or freed pages not yet handed back; an operator (and the
//! memory bench) can only tell them apart with these.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the binary once jemalloc is its global allocator. A library user (the tests, the
/// benches' in-process proxies) links jemalloc without allocating through it, and its counts
/// would describe nothing.
static JEMALLOC_IS_GLOBAL: AtomicBool = AtomicBool::new(false);

/// Says that jemalloc is the process's global allocator, so its counts are worth exporting.
pub fn jemalloc_is_global() {
    JEMALLOC_IS_GLOBAL.store(true, Ordering::Relaxed);
}

/// jemalloc's counts at one moment, in bytes (jemalloc's `stats.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocatorBytes {
    /// What the program asked for and still holds.
    pub allocated: u64,
    /// The pages of the allocations in use: `allocated` plus rounding and the free slots of
    /// partly used pages.
    pub active: u64,
    /// jemalloc's own bookkeeping: its page map, extent records, thread caches.
    pub metadata: u64,
    /// Pages jemalloc holds in memory: `active`, the touched part of `metadata`, and freed
    /// pages not yet handed back to the kernel. About what it adds to RSS.
    pub resident: u64,
    /// Address space jemalloc has mapped in active extents (virtual, not RSS).
    pub mapped: u64,
    /// Address space kept mapped but handed back to the kernel (virtual, not RSS).
    pub retained: u64,
}

impl AllocatorBytes {
    /// `(kind label, value)` of every count, in export order.
    pub fn kinds(&self) -> [(&'static str, u64); 6] {
        [
            ("allocated", self.allocated),
            ("active", self.active),
            ("metadata", self.metadata),
            ("resident", self.resident),
            ("mapped", self.mapped),
            ("retained", self.retained),
        ]
    }
}

/// jemalloc's counts now, when it is the global allocator; `None` otherwise (a build with the
/// system allocator or mimalloc, or a library user) or if jemalloc refuses to say.
pub fn now() -> Option<AllocatorBytes> {
    if !JEMALLOC_IS_GLOBAL.load(Ordering::Relaxed) {
        return None;
    }
    read_jemalloc()
}

/// Refreshes jemalloc's cached counts (a new epoch) and reads them. A scrape's cost, never
/// the request path's: the epoch merges every arena's counts under their locks.
#[cfg(feature = "jemalloc")]
fn read_jemalloc() -> Option<AllocatorBytes> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    let read = |value: Result<usize, tikv_jemalloc_ctl::Error>| value.ok().map(|v| v as u64);
    Some(AllocatorBytes {
        allocated: read(stats::allocated::read())?,
        active: read(stats::active::read())?,
        metadata: read(stats::metadata::read())?,
        resident: read(stats::resident::read())?,
        mapped: read(stats::mapped::read())?,
        retained: read(stats::retained::read())?,
    })
}

#[cfg(not(feature = "jemalloc"))]
fn read_jemalloc() -> Option<AllocatorBytes> {
    None
}

#[cfg(all(test, feature = "jemalloc"))]
mod tests {
    use std::alloc::{GlobalAlloc, Layout};

    use super::*;

    /// Allocates through jemalloc itself (it is not this test binary's global allocator) and
    /// watches its counts follow.
    #[test]
    fn counts_follow_what_is_allocated_through_jemalloc() {
        jemalloc_is_global();
        let before = now().expect("jemalloc's counts");
        let layout = Layout::from_size_align(8 << 20, 4096).expect("a layout");
        let jemalloc = tikv_jemallocator::Jemalloc;
        // SAFETY: a non-zero size; the block is written within its bounds and freed once,
        // with the same layout, through the same allocator.
        let during = unsafe {
            let block = jemalloc.alloc(layout);
            assert!(!block.is_null());
            // Touch every page, so they are resident.
            for page in (0..layout.size()).step_by(4096) {
                block.add(page).write(1);
            }
            let during = now().expect("jemalloc's counts");
            jemalloc.dealloc(block, layout);
            during
        };
        assert!(
            during.allocated >= before.allocated + (8 << 20),
            "{before:?} {during:?}"
        );
        assert!(during.active >= during.allocated, "{during:?}");
        assert!(during.resident >= during.active, "{during:?}");
        assert!(during.mapped >= during.active, "{during:?}");
        assert!(during.metadata > 0, "{during:?}");
        let after = now().expect("jemalloc's counts");
        assert!(
            after.allocated + (8 << 20) <= during.allocated,
            "{during:?} {after:?}"
        );
    }
}
