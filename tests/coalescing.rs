//! Request coalescing: concurrent requests for one cold key cause exactly one origin request.
mod common;

use std::time::Duration;

use common::{Kagami, Origin, Route};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_cold_requests_make_one_origin_request() {
    let origin = Origin::start().await;
    origin.route(
        "/surge",
        Route::ok(vec![b'x'; 20_000])
            .header("cache-control", "max-age=60")
            .delay(Duration::from_millis(300)),
    );
    let kagami = Kagami::start(&origin.url()).await;

    let replies = futures_util::future::join_all((0..200).map(|_| kagami.get("/surge"))).await;
    assert_eq!(origin.hits("/surge"), 1);
    let collapsed = replies
        .iter()
        .filter(|r| r.cache_status().contains("collapsed"))
        .count();
    for reply in &replies {
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body.len(), 20_000);
    }
    assert!(
        collapsed >= 150,
        "most requests waited on the leader: {collapsed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_share_the_origins_error_instead_of_stampeding() {
    let origin = Origin::start().await;
    origin.route(
        "/err",
        Route::ok("down")
            .status(503)
            .delay(Duration::from_millis(300)),
    );
    let kagami = Kagami::start(&origin.url()).await;
    let replies = futures_util::future::join_all((0..50).map(|_| kagami.get("/err"))).await;
    assert!(replies.iter().all(|r| r.status == 503));
    assert_eq!(origin.hits("/err"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncacheable_answers_release_waiters_to_fetch_for_themselves() {
    let origin = Origin::start().await;
    origin.route(
        "/private",
        Route::ok("mine")
            .header("cache-control", "private")
            .delay(Duration::from_millis(200)),
    );
    let kagami = Kagami::start(&origin.url()).await;
    let replies = futures_util::future::join_all((0..10).map(|_| kagami.get("/private"))).await;
    assert!(replies
        .iter()
        .all(|r| r.status == 200 && r.text() == "mine"));
    assert_eq!(
        origin.hits("/private"),
        10,
        "a private answer is never shared"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_leader_body_lets_a_waiter_try_again() {
    let origin = Origin::start().await;
    origin.route(
        "/flaky",
        Route::ok(vec![b'y'; 10_000])
            .header("cache-control", "max-age=60")
            .delay(Duration::from_millis(200))
            .truncated(),
    );
    let kagami = Kagami::start(&origin.url()).await;
    let first = kagami.client.get(kagami.url("/flaky")).send();
    let second = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        origin.route(
            "/flaky",
            Route::ok(vec![b'y'; 10_000]).header("cache-control", "max-age=60"),
        );
        kagami.get("/flaky").await
    };
    let (first, second) = tokio::join!(first, second);
    // The leader's client sees an aborted body, never a short 200 that looks complete.
    if let Ok(response) = first {
        assert!(response.bytes().await.is_err());
    }
    assert_eq!(second.status, 200);
    assert_eq!(second.body.len(), 10_000);
    assert_eq!(origin.hits("/flaky"), 2);
}
