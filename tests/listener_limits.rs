//! Listener limits: oversized request heads and too many header fields (431), oversized request
//! bodies (413, never relayed whole), the global in-flight cap (503), the connection cap (new
//! connections wait in the backlog) and the HTTP/2 stream limit.
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::raw::{connect, exchange, read_one_response};
use common::recording::RecordingOrigin;
use common::{Kagami, Origin, Reply, Route};
use futures_util::future::join_all;
use futures_util::StreamExt;
use kagami::config::{Config, SiteConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config_for(origin: &str, adjust: impl FnOnce(&mut Config)) -> Config {
    let site = SiteConfig::new("test", &["127.0.0.1", "localhost"], origin).unwrap();
    let mut config = Config::new(vec!["127.0.0.1:0".parse().unwrap()], vec![site]);
    config.log.access = false;
    adjust(&mut config);
    config
}

fn cacheable(body: &str) -> Route {
    Route::ok(body.to_string()).header("cache-control", "max-age=60")
}

/// An origin with a cacheable `/page`, behind Kagami configured by `adjust`.
async fn page_behind(adjust: impl FnOnce(&mut Config)) -> (Origin, Kagami) {
    let origin = Origin::start().await;
    origin.route("/page", cacheable("page"));
    let kagami = Kagami::start_config(config_for(&origin.url(), adjust)).await;
    (origin, kagami)
}

fn head_with(extra: &str) -> Vec<u8> {
    format!("GET /page HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n")
        .into_bytes()
}

#[tokio::test]
async fn a_request_head_larger_than_the_limit_gets_431() {
    let (origin, kagami) = page_behind(|c| c.server.max_header_size = 8 * 1024).await;

    // Under the limit: served.
    let small = exchange(
        kagami.addr,
        &head_with(&format!("X-Filler: {}\r\n", "a".repeat(6 * 1024))),
    )
    .await;
    assert!(small.starts_with("HTTP/1.1 200"), "{small}");

    // A 20 KiB header: refused with 431, and the origin never hears of it.
    let before = origin.total();
    let big = exchange(
        kagami.addr,
        &head_with(&format!("X-Big: {}\r\n", "a".repeat(20 * 1024))),
    )
    .await;
    assert!(
        big.starts_with("HTTP/1.1 431"),
        "expected 431, got {:?}",
        big.lines().next()
    );
    assert_eq!(origin.total(), before);
}

#[tokio::test]
async fn more_header_fields_than_allowed_get_431() {
    let (origin, kagami) = page_behind(|c| c.server.max_headers = 10).await;

    let few: String = (0..5).map(|i| format!("X-H{i}: v\r\n")).collect();
    let ok = exchange(kagami.addr, &head_with(&few)).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");

    let before = origin.total();
    let many: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
    let refused = exchange(kagami.addr, &head_with(&many)).await;
    assert!(
        refused.starts_with("HTTP/1.1 431"),
        "expected 431, got {:?}",
        refused.lines().next()
    );
    assert_eq!(origin.total(), before);
}

#[tokio::test]
async fn a_declared_body_over_the_limit_gets_413_without_reaching_the_origin() {
    let origin = Origin::start().await;
    origin.route("/upload", Route::ok("stored"));
    let kagami = Kagami::start_config(config_for(&origin.url(), |c| {
        c.server.max_request_body = 1024
    }))
    .await;

    let fits = kagami
        .send(
            kagami
                .client
                .post(kagami.url("/upload"))
                .body(vec![b'x'; 1000]),
        )
        .await;
    assert_eq!(fits.status, 200);
    assert_eq!(origin.hits("/upload"), 1);

    let refused = kagami
        .send(
            kagami
                .client
                .post(kagami.url("/upload"))
                .body(vec![b'x'; 4096]),
        )
        .await;
    assert_eq!(refused.status, 413);
    assert!(
        refused.cache_status().contains("body-too-large"),
        "{}",
        refused.cache_status()
    );
    assert_eq!(origin.hits("/upload"), 1, "the origin never saw it");
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_never_reaches_the_origin_whole() {
    let origin = RecordingOrigin::start(|_| "stored".into()).await;
    let kagami = Kagami::start_config(config_for(&origin.url(), |c| {
        c.server.max_request_body = 1024
    }))
    .await;

    // 16 chunks of 256 bytes, without a Content-Length.
    let chunks = futures_util::stream::iter(0..16).then(|_| async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok::<_, std::io::Error>(Bytes::from(vec![b'y'; 256]))
    });
    let request = kagami
        .client
        .post(kagami.url("/upload"))
        .body(reqwest::Body::wrap_stream(chunks));
    let result = tokio::time::timeout(Duration::from_secs(10), request.send())
        .await
        .expect("an answer or an error in time");
    match result {
        Ok(response) => {
            let status = response.status().as_u16();
            let cache_status = response
                .headers()
                .get("cache-status")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            assert_eq!(status, 413, "{cache_status}");
            assert!(cache_status.contains("body-too-large"), "{cache_status}");
        }
        // The connection may be cut while the client is still sending: also a refusal.
        Err(err) => assert!(!err.is_timeout(), "{err}"),
    }
    // Let the origin finish reading whatever it was sent.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let received = origin.outcomes();
    assert!(
        received.iter().all(|b| b.is_err()),
        "the origin must not receive a complete body: {received:?}"
    );

    // A small chunked body is relayed whole.
    let small = futures_util::stream::iter(0..2)
        .map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'z'; 256])));
    let fits = kagami
        .send(
            kagami
                .client
                .post(kagami.url("/upload"))
                .body(reqwest::Body::wrap_stream(small)),
        )
        .await;
    assert_eq!(fits.status, 200);
    assert_eq!(fits.text(), "stored");
    assert_eq!(origin.outcomes().last(), Some(&Ok(512)));
}

