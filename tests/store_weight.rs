//! The store's weigher counts what entries really hold: measured with a counting allocator, the
//! bytes a store of many small objects keeps allocated never exceed what it says it holds (so
//! `cache.memory` bounds the real memory, not just the bodies).
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use kagami::cache::policy::Heuristic;
use kagami::cache::{Entry, MemoryStore, StoreSettings};
use kagami::config::CookiePolicy;

/// Bytes currently allocated by the whole test binary.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What a typical small page looks like when it arrives: a few standard and custom fields.
fn small_page(i: usize, request: &HeaderMap) -> Arc<Entry> {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("cache-control", "public, max-age=300".to_string()),
        ("content-type", "text/html; charset=utf-8".to_string()),
        ("date", "Mon, 23 Nov 2026 10:00:00 GMT".to_string()),
        ("last-modified", "Mon, 23 Nov 2026 09:00:00 GMT".to_string()),
        ("etag", format!("\"{i:08x}\"")),
        ("server", "nginx".to_string()),
        ("vary", "Accept-Encoding".to_string()),
        ("x-request-id", format!("{i:032x}")),
    ] {
        headers.append(name, HeaderValue::from_str(&value).unwrap());
    }
    let settings = StoreSettings {
        heuristic: Heuristic {
            max: Duration::from_secs(3600),
            default_ttl: Duration::ZERO,
            negative_ttl: Duration::from_secs(10),
        },
        default_swr: Duration::ZERO,
        default_sie: Duration::ZERO,
        cookies: CookiePolicy::Never,
    };
    let now = SystemTime::now();
    Arc::new(Entry::new(
        StatusCode::OK,
        headers,
        Bytes::from(vec![b'x'; 1000]),
        request,
        now,
        now,
        &settings,
    ))
}

#[test]
fn a_store_of_small_objects_holds_no_more_than_it_counts() {
    const OBJECTS: usize = 5_000;
    let mut request = HeaderMap::new();
    request.insert("accept-encoding", HeaderValue::from_static("gzip, br"));
    // Far larger than needed: nothing is evicted, so every entry is both counted and held.
    let store = MemoryStore::new(1 << 30);
    store.insert("warm-up".into(), small_page(0, &request));
    store.invalidate("warm-up");
    let _ = store.entry_count();

    let before = LIVE.load(Ordering::SeqCst);
    for i in 0..OBJECTS {
        store.insert(
            format!("site\u{1f}www.city.test\u{1f}/news/{i:06}.html"),
            small_page(i, &request),
        );
    }
    assert_eq!(store.entry_count(), OBJECTS as u64);
    let held = (LIVE.load(Ordering::SeqCst) - before) as u64;
    let counted = store.weighted_size();
    println!(
        "{OBJECTS} objects of 1000 bytes: {} bytes held, {} counted ({} / {} per object)",
        held,
        counted,
        held / OBJECTS as u64,
        counted / OBJECTS as u64
    );
    assert!(
        counted >= held,
        "the weigher undercounts: {held} bytes held, {counted} counted"
    );
    // Overcounting by much would waste the operator's memory.
    assert!(
        counted <= held * 2,
        "the weigher overcounts: {held} bytes held, {counted} counted"
    );
}
