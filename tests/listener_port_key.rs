//! The port a request arrived on is implied: `Host: name:8080` on a listener at 8080 is the
//! same page as `Host: name` (one cache entry, one origin Host), while routing still honours
//! `hosts` entries that name a port.

mod common;

use common::{Kagami, Origin, Route};
use kagami::config::{Config, SiteConfig};

#[tokio::test]
async fn a_host_naming_the_listeners_port_shares_the_key_of_a_host_naming_none() {
    let origin = Origin::start().await;
    origin.route(
        "/page",
        Route::ok("page").header("cache-control", "max-age=60"),
    );
    // A fixed port, so that a `hosts` entry can name it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let a = SiteConfig::new("a", &["www.city-a.example"], &origin.url()).unwrap();
    let b_host = format!("www.city-b.example:{port}");
    let b = SiteConfig::new("b", &[&b_host], &origin.url()).unwrap();
    let listen = format!("127.0.0.1:{port}").parse().unwrap();
    let mut config = Config::new(vec![listen], vec![a, b]);
    config.log.access = false;
    let kagami = Kagami::start_config(config).await;
    let get =
        |host: String| kagami.send(kagami.client.get(kagami.url("/page")).header("host", host));

    let first = get(format!("www.city-a.example:{port}")).await;
    assert_eq!(first.status, 200);
    let sent = origin.last_request_headers("/page").unwrap();
    assert_eq!(
        sent["host"], "www.city-a.example",
        "the origin sees one name"
    );
    let second = get("www.city-a.example".to_string()).await;
    assert!(
        second.cache_status().starts_with("kagami; hit"),
        "{}",
        second.cache_status()
    );
    assert_eq!(origin.hits("/page"), 1, "stored once");

    // Another port is another page.
    let other = get("www.city-a.example:9999".to_string()).await;
    assert!(
        other.cache_status().contains("fwd=uri-miss"),
        "{}",
        other.cache_status()
    );
    assert_eq!(origin.hits("/page"), 2);

    // An entry with a port still routes only that port.
    assert_eq!(get(b_host.clone()).await.status, 200);
    assert_eq!(get("www.city-b.example:9999".to_string()).await.status, 421);
}
