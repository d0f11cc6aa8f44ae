//! Errors and redirects without explicit freshness live only `negative_ttl`, are never served
//! stale, and never replace a stored 2xx (a provoked 404 must not erase the outage copy).
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{spawn_origin, Kagami, Origin, Route};
use http::{Response, StatusCode};
use http_body_util::Full;

#[tokio::test]
async fn a_provoked_404_on_revalidation_leaves_the_good_copy_for_the_outage() {
    let down = Arc::new(AtomicBool::new(false));
    let state = down.clone();
    // nginx's usual `return 404` for scanner User-Agents, in front of a normal page.
    let origin = spawn_origin(move |request: http::Request<hyper::body::Incoming>| {
        let down = state.load(Ordering::SeqCst);
        let scanner = request
            .headers()
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ua| ua.contains("sqlmap"));
        async move {
            let (status, body) = match (down, scanner) {
                (true, _) => (503, "down"),
                (false, true) => (404, "not found"),
                (false, false) => (200, "evacuation order"),
            };
            let mut response = Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            if status == 200 {
                response
                    .headers_mut()
                    .insert("cache-control", "max-age=1".parse().unwrap());
            }
            response
        }
    })
    .await;
    let kagami = Kagami::start(&format!("http://{origin}")).await;
    assert_eq!(kagami.get("/order").await.text(), "evacuation order");
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let provoked = kagami
        .send(
            kagami
                .client
                .get(kagami.url("/order"))
                .header("user-agent", "sqlmap/1.7"),
        )
        .await;
    assert_eq!(provoked.status, 404);
    assert!(
        !provoked.cache_status().contains("stored"),
        "{}",
        provoked.cache_status()
    );

    down.store(true, Ordering::SeqCst);
    let outage = kagami.get("/order").await;
    assert_eq!(outage.status, 200, "{}", outage.cache_status());
    assert_eq!(outage.text(), "evacuation order");
}

#[tokio::test]
async fn a_404_before_publication_lives_only_negative_ttl_and_never_stale() {
    let origin = Origin::start().await;
    origin.route("/order", Route::ok("not yet").status(404));
    let kagami = Kagami::start_with(&origin.url(), |site| {
        site.default_ttl = Duration::from_secs(300);
        site.negative_ttl = Duration::from_secs(1);
        site.stale_while_revalidate = Duration::from_secs(60);
    })
    .await;
    assert_eq!(kagami.get("/order").await.status, 404);

    // The city publishes its evacuation order.
    origin.route(
        "/order",
        Route::ok("evacuate").header("cache-control", "max-age=60"),
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let published = kagami.get("/order").await;
    assert_eq!(published.status, 200, "{}", published.cache_status());
    assert_eq!(published.text(), "evacuate");
}

#[tokio::test]
async fn a_stored_404_is_not_served_in_grace() {
    let origin = Origin::start().await;
    origin.route("/gone", Route::ok("not found").status(404));
    let kagami = Kagami::start_with(&origin.url(), |site| {
        site.negative_ttl = Duration::from_secs(1);
    })
    .await; // default grace: 7 days
    assert_eq!(kagami.get("/gone").await.status, 404);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    origin.fail_with(503);
    let reply = kagami.get("/gone").await;
    assert_eq!(reply.status, 503, "{}", reply.cache_status());
}
