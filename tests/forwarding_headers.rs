//! Client forwarding headers (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`, `X-Original-URL`, ...)
//! are not in the cache key, so a visitor's forged value must never reach the origin: it would
//! be rendered into a page (Flask's ProxyFix and `X-Forwarded-Prefix`) and served to everyone.
//! They pass only from trusted proxies or when the operator names them, and then such requests
//! bypass the cache. Kagami's own Forwarded / X-Forwarded-* name the host in the key.
mod common;

use std::net::IpAddr;

use bytes::Bytes;
use common::{spawn_origin, Kagami, Origin, Route};
use http::{HeaderName, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use kagami::config::{Config, SiteConfig};

/// What the scanners and the second review sent: every one must stop at Kagami.
const FORGED: [(&str, &str); 19] = [
    ("forwarded", "for=6.6.6.6;proto=https;host=evil.example"),
    ("x-forwarded-for", "6.6.6.6"),
    ("x-forwarded-host", "evil.example"),
    ("x-forwarded-proto", "https"),
    ("x-forwarded-prefix", "//evil.example"),
    ("x-forwarded-port", "1"),
    ("x-forwarded-scheme", "javascript"),
    ("x-forwarded-ssl", "on"),
    ("x-forwarded-server", "evil.example"),
    ("x-real-ip", "6.6.6.6"),
    ("x-original-url", "/admin"),
    ("x-rewrite-url", "/admin"),
    ("x-http-method-override", "DELETE"),
    ("x-host", "evil.example"),
    ("front-end-https", "on"),
    ("x-original-host", "evil.example"),
    ("x-script-name", "//evil.example"),
    ("x-arr-ssl", "on"),
    ("fastly-client-ip", "6.6.6.6"),
];

fn forged(mut request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    for (name, value) in FORGED {
        request = request.header(name, value);
    }
    request
}

/// Every forged value is gone from what the origin saw; only Kagami's own fields remain.
fn assert_clean(seen: &http::HeaderMap, what: &str) {
    for (name, value) in FORGED {
        for got in seen.get_all(name) {
            assert_ne!(got, value, "{what}: the origin saw the client's {name}");
        }
    }
    for name in [
        "x-forwarded-prefix",
        "x-forwarded-port",
        "x-real-ip",
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-host",
        "front-end-https",
    ] {
        assert!(!seen.contains_key(name), "{what}: the origin saw {name}");
    }
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "{what}");
    assert_eq!(seen["x-forwarded-proto"], "http", "{what}");
    let forwarded: Vec<_> = seen.get_all("forwarded").iter().collect();
    assert_eq!(forwarded.len(), 1, "{what}: {forwarded:?}");
    assert!(
        forwarded[0].to_str().unwrap().starts_with("for=127.0.0.1;"),
        "{what}: {forwarded:?}"
    );
}

