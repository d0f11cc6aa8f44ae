//! Per-client rate limits: a separate budget for cache hits and for requests that would reach
//! the origin, keyed on the client address (or, behind a trusted proxy, on the right-most
//! untrusted X-Forwarded-For entry), answered with a bilingual 429 page.
mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{Kagami, Origin, Reply, Route};
use kagami::config::{Config, SiteConfig};
use kagami::limit::Rate;

/// A client whose connections come from `ip` (any 127.0.0.0/8 address is loopback on Linux).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(ip.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn get_from(kagami: &Kagami, client: &reqwest::Client, path: &str) -> Reply {
    kagami.send(client.get(kagami.url(path))).await
}

async fn get_xff(kagami: &Kagami, client: &reqwest::Client, path: &str, xff: &str) -> Reply {
    kagami
        .send(client.get(kagami.url(path)).header("x-forwarded-for", xff))
        .await
}

/// Requests `path` until the answer is 429 (at most `limit` times); returns how many were
/// answered 200 before, and the 429.
async fn exhaust(
    kagami: &Kagami,
    client: &reqwest::Client,
    path: &str,
    xff: Option<&str>,
    limit: usize,
) -> (usize, Reply) {
    let mut allowed = 0;
    for _ in 0..limit {
        let reply = match xff {
            Some(xff) => get_xff(kagami, client, path, xff).await,
            None => get_from(kagami, client, path).await,
        };
        match reply.status {
            200 => allowed += 1,
            429 => return (allowed, reply),
            other => panic!("unexpected status {other}: {}", reply.text()),
        }
    }
    panic!("no 429 after {limit} requests to {path}");
}

fn assert_rate_limited(reply: &Reply) {
    assert_eq!(reply.status, 429);
    let retry: u64 = reply
        .header("retry-after")
        .expect("a Retry-After header")
        .parse()
        .expect("Retry-After is a whole number of seconds");
    assert!(retry >= 1, "Retry-After {retry}");
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert!(
        reply.cache_status().contains("detail=\"rate-limited\""),
        "{}",
        reply.cache_status()
    );
}

fn cacheable(body: &str) -> Route {
    Route::ok(body.to_string()).header("cache-control", "max-age=60")
}

/// A rate that does not refill noticeably during a test.
fn budget(burst: u32) -> Option<Rate> {
    Some(Rate {
        per_second: 0.1,
        burst,
    })
}

fn generous() -> Option<Rate> {
    Some(Rate {
        per_second: 1000.0,
        burst: 1000,
    })
}

#[tokio::test]
async fn one_address_over_its_hits_budget_gets_429_while_another_is_served() {
    let origin = Origin::start().await;
    origin.route("/page", cacheable("page"));
    let kagami = Kagami::start_with(&origin.url(), |site| {
        site.limit_hits = Some(Rate {
            per_second: 1.0,
            burst: 5,
        });
        site.limit_misses = generous();
    })
    .await;
    let a = client_from("127.0.0.2");
    let b = client_from("127.0.0.3");

    // The first request is a miss: it spends the miss budget, not the hits budget.
    let first = get_from(&kagami, &a, "/page").await;
    assert_eq!(first.status, 200);
    assert!(
        first.cache_status().contains("fwd=uri-miss"),
        "{}",
        first.cache_status()
    );

    let (allowed, refused) = exhaust(&kagami, &a, "/page", None, 20).await;
    assert_eq!(allowed, 5, "the burst of 5 hits is allowed, then 429");
    assert_rate_limited(&refused);
    assert!(
        refused
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/html")),
        "{:?}",
        refused.header("content-type")
    );
    let page = refused.text();
    assert!(page.contains("アクセスが集中しています"), "{page}");
    assert!(page.contains("Too many requests"), "{page}");

    // Still refused right after, and another address is untouched.
    assert_eq!(get_from(&kagami, &a, "/page").await.status, 429);
    let other = get_from(&kagami, &b, "/page").await;
    assert_eq!(other.status, 200);
    assert_eq!(other.text(), "page");
    assert!(
        other.cache_status().starts_with("kagami; hit"),
        "{}",
        other.cache_status()
    );
    assert_eq!(origin.hits("/page"), 1);
    assert!(kagami.running.proxy.stats.snapshot().rate_limited >= 2);
}

