//! HTTP/2 abuse: a rapid-reset flood (open a stream, cancel it at once, repeat; CVE-2023-44487)
//! must not turn into work for the origin or stop Kagami from serving others. (hyper closes
//! the connection when resets pile up faster than streams are accepted; a flood that Kagami keeps
//! up with costs it only the frames.)
mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Kagami, Origin, Route};
use tokio::net::TcpStream;

#[tokio::test]
async fn rapid_reset_flood_costs_the_origin_nothing() {
    let origin = Origin::start().await;
    origin.route("/slow", Route::ok("x").delay(Duration::from_millis(500)));
    let kagami = Kagami::start(&origin.url()).await;

    let tcp = TcpStream::connect(kagami.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();

    let mut sent = 0;
    let flood = async {
        for _ in 0..5_000 {
            let request = http::Request::get(format!("http://{}/slow", kagami.addr))
                .body(())
                .unwrap();
            let Ok((response, mut stream)) = client.send_request(request, false) else {
                break;
            };
            // Cancel at once: RST_STREAM(CANCEL).
            stream.send_reset(h2::Reason::CANCEL);
            drop(response);
            sent += 1;
            match client.ready().await {
                Ok(ready) => client = ready,
                Err(_) => break,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), flood)
        .await
        .expect("flood finished");
    assert!(sent > 0);
    // Give any stream that slipped through time to reach the origin.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        origin.total() < 50,
        "{sent} cancelled streams caused {} origin requests",
        origin.total()
    );
    driver.abort();

    // Everyone else is still served.
    origin.route(
        "/ok",
        Route::ok(Bytes::from_static(b"fine")).header("cache-control", "max-age=60"),
    );
    let reply = kagami.get("/ok").await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "fine"));
}

#[tokio::test]
async fn streams_beyond_the_limit_wait_instead_of_piling_up() {
    let origin = Origin::start().await;
    for i in 0..12 {
        origin.route(
            &format!("/s{i}"),
            Route::ok("x").delay(Duration::from_millis(300)),
        );
    }
    let mut site = kagami::config::SiteConfig::new("test", &["127.0.0.1"], &origin.url()).unwrap();
    site.protection.concurrency = 100;
    let mut config = kagami::config::Config::new(vec!["127.0.0.1:0".parse().unwrap()], vec![site]);
    config.log.access = false;
    config.server.h2_max_concurrent_streams = 3;
    let kagami = Kagami::start_config(config).await;

    let tcp = TcpStream::connect(kagami.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    // One complete exchange first, so the server's SETTINGS (with the stream limit) have arrived.
    let warm = http::Request::get(format!("http://{}/warm", kagami.addr))
        .body(())
        .unwrap();
    let (warm, _) = client.send_request(warm, true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), warm)
        .await
        .unwrap()
        .unwrap();
    let mut responses = Vec::new();
    for i in 0..12 {
        let request = http::Request::get(format!("http://{}/s{i}", kagami.addr))
            .body(())
            .unwrap();
        // `ready` waits while the server's SETTINGS_MAX_CONCURRENT_STREAMS is reached.
        client = tokio::time::timeout(Duration::from_secs(5), client.ready())
            .await
            .unwrap()
            .unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        responses.push(tokio::spawn(response));
    }
    for response in responses {
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    assert!(
        origin.max_in_flight() <= 3,
        "at most 3 streams at once: {}",
        origin.max_in_flight()
    );
    driver.abort();
}

#[tokio::test]
async fn idle_http2_connections_are_closed() {
    let origin = Origin::start().await;
    origin.route("/p", Route::ok("x").header("cache-control", "max-age=60"));
    let site = kagami::config::SiteConfig::new("test", &["127.0.0.1"], &origin.url()).unwrap();
    let mut config = kagami::config::Config::new(vec!["127.0.0.1:0".parse().unwrap()], vec![site]);
    config.log.access = false;
    config.server.idle_timeout = Duration::from_millis(500);
    let kagami = Kagami::start_config(config).await;

    let tcp = TcpStream::connect(kagami.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::get(format!("http://{}/p", kagami.addr))
        .body(())
        .unwrap();
    let response = common::h2_answer(&mut client, request).await;
    assert_eq!(response.status(), 200);
    drop(response);
    // Idle from here on: closed between one and two idle timeouts later.
    let closed = tokio::time::timeout(Duration::from_secs(3), driver).await;
    assert!(closed.is_ok(), "an idle HTTP/2 connection must be closed");
    drop(client);
}