#[tokio::test]
async fn requests_over_the_in_flight_cap_get_503_at_once() {
    let origin = Origin::start().await;
    let paths: Vec<String> = (0..10).map(|i| format!("/slow/{i}")).collect();
    for path in &paths {
        origin.route(path, cacheable(path).delay(Duration::from_millis(1000)));
    }
    let kagami = Arc::new(
        Kagami::start_config(config_for(&origin.url(), |c| {
            c.server.max_requests_in_flight = 2
        }))
        .await,
    );
    let started = Instant::now();
    let tasks = paths.iter().map(|path| {
        let kagami = kagami.clone();
        let path = path.clone();
        tokio::spawn(async move {
            let reply = kagami.get(&path).await;
            (reply, Instant::now())
        })
    });
    let replies: Vec<(Reply, Instant)> =
        tokio::time::timeout(Duration::from_secs(10), join_all(tasks))
            .await
            .expect("all answered in time")
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
    let ok = replies.iter().filter(|(r, _)| r.status == 200).count();
    let overloaded: Vec<&(Reply, Instant)> =
        replies.iter().filter(|(r, _)| r.status == 503).collect();
    assert_eq!(ok, 2, "two requests fit under the cap");
    assert_eq!(overloaded.len(), 8);
    for (reply, at) in overloaded {
        let retry: u64 = reply
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .unwrap();
        assert!(retry >= 1);
        assert!(
            reply.cache_status().contains("detail=\"overloaded\""),
            "{}",
            reply.cache_status()
        );
        assert!(
            at.duration_since(started) < Duration::from_millis(900),
            "refused at once, not after the slow ones"
        );
    }
    assert!(origin.max_in_flight() <= 2);
    assert_eq!(origin.total(), 2);
    assert_eq!(kagami.running.proxy.stats.snapshot().overloaded, 8);
}

#[tokio::test]
async fn connections_over_the_cap_wait_until_one_closes() {
    let origin = Origin::start().await;
    origin.route("/x", cacheable("x"));
    let kagami =
        Kagami::start_config(config_for(&origin.url(), |c| c.server.max_connections = 2)).await;
    let request = b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

    let mut first = connect(kagami.addr).await;
    let mut second = connect(kagami.addr).await;
    for stream in [&mut first, &mut second] {
        stream.write_all(request).await.unwrap();
        let response = read_one_response(stream, Duration::from_secs(2)).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }

    // The kernel completes the handshake, but Kagami does not accept (or answer) a third.
    let mut third = connect(kagami.addr).await;
    third.write_all(request).await.unwrap();
    let mut buf = [0u8; 1024];
    let early = tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "the third connection must wait, got {early:?}"
    );
    assert_eq!(
        kagami.running.proxy.stats.snapshot().connections_open,
        2,
        "two connections open"
    );

    // The second keep-alive connection still works meanwhile.
    second.write_all(request).await.unwrap();
    let again = read_one_response(&mut second, Duration::from_secs(2)).await;
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");

    drop(first);
    let answered = read_one_response(&mut third, Duration::from_secs(2)).await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    assert_eq!(kagami.running.proxy.stats.snapshot().connections_total, 3);
}

#[tokio::test]
async fn http2_streams_per_connection_are_capped() {
    let origin = Origin::start().await;
    let paths: Vec<String> = (0..20).map(|i| format!("/h2/{i}")).collect();
    for path in &paths {
        origin.route(path, cacheable(path).delay(Duration::from_millis(200)));
    }
    let kagami = Kagami::start_config(config_for(&origin.url(), |c| {
        c.sites[0].protection.concurrency = 100;
        c.sites[0].limit_hits = None;
        c.sites[0].limit_misses = None;
        c.server.h2_max_concurrent_streams = 4;
    }))
    .await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();

    let started = Instant::now();
    let requests = paths.iter().map(|path| {
        let request = client.get(kagami.url(path)).send();
        async move {
            let response = request.await.expect("h2 request");
            assert_eq!(response.version(), http::Version::HTTP_2);
            let status = response.status().as_u16();
            let body = response.bytes().await.expect("body");
            (status, body)
        }
    });
    let replies = tokio::time::timeout(Duration::from_secs(10), join_all(requests))
        .await
        .expect("all answered in time");
    for ((status, body), path) in replies.iter().zip(&paths) {
        assert_eq!(*status, 200, "{path}");
        assert_eq!(&body[..], path.as_bytes());
    }
    assert!(
        origin.max_in_flight() <= 4,
        "the origin saw {} at once",
        origin.max_in_flight()
    );
    assert!(origin.max_in_flight() >= 2, "streams did run concurrently");
    // 20 requests, 4 at a time, 200 ms each: five rounds.
    assert!(started.elapsed() >= Duration::from_millis(900));
    let stats = kagami.running.proxy.stats.snapshot();
    assert_eq!(stats.connections_total, 1, "one HTTP/2 connection");
}

