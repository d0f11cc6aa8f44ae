//! Host and request target are validated and normalised once: the origin receives exactly the
//! Host and target that the cache key describes, odd spellings of a name share its key and reach
//! the origin in the normal form, and what cannot be a name or a path is refused with 400.
//! `OPTIONS *` is answered by Kagami and never counts against the origin's health.
mod common;

use common::raw::{body_of, exchange, status_of};
use common::{Kagami, Origin, Route};

fn cacheable(body: &str) -> Route {
    Route::ok(body.to_string()).header("cache-control", "max-age=300")
}

/// One raw HTTP/1.1 request, answered and closed; returns (status, body).
async fn raw_get(kagami: &Kagami, target: &[u8], host: &[u8]) -> (u16, String) {
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(target);
    request.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    request.extend_from_slice(host);
    request.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    let raw = exchange(kagami.addr, request).await;
    (status_of(&raw), body_of(&raw).to_string())
}

#[tokio::test]
async fn hosts_that_are_not_names_are_refused_before_routing() {
    let origin = Origin::start().await;
    origin.route("/", cacheable("home"));
    let kagami = Kagami::start_with(&origin.url(), |site| {
        site.hosts = vec![
            kagami::routing::HostPattern::parse("*.city.test").unwrap(),
            kagami::routing::HostPattern::parse("www.pref.test").unwrap(),
        ];
    })
    .await;
    for host in [
        "evil.example/x.city.test",
        "evil.example/?.city.test",
        "[www.pref.test]",
        "www.pref.test:0",
        "user@www.pref.test",
        "www..pref.test",
        "www.pref.test:80:80",
    ] {
        let (status, _) = raw_get(&kagami, b"/", host.as_bytes()).await;
        assert_eq!(status, 400, "Host {host:?}");
    }
    assert_eq!(origin.total(), 0, "nothing odd reached the origin");
}

#[tokio::test]
async fn spellings_of_a_name_reach_the_origin_normalised_and_share_its_key() {
    let origin = Origin::start().await;
    origin.route("/news.html", cacheable("news"));
    let kagami = Kagami::start_with(&origin.url(), |site| {
        site.hosts = vec![kagami::routing::HostPattern::parse("www.pref.test").unwrap()];
    })
    .await;
    let (status, body) = raw_get(&kagami, b"/news.html", b"WWW.PREF.TEST.").await;
    assert_eq!((status, body.as_str()), (200, "news"));
    let sent = origin.last_request_headers("/news.html").unwrap();
    assert_eq!(sent["host"], "www.pref.test");
    assert_eq!(sent["x-forwarded-host"], "www.pref.test");
    for host in ["www.pref.test", "www.pref.test:0080", "www.pref.test:80"] {
        let (status, body) = raw_get(&kagami, b"/news.html", host.as_bytes()).await;
        assert_eq!((status, body.as_str()), (200, "news"), "Host {host}");
    }
    assert_eq!(origin.hits("/news.html"), 1, "one key for every spelling");

    // Another port is another authority: its own key, and the origin is told the port.
    let (status, _) = raw_get(&kagami, b"/news.html", b"www.pref.test:8080").await;
    assert_eq!(status, 200);
    assert_eq!(origin.hits("/news.html"), 2);
    let sent = origin.last_request_headers("/news.html").unwrap();
    assert_eq!(sent["host"], "www.pref.test:8080");
}

#[tokio::test]
async fn dot_segments_are_resolved_before_keying_and_sending() {
    let origin = Origin::start().await;
    origin.route("/b", cacheable("page b"));
    origin.route("/a/b", cacheable("page a/b"));
    let kagami = Kagami::start(&origin.url()).await;
    let host = kagami.addr.to_string();
    let (status, body) = raw_get(&kagami, b"/a/../b", host.as_bytes()).await;
    assert_eq!((status, body.as_str()), (200, "page b"));
    let (status, body) = raw_get(&kagami, b"/a/%2e%2E/b", host.as_bytes()).await;
    assert_eq!((status, body.as_str()), (200, "page b"));
    let (status, body) = raw_get(&kagami, b"/b", host.as_bytes()).await;
    assert_eq!((status, body.as_str()), (200, "page b"));
    assert_eq!(
        origin.hits("/b"),
        1,
        "one key for what the origin saw as one URL"
    );
    // A backslash is not a path separator: it must not be resolved by the origin's parser into
    // another page than the key names.
    let (_, body) = raw_get(&kagami, b"/a/b\\..\\..\\b", host.as_bytes()).await;
    assert_ne!(body, "page b");
    assert_eq!(
        origin.log().last().map(|(_, p)| p.clone()).as_deref(),
        Some("/a/b%5C..%5C..%5Cb")
    );
}

