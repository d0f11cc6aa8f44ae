//! An idle HTTP/1.1 keep-alive connection gives hyper's read and write buffers back (issue 7:
//! "shrink per-connection buffers when idle"), and is none the worse for it: its next request,
//! sent whole, in pieces or pipelined, is answered on the same connection; a stalled head after
//! it is still cut off; a shutdown closes it at once. Raw sockets, so that every byte and the
//! connection's identity are the test's.
mod common;

use std::time::{Duration, Instant};

use common::raw::{connect, read_one_response, status_of, wait_for_close};
use common::{Kagami, Origin, Route};
use kagami::config::{Config, SiteConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The header-read timeout, and so the watchdog's period: an idle connection is asked to shrink
/// one to two periods after its last answer.
const PERIOD: Duration = Duration::from_millis(300);
const LIMIT: Duration = Duration::from_secs(5);
const GET: &[u8] = b"GET /p HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

async fn start(origin: &Origin) -> Kagami {
    origin.route(
        "/p",
        Route::ok("page").header("cache-control", "max-age=60"),
    );
    let site = SiteConfig::new("test", &["127.0.0.1"], &origin.url()).unwrap();
    let mut config = Config::new(vec!["127.0.0.1:0".parse().unwrap()], vec![site]);
    config.log.access = false;
    config.server.header_read_timeout = PERIOD;
    config.server.idle_timeout = Duration::from_secs(20);
    Kagami::start_config(config).await
}

/// Reads until `count` answers of the page have come (they may come in one read).
async fn read_answers(stream: &mut TcpStream, count: usize) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while String::from_utf8_lossy(&got)
        .matches("\r\n\r\npage")
        .count()
        < count
    {
        let read = tokio::time::timeout(LIMIT, stream.read(&mut buf)).await;
        let n = read.expect("answers in time").expect("read");
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

async fn ask(stream: &mut TcpStream) -> String {
    stream.write_all(GET).await.unwrap();
    read_one_response(stream, LIMIT).await
}

#[tokio::test]
async fn an_idle_connection_gives_its_buffers_back_and_answers_its_next_requests() {
    let origin = Origin::start().await;
    let kagami = start(&origin).await;
    let mut stream = connect(kagami.addr).await;
    let first = ask(&mut stream).await;
    assert_eq!(status_of(&first), 200, "{first}");
    kagami.until_shrunk(1, LIMIT).await;

    // The next request in pieces: its first bytes are read by Kagami's own small buffer, the
    // rest by hyper's connection started after them.
    stream.write_all(b"G").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.write_all(&GET[1..20]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.write_all(&GET[20..]).await.unwrap();
    let second = read_one_response(&mut stream, LIMIT).await;
    assert_eq!(status_of(&second), 200, "{second}");
    assert!(second.ends_with("page"), "{second}");
    assert!(second.contains("cache-status: kagami; hit"), "{second}");

    // Shrunk again, then two requests in one write (more than the small buffer takes).
    kagami.until_shrunk(2, LIMIT).await;
    stream.write_all(&[GET, GET].concat()).await.unwrap();
    let both = read_answers(&mut stream, 2).await;
    assert_eq!(both.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{both}");
    // And a plain request right after, before any other shrink.
    let last = ask(&mut stream).await;
    assert_eq!(status_of(&last), 200, "{last}");

    let stats = kagami.running.proxy.stats.snapshot();
    assert_eq!(stats.connections_total, 1, "all on the one connection");
    assert_eq!(origin.hits("/p"), 1);
}

#[tokio::test]
async fn a_connection_that_keeps_asking_is_never_shrunk() {
    let origin = Origin::start().await;
    let kagami = start(&origin).await;
    let mut stream = connect(kagami.addr).await;
    let started = Instant::now();
    while started.elapsed() < 5 * PERIOD {
        let answer = ask(&mut stream).await;
        assert_eq!(status_of(&answer), 200, "{answer}");
        tokio::time::sleep(PERIOD / 6).await;
    }
    assert_eq!(kagami.shrunk(), 0);
}

#[tokio::test]
async fn a_stalled_head_after_a_shrink_is_still_cut_off() {
    let origin = Origin::start().await;
    let kagami = start(&origin).await;
    // Fewer bytes than Kagami's small buffer takes, and more: either is a head begun.
    for (n, partial) in [&b"GET /p HT"[..], &GET[..GET.len() - 2]]
        .iter()
        .enumerate()
    {
        let mut stream = connect(kagami.addr).await;
        ask(&mut stream).await;
        kagami.until_shrunk(n as u64 + 1, LIMIT).await;
        stream.write_all(partial).await.unwrap();
        let started = Instant::now();
        let (after, got) = wait_for_close(&mut stream, started, LIMIT).await;
        assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
        // The header-read rule: between one timeout and that plus two periods.
        assert!(after >= PERIOD - Duration::from_millis(50), "{after:?}");
        assert!(after < 3 * PERIOD + Duration::from_millis(500), "{after:?}");
    }
}

#[tokio::test]
async fn a_client_that_closes_a_shrunk_connection_ends_it() {
    let origin = Origin::start().await;
    let kagami = start(&origin).await;
    let mut stream = connect(kagami.addr).await;
    ask(&mut stream).await;
    kagami.until_shrunk(1, LIMIT).await;
    assert_eq!(kagami.running.proxy.stats.snapshot().connections_open, 1);
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(LIMIT, stream.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0))), "{read:?}");
    let started = Instant::now();
    while kagami.running.proxy.stats.snapshot().connections_open > 0 {
        assert!(
            started.elapsed() < LIMIT,
            "the connection is still counted open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_shutdown_closes_a_shrunk_connection_at_once() {
    let origin = Origin::start().await;
    let kagami = start(&origin).await;
    let mut stream = connect(kagami.addr).await;
    ask(&mut stream).await;
    kagami.until_shrunk(1, LIMIT).await;
    let started = Instant::now();
    let stopping = tokio::spawn(kagami.running.shutdown(Duration::from_secs(10)));
    let (after, got) = wait_for_close(&mut stream, started, LIMIT).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert!(after < Duration::from_secs(2), "{after:?}");
    tokio::time::timeout(LIMIT, stopping)
        .await
        .expect("shutdown done in time")
        .unwrap();
}

/// A request body that comes after the watchdog's period (the answer, a hit, went out without
/// reading it) is never read as a request of its own: no shrink turns it into one.
#[tokio::test]
async fn a_late_request_body_is_never_read_as_a_request_after_a_shrink() {
    let origin = Origin::start().await;
    origin.route("/q", Route::ok("smuggled"));
    let kagami = start(&origin).await;
    let mut stream = connect(kagami.addr).await;
    ask(&mut stream).await;
    let smuggled = b"GET /q HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let head = format!(
        "GET /p HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
        smuggled.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(4 * PERIOD).await;
    let _ = stream.write_all(smuggled).await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(2 * PERIOD, stream.read_to_end(&mut rest)).await;
    let rest = String::from_utf8_lossy(&rest);
    assert!(!rest.contains("smuggled"), "{rest}");
    assert_eq!(
        origin.hits("/q"),
        0,
        "the body reached the origin as a request: {rest}"
    );
}
