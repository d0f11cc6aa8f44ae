//! Large objects: over `max_object_size` they stream through whole and are not stored (with or
//! without Content-Length); under it they are stored byte-identical and answer byte ranges.
mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{payload, spawn_origin, Kagami, Origin, Reply, Route};
use futures_util::StreamExt;
use http::Response;
use http_body_util::StreamBody;
use hyper::body::Frame;

fn same_bytes(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {i}");
    }
}

#[tokio::test]
async fn object_over_the_limit_streams_through_and_is_not_stored() {
    let origin = Origin::start().await;
    let big = payload(200 * 1024, 7);
    origin.route(
        "/big.bin",
        Route::ok(big.clone()).header("cache-control", "max-age=60"),
    );
    let kagami = Kagami::start_with(&origin.url(), |site| site.max_object_size = 64 * 1024).await;

    let first = kagami.get("/big.bin").await;
    assert_eq!(first.status, 200);
    same_bytes(&first.body, &big, "first");
    assert!(
        first.cache_status().contains("detail=\"too-large\""),
        "{}",
        first.cache_status()
    );
    assert!(
        !first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );

    let second = kagami.get("/big.bin").await;
    assert_eq!(second.status, 200);
    same_bytes(&second.body, &big, "second");
    assert!(
        !second.cache_status().contains("hit"),
        "{}",
        second.cache_status()
    );
    assert!(
        second.cache_status().contains("too-large"),
        "{}",
        second.cache_status()
    );
    assert_eq!(
        origin.hits("/big.bin"),
        2,
        "too large to store: every request goes to the origin"
    );
}

/// An origin that answers every request with `body` in 16 KiB chunks and no Content-Length.
async fn chunked_origin(body: Bytes) -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let addr = spawn_origin(move |_request| {
        counter.fetch_add(1, Ordering::SeqCst);
        let chunks: Vec<Bytes> = body.chunks(16 * 1024).map(Bytes::copy_from_slice).collect();
        let frames = futures_util::stream::iter(chunks).then(|chunk| async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            Ok::<_, Infallible>(Frame::data(chunk))
        });
        let mut response = Response::new(StreamBody::new(frames));
        response
            .headers_mut()
            .insert("cache-control", "max-age=60".parse().unwrap());
        async move { response }
    })
    .await;
    (addr, hits)
}

#[tokio::test]
async fn object_without_length_growing_over_the_limit_is_delivered_whole_and_not_stored() {
    let big = payload(200 * 1024, 11);
    let (addr, hits) = chunked_origin(big.clone()).await;
    let kagami = Kagami::start_with(&format!("http://{addr}"), |site| {
        site.max_object_size = 64 * 1024
    })
    .await;

    let first = kagami.get("/grows").await;
    assert_eq!(first.status, 200);
    assert!(
        first.header("content-length").is_none(),
        "the origin sent no length"
    );
    same_bytes(&first.body, &big, "first");

    let second = kagami.get("/grows").await;
    assert_eq!(second.status, 200);
    same_bytes(&second.body, &big, "second");
    assert!(
        !second.cache_status().contains("hit"),
        "{}",
        second.cache_status()
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "never stored: the second request went to the origin"
    );
}

