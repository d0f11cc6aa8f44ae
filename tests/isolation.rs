//! Nothing meant for one hostname or one visitor is served to another: the Host is part of the
//! cache key, and cookies on revalidations or shared errors are never shared.
mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{spawn_origin, Kagami, Origin, Route};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

#[tokio::test]
async fn each_hostname_of_a_site_has_its_own_cache_entries() {
    // An origin with virtual hosts: the page depends on Host.
    let addr = spawn_origin(|request: Request<Incoming>| async move {
        let host = request
            .headers()
            .get("host")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        let mut response = Response::new(Full::new(Bytes::from(format!("page of {host}"))));
        response
            .headers_mut()
            .insert("cache-control", "max-age=60".parse().unwrap());
        response
    })
    .await;
    let mut site = kagami::config::SiteConfig::new(
        "city",
        &["*.city.example", "127.0.0.1"],
        &format!("http://{addr}"),
    )
    .unwrap();
    site.limit_hits = None;
    let mut config = kagami::config::Config::new(vec!["127.0.0.1:0".parse().unwrap()], vec![site]);
    config.log.access = false;
    let kagami = Kagami::start_config(config).await;
    let as_host =
        |host: &'static str| kagami.send(kagami.client.get(kagami.url("/")).header("host", host));

    assert_eq!(
        as_host("bousai.city.example").await.text(),
        "page of bousai.city.example"
    );
    let www = as_host("www.city.example").await;
    assert_eq!(www.text(), "page of www.city.example");
    assert!(
        www.cache_status().contains("fwd=uri-miss"),
        "{}",
        www.cache_status()
    );
    let again = as_host("WWW.City.Example").await;
    assert_eq!(again.text(), "page of www.city.example");
    assert!(
        again.cache_status().contains("hit"),
        "{}",
        again.cache_status()
    );
}

#[tokio::test]
async fn a_cookie_on_a_304_goes_to_that_visitor_only() {
    let origin = Origin::start().await;
    origin.route(
        "/p",
        Route::ok("page")
            .header("cache-control", "max-age=1")
            .header("etag", "\"v1\""),
    );
    let kagami = Kagami::start(&origin.url()).await;
    kagami.get("/p").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    origin.route(
        "/p",
        Route::ok("page")
            .header("cache-control", "max-age=60")
            .header("etag", "\"v1\"")
            .header("set-cookie", "sid=alice")
            .header("keep-alive", "timeout=5"),
    );
    let alice = kagami.get("/p").await;
    assert!(
        alice.cache_status().contains("fwd-status=304"),
        "{}",
        alice.cache_status()
    );
    assert_eq!(alice.header("set-cookie"), Some("sid=alice"));
    let bob = kagami.get("/p").await;
    assert!(bob.cache_status().contains("hit"), "{}", bob.cache_status());
    assert_eq!(
        bob.header("set-cookie"),
        None,
        "alice's cookie must not reach bob"
    );
    assert_eq!(
        bob.header("keep-alive"),
        None,
        "hop-by-hop fields of a 304 are not stored"
    );
    assert_eq!(bob.text(), "page");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_error_carries_no_cookie() {
    let origin = Origin::start().await;
    origin.route(
        "/err",
        Route::ok("broken")
            .status(500)
            .header("set-cookie", "sid=first")
            .delay(Duration::from_millis(300)),
    );
    let kagami = Kagami::start(&origin.url()).await;
    let replies = futures_util::future::join_all((0..5).map(|_| kagami.get("/err"))).await;
    assert_eq!(origin.hits("/err"), 1);
    for reply in replies
        .iter()
        .filter(|r| r.cache_status().contains("collapsed"))
    {
        assert_eq!(reply.status, 500);
        assert_eq!(reply.header("set-cookie"), None);
    }
}

#[tokio::test]
async fn cdn_cache_control_is_used_but_not_passed_on() {
    let origin = Origin::start().await;
    origin.route(
        "/cdn",
        Route::ok("x")
            .header("cache-control", "no-store")
            .header("cdn-cache-control", "max-age=60"),
    );
    let kagami = Kagami::start(&origin.url()).await;
    let first = kagami.get("/cdn").await;
    assert_eq!(first.header("cdn-cache-control"), None);
    let second = kagami.get("/cdn").await;
    assert!(
        second.cache_status().contains("hit"),
        "{}",
        second.cache_status()
    );
    assert_eq!(second.header("cdn-cache-control"), None);
    assert_eq!(second.header("cache-control"), Some("no-store"));
}
