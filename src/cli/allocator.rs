//! The process's allocator and its settings. jemalloc is the default (`src/main.rs`), set here
//! for a cache that churns: freed pages go back to the kernel within about a second, and large
//! allocations are not padded. A build with the system allocator (`--no-default-features`) on
//! glibc gets glibc tuned instead: the mmap threshold fixed at start, and freed memory handed
//! back from a background thread (`malloc_trim`). Other allocators and platforms are left alone.
//! Why not glibc by default: in a churned 1 GiB store of 16 KiB pages its heap held 186 MiB of
//! free chunks of 16,384 bytes, each 16 bytes too small for the next body (the origin client's
//! freed 32 KiB read buffers split for 16 KiB bodies); see README "Memory".

/// jemalloc's settings, read when it starts (an operator's `_RJEM_MALLOC_CONF` is read after
/// them, so it wins). `background_thread`: freed memory is returned by jemalloc's own thread,
/// not only when some request happens to allocate. `dirty_decay_ms:1000`: pages freed and not
/// reused within about a second go back to the kernel (the default is 10 s, seen as RSS above
/// `cache.memory` right after churn); `muzzy_decay_ms:0`: straight back (`MADV_DONTNEED`), not
/// first marked `MADV_FREE`, which leaves them counted in RSS until the kernel needs them. The
/// build also turns off jemalloc's cache-oblivious padding (`disable_cache_oblivious` in
/// Cargo.toml), which gives every allocation of 16 KiB or more a page of its own: 4 KiB more per
/// stored 16 KiB body. Measured with `cargo bench --bench memory` (README "Memory").
#[cfg(feature = "jemalloc")]
#[unsafe(export_name = "_rjem_malloc_conf")]
#[allow(non_upper_case_globals)]
pub static malloc_conf: Option<&'static std::ffi::c_char> =
    // SAFETY: a pointer to the first byte of a static C string, which lives for the program.
    Some(unsafe { &*JEMALLOC_CONF.as_ptr() });

#[cfg(feature = "jemalloc")]
const JEMALLOC_CONF: &std::ffi::CStr =
    c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0";

/// Large bodies straight from the kernel with glibc's allocator: at or above 128 KiB an
/// allocation is its own mapping, given back whole when freed. glibc otherwise raises that
/// threshold as large blocks are freed (up to 32 MiB), after which a store churning 256 KiB
/// objects leaves its heap fragmented: measured with `cargo bench --bench memory` at
/// `cache.memory = 64MiB`, RSS above the limit went from +40 to +23 MiB for 256 KiB objects
/// and from +27 to +19 MiB for a realistic mix, small objects unchanged. An operator's own
/// `MALLOC_MMAP_THRESHOLD_` wins.
#[cfg(all(
    target_os = "linux",
    target_env = "gnu",
    not(any(feature = "jemalloc", feature = "mimalloc"))
))]
pub fn tune_allocator() {
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() {
        return;
    }
    // SAFETY: mallopt only changes the allocator's parameters; fixing the threshold also
    // turns off its dynamic adjustment.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

#[cfg(not(all(
    target_os = "linux",
    target_env = "gnu",
    not(any(feature = "jemalloc", feature = "mimalloc"))
)))]
pub fn tune_allocator() {}

#[cfg(all(
    target_os = "linux",
    target_env = "gnu",
    not(any(feature = "jemalloc", feature = "mimalloc"))
))]
pub use trim::start_trimming;

#[cfg(not(all(
    target_os = "linux",
    target_env = "gnu",
    not(any(feature = "jemalloc", feature = "mimalloc"))
)))]
pub fn start_trimming() {}

#[cfg(all(
    target_os = "linux",
    target_env = "gnu",
    not(any(feature = "jemalloc", feature = "mimalloc"))
))]
mod trim {
    use std::time::{Duration, Instant};

    /// The environment variable that sets the trim thread's interval, or `off`.
    const VARIABLE: &str = "KAGAMI_MALLOC_TRIM";

    /// How often the thread looks, when `KAGAMI_MALLOC_TRIM` does not say.
    const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

    /// Freed memory worth a trim: below it a trim's cost (it holds each arena's lock while it
    /// walks the free chunks) buys too little.
    const TRIM_AFTER: u64 = 8 << 20;

