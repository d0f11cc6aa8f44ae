//! Unsafe methods that succeed invalidate the stored target URI and same-origin Location /
//! Content-Location (RFC 9111 §4.4); failed ones do not. Request bodies reach the origin intact.
mod common;

use std::time::Duration;

use bytes::Bytes;
use common::recording::RecordingOrigin;
use common::{Kagami, Origin, Reply, Route};
use futures_util::StreamExt;

/// GET requests the origin received for `path` (the origin counts every method in `hits`).
fn gets(origin: &Origin, path: &str) -> usize {
    origin
        .log()
        .iter()
        .filter(|(m, p)| m == "GET" && p == path)
        .count()
}

async fn cached(kagami: &Kagami, origin: &Origin, path: &str) {
    let first = kagami.get(path).await;
    assert_eq!(first.status, 200, "{path}");
    let second = kagami.get(path).await;
    assert!(
        second.cache_status().contains("hit"),
        "{path} should be cached: {}",
        second.cache_status()
    );
    assert_eq!(gets(origin, path), 1, "{path}");
}

/// An origin serving each `(path, body)` of `pages` for 60 s, and Kagami in front of it with
/// every page stored (checked by [`cached`]).
async fn with_cached(pages: &[(&str, &str)]) -> (Origin, Kagami) {
    let origin = Origin::start().await;
    for (path, body) in pages {
        origin.route(
            path,
            Route::ok(body.to_string()).header("cache-control", "max-age=60"),
        );
    }
    let kagami = Kagami::start(&origin.url()).await;
    for (path, _) in pages {
        cached(&kagami, &origin, path).await;
    }
    (origin, kagami)
}

async fn post_to(kagami: &Kagami, path: &str, body: &'static str) -> Reply {
    kagami
        .send(kagami.client.post(kagami.url(path)).body(body))
        .await
}

#[tokio::test]
async fn successful_post_invalidates_the_target() {
    let (origin, kagami) = with_cached(&[("/page", "page")]).await;

    let post = post_to(&kagami, "/page", "comment=1").await;
    assert_eq!(post.status, 200);
    assert!(
        post.cache_status().contains("fwd="),
        "{}",
        post.cache_status()
    );

    let after = kagami.get("/page").await;
    assert_eq!(after.status, 200);
    assert!(
        !after.cache_status().contains("hit"),
        "{}",
        after.cache_status()
    );
    assert_eq!(
        gets(&origin, "/page"),
        2,
        "the GET after the POST goes to the origin"
    );
}

#[tokio::test]
async fn put_invalidates_the_location_it_answers_with() {
    let (origin, kagami) = with_cached(&[("/other", "other"), ("/elsewhere", "elsewhere")]).await;
    origin.route(
        "/form",
        Route::ok("saved").status(201).header("location", "/other"),
    );

    let put = kagami
        .send(kagami.client.put(kagami.url("/form")).body("x"))
        .await;
    assert_eq!(put.status, 201);
    assert_eq!(put.header("location"), Some("/other"));

    kagami.get("/other").await;
    assert_eq!(
        gets(&origin, "/other"),
        2,
        "Location: /other was invalidated"
    );
    kagami.get("/elsewhere").await;
    assert_eq!(
        gets(&origin, "/elsewhere"),
        1,
        "unrelated pages stay cached"
    );
}

#[tokio::test]
async fn location_on_another_host_is_not_invalidated() {
    let (origin, kagami) = with_cached(&[("/other", "other")]).await;
    origin.route(
        "/form",
        Route::ok("saved").header("location", "http://elsewhere.example/other"),
    );

    let post = post_to(&kagami, "/form", "x").await;
    assert_eq!(post.status, 200);
    kagami.get("/other").await;
    assert_eq!(
        gets(&origin, "/other"),
        1,
        "a Location on another host must not invalidate ours"
    );
}

#[tokio::test]
async fn absolute_location_on_the_same_host_is_invalidated() {
    let (origin, kagami) = with_cached(&[("/other", "other")]).await;
    let location = format!("http://127.0.0.1:{}/other", kagami.addr.port());
    origin.route(
        "/form",
        Route::ok("saved").header("content-location", &location),
    );

    let post = post_to(&kagami, "/form", "x").await;
    assert_eq!(post.status, 200);
    kagami.get("/other").await;
    assert_eq!(
        gets(&origin, "/other"),
        2,
        "Content-Location {location} was invalidated"
    );
}

#[tokio::test]
async fn post_answered_500_does_not_invalidate() {
    let (origin, kagami) = with_cached(&[("/page", "page")]).await;

    origin.fail_with(500);
    let post = post_to(&kagami, "/page", "comment=1").await;
    assert_eq!(post.status, 500);
    origin.recover();

    let after = kagami.get("/page").await;
    assert_eq!(after.status, 200);
    assert_eq!(after.text(), "page");
    assert!(
        after.cache_status().contains("hit"),
        "{}",
        after.cache_status()
    );
    assert_eq!(
        gets(&origin, "/page"),
        1,
        "a failed POST leaves the stored copy alone"
    );
}