#[tokio::test]
async fn raw_and_percent_encoded_bytes_never_share_a_key_with_other_bytes() {
    let origin = Origin::start().await;
    // What the origin receives for each: two different URLs.
    origin.route("/cc/x/A%E3%81%82", cacheable("page A-a"));
    origin.route("/cc/x/A%C3%A3%C2%81%C2%82", cacheable("page mojibake"));
    let kagami = Kagami::start(&origin.url()).await;
    let host = kagami.addr.to_string();

    // Raw UTF-8 of U+00E3 U+0081 U+0082 (the old key's Latin-1 reading of `%41あ`'s bytes).
    let (status, body) = raw_get(&kagami, "/cc/x/Aã\u{81}\u{82}".as_bytes(), host.as_bytes()).await;
    assert_eq!((status, body.as_str()), (200, "page mojibake"));
    let (status, body) = raw_get(&kagami, "/cc/x/%41あ".as_bytes(), host.as_bytes()).await;
    assert_eq!((status, body.as_str()), (200, "page A-a"));
    // The same bytes, spelt raw or encoded, are one URL to the origin and one key.
    let (_, body) = raw_get(&kagami, "/cc/x/Aあ".as_bytes(), host.as_bytes()).await;
    assert_eq!(body, "page A-a");
    assert_eq!(origin.hits("/cc/x/A%E3%81%82"), 1);
    assert_eq!(origin.hits("/cc/x/A%C3%A3%C2%81%C2%82"), 1);
}

#[tokio::test]
async fn options_asterisk_is_answered_and_never_opens_the_circuit() {
    let origin = Origin::start().await;
    origin.route("/cold", cacheable("cold page"));
    let kagami = Kagami::start_with(&origin.url(), |site| {
        site.protection.circuit_failures = 3;
    })
    .await;
    let host = kagami.addr;
    for _ in 0..10 {
        let raw = exchange(
            kagami.addr,
            format!("OPTIONS * HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status_of(&raw), 200, "{raw}");
        assert!(
            raw.to_ascii_lowercase().contains("allow: get, head"),
            "{raw}"
        );
        let raw = exchange(
            kagami.addr,
            format!("GET * HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status_of(&raw), 400, "{raw}");
    }
    let page = kagami.get("/cold").await;
    assert_eq!(page.status, 200, "{}", page.cache_status());
    assert_eq!(page.text(), "cold page");
    assert_eq!(origin.total(), 1, "only the real page reached the origin");
}

#[tokio::test]
async fn h2_asterisk_path_never_reaches_the_origin() {
    let origin = Origin::start().await;
    let kagami = Kagami::start(&origin.url()).await;
    let tcp = tokio::net::TcpStream::connect(kagami.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(connection);
    for (method, want) in [(http::Method::OPTIONS, 200), (http::Method::GET, 400)] {
        let mut client = client.clone().ready().await.unwrap();
        let request = http::Request::builder()
            .method(method.clone())
            .uri(
                http::Uri::builder()
                    .scheme("http")
                    .authority(kagami.addr.to_string())
                    .path_and_query("*")
                    .build()
                    .unwrap(),
            )
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let response = tokio::time::timeout(std::time::Duration::from_secs(5), response)
            .await
            .expect("answered in time")
            .expect("a response");
        assert_eq!(response.status().as_u16(), want, "{method} *");
    }
    driver.abort();
    assert_eq!(origin.total(), 0);
}

#[tokio::test]
async fn a_stray_percent_is_refused_so_no_escape_can_be_formed_after_keying() {
    let origin = Origin::start().await;
    origin.route("/secret", cacheable("secret"));
    let kagami = Kagami::start(&origin.url()).await;
    let host = kagami.addr.to_string();
    for target in [
        "/a/%%32%65%%32%65/secret",
        "/a/%2%65%2%65/secret",
        "/100%",
        "/x?q=%zz",
    ] {
        let (status, body) = raw_get(&kagami, target.as_bytes(), host.as_bytes()).await;
        assert_eq!(status, 400, "{target}: {body}");
    }
    assert_eq!(origin.total(), 0);
}
