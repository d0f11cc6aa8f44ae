//! Hop-by-hop fields stop at Kagami in both directions (RFC 9110 §7.6.1); the origin learns who
//! asked through X-Forwarded-*, Forwarded and Via; Host is the client's unless `origin_host` is set.
mod common;

use std::net::SocketAddr;

use common::raw::{exchange, RawResponse};
use common::{Kagami, Origin, Route};
use http::HeaderValue;

/// Writes `request` as is and parses what the server sent until it closed (the request should
/// say `Connection: close`).
async fn raw_exchange(addr: SocketAddr, request: &str) -> RawResponse {
    RawResponse::parse(&exchange(addr, request).await)
}

/// An origin with a cacheable `/page` and a `/form` that answers "posted".
async fn page_and_form_origin() -> Origin {
    let origin = Origin::start().await;
    origin.route(
        "/page",
        Route::ok("page").header("cache-control", "max-age=60"),
    );
    origin.route("/form", Route::ok("posted"));
    origin
}

const CLIENT_HOP_BY_HOP: &str = "Connection: X-Private, close\r\n\
    X-Private: 1\r\n\
    Keep-Alive: timeout=5\r\n\
    Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\
    Proxy-Connection: keep-alive\r\n\
    TE: trailers\r\n\
    Upgrade: websocket\r\n\
    X-End-To-End: kept\r\n";

/// The hop-by-hop fields the test origin sends (besides its Connection: X-Secret).
const ORIGIN_HOP_BY_HOP: [&str; 5] = [
    "x-secret",
    "keep-alive",
    "proxy-authenticate",
    "proxy-connection",
    "upgrade",
];

fn assert_no_client_hop_by_hop(seen: &http::HeaderMap, what: &str) {
    for name in [
        "x-private",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "upgrade",
    ] {
        assert!(
            !seen.contains_key(name),
            "{what}: the origin saw {name}: {:?}",
            seen.get(name)
        );
    }
    for value in seen.get_all("connection") {
        let text = value.to_str().unwrap().to_ascii_lowercase();
        assert!(
            !text.contains("x-private"),
            "{what}: the origin saw Connection: {text}"
        );
    }
    assert_eq!(
        seen.get("x-end-to-end").map(|v| v.to_str().unwrap()),
        Some("kept"),
        "{what}"
    );
}

#[tokio::test]
async fn client_hop_by_hop_fields_do_not_reach_the_origin() {
    let origin = page_and_form_origin().await;
    let kagami = Kagami::start(&origin.url()).await;

    // A cache fill (GET).
    let reply = raw_exchange(
        kagami.addr,
        &format!("GET /page HTTP/1.1\r\nHost: 127.0.0.1\r\n{CLIENT_HOP_BY_HOP}\r\n"),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, b"page");
    let seen = origin
        .last_request_headers("/page")
        .expect("origin got the GET");
    assert_no_client_hop_by_hop(&seen, "GET");

    // A pass-through (POST with a body).
    let reply = raw_exchange(
        kagami.addr,
        &format!("POST /form HTTP/1.1\r\nHost: 127.0.0.1\r\n{CLIENT_HOP_BY_HOP}Content-Length: 3\r\n\r\na=1"),
    )
    .await;
    assert_eq!(reply.status, 200);
    let seen = origin
        .last_request_headers("/form")
        .expect("origin got the POST");
    assert_no_client_hop_by_hop(&seen, "POST");
}

#[tokio::test]
async fn origin_hop_by_hop_fields_do_not_reach_the_client() {
    let origin = Origin::start().await;
    let route = |body: &'static str| {
        Route::ok(body)
            .header("cache-control", "max-age=60")
            .header("connection", "X-Secret")
            .header("x-secret", "origin-internal")
            .header("keep-alive", "timeout=5, max=100")
            .header("proxy-authenticate", "Basic realm=\"origin\"")
            .header("proxy-connection", "keep-alive")
            .header("upgrade", "h2c")
            .header("x-end-to-end", "kept")
    };
    origin.route("/page", route("page"));
    origin.route("/form", route("posted"));
    let kagami = Kagami::start(&origin.url()).await;

    // The test origin really sends them (so that the checks below are not vacuous).
    let direct = raw_exchange(
        origin.addr,
        "GET /form HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    for name in ORIGIN_HOP_BY_HOP {
        assert!(
            direct.has(name),
            "the origin itself should send {name}: {:?}",
            direct.headers
        );
    }
    assert!(direct
        .all("connection")
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("x-secret")));

    let requests = [
        ("miss", "GET /page HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".to_string()),
        ("hit", "GET /page HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".to_string()),
        (
            "pass",
            "POST /form HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n".to_string(),
        ),
    ];
    for (what, request) in requests {
        let reply = raw_exchange(kagami.addr, &request).await;
        assert_eq!(reply.status, 200, "{what}");
        for name in ORIGIN_HOP_BY_HOP {
            assert!(
                !reply.has(name),
                "{what}: the client saw {name}: {:?}",
                reply.all(name)
            );
        }
        for value in reply.all("connection") {
            assert!(
                value.eq_ignore_ascii_case("close"),
                "{what}: only Kagami's own Connection: close may reach the client, got {value:?}"
            );
        }
        assert_eq!(reply.all("x-end-to-end"), vec!["kept"], "{what}");
        assert_eq!(reply.all("via"), vec!["1.1 kagami"], "{what}");
    }
    assert_eq!(origin.hits("/page"), 1, "the hit came from the cache");
    assert_eq!(
        origin.hits("/form"),
        2,
        "one direct request, one through Kagami"
    );
}

