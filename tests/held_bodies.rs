//! A large answer from the store shares the stored buffer. If the entry is evicted or replaced
//! while a client is still (not) reading it, that answer would keep the whole buffer alive with
//! nobody counting it; many such clients pinned memory without bound. Once the buffer is the
//! answer's alone, the rest is charged to the client's in-flight share, and a client over its
//! share is cut off instead.
mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::raw::{read_to_close, silent_reader};
use common::{Kagami, Origin, Route};
use kagami::config::{Config, SiteConfig};

const KIB: usize = 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_of_a_replaced_entry_is_cut_off_past_its_share() {
    let origin = Origin::start().await;
    let first = Bytes::from(vec![b'a'; 24 * 1024 * KIB]);
    origin.route(
        "/big.pdf",
        Route::ok(first.clone()).header("cache-control", "max-age=600"),
    );
    let mut site = SiteConfig::new("test", &["127.0.0.1"], &origin.url()).unwrap();
    site.limit_hits = None;
    site.limit_misses = None;
    site.max_object_size = 32 << 20;
    let mut config = Config::new(vec!["127.0.0.1:0".parse().unwrap()], vec![site]);
    config.log.access = false;
    config.cache.memory = 128 << 20;
    // A client's share is a quarter: 12 MiB, less than what is left of the 24 MiB answer once
    // the kernel's socket buffers (a few MiB on loopback) have taken their part.
    config.cache.inflight_memory = Some(48 << 20);
    let kagami = Kagami::start_config(config).await;
    let warm = kagami.get("/big.pdf").await;
    assert_eq!(warm.body.len(), first.len());
    // The fill is stored once the origin's body is all in, a moment after the client had it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while kagami.running.proxy.store.entry_count() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the page was never stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A hit, read by a client that takes almost nothing.
    let request = format!(
        "GET /big.pdf HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        kagami.addr
    );
    let mut stalled = silent_reader(kagami.addr, request).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The page changes (a POST marks the copy stale) and is fetched again: the old buffer is now
    // the stalled answer's alone.
    origin.route(
        "/big.pdf",
        Route::ok(Bytes::from(vec![b'b'; 24 * 1024 * KIB])).header("cache-control", "max-age=60"),
    );
    let posted = kagami
        .send(kagami.client.post(kagami.url("/big.pdf")).body("edit"))
        .await;
    assert_eq!(posted.status, 200);
    let fresh = kagami.get("/big.pdf").await;
    assert_eq!(fresh.body[0], b'b', "{}", fresh.cache_status());

    // The store lets go of the replaced entry on its next housekeeping.
    kagami.running.proxy.store.entry_count();
    // The stalled client's answer is cut short (never a complete 200), and counted as a stall.
    let got = read_to_close(&mut stalled, Duration::from_secs(10)).await;
    let head = String::from_utf8_lossy(&got[..got.len().min(400)]).to_string();
    assert!(head.contains("kagami; hit"), "{head}");
    assert!(
        got.len() < first.len(),
        "the stalled client got all {} bytes of a buffer nobody counted",
        got.len()
    );
    let stats = &kagami.running.proxy.stats;
    assert!(stats.relay_stalls.load(Ordering::Relaxed) >= 1);
    assert_eq!(
        stats.inflight_bytes.load(Ordering::Relaxed),
        0,
        "nothing stays charged"
    );
}