#[tokio::test]
async fn forged_forwarding_headers_never_reach_the_origin() {
    let origin = Origin::start().await;
    origin.route(
        "/page",
        Route::ok("page").header("cache-control", "max-age=60"),
    );
    origin.route("/form", Route::ok("posted"));
    origin.route("/page?auth", Route::ok("private"));
    let kagami = Kagami::start(&origin.url()).await;

    let reply = kagami
        .send(forged(kagami.client.get(kagami.url("/page"))))
        .await;
    assert_eq!(reply.status, 200);
    assert_clean(&origin.last_request_headers("/page").unwrap(), "fill");
    let reply = kagami
        .send(forged(kagami.client.post(kagami.url("/form"))).body("a=1"))
        .await;
    assert_eq!(reply.status, 200);
    assert_clean(&origin.last_request_headers("/form").unwrap(), "pass");
    let reply = kagami
        .send(
            forged(kagami.client.get(kagami.url("/page?auth")))
                .header("authorization", "Basic dTpw"),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_clean(
        &origin.last_request_headers("/page?auth").unwrap(),
        "bypass",
    );
}

/// A Flask-like origin: script URLs start with `X-Forwarded-Prefix`, and pages are cacheable.
async fn prefix_rendering_origin() -> std::net::SocketAddr {
    spawn_origin(|request: Request<Incoming>| async move {
        let prefix = request
            .headers()
            .get("x-forwarded-prefix")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let mut response = Response::new(Full::new(Bytes::from(format!(
            "<script src=\"{prefix}/static/app.js\"></script>"
        ))));
        response
            .headers_mut()
            .insert("cache-control", "max-age=300".parse().unwrap());
        response
    })
    .await
}

#[tokio::test]
async fn a_forged_prefix_cannot_plant_a_script_for_later_visitors() {
    let origin = prefix_rendering_origin().await;
    let kagami = Kagami::start(&format!("http://{origin}")).await;

    let attacker = kagami
        .send(
            kagami
                .client
                .get(kagami.url("/"))
                .header("x-forwarded-prefix", "//evil.example"),
        )
        .await;
    assert!(!attacker.text().contains("evil"), "{}", attacker.text());
    let visitor = kagami.get("/").await;
    assert!(
        visitor.cache_status().contains("hit"),
        "{}",
        visitor.cache_status()
    );
    assert_eq!(visitor.text(), "<script src=\"/static/app.js\"></script>");
}

#[tokio::test]
async fn a_named_forwarding_header_passes_but_bypasses_the_cache() {
    let origin = prefix_rendering_origin().await;
    let kagami = Kagami::start_with(&format!("http://{origin}"), |site| {
        site.pass_forwarding_headers = vec![HeaderName::from_static("x-forwarded-prefix")];
    })
    .await;

    let with_prefix = kagami
        .send(
            kagami
                .client
                .get(kagami.url("/"))
                .header("x-forwarded-prefix", "/app"),
        )
        .await;
    assert_eq!(
        with_prefix.text(),
        "<script src=\"/app/static/app.js\"></script>"
    );
    assert!(
        with_prefix.cache_status().contains("fwd=bypass"),
        "{}",
        with_prefix.cache_status()
    );
    let visitor = kagami.get("/").await;
    assert_eq!(visitor.text(), "<script src=\"/static/app.js\"></script>");
    assert!(
        visitor.cache_status().contains("fwd=uri-miss"),
        "the prefixed answer was not stored: {}",
        visitor.cache_status()
    );
}

#[tokio::test]
async fn a_trusted_proxy_forwards_its_headers_and_kagami_appends_its_own() {
    let origin = Origin::start().await;
    origin.route(
        "/page",
        Route::ok("page").header("cache-control", "max-age=60"),
    );
    let site = SiteConfig::new("test", &["127.0.0.1", "localhost"], &origin.url()).unwrap();
    let mut config = Config::new(vec!["127.0.0.1:0".parse().unwrap()], vec![site]);
    config.log.access = false;
    config.limits.trusted_proxies = vec!["127.0.0.2/32".parse().unwrap()];
    let kagami = Kagami::start_config(config).await;
    let proxy = reqwest::Client::builder()
        .no_proxy()
        .local_address("127.0.0.2".parse::<IpAddr>().unwrap())
        .build()
        .unwrap();

    let reply = kagami
        .send(
            proxy
                .get(kagami.url("/page"))
                .header("x-forwarded-for", "198.51.100.7")
                .header("forwarded", "for=198.51.100.7;proto=https")
                .header("x-forwarded-prefix", "/portal")
                .header("x-real-ip", "198.51.100.7"),
        )
        .await;
    assert_eq!(reply.status, 200);
    let seen = origin.last_request_headers("/page").unwrap();
    assert_eq!(seen["x-forwarded-for"], "198.51.100.7, 127.0.0.2");
    assert_eq!(seen["x-forwarded-prefix"], "/portal");
    assert_eq!(seen["x-real-ip"], "198.51.100.7");
    let forwarded: Vec<&str> = seen
        .get_all("forwarded")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(forwarded.len(), 2, "{forwarded:?}");
    assert_eq!(forwarded[0], "for=198.51.100.7;proto=https");
    assert!(forwarded[1].starts_with("for=127.0.0.2;"), "{forwarded:?}");
}

#[tokio::test]
async fn with_origin_host_the_origin_is_told_that_name_not_the_visitors_alias() {
    let origin = Origin::start().await;
    origin.route(
        "/page",
        Route::ok("page").header("cache-control", "max-age=60"),
    );
    let kagami = Kagami::start_with(&origin.url(), |site| {
        site.origin_host = Some("www.origin.test".parse().unwrap());
    })
    .await;

    let reply = kagami.get("/page").await;
    assert_eq!(reply.status, 200);
    let seen = origin.last_request_headers("/page").unwrap();
    assert_eq!(seen["host"], "www.origin.test");
    assert_eq!(seen["x-forwarded-host"], "www.origin.test");
    let forwarded = seen["forwarded"].to_str().unwrap();
    assert!(
        forwarded.ends_with("host=\"www.origin.test\""),
        "{forwarded}"
    );
}
