//! Fresh hits come from memory with a correct Age; max-age and s-maxage decide how long.
mod common;

use std::time::Duration;

use common::{Kagami, Origin, Route};

#[tokio::test]
async fn second_request_is_a_hit_with_age() {
    let origin = Origin::start().await;
    origin.route(
        "/page",
        Route::ok("hello").header("cache-control", "max-age=60"),
    );
    let kagami = Kagami::start(&origin.url()).await;

    let first = kagami.get("/page").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), "hello");
    assert!(
        first.cache_status().contains("fwd=uri-miss"),
        "{}",
        first.cache_status()
    );
    assert!(first.cache_status().contains("stored"));

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = kagami.get("/page").await;
    assert_eq!(second.text(), "hello");
    assert!(
        second.cache_status().starts_with("kagami; hit"),
        "{}",
        second.cache_status()
    );
    assert!(second.age().unwrap() >= 1, "age {:?}", second.age());
    assert_eq!(second.header("via"), Some("1.1 kagami"));
    assert_eq!(origin.hits("/page"), 1);
}

#[tokio::test]
async fn age_from_upstream_counts_and_stale_on_arrival_is_refetched() {
    let origin = Origin::start().await;
    origin.route(
        "/aged",
        Route::ok("a")
            .header("cache-control", "max-age=100")
            .header("age", "30"),
    );
    origin.route(
        "/dead",
        Route::ok("d")
            .header("cache-control", "max-age=10")
            .header("age", "50"),
    );
    let kagami = Kagami::start(&origin.url()).await;

    kagami.get("/aged").await;
    let hit = kagami.get("/aged").await;
    assert!(hit.age().unwrap() >= 30);
    assert!(
        hit.cache_status().contains("ttl=70") || hit.cache_status().contains("ttl=69"),
        "{}",
        hit.cache_status()
    );

    kagami.get("/dead").await;
    kagami.get("/dead").await;
    assert_eq!(
        origin.hits("/dead"),
        2,
        "a response older than its max-age is stale on arrival"
    );
}

#[tokio::test]
async fn max_age_expiry_sends_the_next_request_to_the_origin() {
    let origin = Origin::start().await;
    origin.route(
        "/short",
        Route::ok("v").header("cache-control", "max-age=1"),
    );
    let kagami = Kagami::start(&origin.url()).await;

    kagami.get("/short").await;
    kagami.get("/short").await;
    assert_eq!(origin.hits("/short"), 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = kagami.get("/short").await;
    assert_eq!(expired.status, 200);
    assert_eq!(origin.hits("/short"), 2);
    assert!(
        expired.cache_status().contains("fwd=stale"),
        "{}",
        expired.cache_status()
    );
}

#[tokio::test]
async fn s_maxage_takes_precedence_over_max_age() {
    let origin = Origin::start().await;
    origin.route(
        "/s",
        Route::ok("s").header("cache-control", "max-age=0, s-maxage=60"),
    );
    origin.route(
        "/m",
        Route::ok("m").header("cache-control", "max-age=60, s-maxage=0"),
    );
    let kagami = Kagami::start(&origin.url()).await;

    for _ in 0..3 {
        kagami.get("/s").await;
        kagami.get("/m").await;
    }
    assert_eq!(
        origin.hits("/s"),
        1,
        "s-maxage=60 keeps it fresh for a shared cache"
    );
    assert_eq!(origin.hits("/m"), 3, "s-maxage=0 overrides max-age=60");
}

#[tokio::test]
async fn http2_prior_knowledge_is_served_on_the_same_port() {
    let origin = Origin::start().await;
    origin.route(
        "/h2",
        Route::ok("two").header("cache-control", "max-age=60"),
    );
    let kagami = Kagami::start(&origin.url()).await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let reply = kagami.send(h2.get(kagami.url("/h2"))).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "two");
    let again = kagami.send(h2.get(kagami.url("/h2"))).await;
    assert!(again.cache_status().contains("hit"));
}

#[tokio::test]
async fn an_absurd_age_from_the_origin_does_not_break_the_page() {
    let origin = Origin::start().await;
    origin.route(
        "/old",
        Route::ok("o")
            .header("cache-control", "max-age=60")
            .header("age", "18446744073709551615"),
    );
    let kagami = Kagami::start(&origin.url()).await;
    for _ in 0..3 {
        let reply = kagami.get("/old").await;
        assert_eq!((reply.status, reply.text().as_str()), (200, "o"));
    }
}

/// A hit's answer is written into the request's own header map (`respond::from_entry_reusing`):
/// nothing a visitor sent may come back in it, on this request or the next on the connection.
/// Raw socket, so the fields are exactly what went over the wire.
#[tokio::test]
async fn nothing_from_the_request_comes_back_in_a_hit() {
    let origin = Origin::start().await;
    origin.route(
        "/page",
        Route::ok("hello").header("cache-control", "max-age=60"),
    );
    let kagami = Kagami::start(&origin.url()).await;
    assert_eq!(kagami.get("/page").await.status, 200);

    let mut stream = common::raw::connect(kagami.addr).await;
    let hostile = "GET /page HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Inject: evil\r\n\
                   Set-Cookie: session=stolen\r\nCache-Status: forged\r\nAge: 999\r\n\
                   Access-Control-Allow-Origin: *\r\n\r\n";
    let plain = "GET /page HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    for request in [hostile, plain] {
        use tokio::io::AsyncWriteExt;
        stream.write_all(request.as_bytes()).await.unwrap();
        let raw = common::raw::read_one_response(&mut stream, Duration::from_secs(5)).await;
        let answer = common::raw::RawResponse::parse(&raw);
        assert_eq!(answer.status, 200, "{raw}");
        assert_eq!(answer.body, b"hello", "{raw}");
        for name in [
            "x-inject",
            "set-cookie",
            "access-control-allow-origin",
            "host",
        ] {
            assert!(!answer.has(name), "{name} came back: {raw}");
        }
        let status = answer.all("cache-status");
        assert_eq!(status.len(), 1, "{raw}");
        assert!(status[0].starts_with("kagami; hit"), "{raw}");
        let age = answer.all("age");
        assert_eq!(age.len(), 1, "{raw}");
        assert!(age[0].parse::<u64>().unwrap() < 60, "{raw}");
        assert!(!raw.contains("evil") && !raw.contains("stolen") && !raw.contains("forged"));
    }
}
