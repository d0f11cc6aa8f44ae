//! stale-while-revalidate (RFC 5861 §3): a stale copy is served at once, and exactly one
//! background revalidation runs per key.
mod common;

use std::time::{Duration, Instant};

use common::{Kagami, Origin, Route};

#[tokio::test]
async fn stale_is_served_immediately_and_refreshed_once_in_the_background() {
    let origin = Origin::start().await;
    origin.route(
        "/news",
        Route::ok("old").header("cache-control", "max-age=1, stale-while-revalidate=30"),
    );
    let kagami = Kagami::start(&origin.url()).await;
    kagami.get("/news").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;

    // The origin is now slow and has new content.
    origin.route(
        "/news",
        Route::ok("new")
            .header("cache-control", "max-age=60")
            .delay(Duration::from_millis(700)),
    );
    let started = Instant::now();
    let replies = futures_util::future::join_all((0..20).map(|_| kagami.get("/news"))).await;
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "stale copies must not wait for the origin"
    );
    for reply in &replies {
        assert_eq!(reply.text(), "old");
        assert!(
            reply.cache_status().contains("hit"),
            "{}",
            reply.cache_status()
        );
        assert!(reply
            .cache_status()
            .contains("detail=\"stale-while-revalidate\""));
        assert!(
            reply.cache_status().contains("ttl=-"),
            "stale ttl is negative: {}",
            reply.cache_status()
        );
    }

    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        origin.hits("/news"),
        2,
        "exactly one background revalidation"
    );
    let refreshed = kagami.get("/news").await;
    assert_eq!(refreshed.text(), "new");
    assert!(refreshed.cache_status().contains("hit"));
    assert_eq!(origin.hits("/news"), 2);
}

#[tokio::test]
async fn site_default_window_applies_when_the_origin_sends_none() {
    let origin = Origin::start().await;
    origin.route(
        "/plain",
        Route::ok("v1").header("cache-control", "max-age=1"),
    );
    let kagami = Kagami::start_with(&origin.url(), |site| {
        site.stale_while_revalidate = Duration::from_secs(30)
    })
    .await;
    kagami.get("/plain").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    origin.route(
        "/plain",
        Route::ok("v2").header("cache-control", "max-age=60"),
    );
    let stale = kagami.get("/plain").await;
    assert_eq!(stale.text(), "v1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(kagami.get("/plain").await.text(), "v2");
}

#[tokio::test]
async fn a_failing_background_refresh_keeps_the_good_copy() {
    let origin = Origin::start().await;
    origin.route(
        "/keep",
        Route::ok("good").header("cache-control", "max-age=1, stale-while-revalidate=30"),
    );
    let kagami = Kagami::start(&origin.url()).await;
    kagami.get("/keep").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    origin.fail_with(503);
    assert_eq!(kagami.get("/keep").await.text(), "good");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = kagami.get("/keep").await;
    assert_eq!(after.status, 200);
    assert_eq!(after.text(), "good");
}
