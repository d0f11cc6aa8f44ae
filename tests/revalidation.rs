//! Expired entries with validators are revalidated; clients' conditionals, HEAD and ranges are
//! answered from the cache.
mod common;

use std::time::Duration;

use common::{Kagami, Origin, Route};

#[tokio::test]
async fn not_modified_keeps_the_body_and_refreshes_headers() {
    let origin = Origin::start().await;
    origin.route(
        "/doc",
        Route::ok("original body")
            .header("cache-control", "max-age=1")
            .header("etag", "\"v1\"")
            .header("x-version", "1"),
    );
    let kagami = Kagami::start(&origin.url()).await;
    kagami.get("/doc").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;

    // The origin now answers the conditional request with 304 and new metadata.
    origin.route(
        "/doc",
        Route::ok("should not be sent")
            .header("cache-control", "max-age=60")
            .header("etag", "\"v1\"")
            .header("x-version", "2"),
    );
    let revalidated = kagami.get("/doc").await;
    assert_eq!(revalidated.status, 200);
    assert_eq!(revalidated.text(), "original body");
    assert_eq!(revalidated.header("x-version"), Some("2"));
    assert!(
        revalidated
            .cache_status()
            .contains("fwd=stale; fwd-status=304"),
        "{}",
        revalidated.cache_status()
    );
    assert_eq!(origin.not_modified_count(), 1);
    assert_eq!(
        origin
            .last_request_headers("/doc")
            .unwrap()
            .get("if-none-match")
            .map(|v| v.to_str().unwrap().to_string()),
        Some("\"v1\"".into())
    );

    // Fresh again for 60 s: served from the cache.
    let hit = kagami.get("/doc").await;
    assert!(hit.cache_status().contains("hit"));
    assert_eq!(origin.hits("/doc"), 2);
}

#[tokio::test]
async fn last_modified_is_used_when_there_is_no_etag() {
    let origin = Origin::start().await;
    let lm = "Tue, 01 Oct 2024 00:00:00 GMT";
    origin.route(
        "/lm",
        Route::ok("body")
            .header("cache-control", "max-age=1")
            .header("last-modified", lm),
    );
    let kagami = Kagami::start(&origin.url()).await;
    kagami.get("/lm").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let again = kagami.get("/lm").await;
    assert_eq!(again.text(), "body");
    assert_eq!(origin.not_modified_count(), 1);
}

#[tokio::test]
async fn client_conditionals_get_304_from_the_cache() {
    let origin = Origin::start().await;
    let lm = "Tue, 01 Oct 2024 00:00:00 GMT";
    origin.route(
        "/c",
        Route::ok("content")
            .header("cache-control", "max-age=60")
            .header("etag", "\"abc\"")
            .header("last-modified", lm),
    );
    let kagami = Kagami::start(&origin.url()).await;
    kagami.get("/c").await;

    let inm = kagami
        .send(
            kagami
                .client
                .get(kagami.url("/c"))
                .header("if-none-match", "W/\"abc\""),
        )
        .await;
    assert_eq!(inm.status, 304);
    assert!(inm.body.is_empty());
    assert_eq!(inm.header("etag"), Some("\"abc\""));
    assert!(inm.header("age").is_some());

    let ims = kagami
        .send(
            kagami
                .client
                .get(kagami.url("/c"))
                .header("if-modified-since", lm),
        )
        .await;
    assert_eq!(ims.status, 304);
    let changed = kagami
        .send(
            kagami
                .client
                .get(kagami.url("/c"))
                .header("if-none-match", "\"other\""),
        )
        .await;
    assert_eq!(changed.status, 200);
    assert_eq!(changed.text(), "content");
    let failed = kagami
        .send(
            kagami
                .client
                .get(kagami.url("/c"))
                .header("if-match", "\"other\""),
        )
        .await;
    assert_eq!(failed.status, 412);
    assert_eq!(origin.hits("/c"), 1, "all answered from the cache");
}

#[tokio::test]
async fn head_is_answered_from_a_stored_get_and_fills_the_cache() {
    let origin = Origin::start().await;
    origin.route(
        "/h",
        Route::ok("0123456789").header("cache-control", "max-age=60"),
    );
    let kagami = Kagami::start(&origin.url()).await;

    let head = kagami.send(kagami.client.head(kagami.url("/h"))).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), Some("10"));
    // The HEAD miss was filled with GET, so a GET is a hit.
    let get = kagami.get("/h").await;
    assert_eq!(get.text(), "0123456789");
    assert!(get.cache_status().contains("hit"), "{}", get.cache_status());
    let head_hit = kagami.send(kagami.client.head(kagami.url("/h"))).await;
    assert!(head_hit.cache_status().contains("hit"));
    assert_eq!(head_hit.header("content-length"), Some("10"));
    assert_eq!(origin.log(), vec![("GET".to_string(), "/h".to_string())]);
}

#[tokio::test]
async fn a_304_that_makes_the_copy_private_removes_it() {
    let origin = Origin::start().await;
    origin.route(
        "/p",
        Route::ok("shared")
            .header("cache-control", "max-age=1")
            .header("etag", "\"v1\""),
    );
    let kagami = Kagami::start(&origin.url()).await;
    kagami.get("/p").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Same validator, but the page is now private: the origin answers 304 with that.
    origin.route(
        "/p",
        Route::ok("shared")
            .header("cache-control", "private, max-age=60")
            .header("etag", "\"v1\""),
    );
    let revalidated = kagami.get("/p").await;
    assert_eq!(revalidated.text(), "shared");
    assert_eq!(origin.not_modified_count(), 1);
    assert!(
        !revalidated.cache_status().contains("stored"),
        "{}",
        revalidated.cache_status()
    );

    let next = kagami.get("/p").await;
    assert!(
        !next.cache_status().contains("hit"),
        "a private copy is not served from memory: {}",
        next.cache_status()
    );
    assert_eq!(origin.hits("/p"), 3);
}
