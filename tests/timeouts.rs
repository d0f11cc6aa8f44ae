//! Timeouts: slow clients are cut off (slowloris), a slow origin gives a quick 504 when nothing is
//! cached, and idle keep-alive connections are closed.
mod common;

use std::time::{Duration, Instant};

use common::raw::{connect, read_one_response, wait_for_close, WITHIN};
use common::{Kagami, Origin, Route};
use kagami::config::{Config, SiteConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn kagami_with(origin: &Origin, header_read: Duration, idle: Duration) -> Kagami {
    let site = SiteConfig::new("test", &["127.0.0.1", "localhost"], &origin.url()).unwrap();
    let mut config = Config::new(vec!["127.0.0.1:0".parse().unwrap()], vec![site]);
    config.log.access = false;
    config.server.header_read_timeout = header_read;
    config.server.idle_timeout = idle;
    Kagami::start_config(config).await
}

/// Kagami with a 1 s header read timeout, and a client connected to it that has sent `sent`;
/// also the moment the client connected.
async fn client_sending(origin: &Origin, sent: &[u8]) -> (Kagami, TcpStream, Instant) {
    let kagami = kagami_with(origin, Duration::from_secs(1), Duration::from_secs(30)).await;
    let mut stream = connect(kagami.addr).await;
    let start = Instant::now();
    stream.write_all(sent).await.unwrap();
    (kagami, stream, start)
}

#[tokio::test]
async fn stalled_request_head_is_cut_off_after_header_read_timeout() {
    let origin = Origin::start().await;
    origin.route("/", Route::ok("home"));
    let (_kagami, mut stream, start) =
        client_sending(&origin, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").await;
    let (after, got) = wait_for_close(&mut stream, start, Duration::from_secs(4)).await;
    assert!(
        after >= Duration::from_millis(800),
        "closed too early ({after:?})"
    );
    let text = String::from_utf8_lossy(&got);
    assert!(
        got.is_empty() || text.starts_with("HTTP/1.1 408"),
        "unexpected answer {text:?}"
    );
    assert_eq!(origin.total(), 0);
}

#[tokio::test]
async fn trickled_request_head_is_cut_off_after_header_read_timeout() {
    let origin = Origin::start().await;
    origin.route("/", Route::ok("home"));
    // A byte every 100 ms keeps the connection busy but never completes the head.
    let (_kagami, mut stream, start) =
        client_sending(&origin, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n").await;
    let (mut reader, mut writer) = stream.split();
    let trickle = async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if writer.write_all(b"X").await.is_err() {
                break;
            }
        }
    };
    let closed = async {
        let mut buf = [0u8; 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return start.elapsed(),
                Ok(_) => {}
            }
        }
    };
    let after = tokio::time::timeout(Duration::from_secs(4), async {
        tokio::select! {
            after = closed => after,
            _ = trickle => start.elapsed(),
        }
    })
    .await
    .expect("the trickling client was disconnected within 4s");
    assert!(
        after >= Duration::from_millis(800),
        "closed too early ({after:?})"
    );
    assert_eq!(origin.total(), 0);
}

#[tokio::test]
async fn silent_connection_is_cut_off_after_header_read_timeout() {
    // A client that connects and sends nothing holds a connection just as well as a slow one.
    let origin = Origin::start().await;
    let (_kagami, mut stream, start) = client_sending(&origin, b"").await;
    let (after, _) = wait_for_close(&mut stream, start, Duration::from_secs(4)).await;
    assert!(
        after >= Duration::from_millis(800),
        "closed too early ({after:?})"
    );
}

#[tokio::test]
async fn partial_http2_preface_is_cut_off_after_header_read_timeout() {
    let origin = Origin::start().await;
    let (_kagami, mut stream, start) = client_sending(&origin, b"PRI * HTTP/2.0\r\n").await;
    let (after, _) = wait_for_close(&mut stream, start, Duration::from_secs(4)).await;
    assert!(
        after >= Duration::from_millis(800),
        "closed too early ({after:?})"
    );
}

/// Sends one request for `/` on `stream` and checks the answer.
async fn one_exchange(stream: &mut TcpStream) {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let response = read_one_response(stream, WITHIN).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("home"), "{response}");
}

