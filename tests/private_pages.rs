//! A page fetched for one visitor reaches another only when the origin said it may: a response
//! to a request with `Cookie` needs explicit shareability, and a copy that was never fresh is
//! never handed to a collapsed waiter, a client over its budget, or served in grace. The same
//! holds for origin errors marked `private` / `no-store`.
mod common;

use std::time::Duration;

use bytes::Bytes;
use common::raw::{body_of, exchange, status_of};
use common::{spawn_origin, Kagami, Origin, Reply, Route};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use kagami::limit::Rate;

/// What the origin answers: a personal page naming the cookie it was sent, like a PHP profile
/// page without Cache-Control, after `delay`.
async fn profile(
    request: Request<Incoming>,
    status: u16,
    cache_control: Option<&str>,
    delay: Duration,
) -> Response<Full<Bytes>> {
    tokio::time::sleep(delay).await;
    let who = request
        .headers()
        .get("cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("nobody")
        .to_string();
    let mut response = Response::new(Full::new(Bytes::from(format!("profile of {who}"))));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    if let Some(cc) = cache_control {
        response
            .headers_mut()
            .insert("cache-control", cc.parse().unwrap());
    }
    response
}

async fn get_as(kagami: &Kagami, path: &str, cookie: Option<&str>) -> Reply {
    let mut request = kagami.client.get(kagami.url(path));
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    kagami.send(request).await
}

#[tokio::test]
async fn a_client_over_its_miss_budget_never_gets_another_visitors_page() {
    let origin = spawn_origin(|r| profile(r, 200, None, Duration::ZERO)).await;
    let kagami = Kagami::start_with(&format!("http://{origin}"), |site| {
        site.limit_misses = Some(Rate {
            per_second: 0.01,
            burst: 1,
        });
    })
    .await;

    let alice = get_as(&kagami, "/profile", Some("session=alice")).await;
    assert_eq!(alice.text(), "profile of session=alice");

    // Another visitor on the same address, over the budget the first one spent.
    let raw = exchange(
        kagami.addr,
        format!(
            "GET /profile HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            kagami.addr
        ),
    )
    .await;
    assert!(!body_of(&raw).contains("alice"), "{raw}");
    assert_eq!(status_of(&raw), 429, "{raw}");
}

#[tokio::test]
async fn a_never_fresh_no_cache_page_is_not_served_while_the_origin_fails() {
    let origin = Origin::start().await;
    origin.route(
        "/account",
        Route::ok("account page").header("cache-control", "no-cache"),
    );
    let kagami = Kagami::start(&origin.url()).await; // default grace: 7 days
    assert_eq!(kagami.get("/account").await.text(), "account page");

    origin.fail_with(503);
    // The failure itself, then the back-off that follows it.
    for attempt in ["failure", "back-off"] {
        let reply = kagami.get("/account").await;
        assert_ne!(
            reply.text(),
            "account page",
            "{attempt}: {}",
            reply.cache_status()
        );
        assert_eq!(reply.status, 503, "{attempt}: {}", reply.cache_status());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collapsed_waiter_never_gets_the_leaders_personal_page() {
    let origin = spawn_origin(|r| profile(r, 200, None, Duration::from_millis(300))).await;
    let kagami = Kagami::start(&format!("http://{origin}")).await;

    let (alice, other) = tokio::join!(get_as(&kagami, "/profile", Some("session=alice")), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        get_as(&kagami, "/profile", None).await
    });
    assert_eq!(alice.text(), "profile of session=alice");
    assert_eq!(
        other.text(),
        "profile of nobody",
        "{}",
        other.cache_status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_no_store_error_is_not_shared_with_waiters() {
    let origin = spawn_origin(|r| {
        profile(
            r,
            503,
            Some("private, no-store"),
            Duration::from_millis(300),
        )
    })
    .await;
    let kagami = Kagami::start(&format!("http://{origin}")).await;

    let (alice, other) = tokio::join!(get_as(&kagami, "/inbox", Some("session=alice")), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        get_as(&kagami, "/inbox", None).await
    });
    // The visitor whose request got it still sees the origin's own answer.
    assert_eq!(alice.status, 503);
    assert_eq!(alice.text(), "profile of session=alice");
    assert_eq!(other.status, 503);
    assert!(
        !other.text().contains("alice"),
        "{}: {}",
        other.cache_status(),
        other.text()
    );
}

/// Rails' `fresh_when(last_modified:)`: a personal page, the same Last-Modified for everyone,
/// and 304 to any If-Modified-Since that matches.
async fn personal_with_validators(request: Request<Incoming>) -> Response<Full<Bytes>> {
    const MODIFIED: &str = "Mon, 23 Nov 2026 09:00:00 GMT";
    let conditional = request
        .headers()
        .get("if-modified-since")
        .is_some_and(|v| v == MODIFIED);
    let who = request
        .headers()
        .get("cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("nobody")
        .to_string();
    let mut response = if conditional {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        Response::new(Full::new(Bytes::from(format!("profile of {who}"))))
    };
    response
        .headers_mut()
        .insert("last-modified", MODIFIED.parse().unwrap());
    response
}

#[tokio::test]
async fn a_personal_copy_is_never_revalidated_for_another_visitor() {
    let origin = spawn_origin(personal_with_validators).await;
    let kagami = Kagami::start(&format!("http://{origin}")).await;
    let alice = get_as(&kagami, "/profile", Some("session=alice")).await;
    assert_eq!(alice.text(), "profile of session=alice");
    let bob = get_as(&kagami, "/profile", Some("session=bob")).await;
    assert_eq!(
        bob.text(),
        "profile of session=bob",
        "{}",
        bob.cache_status()
    );
    let anonymous = get_as(&kagami, "/profile", None).await;
    assert_eq!(
        anonymous.text(),
        "profile of nobody",
        "{}",
        anonymous.cache_status()
    );
    let later = get_as(&kagami, "/profile", None).await;
    assert!(!later.text().contains("alice") && !later.text().contains("bob"));
}

#[tokio::test]
async fn a_dummy_cookie_cannot_take_the_outage_copy_out_of_grace() {
    let origin = Origin::start().await;
    origin.route("/etag", Route::ok("public page").header("etag", "\"v1\""));
    let kagami = Kagami::start_with(&origin.url(), |site| {
        site.default_ttl = Duration::from_secs(1);
    })
    .await;
    assert_eq!(get_as(&kagami, "/etag", None).await.text(), "public page");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let revalidated = get_as(&kagami, "/etag", Some("x=1")).await;
    assert!(
        revalidated.cache_status().contains("fwd-status=304"),
        "{}",
        revalidated.cache_status()
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    origin.kill();
    let outage = get_as(&kagami, "/etag", None).await;
    assert_eq!(outage.status, 200, "{}", outage.cache_status());
    assert_eq!(outage.text(), "public page");
}