#[tokio::test]
async fn delete_invalidates() {
    let (origin, kagami) = with_cached(&[("/page", "page")]).await;

    let delete = kagami.send(kagami.client.delete(kagami.url("/page"))).await;
    assert_eq!(delete.status, 200);
    kagami.get("/page").await;
    assert_eq!(gets(&origin, "/page"), 2);
}

#[tokio::test]
async fn invalidation_covers_the_query_string_exactly() {
    let (origin, kagami) = with_cached(&[("/list?page=2", "p2"), ("/list?page=3", "p3")]).await;

    let post = post_to(&kagami, "/list?page=2", "x").await;
    assert_eq!(post.status, 200);
    kagami.get("/list?page=2").await;
    kagami.get("/list?page=3").await;
    assert_eq!(gets(&origin, "/list?page=2"), 2);
    assert_eq!(gets(&origin, "/list?page=3"), 1);
}

/// Bytes that are not text and not one repeated pattern.
fn payload(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn request_bodies_reach_the_origin_intact() {
    let origin = RecordingOrigin::start(|got| format!("got {} bytes", got.body.len())).await;
    let kagami = Kagami::start(&origin.url()).await;

    // With Content-Length, larger than any single buffer.
    let sized = payload(300 * 1024 + 7);
    let reply = kagami
        .send(
            kagami
                .client
                .post(kagami.url("/upload"))
                .body(sized.clone()),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), format!("got {} bytes", sized.len()));

    // Chunked, in several pieces with pauses.
    let chunked = payload(64 * 1024);
    let pieces: Vec<Result<Bytes, std::io::Error>> = chunked
        .chunks(10_000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let stream = futures_util::stream::iter(pieces).then(|piece| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        piece
    });
    let reply = kagami
        .send(
            kagami
                .client
                .put(kagami.url("/stream"))
                .body(reqwest::Body::wrap_stream(stream)),
        )
        .await;
    assert_eq!(reply.status, 200);

    // Empty.
    let reply = kagami.send(kagami.client.post(kagami.url("/empty"))).await;
    assert_eq!(reply.status, 200);

    let log = origin.received();
    assert_eq!(log.len(), 3, "{log:?}");
    assert_eq!(
        (log[0].method.as_str(), log[0].path.as_str()),
        ("POST", "/upload")
    );
    assert_eq!(
        log[0].content_length.as_deref(),
        Some(sized.len().to_string().as_str())
    );
    assert!(
        log[0].body == sized,
        "POST body differs ({} bytes received)",
        log[0].body.len()
    );
    assert_eq!(
        (log[1].method.as_str(), log[1].path.as_str()),
        ("PUT", "/stream")
    );
    assert!(
        log[1].body == chunked,
        "chunked PUT body differs ({} bytes received)",
        log[1].body.len()
    );
    assert_eq!(log[2].method, "POST");
    assert!(log[2].body.is_empty());
}

#[tokio::test]
async fn a_location_with_the_default_port_invalidates_too() {
    let origin = Origin::start().await;
    origin.route(
        "/d",
        Route::ok("document").header("cache-control", "max-age=60"),
    );
    origin.route(
        "/edit",
        Route::ok("saved")
            .status(201)
            .header("location", "http://LOCALHOST:80/d"),
    );
    let kagami = Kagami::start(&origin.url()).await;
    let get_d = || {
        kagami.send(
            kagami
                .client
                .get(kagami.url("/d"))
                .header("host", "localhost"),
        )
    };
    get_d().await;
    let hit = get_d().await;
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    let put = kagami
        .send(
            kagami
                .client
                .put(kagami.url("/edit"))
                .header("host", "localhost")
                .body("x"),
        )
        .await;
    assert_eq!(put.status, 201);
    let after = get_d().await;
    // Marked stale, not deleted: revalidated with the origin, not served from memory.
    assert!(
        after.cache_status().contains("fwd=stale"),
        "{}",
        after.cache_status()
    );
}

#[tokio::test]
async fn a_post_marks_the_copy_stale_but_grace_still_has_it_in_an_outage() {
    let (origin, kagami) = with_cached(&[("/page", "last good")]).await;
    let post = post_to(&kagami, "/page", "comment=spam").await;
    assert_eq!(post.status, 200);

    origin.kill();
    let outage = kagami.get("/page").await;
    assert_eq!(outage.status, 200, "{}", outage.cache_status());
    assert_eq!(outage.text(), "last good");
    assert!(
        outage.cache_status().contains("grace"),
        "{}",
        outage.cache_status()
    );
}
