//! One client address may hold only its share of a site's origin slots
//! (`origin_concurrency_per_client`): 32 connections that ask for a large uncached object and
//! never read it cannot turn every other visitor's miss into "origin busy".
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Kagami, Origin, Route};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// A connection to `to` from 127.0.0.2 (another loopback address: another client) whose
/// receive buffer is tiny, so that not reading really holds the sender back.
async fn slow_reader_from_second_address(to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), socket.connect(to))
        .await
        .expect("connected in time")
        .expect("connected")
}

#[tokio::test]
async fn slow_readers_from_one_address_leave_other_clients_origin_slots() {
    let origin = Origin::start().await;
    // Larger than every buffer between the origin and a client that does not read.
    origin.route("/big", Route::ok(vec![b'x'; 24 << 20]));
    for i in 0..4 {
        let path = format!("/cold/{i}");
        origin.route(
            &path,
            Route::ok(path.clone()).header("cache-control", "max-age=60"),
        );
    }
    let kagami = Kagami::start_with(&origin.url(), |site| {
        site.limit_hits = None;
        site.limit_misses = None;
        site.protection.concurrency = 8;
        site.protection.concurrency_per_client = 2;
        site.protection.queue_timeout = Duration::from_millis(500);
    })
    .await;

    let mut attackers = Vec::new();
    for _ in 0..32 {
        let mut stream = slow_reader_from_second_address(kagami.addr).await;
        stream
            .write_all(b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer x\r\n\r\n")
            .await
            .unwrap();
        attackers.push(stream);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while origin.hits("/big") < 2 {
        assert!(
            Instant::now() < deadline,
            "the slow readers reached the origin"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Another client (127.0.0.1) still gets its misses through, without queueing.
    for i in 0..4 {
        let asked = Instant::now();
        let reply = kagami.get(&format!("/cold/{i}")).await;
        assert_eq!(
            (reply.status, reply.text()),
            (200, format!("/cold/{i}")),
            "{}",
            reply.cache_status()
        );
        assert!(
            asked.elapsed() < Duration::from_millis(400),
            "waited for a slot: {:?}",
            asked.elapsed()
        );
    }
    drop(attackers);
}