#[tokio::test]
async fn a_slow_head_after_a_first_request_is_cut_off_after_header_read_timeout() {
    // Slowloris on a connection that has been used: the header-read clock starts at the next
    // head's first bytes, as it does for the first request.
    let origin = Origin::start().await;
    origin.route("/", Route::ok("home").header("cache-control", "max-age=60"));
    let kagami = kagami_with(&origin, Duration::from_millis(500), Duration::from_secs(30)).await;
    let mut stream = connect(kagami.addr).await;
    one_exchange(&mut stream).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .unwrap();
    let start = Instant::now();
    let (after, got) = wait_for_close(&mut stream, start, Duration::from_secs(3)).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert!(
        after >= Duration::from_millis(400),
        "closed too early ({after:?})"
    );
    assert_eq!(origin.total(), 1);
}

#[tokio::test]
async fn the_keep_alive_wait_is_the_idle_timeout_not_the_header_read_timeout() {
    // Between requests no head is being read: a client may wait longer than the header-read
    // timeout (here more than its two periods) before its next request, up to the idle timeout.
    let origin = Origin::start().await;
    origin.route("/", Route::ok("home").header("cache-control", "max-age=60"));
    let kagami = kagami_with(&origin, Duration::from_millis(300), Duration::from_secs(2)).await;
    let mut stream = connect(kagami.addr).await;
    one_exchange(&mut stream).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    one_exchange(&mut stream).await;
    let idle_since = Instant::now();
    let (after, got) = wait_for_close(&mut stream, idle_since, Duration::from_secs(5)).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert!(
        after >= Duration::from_millis(1800),
        "closed before the idle timeout ({after:?})"
    );
}

#[tokio::test]
async fn slow_origin_gives_a_quick_504_when_nothing_is_cached() {
    let origin = Origin::start().await;
    origin.route("/slow", Route::ok("late").delay(Duration::from_secs(5)));
    let kagami = Kagami::start_with(&origin.url(), |site| {
        site.timeouts.response = Duration::from_millis(500);
    })
    .await;

    let start = Instant::now();
    let reply = kagami.get("/slow").await;
    let took = start.elapsed();
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert!(
        took >= Duration::from_millis(400),
        "answered before the timeout: {took:?}"
    );
    assert!(took < Duration::from_millis(2500), "the 504 took {took:?}");
    assert!(!reply.text().contains("late"));
    assert!(
        reply.cache_status().contains("kagami"),
        "{}",
        reply.cache_status()
    );

    // The same for a request passed through (POST).
    let start = Instant::now();
    let reply = kagami
        .send(kagami.client.post(kagami.url("/slow")).body("x"))
        .await;
    assert_eq!(reply.status, 504);
    assert!(
        start.elapsed() < Duration::from_millis(2500),
        "the 504 took {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let origin = Origin::start().await;
    origin.route("/", Route::ok("home").header("cache-control", "max-age=60"));
    let kagami = kagami_with(&origin, Duration::from_secs(10), Duration::from_secs(1)).await;

    let mut stream = connect(kagami.addr).await;
    for _ in 0..2 {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let response = read_one_response(&mut stream, WITHIN).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with("home"), "{response}");
        // Activity within the idle timeout keeps the connection open.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let idle_since = Instant::now() - Duration::from_millis(500);
    let (after, got) = wait_for_close(&mut stream, idle_since, Duration::from_secs(3)).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert!(
        after >= Duration::from_millis(900),
        "closed too early ({after:?})"
    );
}

#[tokio::test]
async fn a_request_waiting_for_a_slow_origin_is_not_idle() {
    // The idle timeout is about keep-alive connections between requests; a client waiting for an
    // answer that the origin is still preparing must get that answer (or Kagami's 504).
    let origin = Origin::start().await;
    origin.route(
        "/slow",
        Route::ok("late but complete").delay(Duration::from_millis(2000)),
    );
    let kagami = kagami_with(&origin, Duration::from_secs(10), Duration::from_secs(1)).await;

    let mut stream = connect(kagami.addr).await;
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let response = read_one_response(&mut stream, WITHIN).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("late but complete"), "{response}");
}
