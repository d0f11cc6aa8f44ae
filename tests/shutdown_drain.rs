//! Shutdown: requests in flight get `server.drain_timeout` to finish; those still running then
//! are answered 503 with Retry-After and `Connection: close`, never cut off without a status.

mod common;

use std::time::{Duration, Instant};

use common::raw::{connect, wait_for_close, RawResponse};
use common::{Kagami, Origin, Route};
use kagami::config::{Config, SiteConfig};
use tokio::io::AsyncWriteExt;

async fn start(origin: &Origin, drain: Duration) -> Kagami {
    let site = SiteConfig::new("test", &["127.0.0.1", "localhost"], &origin.url()).unwrap();
    let mut config = Config::new(vec!["127.0.0.1:0".parse().unwrap()], vec![site]);
    config.log.access = false;
    config.server.drain_timeout = drain;
    Kagami::start_config(config).await
}

#[tokio::test]
async fn a_request_still_running_at_the_drain_deadline_gets_503_with_retry_after() {
    let origin = Origin::start().await;
    origin.route("/slow", Route::ok("late").delay(Duration::from_secs(20)));
    origin.route(
        "/quick",
        Route::ok("soon").delay(Duration::from_millis(200)),
    );
    let kagami = start(&origin, Duration::from_millis(600)).await;

    let mut slow = connect(kagami.addr).await;
    slow.write_all(b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut quick = connect(kagami.addr).await;
    quick
        .write_all(b"GET /quick HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    let stopping = tokio::spawn(kagami.running.shutdown(Duration::from_millis(600)));

    // A request that finishes within the drain time is answered by the origin.
    let (_, got) = wait_for_close(&mut quick, started, Duration::from_secs(5)).await;
    let got = String::from_utf8_lossy(&got).into_owned();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.ends_with("soon"), "{got}");

    // The slow one gets a status line, not a silent close, once the drain time is over.
    let (when, got) = wait_for_close(&mut slow, started, Duration::from_secs(5)).await;
    let got = String::from_utf8_lossy(&got).into_owned();
    assert!(got.starts_with("HTTP/1.1 503"), "{got:?}");
    let response = RawResponse::parse(&got);
    assert_eq!(response.all("retry-after"), ["1"], "{got}");
    assert_eq!(response.all("connection"), ["close"], "{got}");
    assert!(
        response.all("cache-status")[0].contains("shutting-down"),
        "{got}"
    );
    assert!(
        when >= Duration::from_millis(500),
        "answered before the drain time: {when:?}"
    );

    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("shutdown returned in time")
        .unwrap();
}
