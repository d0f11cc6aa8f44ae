//! Slow readers and a mapped body the store let go of (`src/cache/mapped.rs`,
//! `proxy::body::Held`): the pages must not outlive the store's hold uncounted for longer than
//! the stall time, however many connections one client spends on them. One test in this file,
//! so that `kagami::cache::mapped::live()` counts only this test's mappings.
mod common;

use std::time::{Duration, Instant};

use common::raw::silent_reader;
use common::{cacheable, payload, Kagami, Origin, Route};
use kagami::cache::mapped::live;

/// Waits up to `within` for `live()` to be `want`; returns what it was last.
async fn live_becomes(kagami: &Kagami, want: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        // moka drops a replaced value with its pending work.
        kagami.running.proxy.store.entry_count();
        let now = live();
        if now == want || Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_readers_of_a_replaced_mapped_body_let_go_of_it() {
    const LEN: usize = 12 << 20;
    let origin = Origin::start().await;
    // The stall time of a held body is the idle timeout.
    let kagami = Kagami::for_large_bodies(
        &origin.url(),
        64 << 20,
        256 << 20,
        Some(Duration::from_secs(1)),
    )
    .await;
    let request = "GET /a.pdf HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";

    // `readers` stalled connections on the stored body, then the page is replaced.
    for (round, readers) in [(0u8, 0usize), (1, 1), (2, 2)] {
        let old = payload(LEN, u32::from(round) * 2);
        origin.route("/a.pdf", cacheable(old.clone()));
        if round > 0 {
            let posted = kagami
                .send(kagami.client.post(kagami.url("/a.pdf")).body("edit"))
                .await;
            assert_eq!(posted.status, 200);
        }
        assert!(kagami.get("/a.pdf").await.body == old);
        assert_eq!(
            live_becomes(&kagami, 1, Duration::from_secs(5)).await,
            1,
            "round {round}"
        );
        let mut held = Vec::new();
        for _ in 0..readers {
            held.push(silent_reader(kagami.addr, request).await);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let new = payload(LEN, u32::from(round) * 2 + 1);
        origin.route(
            "/a.pdf",
            Route::ok(new.clone()).header("cache-control", "max-age=600"),
        );
        let posted = kagami
            .send(kagami.client.post(kagami.url("/a.pdf")).body("edit"))
            .await;
        assert_eq!(posted.status, 200);
        assert!(kagami.get("/a.pdf").await.body == new);
        // The old pages are the stalled answers' alone now; after a few stall times they must
        // be let go (the store holds just the new body's mapping).
        kagami.running.proxy.store.entry_count();
        let pinned = live();
        if readers > 0 {
            assert_eq!(
                pinned, 2,
                "{readers}: the stalled answers hold the old pages"
            );
        }
        let since = Instant::now();
        let left = live_becomes(&kagami, 1, Duration::from_secs(6)).await;
        eprintln!(
            "{readers} reader(s): old pages let go after {:?}",
            since.elapsed()
        );
        assert_eq!(
            left, 1,
            "{readers} stalled reader(s) keep the replaced {LEN}-byte body's pages mapped \
             6 s after it left the store (stall time 1 s)"
        );
        drop(held);
    }
}
