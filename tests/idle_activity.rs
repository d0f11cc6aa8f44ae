//! Idle means no request activity: HTTP/2 PING frames (or any other bytes a client sends
//! without asking for anything) do not keep a connection open past the idle timeout, while a
//! client that keeps reading a long download is never cut off. And one client address can
//! hold at most `max_connections_per_client` connections, so it cannot lock others out.
mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Kagami, Origin, Route};
use kagami::config::{Config, SiteConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

async fn kagami_with(origin: &Origin, adjust: impl FnOnce(&mut Config)) -> Kagami {
    let site = SiteConfig::new("test", &["127.0.0.1"], &origin.url()).unwrap();
    let mut config = Config::new(vec!["127.0.0.1:0".parse().unwrap()], vec![site]);
    config.log.access = false;
    adjust(&mut config);
    Kagami::start_config(config).await
}

/// An HTTP/2 connection that has completed one request, with its PING handle and the task
/// driving it (which ends when the server closes the connection).
async fn h2_after_one_request(
    kagami: &Kagami,
    path: &str,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    h2::PingPong,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(kagami.addr).await.unwrap();
    let (client, mut connection) = h2::client::handshake(tcp).await.unwrap();
    let ping_pong = connection.ping_pong().expect("the PING handle");
    let driver = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::get(format!("http://{}{path}", kagami.addr))
        .body(())
        .unwrap();
    let response = common::h2_answer(&mut client, request).await;
    assert_eq!(response.status(), 200);
    (client, ping_pong, driver)
}

/// PINGs every 100 ms until the connection fails; counts the answered ones.
fn keep_pinging(mut ping_pong: h2::PingPong) -> Arc<AtomicUsize> {
    let answered = Arc::new(AtomicUsize::new(0));
    let count = answered.clone();
    tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if ping_pong.ping(h2::Ping::opaque()).await.is_err() {
                return;
            }
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    answered
}

#[tokio::test]
async fn http2_pings_do_not_keep_an_idle_connection_open() {
    let origin = Origin::start().await;
    origin.route("/p", Route::ok("x").header("cache-control", "max-age=60"));
    let kagami = kagami_with(&origin, |c| {
        c.server.idle_timeout = Duration::from_millis(400)
    })
    .await;

    let (client, ping_pong, driver) = h2_after_one_request(&kagami, "/p").await;
    let answered = keep_pinging(ping_pong);
    let closed = tokio::time::timeout(Duration::from_secs(3), driver).await;
    assert!(
        answered.load(Ordering::SeqCst) >= 2,
        "the PINGs were answered while the connection was open"
    );
    assert!(
        closed.is_ok(),
        "a connection with PINGs but no request was kept open ({} PINGs answered)",
        answered.load(Ordering::SeqCst)
    );
    drop(client);
}

#[tokio::test]
async fn http2_pings_do_not_keep_a_stalled_download_open() {
    let origin = Origin::start().await;
    origin.route(
        "/big",
        Route::ok(vec![b'x'; 4 << 20]).header("cache-control", "max-age=60"),
    );
    let kagami = kagami_with(&origin, |c| {
        c.server.idle_timeout = Duration::from_millis(400)
    })
    .await;

    // The response body is never read, so the stream's flow-control window closes after 64 KiB.
    let (client, ping_pong, driver) = h2_after_one_request(&kagami, "/big").await;
    let answered = keep_pinging(ping_pong);
    let closed = tokio::time::timeout(Duration::from_secs(3), driver).await;
    assert!(answered.load(Ordering::SeqCst) >= 2);
    assert!(
        closed.is_ok(),
        "a download nobody reads was kept open by PINGs ({} answered)",
        answered.load(Ordering::SeqCst)
    );
    drop(client);
}

#[tokio::test]
async fn a_client_reading_a_long_download_slowly_is_not_idle() {
    let origin = Origin::start().await;
    let size = 30 << 20;
    origin.route(
        "/long",
        Route::ok(vec![b'y'; size]).header("cache-control", "max-age=60"),
    );
    // The kernel wakes a writer only once much of its send buffer (up to megabytes) has drained,
    // so the idle timeout must exceed that drain time at the client's pace, as 60 s does.
    let kagami = kagami_with(&origin, |c| c.server.idle_timeout = Duration::from_secs(1)).await;
    // Stored first, so the download is one stored body handed out piece by piece.
    assert_eq!(kagami.get("/long").await.body.len(), size);
    let mut hit = false;
    for _ in 0..20 {
        let reply = kagami.send(kagami.client.head(kagami.url("/long"))).await;
        if reply.cache_status().starts_with("kagami; hit") {
            hit = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(hit, "the page was stored");

    // A small receive buffer, so that the client's pace (not the kernel's buffers, which grow to
    // tens of megabytes on loopback) sets how fast the body leaves Kagami.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut stream = socket.connect(kagami.addr).await.unwrap();
    stream
        .write_all(
            format!(
                "GET /long HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                kagami.addr
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    let mut got = 0usize;
    let mut head = String::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // At most about 12 MiB/s: the download takes several idle timeouts.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("data in time")
            .expect("read");
        if n == 0 {
            break;
        }
        if got == 0 {
            head = String::from_utf8_lossy(&buf[..n.min(512)]).into_owned();
        }
        got += n;
    }
    assert!(head.contains("cache-status: kagami; hit"), "{head}");
    assert!(
        got > size,
        "the whole body arrived ({got} bytes in {:?})",
        started.elapsed()
    );
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "the download outlasted several idle timeouts"
    );
}

async fn connect_from(ip: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), socket.connect(to))
        .await
        .expect("connected in time")
        .expect("connected")
}

#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let origin = Origin::start().await;
    origin.route(
        "/p",
        Route::ok("page").header("cache-control", "max-age=60"),
    );
    let kagami = kagami_with(&origin, |c| {
        c.server.max_connections = 6;
        c.server.max_connections_per_client = 2;
    })
    .await;

    // 127.0.0.2 tries to take all six connections and sits on them.
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(connect_from("127.0.0.2", kagami.addr).await);
    }
    // Its connections beyond two are closed at once.
    let mut closed = 0;
    for stream in &mut held {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(500), stream.read(&mut byte)).await
        {
            closed += 1;
        }
    }
    assert_eq!(closed, 4, "connections from 127.0.0.2 beyond its cap of 2");

    // Another address still connects and is served at once.
    let asked = Instant::now();
    let reply = tokio::time::timeout(Duration::from_secs(3), kagami.get("/p"))
        .await
        .expect("another client was served");
    assert_eq!((reply.status, reply.text().as_str()), (200, "page"));
    assert!(asked.elapsed() < Duration::from_secs(2));
    drop(held);
}
