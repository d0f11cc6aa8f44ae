//! Bodies whose whole pages are kept in a mapping of their own (at least 128 KiB of whole
//! pages and a Content-Length, `src/cache/mapped.rs`): byte-identical on hits and in ranges
//! across the pages and the rest, never stored when cut short, counted by the store, and
//! still whole for a client reading one slowly after the store has let go of it.
mod common;

use std::time::{Duration, Instant};

use common::raw::{read_to_close, silent_reader};
use common::{cacheable, payload, Kagami, Origin};

#[tokio::test]
async fn mapped_bodies_are_served_whole_and_in_ranges_and_counted() {
    let origin = Origin::start().await;
    // Read whole before answering (up to 256 KiB) and streamed; with and without a tail after
    // the pages; one under the size that gets a mapping.
    let sizes = [
        130 * 1024 + 77,
        200 * 1024,
        256 * 1024,
        700_001,
        3 << 20,
        120 * 1024,
    ];
    let kagami = Kagami::start_with(&origin.url(), |site| site.max_object_size = 8 << 20).await;
    let mut total = 0;
    for (i, &len) in sizes.iter().enumerate() {
        let path = format!("/doc/{len}.pdf");
        let body = payload(len, i as u32 + 1);
        total += len as u64;
        origin.route(&path, cacheable(body.clone()));
        let miss = kagami.get(&path).await;
        assert_eq!(miss.status, 200);
        assert!(miss.body == body, "{len}: the miss's body");
        let hit = kagami.get(&path).await;
        assert!(
            hit.cache_status().contains("hit"),
            "{len}: {}",
            hit.cache_status()
        );
        assert!(hit.body == body, "{len}: the hit's body");
        assert_eq!(origin.hits(&path), 1, "{len}");
        // Across the first page boundary, across the end of the pages into the rest, the
        // last bytes, and a suffix.
        let pages_end = len / 4096 * 4096;
        for (range, from, to) in [
            ("bytes=4000-4200".to_string(), 4000, 4200),
            (
                format!("bytes={}-{}", pages_end - 10, (pages_end + 10).min(len - 1)),
                pages_end - 10,
                (pages_end + 10).min(len - 1),
            ),
            (format!("bytes={}-", len - 5), len - 5, len - 1),
            ("bytes=-3".to_string(), len - 3, len - 1),
        ] {
            let part = kagami
                .send(kagami.client.get(kagami.url(&path)).header("range", &range))
                .await;
            assert_eq!(part.status, 206, "{len} {range}");
            assert!(part.body == body[from..=to], "{len} {range}");
            assert_eq!(
                part.header("content-range"),
                Some(format!("bytes {from}-{to}/{len}").as_str()),
                "{len} {range}"
            );
        }
    }
    // Every body of 128 KiB of whole pages or more has its mapping (other tests here add theirs).
    assert!(kagami::cache::mapped::live() >= sizes.len() - 1);
    let (entries, bytes) = kagami.running.proxy.store_usage();
    assert_eq!(entries, sizes.len() as u64);
    assert!(
        bytes >= total,
        "the store counts {bytes} for {total} body bytes"
    );
    assert!(
        bytes <= total + sizes.len() as u64 * 8192,
        "the store counts {bytes} for {total} body bytes"
    );
}

#[tokio::test]
async fn a_large_body_cut_short_is_never_stored() {
    let origin = Origin::start().await;
    // 200 KiB: read whole before answering; 1 MiB: streamed. Both announce their length.
    for len in [200 * 1024, 1 << 20] {
        let path = format!("/cut/{len}");
        origin.route(&path, cacheable(payload(len, 7)).truncated());
        let kagami = Kagami::start(&origin.url()).await;
        let response = kagami.client.get(kagami.url(&path)).send().await.unwrap();
        assert!(response.bytes().await.is_err(), "{len}: a short body");
        let whole = payload(len, 8);
        origin.route(&path, cacheable(whole.clone()));
        let again = kagami.get(&path).await;
        assert!(
            again.cache_status().contains("fwd=uri-miss"),
            "{len}: {}",
            again.cache_status()
        );
        assert!(again.body == whole, "{len}");
        assert_eq!(kagami.get(&path).await.body, whole, "{len}: now stored");
    }
}

/// A client reads a stored mapped body slowly; meanwhile the store lets go of it (its pages are
/// unmapped once nothing holds them). The client still gets every byte of the old copy, and
/// the store holds no more than its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_keeps_a_replaced_mapped_body_whole() {
    // More than the kernel's loopback socket buffers take, so most of it waits in Kagami.
    const LEN: usize = 12 << 20;
    let origin = Origin::start().await;
    // A client's share (a quarter of the budget) is more than the body: the reader is slow,
    // not cut off.
    let kagami = Kagami::for_large_bodies(&origin.url(), 32 << 20, 64 << 20, None).await;
    let first = payload(LEN, 11);
    origin.route("/slow.pdf", cacheable(first.clone()));
    assert!(kagami.get("/slow.pdf").await.body == first);
    let deadline = Instant::now() + Duration::from_secs(5);
    while kagami.running.proxy.store.entry_count() == 0 {
        assert!(Instant::now() < deadline, "never stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let request = "GET /slow.pdf HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let mut reader = silent_reader(kagami.addr, request).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The page changes: a POST marks the copy stale and the next GET replaces it, so the old
    // pages are the slow answer's alone. (Eviction by size would not do here: the store's
    // admission keeps an entry asked for more often than newcomers.)
    let second = payload(LEN, 12);
    origin.route("/slow.pdf", cacheable(second.clone()));
    let posted = kagami
        .send(kagami.client.post(kagami.url("/slow.pdf")).body("edit"))
        .await;
    assert_eq!(posted.status, 200);
    let fresh = kagami.get("/slow.pdf").await;
    assert!(fresh.body == second, "{}", fresh.cache_status());
    // Two more bodies as large: the store stays within its limit.
    for i in 0..2 {
        let path = format!("/other/{i}.pdf");
        let body = payload(LEN, 20 + i);
        origin.route(&path, cacheable(body.clone()));
        assert!(kagami.get(&path).await.body == body, "{path}");
    }
    let (_, bytes) = kagami.running.proxy.store_usage();
    assert!(bytes <= 32 << 20, "the store holds {bytes}");

    // The slow reader's answer is still whole and byte-identical.
    let got = read_to_close(&mut reader, Duration::from_secs(20)).await;
    let head_end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    let head = String::from_utf8_lossy(&got[..head_end]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("kagami; hit"), "{head}");
    assert_eq!(got.len() - head_end, LEN, "{head}");
    assert!(got[head_end..] == first[..]);
}
