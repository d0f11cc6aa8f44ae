//! Routing by Host: unknown hosts are refused (Kagami is never an open proxy), a request without a
//! Host is a bad request, wildcard sites match subdomains, and TRACE / CONNECT are not allowed.
mod common;

use common::raw::{body_of, exchange, status_of};
use common::{Kagami, Origin, Reply, Route};
use kagami::config::{Config, SiteConfig};

/// GET `path` from Kagami with the given Host.
async fn get_as(kagami: &Kagami, path: &str, host: &str) -> Reply {
    kagami
        .send(kagami.client.get(kagami.url(path)).header("host", host))
        .await
}

#[tokio::test]
async fn unknown_host_is_refused_with_421_and_the_origin_sees_nothing() {
    let origin = Origin::start().await;
    origin.route(
        "/",
        Route::ok("secret").header("cache-control", "max-age=60"),
    );
    let kagami = Kagami::start(&origin.url()).await;

    let reply = get_as(&kagami, "/", "evil.example").await;
    assert_eq!(reply.status, 421);
    let content_type = reply.header("content-type").unwrap_or("");
    assert!(
        content_type.starts_with("text/plain"),
        "content-type {content_type:?}"
    );
    assert!(
        !reply.body.is_empty() && reply.body.len() < 200,
        "short body: {:?}",
        reply.text()
    );
    assert!(!reply.text().contains("secret"));
    assert_eq!(reply.header("via"), Some("1.1 kagami"));

    // Also with a port that no site lists, and a name that merely ends like a configured one.
    for host in ["evil.example:8080", "not-127.0.0.1.example", "xlocalhost"] {
        let reply = get_as(&kagami, "/", host).await;
        assert_eq!(reply.status, 421, "host {host}");
    }
    // A numeric last label can only be an IPv4 address; this is neither a name nor an address.
    assert_eq!(get_as(&kagami, "/", "not-127.0.0.1").await.status, 400);
    assert_eq!(
        origin.total(),
        0,
        "the origin must not be contacted for an unknown host"
    );
}

#[tokio::test]
async fn http10_request_without_host_gets_400() {
    let origin = Origin::start().await;
    origin.route("/", Route::ok("home"));
    let kagami = Kagami::start(&origin.url()).await;

    let raw = exchange(kagami.addr, "GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(status_of(&raw), 400, "{raw}");
    assert!(!body_of(&raw).contains("home"));

    // An empty Host is no better than none.
    let raw = exchange(
        kagami.addr,
        "GET / HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&raw), 400, "{raw}");
    assert_eq!(origin.total(), 0);
}

#[tokio::test]
async fn http11_without_host_or_with_two_hosts_gets_400() {
    // RFC 9112 §3.2: 400 for an HTTP/1.1 request without Host or with more than one Host line.
    let origin = Origin::start().await;
    origin.route("/", Route::ok("home"));
    let kagami = Kagami::start(&origin.url()).await;

    let raw = exchange(kagami.addr, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status_of(&raw), 400, "{raw}");

    let raw = exchange(
        kagami.addr,
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&raw), 400, "two Host lines: {raw}");
    assert_eq!(origin.total(), 0);
}

#[tokio::test]
async fn absolute_form_for_another_host_is_refused_even_with_a_known_host_header() {
    let origin = Origin::start().await;
    origin.route("/", Route::ok("home"));
    let kagami = Kagami::start(&origin.url()).await;

    let raw = exchange(
        kagami.addr,
        "GET http://evil.example/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&raw), 421, "{raw}");
    assert!(!body_of(&raw).contains("home"));
    assert_eq!(
        origin.total(),
        0,
        "an absolute-form request for another host never reaches the origin"
    );

    // Absolute form naming a configured host is served as usual.
    let raw = exchange(
        kagami.addr,
        "GET http://127.0.0.1/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert_eq!(body_of(&raw), "home");
}

#[tokio::test]
async fn wildcard_site_routes_subdomains_only() {
    let city = Origin::start().await;
    city.route("/", Route::ok("city home"));
    let other = Origin::start().await;
    other.route("/", Route::ok("default home"));

    let wildcard = SiteConfig::new("city", &["*.city.example"], &city.url()).unwrap();
    let exact = SiteConfig::new("default", &["127.0.0.1"], &other.url()).unwrap();
    let mut config = Config::new(vec!["127.0.0.1:0".parse().unwrap()], vec![wildcard, exact]);
    config.log.access = false;
    let kagami = Kagami::start_config(config).await;

    let reply = get_as(&kagami, "/", "www.city.example").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "city home");
    let seen = city
        .last_request_headers("/")
        .expect("the city origin got the request");
    assert_eq!(seen.get("host").unwrap(), "www.city.example");

    let reply = get_as(&kagami, "/", "a.b.City.Example:8080").await;
    assert_eq!(reply.status, 200, "deeper subdomains, any case, any port");
    assert_eq!(reply.text(), "city home");

    // The bare domain is not covered by `*.city.example`.
    let reply = get_as(&kagami, "/", "city.example").await;
    assert_eq!(reply.status, 421);
    let reply = get_as(&kagami, "/", "evilcity.example").await;
    assert_eq!(reply.status, 421);

    assert_eq!(city.hits("/"), 2);
    assert_eq!(other.total(), 0);

    let reply = kagami.get("/").await;
    assert_eq!(reply.text(), "default home");
}

#[tokio::test]
async fn trace_and_connect_get_405() {
    let origin = Origin::start().await;
    origin.route("/", Route::ok("home"));
    let kagami = Kagami::start(&origin.url()).await;

    let reply = kagami
        .send(
            kagami
                .client
                .request(reqwest::Method::TRACE, kagami.url("/")),
        )
        .await;
    assert_eq!(reply.status, 405);

    let raw = exchange(
        kagami.addr,
        "TRACE / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&raw), 405, "{raw}");

    let target = format!("127.0.0.1:{}", kagami.addr.port());
    let raw = exchange(
        kagami.addr,
        &format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status_of(&raw), 405, "{raw}");

    assert_eq!(
        origin.total(),
        0,
        "TRACE and CONNECT never reach the origin"
    );
}

#[tokio::test]
async fn an_origin_pointing_back_at_kagami_is_a_detected_loop() {
    // Bind first, so the site's origin can be Kagami's own address.
    let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let site =
        kagami::config::SiteConfig::new("self", &["127.0.0.1"], &format!("http://{addr}")).unwrap();
    let mut config = kagami::config::Config::new(vec![addr], vec![site]);
    config.log.access = false;
    let kagami = Kagami::start_config(config).await;
    let reply = kagami.get("/anything").await;
    assert_eq!(reply.status, 508, "{}", reply.text());
}