/// A healthy origin (`/upload`, a cacheable `/page`) behind Kagami, with a circuit that opens
/// after three failures.
async fn healthy_origin_behind(adjust: impl FnOnce(&mut Config)) -> (Origin, Kagami) {
    let (origin, kagami) = page_behind(|c| {
        c.sites[0].protection.circuit_failures = 3;
        c.sites[0].protection.circuit_open = Duration::from_secs(10);
        adjust(c);
    })
    .await;
    origin.route("/upload", Route::ok("stored"));
    (origin, kagami)
}

/// After three `what` client uploads: the origin's circuit must still be closed and a cold GET
/// of `/page` served.
async fn assert_circuit_stays_closed(kagami: &Kagami, what: &str) {
    let breaker_open = kagami.running.proxy.sites()[0].origin.servers[0]
        .breaker
        .is_open();
    let stats = kagami.running.proxy.stats.snapshot();
    let page = kagami.get("/page").await;
    assert!(
        !breaker_open && page.status == 200,
        "three {what} client uploads opened the healthy origin's circuit \
         (circuit_opened={}, origin_failures={}); a cold GET then got {} {}",
        stats.circuit_opened,
        stats.origin_failures,
        page.status,
        page.cache_status()
    );
}

/// Sends a chunked POST of `chunks` × 256 bytes (no Content-Length) and returns the status,
/// or `None` when the connection was cut while sending.
async fn chunked_post(kagami: &Kagami, path: &str, chunks: usize) -> Option<u16> {
    let body = futures_util::stream::iter(0..chunks).then(|_| async {
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok::<_, std::io::Error>(Bytes::from(vec![b'y'; 256]))
    });
    let request = kagami
        .client
        .post(kagami.url(path))
        .body(reqwest::Body::wrap_stream(body));
    match tokio::time::timeout(Duration::from_secs(5), request.send())
        .await
        .expect("an answer or an error in time")
    {
        Ok(response) => Some(response.status().as_u16()),
        Err(_) => None,
    }
}

#[tokio::test]
async fn oversized_uploads_do_not_open_the_circuit_of_a_healthy_origin() {
    let (_origin, kagami) = healthy_origin_behind(|c| c.server.max_request_body = 1024).await;

    // A client's oversized uploads are the client's fault, not the origin's.
    for _ in 0..3 {
        let status = chunked_post(&kagami, "/upload", 16).await;
        assert!(matches!(status, Some(413) | None), "{status:?}");
    }
    assert_circuit_stays_closed(&kagami, "oversized").await;
}

#[tokio::test]
async fn an_oversized_http2_header_list_is_refused() {
    let (origin, kagami) = page_behind(|c| c.server.max_header_size = 8 * 1024).await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let ok = tokio::time::timeout(
        Duration::from_secs(5),
        client
            .get(kagami.url("/page"))
            .header("x-filler", "a".repeat(4 * 1024))
            .send(),
    )
    .await
    .expect("in time")
    .expect("h2 request");
    assert_eq!(ok.status(), 200);
    let big = tokio::time::timeout(
        Duration::from_secs(5),
        client
            .get(kagami.url("/page"))
            .header("x-big", "a".repeat(20 * 1024))
            .send(),
    )
    .await
    .expect("in time");
    // hyper's HTTP/2 server answers an oversized header list with a 431 response.
    let big = big.expect("an answer, not a reset");
    assert_eq!(big.status(), 431);
    assert_eq!(origin.hits("/page"), 1);
}

#[tokio::test]
async fn clients_abandoning_uploads_do_not_open_the_circuit_of_a_healthy_origin() {
    let (_origin, kagami) = healthy_origin_behind(|_| {}).await;

    // Each client starts a chunked upload and goes away in the middle of it.
    for _ in 0..3 {
        let mut stream = connect(kagami.addr).await;
        let mut head = b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\n\
            Transfer-Encoding: chunked\r\n\r\n100\r\n"
            .to_vec();
        head.extend_from_slice(&[b'y'; 256]);
        head.extend_from_slice(b"\r\n");
        stream.write_all(&head).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(stream);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_circuit_stays_closed(&kagami, "abandoned").await;
}
