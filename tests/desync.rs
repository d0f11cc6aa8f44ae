//! Request framing towards the origin (RFC 9112 §6): every request Kagami sends carries exactly
//! the framing of the body it really sends. A client's Content-Length or Transfer-Encoding for a
//! body Kagami drops (GET, HEAD) would make the origin read the start of the next visitor's
//! request on the same pooled connection as a body, and answer — and Kagami store — whatever
//! request the attacker hid there.
mod common;

use std::time::Duration;

use common::raw::{exchange, RawResponse};
use common::wire::{WireOrigin, WireRequest};
use common::Kagami;

/// The final response to `request` (after any `100 Continue`).
async fn raw(kagami: &Kagami, request: &str) -> RawResponse {
    let text = exchange(kagami.addr, request).await;
    let text = text
        .strip_prefix("HTTP/1.1 100 Continue\r\n\r\n")
        .unwrap_or(&text);
    RawResponse::parse(text)
}

/// Where `needle` starts in the request that begins with `line` on any origin connection.
fn offset_in_request(origin: &WireOrigin, line: &str, needle: &str) -> usize {
    for bytes in origin.connections() {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if let Some(start) = text.find(line) {
            let at = text[start..].find(needle).expect("needle in the request");
            return at;
        }
    }
    panic!("no request {line:?} reached the origin");
}

fn request_lines(origin: &WireOrigin) -> Vec<String> {
    origin
        .requests()
        .iter()
        .map(|r| r.line().to_string())
        .collect()
}

#[tokio::test]
async fn a_stray_content_length_on_a_get_cannot_poison_the_next_page() {
    let origin = WireOrigin::start().await;
    let kagami = Kagami::start(&origin.url()).await;
    let hidden = "X-S: GET /poison.html HTTP/1.1\r\n";
    let second = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{hidden}Connection: close\r\n\r\n")
    };

    // Learn where the hidden request line falls in what Kagami sends for such a request.
    let calibration = raw(&kagami, &second("/newz.html")).await;
    assert_eq!(calibration.body, b"GET /newz.html");
    let n = offset_in_request(&origin, "GET /newz.html", "GET /poison.html");

    // The attack: a GET that declares n body bytes and sends none, then the victim page.
    let first = raw(
        &kagami,
        &format!(
            "GET /x.html HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(first.status, 200);
    let victim = raw(&kagami, &second("/news.html")).await;
    assert_eq!(
        String::from_utf8_lossy(&victim.body),
        "GET /news.html",
        "the origin answered another request: {:?}",
        request_lines(&origin)
    );
    // And every later visitor gets the real page from the cache.
    let later = raw(&kagami, &second("/news.html")).await;
    assert_eq!(String::from_utf8_lossy(&later.body), "GET /news.html");
    assert!(
        later.all("cache-status")[0].contains("hit"),
        "{:?}",
        later.headers
    );

    let lines = request_lines(&origin);
    assert!(
        !lines.iter().any(|l| l.contains("poison")),
        "the origin parsed a hidden request: {lines:?}"
    );
    let x: Vec<WireRequest> = origin
        .requests()
        .into_iter()
        .filter(|r| r.line().starts_with("GET /x.html"))
        .collect();
    assert_eq!(x.len(), 1);
    assert!(!x[0].has("content-length"), "{}", x[0].head);
}

/// Asserts that the origin saw exactly `line` once, with no framing and no body.
fn assert_bodyless(origin: &WireOrigin, line: &str) {
    let requests: Vec<WireRequest> = origin
        .requests()
        .into_iter()
        .filter(|r| r.line().starts_with(line))
        .collect();
    assert_eq!(requests.len(), 1, "{line}: {:?}", request_lines(origin));
    let r = &requests[0];
    for name in ["content-length", "transfer-encoding", "expect"] {
        assert!(!r.has(name), "{line}: the origin saw {name}:\n{}", r.head);
    }
    assert!(r.body.is_empty(), "{line}: body {:?}", r.body);
}

#[tokio::test]
async fn no_request_without_a_body_carries_a_clients_framing() {
    let origin = WireOrigin::start().await;
    let kagami = Kagami::start(&origin.url()).await;

    // HEAD with a declared length (filled with GET).
    let reply = raw(
        &kagami,
        "HEAD /head.html HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 20\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_bodyless(&origin, "GET /head.html");

    // GET with Authorization (passed, not cached) and a declared length.
    let reply = raw(
        &kagami,
        "GET /private.html HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic dTpw\r\n\
         Content-Length: 20\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_bodyless(&origin, "GET /private.html");

    // GET with a real chunked body, which Kagami does not forward, and an expectation.
    let reply = raw(
        &kagami,
        "GET /chunked.html HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\
         Expect: 100-continue\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_bodyless(&origin, "GET /chunked.html");

    // HTTP/2: a GET with content-length and DATA.
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let reply = kagami
        .send(
            h2.get(kagami.url("/h2.html"))
                .header("content-length", "5")
                .body("hello"),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_bodyless(&origin, "GET /h2.html");
}

#[tokio::test]
async fn uploads_arrive_whole_with_their_own_framing() {
    let origin = WireOrigin::start().await;
    let kagami = Kagami::start(&origin.url()).await;

    let reply = raw(
        &kagami,
        "POST /form HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 7\r\nExpect: 100-continue\r\n\
         Connection: close\r\n\r\nname=ok",
    )
    .await;
    assert_eq!(reply.status, 200);
    let reply = raw(
        &kagami,
        "POST /chunks HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, 200);
    // Give the origin a moment to read the bodies it answered before reading.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let requests = origin.requests();
    let form = requests
        .iter()
        .find(|r| r.line().starts_with("POST /form"))
        .expect("the form reached the origin");
    assert_eq!(form.body, b"name=ok");
    assert_eq!(form.all("content-length"), ["7"], "{}", form.head);
    assert!(!form.has("expect"), "{}", form.head);
    let chunks = requests
        .iter()
        .find(|r| r.line().starts_with("POST /chunks"))
        .expect("the chunked upload reached the origin");
    assert_eq!(chunks.body, b"abcdefg");
    assert!(
        chunks.has("content-length") != chunks.has("transfer-encoding"),
        "exactly one framing: {}",
        chunks.head
    );
    // Nothing after the uploads was misparsed.
    assert_eq!(requests.len(), 2, "{:?}", request_lines(&origin));
}
