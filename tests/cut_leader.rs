//! Issue 9, "a failing leader scatters its waiters": when the origin cuts a coalesced fill's body
//! short, its waiters get a stale copy or, after one retry, the shared failure; they never each
//! fetch alone.
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Kagami, Origin, Route};
use tokio::task::JoinSet;

const CLIENTS: usize = 50;

/// `CLIENTS` concurrent GETs of `path`; the statuses of the answers that arrived whole (a
/// leader's own client sees its connection cut) and how many were cut.
async fn crowd(kagami: &Arc<Kagami>, path: &str) -> (Vec<(u16, String)>, usize) {
    let mut set = JoinSet::new();
    for _ in 0..CLIENTS {
        let kagami = kagami.clone();
        let url = kagami.url(path);
        set.spawn(async move {
            let response = tokio::time::timeout(Duration::from_secs(20), async {
                let response = kagami.client.get(url).send().await.ok()?;
                let status = response.status().as_u16();
                let cache_status = response
                    .headers()
                    .get("cache-status")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let body = response.bytes().await.ok()?;
                Some((status, cache_status, body.len()))
            })
            .await
            .expect("answered in time");
            response.map(|(status, cache_status, _)| (status, cache_status))
        });
    }
    let (mut whole, mut cut) = (Vec::new(), 0);
    while let Some(result) = set.join_next().await {
        match result.unwrap() {
            Some(answer) => whole.push(answer),
            None => cut += 1,
        }
    }
    (whole, cut)
}

async fn cutting_origin(size: usize) -> Origin {
    let origin = Origin::start().await;
    origin.route(
        "/cut",
        Route::ok(vec![b'z'; size])
            .header("cache-control", "max-age=60")
            // Long enough for every client to join the first fetch as a waiter.
            .delay(Duration::from_millis(400))
            .truncated(),
    );
    origin
}

async fn without_a_stale_copy(size: usize) {
    let origin = cutting_origin(size).await;
    let kagami = Arc::new(Kagami::start(&origin.url()).await);
    let (whole, cut) = crowd(&kagami, "/cut").await;
    assert!(
        origin.hits("/cut") <= 2,
        "the leader and at most one retry reach the origin, not {}",
        origin.hits("/cut")
    );
    assert!(cut <= 2, "only the fetching clients see a cut body: {cut}");
    for (status, cache_status) in &whole {
        assert_eq!(*status, 502, "{cache_status}");
        assert!(cache_status.contains("collapsed"), "{cache_status}");
    }
}

#[tokio::test]
async fn waiters_of_a_cut_small_fill_share_one_retry_then_the_failure() {
    without_a_stale_copy(64 * 1024).await;
}

#[tokio::test]
async fn waiters_of_a_cut_streamed_fill_share_one_retry_then_the_failure() {
    without_a_stale_copy(1024 * 1024).await;
}

#[tokio::test]
async fn waiters_of_a_cut_fill_get_the_stale_copy() {
    let origin = Origin::start().await;
    origin.route(
        "/cut",
        Route::ok(vec![b'a'; 64 * 1024]).header("cache-control", "max-age=1"),
    );
    let kagami = Arc::new(Kagami::start(&origin.url()).await);
    assert_eq!(kagami.get("/cut").await.status, 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    origin.route(
        "/cut",
        Route::ok(vec![b'z'; 64 * 1024])
            .header("cache-control", "max-age=60")
            .delay(Duration::from_millis(400))
            .truncated(),
    );
    let (whole, cut) = crowd(&kagami, "/cut").await;
    assert_eq!(origin.hits("/cut"), 2, "the warm-up and one revalidation");
    assert_eq!(cut, 1, "the leader's own client");
    for (status, cache_status) in &whole {
        assert_eq!(*status, 200, "{cache_status}");
        assert!(cache_status.contains("stale"), "{cache_status}");
    }
}
