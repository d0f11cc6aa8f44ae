//! When the origin fails, stored copies are served within stale-if-error or the operator's
//! grace; errors never replace a good copy; strict sites follow RFC 9111 to the letter.
mod common;

use std::time::Duration;

use common::{Kagami, Origin, Route};

async fn expire() {
    tokio::time::sleep(Duration::from_millis(2100)).await;
}

/// A page stored from `route` and then left to expire, behind a Kagami adjusted by `adjust`.
async fn stored_then_expired(
    path: &str,
    route: Route,
    adjust: impl FnOnce(&mut kagami::config::SiteConfig),
) -> (Origin, Kagami) {
    let origin = Origin::start().await;
    origin.route(path, route);
    let kagami = Kagami::start_with(&origin.url(), adjust).await;
    kagami.get(path).await;
    expire().await;
    (origin, kagami)
}

#[tokio::test]
async fn stale_if_error_serves_the_copy_when_the_origin_is_killed() {
    let (origin, kagami) = stored_then_expired(
        "/p",
        Route::ok("last good").header("cache-control", "max-age=1, stale-if-error=600"),
        |site| site.grace = Duration::ZERO,
    )
    .await;
    origin.kill();

    let reply = kagami.get("/p").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "last good");
    assert!(
        reply.cache_status().contains("fwd=stale"),
        "{}",
        reply.cache_status()
    );
    assert!(
        reply.cache_status().contains("detail=\"stale-if-error\""),
        "{}",
        reply.cache_status()
    );
}

#[tokio::test]
async fn grace_serves_stale_even_without_stale_if_error_and_over_must_revalidate() {
    let (origin, kagami) = stored_then_expired(
        "/mr",
        Route::ok("strict").header("cache-control", "max-age=1, must-revalidate"),
        |_| {},
    )
    .await; // default grace: 7 days
    origin.fail_with(503);

    let reply = kagami.get("/mr").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "strict");
    assert!(
        reply.cache_status().contains("fwd-status=503"),
        "{}",
        reply.cache_status()
    );
    assert!(
        reply
            .cache_status()
            .contains("grace-overrode-must-revalidate"),
        "{}",
        reply.cache_status()
    );
}

#[tokio::test]
async fn strict_site_returns_the_error_for_must_revalidate_content() {
    let (origin, kagami) = stored_then_expired(
        "/mr",
        Route::ok("strict").header("cache-control", "max-age=1, must-revalidate"),
        |site| site.grace = Duration::ZERO,
    )
    .await;
    origin.kill();
    let reply = kagami.get("/mr").await;
    // RFC 9111 §5.2.2.2: a stored copy that may not be reused stale gives 504.
    assert_eq!(reply.status, 504);
    assert_ne!(reply.text(), "strict");
    assert!(
        reply
            .cache_status()
            .contains("detail=\"origin-unreachable\""),
        "{}",
        reply.cache_status()
    );
}

