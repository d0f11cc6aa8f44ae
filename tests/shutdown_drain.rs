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

/// Idle keep-alive connections that have answered requests (so the drain signal was checked
/// at many polls since it was first watched) close as soon as the drain begins, over HTTP/1.1
/// and HTTP/2, long before the idle timeout or the drain time would close them.
#[tokio::test]
async fn idle_connections_that_answered_requests_close_as_soon_as_the_drain_begins() {
    let origin = Origin::start().await;
    origin.route("/page", common::cacheable("page"));
    let kagami = start(&origin, Duration::from_secs(10)).await;

    let mut h1 = connect(kagami.addr).await;
    for _ in 0..20 {
        h1.write_all(b"GET /page HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let got = common::raw::read_one_response(&mut h1, Duration::from_secs(5)).await;
        assert!(got.ends_with("page"), "{got}");
    }

    let tcp = tokio::net::TcpStream::connect(kagami.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let mut h2_done = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    for _ in 0..20 {
        let request = http::Request::get(format!("http://{}/page", kagami.addr))
            .body(())
            .unwrap();
        let response = common::h2_answer(&mut client, request).await;
        assert_eq!(response.status(), 200);
        client = client.ready().await.unwrap();
    }
    // Idle now, with nothing under way on either.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!h2_done.is_finished(), "the HTTP/2 connection ended early");

    let started = Instant::now();
    let stopping = tokio::spawn(kagami.running.shutdown(Duration::from_secs(10)));
    let (when, rest) = wait_for_close(&mut h1, started, Duration::from_secs(5)).await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert!(
        when < Duration::from_secs(1),
        "HTTP/1.1 closed after {when:?}"
    );
    // The HTTP/2 server sends GOAWAY and closes; the client's connection task then ends.
    tokio::time::timeout(Duration::from_secs(1), &mut h2_done)
        .await
        .expect("HTTP/2 connection closed within 1 s of the drain")
        .unwrap()
        .ok();
    drop(client);
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("shutdown returned in time")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}
