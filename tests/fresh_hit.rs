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