    /// Starts the thread that gives freed heap memory back to the kernel. glibc returns only
    /// the top of a heap by itself; a store that evicts and refills leaves free chunks spread
    /// through it, and so do closed connections, whose pages stay resident until a
    /// `malloc_trim` releases them (`MADV_DONTNEED` on the free pages; the heap's layout does
    /// not change). The thread looks every interval and trims only when there is enough free
    /// memory and either it or RSS grew by that much since the last trim, so a quiet or
    /// steady process is never trimmed twice for nothing.
    pub fn start_trimming() {
        let interval = match std::env::var(VARIABLE) {
            Err(_) => DEFAULT_INTERVAL,
            Ok(value) if value == "off" => return,
            Ok(value) => match humantime::parse_duration(&value) {
                Ok(interval) if interval >= Duration::from_millis(100) => interval,
                _ => {
                    tracing::warn!(
                        "{VARIABLE}={value:?}: not \"off\" or a duration of at least 100ms \
                         (e.g. \"5s\"); trimming every {DEFAULT_INTERVAL:?}"
                    );
                    DEFAULT_INTERVAL
                }
            },
        };
        let spawned = std::thread::Builder::new()
            .name("kagami-trim".into())
            .spawn(move || trim_loop(interval));
        if let Err(err) = spawned {
            tracing::warn!(error = %err, "cannot start the memory trim thread");
        }
    }

    /// Free bytes in the allocator's heaps that a trim could look at (free chunks, not the
    /// top of a heap, which glibc trims by itself).
    fn free_bytes() -> u64 {
        // SAFETY: mallinfo2 only reads the allocator's own statistics.
        let info = unsafe { libc::mallinfo2() };
        (info.fordblks as u64).saturating_sub(info.keepcost as u64)
    }

    /// Resident set size, from /proc/self/statm (its second field, in pages).
    fn rss_bytes() -> u64 {
        let pages = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0);
        // SAFETY: sysconf only reads a system setting.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        pages * u64::try_from(page).unwrap_or(4096)
    }

    /// After a trim that took `t`, the next waits at least `t` times this: a trim holds each
    /// arena's lock while it walks that arena (measured up to about 100 ms at a churned 1 GiB
    /// store), and requests allocating there wait, so trims stay under 0.5 % of the time.
    const COST_FACTOR: u32 = 200;

    fn trim_loop(interval: Duration) {
        let (mut free_then, mut rss_then) = (free_bytes(), rss_bytes());
        let mut pause = interval;
        loop {
            std::thread::sleep(pause);
            pause = interval;
            let (free, rss) = (free_bytes(), rss_bytes());
            if !worth_trimming(free, free_then, rss, rss_then) {
                // Follow decreases, so that growth is counted from the lowest point.
                free_then = free_then.min(free);
                rss_then = rss_then.min(rss);
                continue;
            }
            let started = Instant::now();
            // SAFETY: malloc_trim only releases free pages of the allocator's own heaps.
            unsafe {
                libc::malloc_trim(0);
            }
            let took = started.elapsed();
            pause = interval.max(took * COST_FACTOR);
            (free_then, rss_then) = (free, rss_bytes());
            tracing::debug!(
                target: "kagami::trim",
                took_us = took.as_micros() as u64,
                free_mib = free >> 20,
                rss_before_mib = rss >> 20,
                rss_after_mib = rss_then >> 20,
                "trimmed the heap"
            );
        }
    }

    /// Enough free memory, and new since the last trim: either more of it, or a larger RSS
    /// (freed chunks reused and others freed: the same free total, but resident again).
    pub(super) fn worth_trimming(free: u64, free_then: u64, rss: u64, rss_then: u64) -> bool {
        free >= TRIM_AFTER
            && (free >= free_then.saturating_add(TRIM_AFTER)
                || rss >= rss_then.saturating_add(TRIM_AFTER))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const MIB: u64 = 1 << 20;

        #[test]
        fn trims_only_for_enough_new_free_memory() {
            // Little free memory: never, however RSS grew.
            assert!(!worth_trimming(4 * MIB, 0, 900 * MIB, 100 * MIB));
            // Free memory grew by the threshold (connections closed, entries evicted).
            assert!(worth_trimming(40 * MIB, 20 * MIB, 100 * MIB, 100 * MIB));
            // The same free total, but RSS grew: churn dirtied trimmed pages again.
            assert!(worth_trimming(20 * MIB, 20 * MIB, 120 * MIB, 100 * MIB));
            // Nothing new since the last trim: steady, not trimmed again.
            assert!(!worth_trimming(20 * MIB, 20 * MIB, 104 * MIB, 100 * MIB));
        }

        #[test]
        fn free_bytes_counts_scattered_frees() {
            // 20,000 pages of 1,000 bytes freed between 20,000 kept: free chunks that cannot
            // merge into the top of the heap, as a churned store leaves them.
            let mut blocks: Vec<Vec<u8>> = (0..40_000).map(|i| vec![i as u8; 1000]).collect();
            let mut i = 0;
            blocks.retain(|_| {
                i += 1;
                i % 2 == 0
            });
            let free = free_bytes();
            assert!(free >= 16 * MIB, "{free} bytes free");
            assert!(blocks.iter().all(|b| b.len() == 1000));
            assert!(rss_bytes() > 20 * MIB);
        }
    }
}
