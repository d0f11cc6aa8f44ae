//! A body the origin cuts short is never stored, and the client is not sent a short 200.
mod common;

use std::time::Duration;

use common::raw::connect;
use common::{Kagami, Origin, Route};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Kagami in front of an origin whose cacheable 64 KiB `/cut` declares its whole length but
/// stops halfway.
async fn cut_short() -> (Origin, Kagami) {
    let origin = Origin::start().await;
    origin.route(
        "/cut",
        Route::ok(vec![b'z'; 64 * 1024])
            .header("cache-control", "max-age=60")
            .truncated(),
    );
    let kagami = Kagami::start(&origin.url()).await;
    (origin, kagami)
}

#[tokio::test]
async fn truncated_body_is_not_cached_and_the_client_sees_an_error() {
    let (origin, kagami) = cut_short().await;

    let response = kagami.client.get(kagami.url("/cut")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let cache_status = response.headers()["cache-status"].to_str().unwrap();
    assert!(
        !cache_status.contains("stored"),
        "a body cut short is not claimed as stored: {cache_status}"
    );
    assert!(
        response.bytes().await.is_err(),
        "the body must not complete"
    );

    origin.route(
        "/cut",
        Route::ok(vec![b'z'; 64 * 1024]).header("cache-control", "max-age=60"),
    );
    let whole = kagami.get("/cut").await;
    assert_eq!(whole.body.len(), 64 * 1024);
    assert!(
        whole.cache_status().contains("fwd=uri-miss"),
        "nothing was stored: {}",
        whole.cache_status()
    );
    assert_eq!(origin.hits("/cut"), 2);
}

#[tokio::test]
async fn raw_client_connection_is_closed_before_the_declared_length() {
    let (_origin, kagami) = cut_short().await;
    let mut stream = connect(kagami.addr).await;
    stream
        .write_all(b"GET /cut HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "connection must be closed, not left hanging");
    let text = String::from_utf8_lossy(&received);
    let header_end = text.find("\r\n\r\n").expect("a response head") + 4;
    assert!(text.to_ascii_lowercase().contains("content-length: 65536"));
    assert!(
        received.len() - header_end < 64 * 1024,
        "fewer bytes than declared"
    );
}

#[tokio::test]
async fn garbage_from_the_origin_gives_502() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let garbage = tokio::spawn(async move {
        for _ in 0..4 {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await;
            let _ = socket.write_all(b"this is not HTTP at all\r\n\r\n").await;
        }
    });
    let kagami = Kagami::start(&format!("http://{addr}")).await;
    let reply = kagami.get("/x").await;
    assert_eq!(reply.status, 502);
    garbage.abort();
}

#[tokio::test]
async fn a_streamed_body_cut_short_is_not_claimed_as_stored() {
    // Over the size read whole before answering: the head goes out while the body streams.
    let origin = Origin::start().await;
    origin.route(
        "/big",
        Route::ok(vec![b'z'; 1 << 20])
            .header("cache-control", "max-age=60")
            .truncated(),
    );
    let kagami = Kagami::start(&origin.url()).await;
    let response = kagami.client.get(kagami.url("/big")).send().await.unwrap();
    let cache_status = response.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        response.bytes().await.is_err(),
        "the body must not complete"
    );
    assert!(!cache_status.contains("stored"), "{cache_status}");
    origin.route(
        "/big",
        Route::ok(vec![b'z'; 1 << 20]).header("cache-control", "max-age=60"),
    );
    let again = kagami.get("/big").await;
    assert!(
        again.cache_status().contains("fwd=uri-miss"),
        "{}",
        again.cache_status()
    );
}
