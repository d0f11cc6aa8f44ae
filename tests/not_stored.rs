//! no-store, private, Set-Cookie and Authorization responses are not stored (RFC 9111 §3).
mod common;

use common::{Kagami, Origin, Route};
use kagami::config::CookiePolicy;

async fn fetched_twice(kagami: &Kagami, path: &str) -> common::Reply {
    let first = kagami.get(path).await;
    assert_eq!(first.status, 200);
    kagami.get(path).await
}

#[tokio::test]
async fn no_store_private_and_set_cookie_go_to_the_origin_every_time() {
    let origin = Origin::start().await;
    origin.route(
        "/no-store",
        Route::ok("x").header("cache-control", "no-store, max-age=60"),
    );
    origin.route(
        "/private",
        Route::ok("x").header("cache-control", "private, max-age=60"),
    );
    origin.route(
        "/cookie",
        Route::ok("x")
            .header("cache-control", "max-age=60")
            .header("set-cookie", "sid=1"),
    );
    let kagami = Kagami::start(&origin.url()).await;

    for (path, detail) in [
        ("/no-store", "no-store"),
        ("/private", "private"),
        ("/cookie", "set-cookie"),
    ] {
        let second = fetched_twice(&kagami, path).await;
        assert_eq!(origin.hits(path), 2, "{path} must not be stored");
        assert!(
            second.cache_status().contains(detail),
            "{path}: {}",
            second.cache_status()
        );
        assert!(!second.cache_status().contains("stored"));
    }
}

#[tokio::test]
async fn strip_policy_stores_without_the_cookie() {
    let origin = Origin::start().await;
    origin.route(
        "/cookie",
        Route::ok("x")
            .header("cache-control", "max-age=60")
            .header("set-cookie", "sid=1"),
    );
    let kagami = Kagami::start_with(&origin.url(), |site| {
        site.cache_cookies = CookiePolicy::Strip
    })
    .await;

    let first = kagami.get("/cookie").await;
    assert_eq!(
        first.header("set-cookie"),
        Some("sid=1"),
        "the fetching visitor keeps its cookie"
    );
    let second = kagami.get("/cookie").await;
    assert!(second.cache_status().contains("hit"));
    assert_eq!(
        second.header("set-cookie"),
        None,
        "nobody else gets that cookie"
    );
    assert_eq!(origin.hits("/cookie"), 1);
}

#[tokio::test]
async fn authorization_requests_are_passed_and_not_shared() {
    let origin = Origin::start().await;
    origin.route(
        "/account",
        Route::ok("mine").header("cache-control", "max-age=60"),
    );
    let kagami = Kagami::start(&origin.url()).await;

    let with_auth = || {
        kagami
            .client
            .get(kagami.url("/account"))
            .header("authorization", "Basic dXNlcjpwdw==")
    };
    kagami.send(with_auth()).await;
    let second = kagami.send(with_auth()).await;
    assert!(
        second.cache_status().contains("fwd=bypass"),
        "{}",
        second.cache_status()
    );
    assert_eq!(origin.hits("/account"), 2);
    // An anonymous request afterwards must not get the authorised response from the cache.
    kagami.get("/account").await;
    assert_eq!(origin.hits("/account"), 3);
}

#[tokio::test]
async fn error_statuses_without_freshness_are_not_stored() {
    let origin = Origin::start().await;
    origin.route("/boom", Route::ok("err").status(500));
    origin.route(
        "/moved",
        Route::ok("").status(302).header("location", "/elsewhere"),
    );
    let kagami = Kagami::start(&origin.url()).await;
    for path in ["/boom", "/moved"] {
        kagami.get(path).await;
        kagami.get(path).await;
        assert_eq!(origin.hits(path), 2, "{path}");
    }
}