#[tokio::test]
async fn the_miss_budget_is_separate_from_the_hits_budget() {
    let origin = Origin::start().await;
    for path in ["/a", "/b", "/c"] {
        origin.route(path, cacheable(path));
    }
    let kagami = Kagami::start_with(&origin.url(), |site| {
        site.limit_hits = generous();
        site.limit_misses = budget(2);
    })
    .await;
    let a = client_from("127.0.0.2");

    assert_eq!(get_from(&kagami, &a, "/a").await.status, 200);
    assert_eq!(get_from(&kagami, &a, "/b").await.status, 200);
    // The miss budget is spent: a new URL is refused...
    let refused = get_from(&kagami, &a, "/c").await;
    assert_rate_limited(&refused);
    assert_eq!(
        origin.hits("/c"),
        0,
        "a refused miss never reaches the origin"
    );
    // ...but cached pages are still served, many times over.
    for _ in 0..20 {
        for path in ["/a", "/b"] {
            let reply = get_from(&kagami, &a, path).await;
            assert_eq!(reply.status, 200, "{}", reply.cache_status());
            assert_eq!(reply.text(), path);
            assert!(reply.cache_status().starts_with("kagami; hit"));
        }
    }
    // Another client's miss budget is its own.
    let b = client_from("127.0.0.3");
    assert_eq!(get_from(&kagami, &b, "/c").await.status, 200);
    assert_eq!(origin.hits("/a") + origin.hits("/b") + origin.hits("/c"), 3);
}

#[tokio::test]
async fn an_over_budget_miss_with_a_stale_copy_is_served_stale_instead_of_429() {
    let origin = Origin::start().await;
    origin.route(
        "/s",
        Route::ok("old copy").header("cache-control", "max-age=1"),
    );
    origin.route("/x", cacheable("x"));
    origin.route("/y", cacheable("y"));
    let kagami = Kagami::start_with(&origin.url(), |site| {
        site.limit_hits = generous();
        site.limit_misses = budget(3);
    })
    .await;
    let a = client_from("127.0.0.2");

    assert_eq!(get_from(&kagami, &a, "/s").await.text(), "old copy");
    tokio::time::sleep(Duration::from_millis(2100)).await; // /s is now stale
    origin.route(
        "/s",
        Route::ok("new copy").header("cache-control", "max-age=60"),
    );
    assert_eq!(get_from(&kagami, &a, "/x").await.status, 200);
    assert_eq!(get_from(&kagami, &a, "/y").await.status, 200);
    assert_rate_limited(&get_from(&kagami, &a, "/z").await);

    let reply = get_from(&kagami, &a, "/s").await;
    assert_eq!(reply.status, 200, "{}", reply.cache_status());
    assert_eq!(reply.text(), "old copy");
    assert!(
        reply.cache_status().contains("fwd=stale"),
        "{}",
        reply.cache_status()
    );
    assert_eq!(origin.hits("/s"), 1, "the over-budget refresh is not sent");

    // A client with budget left refreshes it.
    let b = client_from("127.0.0.3");
    assert_eq!(get_from(&kagami, &b, "/s").await.text(), "new copy");
}

fn trusted_config(origin: &Origin) -> Config {
    let mut site = SiteConfig::new("test", &["127.0.0.1", "localhost"], &origin.url()).unwrap();
    site.limit_hits = budget(3);
    site.limit_misses = generous();
    let mut config = Config::new(vec!["127.0.0.1:0".parse().unwrap()], vec![site]);
    config.log.access = false;
    config.limits.trusted_proxies = vec!["127.0.0.2/32".parse().unwrap()];
    config
}