#[tokio::test]
async fn no_stored_copy_gives_the_origins_error_or_the_emergency_page() {
    let origin = Origin::start().await;
    origin.route(
        "/cold",
        Route::ok("never fetched").header("cache-control", "max-age=60"),
    );
    let kagami = Kagami::start_with(&origin.url(), |site| {
        site.emergency_page = bytes::Bytes::from_static("<h1>緊急 / Emergency</h1>".as_bytes())
    })
    .await;
    origin.fail_with(503);
    let reply = kagami.get("/cold").await;
    assert_eq!(reply.status, 503);
    assert_eq!(
        reply.text(),
        "origin failure\n",
        "the origin's own answer is relayed"
    );
    origin.kill();
    let refused = kagami.get("/cold").await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.text(), "<h1>緊急 / Emergency</h1>");
    assert!(refused.header("retry-after").is_some());
    assert_eq!(refused.header("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn slow_origin_without_a_copy_gives_504() {
    let origin = Origin::start().await;
    origin.route("/slow", Route::ok("late").delay(Duration::from_secs(3)));
    let kagami = Kagami::start_with(&origin.url(), |site| {
        site.timeouts.response = Duration::from_millis(300)
    })
    .await;
    let reply = kagami.get("/slow").await;
    assert_eq!(reply.status, 504);
}

#[tokio::test]
async fn an_origin_503_never_replaces_a_stored_200() {
    let (origin, kagami) = stored_then_expired(
        "/page",
        Route::ok("good").header("cache-control", "max-age=1"),
        |_| {},
    )
    .await;
    origin.route(
        "/page",
        Route::ok("bad")
            .status(503)
            .header("cache-control", "max-age=600"),
    );
    let during = kagami.get("/page").await;
    assert_eq!((during.status, during.text().as_str()), (200, "good"));
    origin.route(
        "/page",
        Route::ok("fixed").header("cache-control", "max-age=60"),
    );
    // The failure back-off (2 s by default) keeps serving stale without asking the origin.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let after = kagami.get("/page").await;
    assert_eq!(after.text(), "fixed");
}

#[tokio::test]
async fn a_failing_origin_is_not_hit_by_every_request() {
    let (origin, kagami) = stored_then_expired(
        "/hot",
        Route::ok("copy").header("cache-control", "max-age=1"),
        |site| site.failure_backoff = Duration::from_secs(30),
    )
    .await;
    origin.fail_with(500);
    for _ in 0..50 {
        let reply = kagami.get("/hot").await;
        assert_eq!(reply.text(), "copy");
    }
    assert_eq!(
        origin.hits("/hot"),
        2,
        "one failed attempt, then stale straight from the cache"
    );
    let last = kagami.get("/hot").await;
    assert!(
        last.cache_status().starts_with("kagami; hit"),
        "{}",
        last.cache_status()
    );
}

#[tokio::test]
async fn origin_recovers_after_a_restart() {
    let (origin, kagami) = stored_then_expired(
        "/r",
        Route::ok("v1").header("cache-control", "max-age=1"),
        |site| site.failure_backoff = Duration::from_millis(200),
    )
    .await;
    origin.kill();
    assert_eq!(kagami.get("/r").await.text(), "v1");
    origin.route("/r", Route::ok("v2").header("cache-control", "max-age=60"));
    origin.restart().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(kagami.get("/r").await.text(), "v2");
}

#[tokio::test]
async fn a_refusal_from_the_origin_keeps_the_good_copy() {
    let (origin, kagami) = stored_then_expired(
        "/page",
        Route::ok("good").header("cache-control", "max-age=1"),
        |site| site.failure_backoff = Duration::from_millis(1),
    )
    .await;
    origin.route("/page", Route::ok("slow down").status(429));
    let refused = kagami.get("/page").await;
    assert_eq!((refused.status, refused.text().as_str()), (200, "good"));
    assert!(
        refused.cache_status().contains("fwd-status=429"),
        "{}",
        refused.cache_status()
    );
    origin.kill();
    let during_outage = kagami.get("/page").await;
    assert_eq!(
        (during_outage.status, during_outage.text().as_str()),
        (200, "good")
    );
}

#[tokio::test]
async fn a_cacheable_refusal_does_not_replace_the_good_copy() {
    let (origin, kagami) = stored_then_expired(
        "/page",
        Route::ok("good").header("cache-control", "max-age=1"),
        |_| {},
    )
    .await;
    // A firewall's 403 that even says it may be cached.
    origin.route(
        "/page",
        Route::ok("denied")
            .status(403)
            .header("cache-control", "max-age=600"),
    );
    let refused = kagami.get("/page").await;
    assert_eq!(refused.status, 403, "the refusal itself is relayed");
    origin.kill();
    let during_outage = kagami.get("/page").await;
    assert_eq!(
        (during_outage.status, during_outage.text().as_str()),
        (200, "good")
    );
}

#[tokio::test]
async fn a_strict_site_gives_504_for_must_revalidate_but_still_serves_other_stale_copies() {
    let origin = Origin::start().await;
    origin.route(
        "/mr",
        Route::ok("must revalidate").header("cache-control", "max-age=1, must-revalidate"),
    );
    origin.route(
        "/plain",
        Route::ok("plain page").header("cache-control", "max-age=1"),
    );
    let kagami = Kagami::start_with(&origin.url(), |site| site.strict = true).await;
    kagami.get("/mr").await;
    kagami.get("/plain").await;
    expire().await;
    origin.kill();

    let strict = kagami.get("/mr").await;
    assert_eq!(strict.status, 504, "{}", strict.cache_status());
    assert_ne!(strict.text(), "must revalidate");
    let plain = kagami.get("/plain").await;
    assert_eq!(plain.status, 200, "{}", plain.cache_status());
    assert_eq!(plain.text(), "plain page");
    assert!(
        plain.cache_status().contains("detail=\"grace\""),
        "{}",
        plain.cache_status()
    );
}

#[tokio::test]
async fn a_list_valued_age_makes_the_copy_stale_on_arrival() {
    let origin = Origin::start().await;
    origin.route(
        "/aged",
        Route::ok("old news")
            .header("cache-control", "max-age=3600")
            .header("age", "7200, 0"),
    );
    let kagami = Kagami::start(&origin.url()).await;
    kagami.get("/aged").await;
    let again = kagami.get("/aged").await;
    assert!(
        !again.cache_status().starts_with("kagami; hit"),
        "an Age past max-age is stale on arrival: {}",
        again.cache_status()
    );
    assert_eq!(origin.hits("/aged"), 2);
}
