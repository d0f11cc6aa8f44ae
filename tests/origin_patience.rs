//! A slow origin never holds up a visitor who has a copy (issue 9 §1–2): the adaptive limit
//! falls when latency rises, visitors of stored pages get them within `origin_patience`
//! (`detail="origin-slow"`) while the revalidation finishes in the background and updates the
//! store; a fast origin is still revalidated synchronously; a strict site waits.
mod common;

use std::time::{Duration, Instant};

use common::{Kagami, Origin, Route};

const PATIENCE: Duration = Duration::from_millis(150);

/// An origin whose pages (with an ETag: the body) answer after `delay`; "v1" expires after a
/// second, later versions stay fresh for a minute.
fn pages(origin: &Origin, count: usize, body: &str, delay: Duration) {
    let max_age = if body == "v1" { 1 } else { 60 };
    for i in 0..count {
        origin.route(
            &format!("/p{i}"),
            Route::ok(body.to_string())
                .header("cache-control", &format!("max-age={max_age}"))
                .header("etag", &format!("\"{body}\""))
                .delay(delay),
        );
    }
}

async fn patient(origin: &Origin, strict: bool) -> Kagami {
    Kagami::start_with(&origin.url(), |site| {
        site.origin_patience = PATIENCE;
        site.strict = strict;
        // Every request comes from 127.0.0.1: let it stand for many visitors.
        site.protection.concurrency_per_client = site.protection.concurrency;
    })
    .await
}

/// Lets stored copies expire (`Date` has whole seconds, so a 1 s lifetime needs 2 s).
async fn expire() {
    tokio::time::sleep(Duration::from_millis(2100)).await;
}

/// `/p{i}` for every `i`, at once.
async fn get_all(kagami: &Kagami, pages: impl Iterator<Item = usize>) -> Vec<common::Reply> {
    futures_util::future::join_all(
        pages.map(|i| async move { kagami.get(&format!("/p{i}")).await }),
    )
    .await
}

fn limit(kagami: &Kagami) -> u64 {
    kagami.running.proxy.stats.origin_limits.now()[0].1
}

#[tokio::test]
async fn an_origin_slowing_from_10_to_500_ms_lowers_the_limit_and_copies_come_within_patience() {
    let origin = Origin::start().await;
    pages(&origin, 24, "v1", Duration::from_millis(10));
    let kagami = patient(&origin, false).await;
    // Warm every page a few at a time, so the origin's fast latency is its baseline.
    for chunk in (0..24).collect::<Vec<_>>().chunks(6) {
        let replies = get_all(&kagami, chunk.iter().copied()).await;
        assert!(replies.iter().all(|r| r.text() == "v1"));
    }
    assert_eq!(limit(&kagami), 32, "a fast origin keeps the ceiling");
    expire().await;

    pages(&origin, 24, "v2", Duration::from_millis(500));
    let started = Instant::now();
    let replies = get_all(&kagami, 0..24).await;
    let waited = started.elapsed();
    for reply in &replies {
        assert_eq!(reply.text(), "v1");
        assert!(
            reply.cache_status().contains("detail=\"origin-slow\""),
            "{}",
            reply.cache_status()
        );
    }
    assert!(
        waited < PATIENCE + Duration::from_millis(250),
        "visitors waited {waited:?}, patience is {PATIENCE:?}"
    );

    // The background revalidations finish at the origin's pace and teach the limit.
    let deadline = Instant::now() + Duration::from_secs(5);
    while limit(&kagami) >= 32 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(limit(&kagami) < 32, "the limit fell: {}", limit(&kagami));
    assert!(kagami.running.proxy.stats.snapshot().origin_slow >= 24);
}

