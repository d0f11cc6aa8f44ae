//! Slow readers cannot blow past the memory budget: bodies held in flight (fills being read,
//! chunks waiting for a client) stay within `cache.inflight_memory` whatever clients do, and
//! past it fills are relayed without being stored.
mod common;

use common::raw::{read_one_response_bytes, silent_reader};

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Kagami, Origin, Route};
use kagami::config::{Config, SiteConfig};
use tokio::net::TcpStream;

const MIB: u64 = 1 << 20;

/// RSS is measured per process: the tests of this file run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Resident memory of this test process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn payload(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i * 7 + i / 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

async fn kagami(origin: &Origin, inflight: u64) -> Kagami {
    let mut site = SiteConfig::new("test", &["127.0.0.1"], &origin.url()).unwrap();
    site.limit_hits = None;
    site.limit_misses = None;
    site.max_object_size = inflight;
    let mut config = Config::new(vec!["127.0.0.1:0".parse().unwrap()], vec![site]);
    config.log.access = false;
    config.cache.memory = 32 * MIB;
    config.cache.inflight_memory = Some(inflight);
    Kagami::start_config(config).await
}

/// Samples RSS until `done` holds or `limit` passes; returns the highest figure seen.
async fn peak_rss_while(limit: Duration, done: impl Fn() -> bool) -> u64 {
    let start = Instant::now();
    let mut peak = rss();
    while start.elapsed() < limit && !done() {
        tokio::time::sleep(Duration::from_millis(20)).await;
        peak = peak.max(rss());
    }
    // A little longer: whatever was read is now held.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        peak = peak.max(rss());
    }
    peak
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_silent_readers_of_distinct_large_objects_stay_within_the_budget() {
    let _serial = SERIAL.lock().await;
    const READERS: usize = 40;
    const OBJECT: usize = 8 << 20;
    const BUDGET: u64 = 16 * MIB;
    let origin = Origin::start().await;
    // One body shared by every route: the origin itself holds 8 MiB, not 320.
    let body = payload(OBJECT);
    for i in 0..READERS {
        origin.route(
            &format!("/big/{i}"),
            Route::ok(body.clone()).header("cache-control", "max-age=60"),
        );
    }
    let kagami = kagami(&origin, BUDGET).await;
    let before = rss();

    let mut readers = Vec::new();
    for i in 0..READERS {
        let request = format!("GET /big/{i} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        readers.push(silent_reader(kagami.addr, request).await);
    }
    let peak = peak_rss_while(Duration::from_secs(3), || origin.total() >= READERS).await;
    let stats = kagami.running.proxy.stats.snapshot();
    let grew = peak.saturating_sub(before);
    println!(
        "{READERS} silent readers of {} MiB objects: RSS {} -> peak {} MiB (+{} MiB); in flight \
         peak {:.1} MiB of {} MiB, {} refusals; origin asked {} times",
        OBJECT >> 20,
        before >> 20,
        peak >> 20,
        grew >> 20,
        stats.inflight_peak_bytes as f64 / MIB as f64,
        BUDGET / MIB,
        stats.inflight_refusals,
        origin.total()
    );
    // A chunk read before it could be counted may overshoot by what hyper reads at once.
    assert!(
        stats.inflight_peak_bytes <= BUDGET + MIB,
        "in-flight bytes peaked at {} (budget {BUDGET})",
        stats.inflight_peak_bytes
    );
    assert!(
        stats.inflight_refusals > 0,
        "forty 8 MiB fills cannot all fit in 16 MiB"
    );
    // The store (32 MiB), the budget (16 MiB), the origin's one body (8 MiB) and per-connection
    // buffers; before the budget this grew by more than 300 MiB.
    assert!(
        grew < 120 * MIB,
        "RSS grew by {} MiB with {READERS} silent readers",
        grew >> 20
    );
    drop(readers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_with_many_silent_connections_holds_at_most_its_share() {
    let _serial = SERIAL.lock().await;
    const READERS: usize = 40;
    const BUDGET: u64 = 16 * MIB;
    let origin = Origin::start().await;
    let body = payload(8 << 20);
    // Not stored (Authorization): every byte a relay holds is held for this one client.
    origin.route("/private.bin", Route::ok(body));
    let kagami = kagami(&origin, BUDGET).await;
    let before = rss();
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let request =
            "GET /private.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer x\r\n\r\n";
        readers.push(silent_reader(kagami.addr, request.to_string()).await);
    }
    let peak = peak_rss_while(Duration::from_secs(3), || origin.total() >= READERS).await;
    let stats = kagami.running.proxy.stats.snapshot();
    println!(
        "{READERS} silent readers with Authorization: RSS +{} MiB; in flight peak {:.1} MiB",
        peak.saturating_sub(before) >> 20,
        stats.inflight_peak_bytes as f64 / MIB as f64,
    );
    // A quarter of the budget, plus what a reader that had taken everything may read at once.
    assert!(
        stats.inflight_peak_bytes <= BUDGET / 4 + 2 * MIB,
        "one client held {} bytes in flight",
        stats.inflight_peak_bytes
    );
    assert!(peak.saturating_sub(before) < 80 * MIB);
    drop(readers);
}

/// Reads one response with a Content-Length body, slowly at first; returns the body.
async fn read_body(stream: &mut TcpStream) -> Vec<u8> {
    let (raw, body) = read_one_response_bytes(stream, Duration::from_secs(20)).await;
    raw[body].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_lags_behind_a_stored_fill_still_gets_every_byte() {
    let _serial = SERIAL.lock().await;
    let origin = Origin::start().await;
    // 2 MiB fits the client's share of the budget (the rest is kept counted); 8 MiB does not
    // (the rest is copied out of the stored entry while the store keeps it).
    for (path, len) in [("/two.bin", 2 << 20), ("/eight.bin", 8 << 20)] {
        let body = payload(len);
        origin.route(
            path,
            Route::ok(body.clone()).header("cache-control", "max-age=60"),
        );
        let kagami = kagami(&origin, 16 * MIB).await;
        // The Host a later reqwest GET sends too, so that it finds the stored copy.
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", kagami.addr);
        let mut stream = silent_reader(kagami.addr, request).await;
        // The fill completes while the client reads nothing.
        let start = Instant::now();
        while kagami.running.proxy.store.entry_count() == 0
            && start.elapsed() < Duration::from_secs(5)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(kagami.running.proxy.store.entry_count(), 1, "{path} stored");
        let got = read_body(&mut stream).await;
        assert_eq!(got.len(), body.len(), "{path}");
        assert!(got == body[..], "{path}: the bytes differ");
        let hit = kagami.get(path).await;
        assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
        assert!(hit.body == body, "{path}: the stored copy differs");
    }
}
