//! Origin health is judged only by failures of the origin itself: one URL answering 500, or one
//! client's uploads that never arrive, must not open the circuit, start the site-wide failure
//! back-off or send requests to a backup; a real outage (every answer 503, a hung or a dead
//! origin) still opens the circuit after `circuit_failures` requests.
mod common;

use std::time::{Duration, Instant};

use common::raw::connect;
use common::{Kagami, Origin, Route};
use futures_util::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn cacheable(body: &str) -> Route {
    Route::ok(body.to_string()).header("cache-control", "max-age=60")
}

fn breaker_open(kagami: &Kagami, server: usize) -> bool {
    kagami.running.proxy.sites()[0].origin.servers[server]
        .breaker
        .is_open()
}

#[tokio::test]
async fn one_url_answering_500_neither_opens_the_circuit_nor_starts_the_back_off() {
    let origin = Origin::start().await;
    origin.route("/", Route::ok("home"));
    origin.route("/broken", Route::ok("bug").status(500));
    origin.route(
        "/page",
        Route::ok("v1").header("cache-control", "max-age=1"),
    );
    origin.route("/cold", cacheable("cold"));
    let kagami = Kagami::start_with(&origin.url(), |site| {
        site.protection.circuit_failures = 3;
        site.failure_backoff = Duration::from_secs(30);
    })
    .await;
    assert_eq!(kagami.get("/page").await.text(), "v1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    origin.route("/page", cacheable("v2"));

    for _ in 0..10 {
        let reply = kagami.get("/broken").await;
        assert_eq!(reply.status, 500, "the page's own error is relayed");
    }
    assert_eq!(origin.hits("/broken"), 10);
    let stats = kagami.running.proxy.stats.snapshot();
    assert!(
        !breaker_open(&kagami, 0) && stats.circuit_opened == 0,
        "one URL's 500s opened the circuit: {stats:?}"
    );
    let cold = kagami.get("/cold").await;
    assert_eq!(
        (cold.status, cold.text().as_str()),
        (200, "cold"),
        "{}",
        cold.cache_status()
    );
    // No back-off either: the expired page is fetched again, not served stale for 30 s.
    let page = kagami.get("/page").await;
    assert_eq!(page.text(), "v2", "{}", page.cache_status());
    // The 500s were checked against the origin's front page, once per second at most (ten
    // quick requests: one probe, a little more on a very slow machine).
    let probes = origin.hits("/");
    assert!(
        (1..=3).contains(&probes),
        "{probes} probes: {:?}",
        origin.log()
    );
    assert_eq!(stats.origin_failures, 0);
}

#[tokio::test]
async fn one_urls_500_is_not_retried_on_the_backup() {
    let primary = Origin::start().await;
    let backup = Origin::start().await;
    for origin in [&primary, &backup] {
        origin.route("/", Route::ok("home"));
        origin.route("/page", cacheable("page"));
    }
    primary.route("/broken", Route::ok("bug").status(500));
    backup.route("/broken", cacheable("backup copy"));
    let urls = vec![
        reqwest::Url::parse(&primary.url()).unwrap(),
        reqwest::Url::parse(&backup.url()).unwrap(),
    ];
    let kagami = Kagami::start_with(&primary.url(), |site| site.origins = urls).await;
    for _ in 0..3 {
        assert_eq!(kagami.get("/broken").await.status, 500);
    }
    assert_eq!(backup.total(), 0, "{:?}", backup.log());
    assert_eq!(kagami.running.proxy.stats.snapshot().failovers, 0);
}

/// Sends a POST that declares `Content-Length: 100` and never sends the body; returns the
/// status Kagami answered with.
async fn stalled_upload(kagami: &Kagami) -> u16 {
    let mut stream = connect(kagami.addr).await;
    stream
        .write_all(b"POST /form HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + Duration::from_secs(5);
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            other => panic!(
                "no answer to the stalled upload ({other:?}): {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    common::raw::status_of(&String::from_utf8_lossy(&got))
}

#[tokio::test]
async fn uploads_that_never_arrive_do_not_open_the_circuit() {
    let origin = Origin::start().await;
    // The origin reads the whole body before answering, so it waits for one that never comes.
    origin.route("/form", Route::ok("posted"));
    origin.route("/cold", cacheable("cold"));
    let kagami = Kagami::start_with(&origin.url(), |site| {
        site.protection.circuit_failures = 3;
        site.timeouts.response = Duration::from_millis(300);
    })
    .await;

    let statuses = join_all((0..6).map(|_| stalled_upload(&kagami))).await;
    let stats = kagami.running.proxy.stats.snapshot();
    assert!(
        !breaker_open(&kagami, 0) && stats.circuit_opened == 0,
        "stalled uploads opened the circuit: {stats:?}"
    );
    let cold = kagami.get("/cold").await;
    assert_eq!(
        (cold.status, cold.text().as_str()),
        (200, "cold"),
        "{}",
        cold.cache_status()
    );
    assert_eq!(
        origin.hits("/"),
        0,
        "not even a confirmation probe was needed"
    );
    for status in statuses {
        assert_eq!(
            status, 400,
            "the client's unfinished body is the client's error"
        );
    }
}

#[tokio::test]
async fn a_hung_origin_still_opens_the_circuit() {
    let origin = Origin::start().await;
    for path in ["/", "/a", "/b", "/c"] {
        origin.route(path, cacheable(path).delay(Duration::from_secs(3)));
    }
    let kagami = Kagami::start_with(&origin.url(), |site| {
        site.protection.circuit_failures = 2;
        site.timeouts.response = Duration::from_millis(200);
    })
    .await;
    for path in ["/a", "/b"] {
        let reply = kagami.get(path).await;
        assert_eq!(reply.status, 504, "{}", reply.cache_status());
    }
    assert!(breaker_open(&kagami, 0), "the timeouts were confirmed");
    let refused = kagami.get("/c").await;
    assert!(
        refused.cache_status().contains("detail=\"circuit-open\""),
        "{}",
        refused.cache_status()
    );
    assert_eq!(origin.hits("/c"), 0);
}