#[tokio::test]
async fn object_without_length_under_the_limit_is_stored() {
    let body = payload(100 * 1024, 13);
    let (addr, hits) = chunked_origin(body.clone()).await;
    let kagami = Kagami::start(&format!("http://{addr}")).await;

    same_bytes(&kagami.get("/small").await.body, &body, "first");
    let second = kagami.get("/small").await;
    same_bytes(&second.body, &body, "second");
    assert!(
        second.cache_status().contains("hit"),
        "{}",
        second.cache_status()
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

async fn cached_mib(origin: &Origin) -> (Kagami, Bytes) {
    let body = payload(1 << 20, 3);
    origin.route(
        "/mib.bin",
        Route::ok(body.clone())
            .header("cache-control", "max-age=60")
            .header("content-type", "application/octet-stream"),
    );
    let kagami = Kagami::start(&origin.url()).await;
    let first = kagami.get("/mib.bin").await;
    assert_eq!(first.status, 200);
    // Too large to hold before answering: streamed, so the head cannot claim `stored` (the
    // hits that follow show that it was).
    assert!(
        !first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );
    same_bytes(&first.body, &body, "first (miss)");
    (kagami, body)
}

#[tokio::test]
async fn one_mib_object_is_stored_and_served_byte_identical() {
    let origin = Origin::start().await;
    let (kagami, body) = cached_mib(&origin).await;

    let second = kagami.get("/mib.bin").await;
    assert_eq!(second.status, 200);
    assert!(
        second.cache_status().starts_with("kagami; hit"),
        "{}",
        second.cache_status()
    );
    assert_eq!(second.header("content-length"), Some("1048576"));
    same_bytes(&second.body, &body, "hit");
    assert_eq!(origin.hits("/mib.bin"), 1);
}

/// GET `/mib.bin` with a Range header.
async fn get_range(kagami: &Kagami, range: &str) -> Reply {
    kagami
        .send(
            kagami
                .client
                .get(kagami.url("/mib.bin"))
                .header("range", range),
        )
        .await
}

#[tokio::test]
async fn range_on_a_cached_object() {
    let origin = Origin::start().await;
    let (kagami, body) = cached_mib(&origin).await;

    let part = get_range(&kagami, "bytes=0-99").await;
    assert_eq!(part.status, 206);
    assert_eq!(part.header("content-range"), Some("bytes 0-99/1048576"));
    assert_eq!(part.header("content-length"), Some("100"));
    same_bytes(&part.body, &body[..100], "bytes=0-99");

    let tail = get_range(&kagami, "bytes=-10").await;
    assert_eq!(tail.status, 206);
    assert_eq!(
        tail.header("content-range"),
        Some("bytes 1048566-1048575/1048576")
    );
    same_bytes(&tail.body, &body[body.len() - 10..], "bytes=-10");

    let middle = get_range(&kagami, "bytes=500000-").await;
    assert_eq!(middle.status, 206);
    assert_eq!(
        middle.header("content-range"),
        Some("bytes 500000-1048575/1048576")
    );
    same_bytes(&middle.body, &body[500_000..], "bytes=500000-");

    let beyond = get_range(&kagami, "bytes=5000000-").await;
    assert_eq!(beyond.status, 416);
    assert_eq!(beyond.header("content-range"), Some("bytes */1048576"));
    assert!(beyond.body.len() < 1024, "no full body with a 416");

    assert_eq!(
        origin.hits("/mib.bin"),
        1,
        "ranges are answered from the cache"
    );
}

/// Bodies of sizes that the store keeps in several parts (whole pages, then smaller size
/// classes; see `cache::body`): hits and ranges across the parts' boundaries are the origin's
/// bytes, and the length is the whole body's.
#[tokio::test]
async fn bodies_kept_in_parts_are_served_byte_identical_whole_and_in_ranges() {
    let origin = Origin::start().await;
    let kagami = Kagami::start(&origin.url()).await;
    // 16,000 = 12,288 + 3,584 + 128; 41,300 = 40,960 + 340; 300,001 = 299,008 + 993.
    for (len, boundaries) in [
        (16_000usize, vec![12_288, 15_872]),
        (41_300, vec![40_960]),
        (300_001, vec![299_008]),
    ] {
        let path = format!("/parts-{len}.bin");
        let body = payload(len, len as u32);
        origin.route(
            &path,
            Route::ok(body.clone()).header("cache-control", "max-age=60"),
        );
        let first = kagami.get(&path).await;
        same_bytes(&first.body, &body, &format!("{len}: miss"));
        let hit = kagami.get(&path).await;
        assert!(
            hit.cache_status().starts_with("kagami; hit"),
            "{len}: {}",
            hit.cache_status()
        );
        assert_eq!(hit.header("content-length"), Some(len.to_string().as_str()));
        same_bytes(&hit.body, &body, &format!("{len}: hit"));
        for at in boundaries {
            let (start, end) = (at - 5, at + 5);
            let request = kagami
                .client
                .get(kagami.url(&path))
                .header("range", format!("bytes={start}-{end}"));
            let part = kagami.send(request).await;
            assert_eq!(part.status, 206, "{len}: {start}-{end}");
            let range = format!("bytes {start}-{end}/{len}");
            assert_eq!(part.header("content-range"), Some(range.as_str()));
            same_bytes(&part.body, &body[start..=end], &format!("{len}: {range}"));
        }
        assert_eq!(origin.hits(&path), 1, "{len}: answered from the cache");
    }
}