#[tokio::test]
async fn a_background_refresh_after_origin_slow_updates_the_store() {
    let origin = Origin::start().await;
    pages(&origin, 1, "v1", Duration::ZERO);
    let kagami = patient(&origin, false).await;
    kagami.get("/p0").await;
    expire().await;

    pages(&origin, 1, "v2", Duration::from_millis(400));
    let started = Instant::now();
    let slow = kagami.get("/p0").await;
    assert!(started.elapsed() < Duration::from_millis(350));
    assert_eq!(slow.text(), "v1");
    assert!(
        slow.cache_status().contains("fwd=stale") && slow.cache_status().contains("origin-slow"),
        "{}",
        slow.cache_status()
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    let fresh = kagami.get("/p0").await;
    assert_eq!(fresh.text(), "v2", "{}", fresh.cache_status());
    assert!(
        fresh.cache_status().starts_with("kagami; hit"),
        "{}",
        fresh.cache_status()
    );
    assert_eq!(
        origin.hits("/p0"),
        2,
        "one fetch, finished in the background"
    );
}

#[tokio::test]
async fn a_fast_origin_still_gets_synchronous_revalidations() {
    let origin = Origin::start().await;
    pages(&origin, 8, "v1", Duration::from_millis(10));
    let kagami = patient(&origin, false).await;
    for i in 0..8 {
        kagami.get(&format!("/p{i}")).await;
    }
    expire().await;

    pages(&origin, 8, "v2", Duration::from_millis(10));
    for i in 0..8 {
        let reply = kagami.get(&format!("/p{i}")).await;
        assert_eq!(reply.text(), "v2", "{}", reply.cache_status());
        assert!(
            reply.cache_status().contains("fwd=stale; fwd-status=200"),
            "{}",
            reply.cache_status()
        );
        assert!(!reply.cache_status().contains("origin-slow"));
    }
    assert_eq!(kagami.running.proxy.stats.snapshot().origin_slow, 0);
}

#[tokio::test]
async fn a_strict_site_waits_for_the_origin() {
    let origin = Origin::start().await;
    pages(&origin, 1, "v1", Duration::ZERO);
    let kagami = patient(&origin, true).await;
    kagami.get("/p0").await;
    expire().await;

    pages(&origin, 1, "v2", Duration::from_millis(400));
    let started = Instant::now();
    let reply = kagami.get("/p0").await;
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(reply.text(), "v2");
    assert!(
        !reply.cache_status().contains("origin-slow"),
        "{}",
        reply.cache_status()
    );
}

#[tokio::test]
async fn coalesced_waiters_get_the_copy_within_patience_and_the_origin_one_fetch() {
    let origin = Origin::start().await;
    pages(&origin, 1, "v1", Duration::ZERO);
    let kagami = patient(&origin, false).await;
    kagami.get("/p0").await;
    expire().await;

    pages(&origin, 1, "v2", Duration::from_millis(400));
    let started = Instant::now();
    let replies = futures_util::future::join_all((0..10).map(|_| kagami.get("/p0"))).await;
    assert!(started.elapsed() < PATIENCE + Duration::from_millis(200));
    for reply in &replies {
        assert_eq!(reply.text(), "v1");
        assert!(
            reply.cache_status().contains("origin-slow"),
            "{}",
            reply.cache_status()
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(origin.hits("/p0"), 2, "one fetch for all of them");
    assert_eq!(kagami.get("/p0").await.text(), "v2");
}

#[tokio::test]
async fn under_stress_expired_pages_are_answered_at_once_and_refreshed_in_the_background() {
    let origin = Origin::start().await;
    // Enough answers for the origin's usual latency to be known (`adaptive::WARM_UP`).
    pages(&origin, 12, "v1", Duration::from_millis(10));
    let kagami = patient(&origin, false).await;
    for i in 0..12 {
        kagami.get(&format!("/p{i}")).await;
    }
    expire().await;

    // The first revalidation shows the origin at 1 s, a hundred times its usual latency (and
    // still far over four times it when a loaded machine makes "10 ms" take 20).
    pages(&origin, 2, "v2", Duration::from_millis(1000));
    let first = kagami.get("/p0").await;
    assert!(
        first.cache_status().contains("fwd=stale"),
        "{}",
        first.cache_status()
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    while origin.hits("/p0") < 2 || kagami.get("/p0").await.text() != "v2" {
        assert!(Instant::now() < deadline, "the slow revalidation finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let started = Instant::now();
    let second = kagami.get("/p1").await;
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "no wait at all under stress: {:?}",
        started.elapsed()
    );
    assert_eq!(second.text(), "v1");
    assert!(
        second.cache_status().starts_with("kagami; hit")
            && second.cache_status().contains("detail=\"origin-slow\""),
        "{}",
        second.cache_status()
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(origin.hits("/p1"), 2, "one background refresh");
    assert_eq!(kagami.get("/p1").await.text(), "v2");
}