#[tokio::test]
async fn origin_sees_forwarding_fields_and_the_client_host() {
    let origin = page_and_form_origin().await;
    let kagami = Kagami::start(&origin.url()).await;
    // The client names Kagami's port; that port is implied by the listener, so the key and
    // the origin's Host leave it out (README: the listener's port is left out too).
    let host = "127.0.0.1".to_string();

    let reply = kagami.get("/page").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("via"), Some("1.1 kagami"));
    let post = kagami
        .send(kagami.client.post(kagami.url("/form")).body("x"))
        .await;
    assert_eq!(post.header("via"), Some("1.1 kagami"));

    for path in ["/page", "/form"] {
        let seen = origin.last_request_headers(path).unwrap();
        let get = |name: &str| seen.get(name).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(
            get("x-forwarded-for").as_deref(),
            Some("127.0.0.1"),
            "{path}"
        );
        assert_eq!(get("x-forwarded-proto").as_deref(), Some("http"), "{path}");
        assert_eq!(
            get("forwarded"),
            Some(format!("for=127.0.0.1;proto=http;host=\"{host}\"")),
            "{path}"
        );
        // Towards the origin the hop names this process, so that loops are recognised.
        let via = get("via").unwrap_or_default();
        assert!(
            via.starts_with("1.1 kagami (") && via.ends_with(')'),
            "{path}: {via}"
        );
        assert_eq!(
            get("host"),
            Some(host.clone()),
            "{path}: the client's Host by default"
        );
    }
}

#[tokio::test]
async fn prior_via_is_appended_to_and_an_untrusted_x_forwarded_for_replaced() {
    let origin = Origin::start().await;
    origin.route("/page", Route::ok("page"));
    let kagami = Kagami::start(&origin.url()).await;

    kagami
        .send(
            kagami
                .client
                .get(kagami.url("/page"))
                .header("x-forwarded-for", "203.0.113.9")
                .header("via", "1.1 edge"),
        )
        .await;
    let seen = origin.last_request_headers("/page").unwrap();
    // Not from a trusted proxy: the client's own chain is dropped (tests/forwarding_headers.rs).
    assert_eq!(seen.get("x-forwarded-for").unwrap(), "127.0.0.1");
    let via: Vec<&str> = seen
        .get_all("via")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    let via = via.join(", ");
    assert!(via.starts_with("1.1 edge, 1.1 kagami ("), "{via}");
}

#[tokio::test]
async fn origin_host_replaces_host_and_the_forwarded_host() {
    let origin = page_and_form_origin().await;
    let kagami = Kagami::start_with(&origin.url(), |site| {
        site.origin_host = Some(HeaderValue::from_static("origin.example"));
    })
    .await;
    // The origin is told the name in the cache key, never the alias the visitor used.
    let host = "origin.example";

    assert_eq!(kagami.get("/page").await.status, 200);
    assert_eq!(
        kagami
            .send(kagami.client.post(kagami.url("/form")).body("x"))
            .await
            .status,
        200
    );
    for path in ["/page", "/form"] {
        let seen = origin.last_request_headers(path).unwrap();
        assert_eq!(seen.get("host").unwrap(), "origin.example", "{path}");
        assert_eq!(
            seen.get("forwarded").unwrap().to_str().unwrap(),
            format!("for=127.0.0.1;proto=http;host=\"{host}\""),
            "{path}"
        );
        assert_eq!(
            seen.get("x-forwarded-host").unwrap().to_str().unwrap(),
            host,
            "{path}"
        );
    }
}