#[tokio::test]
async fn behind_a_trusted_proxy_clients_are_keyed_on_x_forwarded_for() {
    let origin = Origin::start().await;
    origin.route("/page", cacheable("page"));
    let kagami = Kagami::start_config(trusted_config(&origin)).await;
    let proxy = client_from("127.0.0.2");

    // Warm the cache (a miss spends only the miss budget).
    assert_eq!(get_from(&kagami, &proxy, "/page").await.status, 200);

    let (allowed, refused) = exhaust(&kagami, &proxy, "/page", Some("198.51.100.7"), 10).await;
    assert_eq!(allowed, 3);
    assert_rate_limited(&refused);

    // Another client behind the same proxy has its own budget; so does the proxy itself.
    let other = get_xff(&kagami, &proxy, "/page", "198.51.100.8").await;
    assert_eq!(other.status, 200);
    assert_eq!(get_from(&kagami, &proxy, "/page").await.status, 200);

    // A forged left-most entry does not buy a fresh budget: the right-most untrusted address
    // (the one our trusted proxy saw) is the key.
    let forged = get_xff(&kagami, &proxy, "/page", "6.6.6.6, 198.51.100.7").await;
    assert_rate_limited(&forged);
    // `Forwarded` names the same client when there is no X-Forwarded-For.
    let forwarded = kagami
        .send(
            proxy
                .get(kagami.url("/page"))
                .header("forwarded", "for=6.6.6.6, for=198.51.100.7;proto=http"),
        )
        .await;
    assert_rate_limited(&forwarded);
    // And the right-most untrusted address really is what counts.
    let rightmost = get_xff(&kagami, &proxy, "/page", "198.51.100.7, 198.51.100.9").await;
    assert_eq!(rightmost.status, 200);
}

#[tokio::test]
async fn x_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let origin = Origin::start().await;
    origin.route("/page", cacheable("page"));
    let kagami = Kagami::start_config(trusted_config(&origin)).await;
    let untrusted = client_from("127.0.0.4");

    assert_eq!(get_from(&kagami, &untrusted, "/page").await.status, 200);
    let (allowed, refused) = exhaust(&kagami, &untrusted, "/page", Some("198.51.100.20"), 10).await;
    assert_eq!(allowed, 3);
    assert_rate_limited(&refused);
    for xff in ["198.51.100.21", "203.0.113.5", "6.6.6.6, 198.51.100.22"] {
        let reply = get_xff(&kagami, &untrusted, "/page", xff).await;
        assert_eq!(
            reply.status, 429,
            "a new X-Forwarded-For ({xff}) from an untrusted peer must not reset the budget"
        );
    }
    // The trusted proxy, forwarding for someone else, is unaffected.
    let proxy = client_from("127.0.0.2");
    assert_eq!(
        get_xff(&kagami, &proxy, "/page", "198.51.100.20")
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn the_configured_429_page_is_served() {
    let origin = Origin::start().await;
    origin.route("/one", cacheable("one"));
    origin.route("/two", cacheable("two"));
    let custom = bytes::Bytes::from_static("<p>混雑中 / custom busy page</p>".as_bytes());
    let mut site = SiteConfig::new("test", &["127.0.0.1", "localhost"], &origin.url()).unwrap();
    site.limit_hits = generous();
    site.limit_misses = budget(1);
    let mut config = Config::new(vec!["127.0.0.1:0".parse().unwrap()], vec![site]);
    config.log.access = false;
    config.limits.page_429 = custom.clone();
    let kagami = Kagami::start_config(config).await;
    let a = client_from("127.0.0.2");

    assert_eq!(get_from(&kagami, &a, "/one").await.status, 200);
    let refused = get_from(&kagami, &a, "/two").await;
    assert_rate_limited(&refused);
    assert_eq!(refused.body, custom);
    assert_eq!(
        refused.header("content-length"),
        Some(custom.len().to_string().as_str())
    );
    assert_eq!(origin.hits("/two"), 0);
}
