//! Response framing towards the client (RFC 9112 §6.3, RFC 9110 §15): an origin answer that
//! has both Transfer-Encoding and Content-Length loses the Content-Length; 204 carries no
//! length; a 101 (or any 1xx) as the final answer to a plain request becomes 502. The origin
//! here writes its bytes itself, since hyper would never send such framing.
mod common;

use common::raw::{exchange, status_of};
use common::wire::{self, RawOrigin};
use common::Kagami;

fn script(head: &str) -> Vec<u8> {
    let line = head.lines().next().unwrap_or("");
    let answer: &str = if line.starts_with("GET /both ") {
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\
         Cache-Control: max-age=60\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    } else if line.starts_with("GET /empty ") {
        "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nCache-Control: max-age=60\r\n\r\n"
    } else if line.starts_with("GET /switch ") {
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    } else {
        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    };
    answer.as_bytes().to_vec()
}

async fn get(kagami: &Kagami, path: &str) -> String {
    exchange(
        kagami.addr,
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
    )
    .await
}

#[tokio::test]
async fn transfer_encoding_overrides_an_origins_content_length() {
    let origin = RawOrigin::start(script).await;
    let kagami = Kagami::start(&origin.url()).await;
    for round in ["miss", "hit"] {
        let raw = get(&kagami, "/both").await;
        assert_eq!(status_of(&raw), 200, "{round}: {raw}");
        let response = &wire::parse(raw.as_bytes())[0];
        assert!(
            !response.all("content-length").contains(&"5".to_string()),
            "{round}: the origin's wrong length reached the client:\n{raw}"
        );
        assert!(
            response.has("content-length") != response.has("transfer-encoding"),
            "{round}: exactly one framing:\n{raw}"
        );
        assert_eq!(response.body, b"abc", "{round}: {raw}");
    }
}

#[tokio::test]
async fn no_content_carries_no_length() {
    let origin = RawOrigin::start(script).await;
    let kagami = Kagami::start(&origin.url()).await;
    for round in ["miss", "hit"] {
        let raw = get(&kagami, "/empty").await;
        assert_eq!(status_of(&raw), 204, "{round}: {raw}");
        let response = &wire::parse(raw.as_bytes())[0];
        assert!(!response.has("content-length"), "{round}:\n{raw}");
        assert!(!response.has("transfer-encoding"), "{round}:\n{raw}");
    }
}

#[tokio::test]
async fn switching_protocols_from_the_origin_is_a_bad_gateway() {
    let origin = RawOrigin::start(script).await;
    let kagami = Kagami::start(&origin.url()).await;
    let raw = get(&kagami, "/switch").await;
    assert_eq!(status_of(&raw), 502, "{raw}");
    assert!(
        !raw.to_ascii_lowercase().contains("upgrade: websocket"),
        "{raw}"
    );

    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let reply = kagami.send(h2.get(kagami.url("/switch"))).await;
    assert_eq!(reply.status, 502);
    assert!(origin.heads().len() >= 2);
}
