//! A client's reading pace never holds an origin slot: a relay held back by a client that does
//! not read gives its slot back, and one whose client takes nothing for the stall timeout (the
//! site's `read_timeout`) is abandoned, its body ending in an error rather than a clean end.
mod common;

use common::raw::silent_reader;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::raw::wait_for_close;
use common::{Kagami, Origin, Route};
use futures_util::future::join_all;
use kagami::config::{Config, SiteConfig};

const BIG: usize = 64 << 20;

async fn setup(adjust: impl FnOnce(&mut Config)) -> (Origin, Kagami) {
    let origin = Origin::start().await;
    let big: Bytes = vec![b'x'; BIG].into();
    origin.route("/big", Route::ok(big).header("cache-control", "private"));
    for i in 0..10 {
        origin.route(
            &format!("/page/{i}"),
            Route::ok(format!("page {i}")).header("cache-control", "max-age=60"),
        );
    }
    let mut site = SiteConfig::new("test", &["127.0.0.1"], &origin.url()).unwrap();
    site.limit_hits = None;
    site.limit_misses = None;
    site.protection.concurrency = 4;
    site.protection.queue_timeout = Duration::from_secs(1);
    let mut config = Config::new(vec!["127.0.0.1:0".parse().unwrap()], vec![site]);
    config.log.access = false;
    adjust(&mut config);
    let kagami = Kagami::start_config(config).await;
    (origin, kagami)
}

const AUTHORIZED: &str =
    "GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer secret\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_with_authorization_do_not_take_every_origin_slot() {
    let (origin, kagami) = setup(|_| {}).await;
    // Twice as many silent readers as there are origin slots.
    let mut readers = Vec::new();
    for _ in 0..8 {
        readers.push(silent_reader(kagami.addr, AUTHORIZED).await);
    }
    let start = Instant::now();
    while origin.hits("/big") < 8 && start.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let replies = join_all((0..10).map(|i| {
        let kagami = &kagami;
        async move { kagami.get(&format!("/page/{i}")).await }
    }))
    .await;
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(
            reply.status,
            200,
            "visitor {i} got {} ({})",
            reply.status,
            reply.cache_status()
        );
        assert!(
            !reply.cache_status().contains("origin-busy"),
            "{}",
            reply.cache_status()
        );
    }
    assert_eq!(
        origin.hits("/big"),
        8,
        "every silent reader got its turn at the origin"
    );
    drop(readers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_takes_nothing_is_abandoned_after_the_stall_timeout() {
    let (_origin, kagami) = setup(|config| {
        config.sites[0].timeouts.read = Duration::from_millis(500);
        config.server.idle_timeout = Duration::from_millis(500);
    })
    .await;
    let mut reader = silent_reader(kagami.addr, AUTHORIZED).await;
    let stats = || kagami.running.proxy.stats.snapshot();
    let start = Instant::now();
    while stats().relay_stalls == 0 && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stats().relay_stalls, 1, "the relay gave up on its client");

    // The connection ends without the whole body, and nothing stays counted in flight.
    let (_, got) = wait_for_close(&mut reader, Instant::now(), Duration::from_secs(5)).await;
    assert!(
        got.len() < BIG,
        "a stalled client must not get a clean end ({} bytes)",
        got.len()
    );
    let start = Instant::now();
    while stats().inflight_bytes > 0 && start.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stats().inflight_bytes, 0, "every charge was given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_waited_for_a_long_fill_is_not_taken_for_stalled() {
    use futures_util::StreamExt;
    use std::convert::Infallible;
    use tokio::io::AsyncReadExt;
    // 16 MiB in 256 KiB chunks 12 ms apart: the fill takes about 800 ms, longer than the
    // stall timeout below, though the origin never pauses for long.
    let body: Bytes = (0..16 << 20)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let served = body.clone();
    let addr = common::spawn_origin(move |_request| {
        let chunks: Vec<Bytes> = served
            .chunks(256 * 1024)
            .map(Bytes::copy_from_slice)
            .collect();
        let frames = futures_util::stream::iter(chunks).then(|chunk| async move {
            tokio::time::sleep(Duration::from_millis(12)).await;
            Ok::<_, Infallible>(hyper::body::Frame::data(chunk))
        });
        let mut response = http::Response::new(http_body_util::StreamBody::new(frames));
        response
            .headers_mut()
            .insert("cache-control", "max-age=60".parse().unwrap());
        async move { response }
    })
    .await;
    let mut site = SiteConfig::new("test", &["127.0.0.1"], &format!("http://{addr}")).unwrap();
    site.timeouts.read = Duration::from_millis(400);
    site.max_object_size = 32 << 20;
    let mut config = Config::new(vec!["127.0.0.1:0".parse().unwrap()], vec![site]);
    config.log.access = false;
    // A client's share (8 MiB) and the kernel's buffers hold less than the object: the client
    // falls behind the fill.
    config.cache.inflight_memory = Some(32 << 20);
    let kagami = Kagami::start_config(config).await;

    let request = format!(
        "GET /slow HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        kagami.addr
    );
    let mut stream = silent_reader(kagami.addr, &request).await;
    let start = Instant::now();
    while kagami.running.proxy.store.entry_count() == 0 && start.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(kagami.running.proxy.store.entry_count(), 1, "stored");
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got))
        .await
        .expect("read in time")
        .expect("read");
    let text_end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    let received = &got[text_end..];
    // Chunked framing: compare after removing it would need a parser; the length check and
    // the absence of a stall say enough.
    assert!(
        received.len() >= body.len(),
        "got {} of {} bytes",
        received.len(),
        body.len()
    );
    assert_eq!(kagami.running.proxy.stats.snapshot().relay_stalls, 0);
}
