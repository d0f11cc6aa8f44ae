//! Origin protection: a cap on concurrent origin requests (with a bounded queue, and stale
//! copies served at once when every slot is taken), a circuit breaker per origin server, active
//! health checks, failover to backups for repeatable requests, and the emergency page.
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Kagami, Origin, Reply, Route};
use futures_util::future::join_all;

const TIMEOUT: Duration = Duration::from_secs(12);

async fn bounded<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TIMEOUT, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish in {TIMEOUT:?}"))
}

fn cacheable(body: &str) -> Route {
    Route::ok(body.to_string()).header("cache-control", "max-age=60")
}

/// GETs every path at once over separate connections.
async fn get_all(kagami: &Arc<Kagami>, paths: Vec<String>) -> Vec<Reply> {
    let tasks = paths.into_iter().map(|path| {
        let kagami = kagami.clone();
        tokio::spawn(async move { kagami.get(&path).await })
    });
    join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("request task"))
        .collect()
}

fn assert_emergency(reply: &Reply, page: &[u8], detail: &str) {
    assert_eq!(reply.status, 503, "{}", reply.cache_status());
    assert_eq!(&reply.body[..], page);
    let retry: u64 = reply
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry >= 1);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert!(
        reply
            .cache_status()
            .contains(&format!("detail=\"{detail}\"")),
        "{}",
        reply.cache_status()
    );
}

const EMERGENCY: &str = "<h1>緊急 / Emergency</h1>";

#[tokio::test]
async fn the_origin_never_sees_more_than_the_concurrency_cap() {
    let origin = Origin::start().await;
    let paths: Vec<String> = (0..200).map(|i| format!("/cold/{i}")).collect();
    for path in &paths {
        origin.route(path, cacheable(path).delay(Duration::from_millis(40)));
    }
    let kagami = Arc::new(
        Kagami::start_with(&origin.url(), |site| {
            site.limit_hits = None;
            site.limit_misses = None;
            site.protection.concurrency = 4;
            site.protection.queue_timeout = Duration::from_secs(10);
        })
        .await,
    );
    let replies = bounded("200 cold misses", get_all(&kagami, paths.clone())).await;
    for (reply, path) in replies.iter().zip(&paths) {
        assert_eq!(reply.status, 200, "{path}: {}", reply.cache_status());
        assert_eq!(&reply.text(), path);
    }
    assert_eq!(origin.total(), 200);
    assert!(
        origin.max_in_flight() <= 4,
        "the origin saw {} requests at once",
        origin.max_in_flight()
    );
    assert!(origin.max_in_flight() >= 2, "the requests did overlap");
    let stats = kagami.running.proxy.stats.snapshot();
    assert!(stats.origin_peak_in_flight <= 4, "{stats:?}");
    assert!(stats.origin_busy > 0, "requests queued for a slot");
}

#[tokio::test]
async fn the_overflow_gets_the_emergency_page_after_the_queue_timeout() {
    let origin = Origin::start().await;
    let paths: Vec<String> = (0..20).map(|i| format!("/slow/{i}")).collect();
    for path in &paths {
        origin.route(path, cacheable(path).delay(Duration::from_millis(600)));
    }
    let kagami = Arc::new(
        Kagami::start_with(&origin.url(), |site| {
            site.limit_hits = None;
            site.limit_misses = None;
            site.protection.concurrency = 4;
            site.protection.queue_timeout = Duration::from_millis(100);
            site.emergency_page = bytes::Bytes::from_static(EMERGENCY.as_bytes());
        })
        .await,
    );
    let started = Instant::now();
    let replies = bounded("20 cold misses", get_all(&kagami, paths)).await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let busy: Vec<&Reply> = replies.iter().filter(|r| r.status == 503).collect();
    assert_eq!(ok + busy.len(), 20, "only 200 or 503");
    assert_eq!(ok, 4, "four slots, a 600 ms origin, a 100 ms queue");
    for reply in busy {
        assert_emergency(reply, EMERGENCY.as_bytes(), "origin-busy");
    }
    assert!(origin.max_in_flight() <= 4);
    assert_eq!(origin.total(), 4);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn with_every_slot_taken_a_stale_copy_is_served_at_once() {
    let origin = Origin::start().await;
    origin.route(
        "/news",
        Route::ok("old news").header("cache-control", "max-age=1"),
    );
    origin.route(
        "/slow",
        cacheable("slow").delay(Duration::from_millis(1500)),
    );
    let kagami = Arc::new(
        Kagami::start_with(&origin.url(), |site| {
            site.protection.concurrency = 1;
            site.protection.queue_timeout = Duration::from_secs(5);
        })
        .await,
    );
    assert_eq!(kagami.get("/news").await.text(), "old news");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    origin.route("/news", cacheable("new news"));

    // Take the only slot.
    let holder = {
        let kagami = kagami.clone();
        tokio::spawn(async move { kagami.get("/slow").await })
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    while origin.hits("/slow") == 0 {
        assert!(
            Instant::now() < deadline,
            "the slow request reached the origin"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let asked = Instant::now();
    let reply = bounded("stale answer", kagami.get("/news")).await;
    let took = asked.elapsed();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "old news");
    assert!(
        took < Duration::from_millis(500),
        "served at once, not queued: {took:?}"
    );
    // Every slot of the limit taken is stress (issue 9): the copy now, a refresh queued.
    assert!(
        reply.cache_status().contains("detail=\"origin-slow\""),
        "{}",
        reply.cache_status()
    );
    assert_eq!(origin.hits("/news"), 1, "the origin was not asked again");

    let slow = bounded("slow request", holder).await.unwrap();
    assert_eq!(slow.status, 200);
    // The refresh ran once the slot was free, and updated the store.
    let deadline = Instant::now() + Duration::from_secs(2);
    while origin.hits("/news") < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(kagami.get("/news").await.text(), "new news");
    assert_eq!(origin.hits("/news"), 2, "one refresh");
}

#[tokio::test]
async fn the_circuit_opens_after_consecutive_failures_and_closes_after_a_probe() {
    let origin = Origin::start().await;
    origin.route(
        "/page",
        Route::ok("v1").header("cache-control", "max-age=1"),
    );
    for path in ["/c1", "/c2", "/c3", "/c4", "/c5"] {
        origin.route(path, cacheable(path));
    }
    let kagami = Kagami::start_with(&origin.url(), |site| {
        site.protection.circuit_failures = 3;
        site.protection.circuit_open = Duration::from_secs(1);
        site.failure_backoff = Duration::from_millis(1);
        site.emergency_page = bytes::Bytes::from_static(EMERGENCY.as_bytes());
    })
    .await;
    let stats = || kagami.running.proxy.stats.snapshot();

    assert_eq!(kagami.get("/page").await.text(), "v1");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    origin.fail_with(503);

    for path in ["/c1", "/c2", "/c3"] {
        // Let the 1 ms back-off pass so each request does reach the origin.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let reply = kagami.get(path).await;
        assert_eq!(reply.status, 503, "the origin's own error is relayed");
        assert!(
            reply.cache_status().contains("fwd-status=503"),
            "{}",
            reply.cache_status()
        );
    }
    // The first 503 was confirmed by one probe of `/` (a 503 may be one page's problem); its
    // verdict then stood for the next two.
    assert_eq!(origin.hits("/"), 1, "one confirmation probe");
    assert_eq!(origin.total(), 5);
    assert_eq!(stats().circuit_opened, 1);
    let opened = Instant::now();

    // Open: a stale page is served without asking the origin...
    tokio::time::sleep(Duration::from_millis(5)).await;
    for _ in 0..5 {
        let reply = kagami.get("/page").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), "v1");
        assert!(
            reply.cache_status().starts_with("kagami; hit"),
            "{}",
            reply.cache_status()
        );
    }
    // ...and a cold miss gets the emergency page.
    let refused = kagami.get("/c4").await;
    assert_emergency(&refused, EMERGENCY.as_bytes(), "circuit-open");
    assert_eq!(
        origin.total(),
        5,
        "nothing was sent while the circuit was open"
    );
    assert!(
        opened.elapsed() < Duration::from_millis(900),
        "the checks above ran while the circuit was open"
    );

    origin.recover();
    origin.route("/page", cacheable("v2"));
    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(opened.elapsed())).await;

    // Half-open: one probe goes through and closes the circuit.
    let probe = kagami.get("/page").await;
    assert_eq!(probe.status, 200);
    assert_eq!(probe.text(), "v2", "{}", probe.cache_status());
    assert_eq!(origin.total(), 6, "exactly one probe");
    assert!(
        !kagami.running.proxy.sites()[0].origin.servers[0]
            .breaker
            .is_open(),
        "the successful probe closed the circuit"
    );
    let cold = kagami.get("/c5").await;
    assert_eq!((cold.status, cold.text().as_str()), (200, "/c5"));
    assert_eq!(kagami.get("/page").await.text(), "v2");
    assert_eq!(stats().circuit_opened, 1);
}

#[tokio::test]
async fn the_circuit_opens_while_the_origin_is_killed() {
    let origin = Origin::start().await;
    origin.route(
        "/page",
        Route::ok("v1").header("cache-control", "max-age=1"),
    );
    let kagami = Kagami::start_with(&origin.url(), |site| {
        site.protection.circuit_failures = 3;
        site.protection.circuit_open = Duration::from_secs(1);
        site.failure_backoff = Duration::from_millis(1);
    })
    .await;
    assert_eq!(kagami.get("/page").await.text(), "v1");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    origin.kill();
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let reply = kagami.get(&format!("/cold/{i}")).await;
        assert_eq!(reply.status, 503);
        assert!(
            reply.cache_status().contains("origin-unreachable"),
            "{}",
            reply.cache_status()
        );
    }
    assert_eq!(kagami.running.proxy.stats.snapshot().circuit_opened, 1);
    let refused = kagami.get("/cold/3").await;
    assert!(
        refused.cache_status().contains("detail=\"circuit-open\""),
        "{}",
        refused.cache_status()
    );
    let stale = kagami.get("/page").await;
    assert_eq!((stale.status, stale.text().as_str()), (200, "v1"));
    assert_eq!(origin.total(), 1);
}

#[tokio::test]
async fn active_health_checks_open_and_close_the_circuit_without_client_traffic() {
    let origin = Origin::start().await;
    origin.route("/health", Route::ok("ok"));
    origin.route("/cold", cacheable("cold"));
    let kagami = Kagami::start_with(&origin.url(), |site| {
        site.protection.health_path = Some("/health".into());
        site.protection.health_interval = Duration::from_millis(200);
        site.protection.circuit_failures = 2;
        site.protection.circuit_open = Duration::from_secs(30);
    })
    .await;
    let breaker_open = || {
        kagami.running.proxy.sites()[0].origin.servers[0]
            .breaker
            .is_open()
    };

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(origin.hits("/health") >= 2, "probes are sent");
    assert!(!breaker_open());
    assert_eq!(kagami.running.proxy.stats.snapshot().circuit_opened, 0);

    origin.route("/health", Route::ok("down").status(503));
    let deadline = Instant::now() + Duration::from_secs(3);
    while kagami.running.proxy.stats.snapshot().circuit_opened == 0 {
        assert!(
            Instant::now() < deadline,
            "the circuit did not open from failing health checks"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(breaker_open());
    assert_eq!(origin.total(), origin.hits("/health"), "no client traffic");
    let refused = kagami.get("/cold").await;
    assert_eq!(refused.status, 503);
    assert!(
        refused.cache_status().contains("detail=\"circuit-open\""),
        "{}",
        refused.cache_status()
    );
    assert_eq!(origin.hits("/cold"), 0);

    origin.route("/health", Route::ok("ok"));
    let deadline = Instant::now() + Duration::from_secs(3);
    while breaker_open() {
        assert!(
            Instant::now() < deadline,
            "the circuit did not close after the health check recovered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Closed long before circuit_open (30 s) ran out.
    let served = kagami.get("/cold").await;
    assert_eq!((served.status, served.text().as_str()), (200, "cold"));
    assert_eq!(kagami.running.proxy.stats.snapshot().circuit_opened, 1);
}

#[tokio::test]
async fn get_fails_over_to_the_backup_but_post_is_never_retried() {
    let primary = Origin::start().await;
    let backup = Origin::start().await;
    for origin in [&primary, &backup] {
        origin.route("/page", cacheable("from backup"));
        origin.route("/form", Route::ok("posted"));
    }
    primary.route("/page", cacheable("from primary"));
    let urls = vec![
        reqwest::Url::parse(&primary.url()).unwrap(),
        reqwest::Url::parse(&backup.url()).unwrap(),
    ];
    let kagami = Kagami::start_with(&primary.url(), |site| site.origins = urls).await;
    primary.kill();

    let reply = kagami.get("/page").await;
    assert_eq!(reply.status, 200, "{}", reply.cache_status());
    assert_eq!(reply.text(), "from backup");
    assert_eq!(backup.hits("/page"), 1);
    assert_eq!(kagami.running.proxy.stats.snapshot().failovers, 1);

    let post = kagami
        .send(kagami.client.post(kagami.url("/form")).body("name=value"))
        .await;
    assert!(
        post.status >= 500,
        "the POST failed with the primary: {} {}",
        post.status,
        post.cache_status()
    );
    assert!(
        !backup.log().iter().any(|(method, _)| method == "POST"),
        "the backup never sees the POST: {:?}",
        backup.log()
    );
    assert_eq!(backup.hits("/form"), 0);
}

#[tokio::test]
async fn a_post_answered_with_an_error_by_the_primary_is_not_retried() {
    let primary = Origin::start().await;
    let backup = Origin::start().await;
    backup.route("/form", Route::ok("posted"));
    primary.fail_with(503);
    let urls = vec![
        reqwest::Url::parse(&primary.url()).unwrap(),
        reqwest::Url::parse(&backup.url()).unwrap(),
    ];
    let kagami = Kagami::start_with(&primary.url(), |site| site.origins = urls).await;
    let post = kagami
        .send(kagami.client.post(kagami.url("/form")).body("x=1"))
        .await;
    assert_eq!(post.status, 503);
    assert_eq!(post.text(), "origin failure\n", "the primary's answer");
    assert_eq!(primary.hits("/form"), 1);
    assert_eq!(backup.total(), 0);
    // A GET is repeatable: it goes on to the backup.
    backup.route("/page", cacheable("from backup"));
    assert_eq!(kagami.get("/page").await.text(), "from backup");
}

#[tokio::test]
async fn a_cold_miss_during_an_outage_gets_the_emergency_page() {
    let origin = Origin::start().await;
    origin.route("/cold", cacheable("never fetched"));
    let custom = Kagami::start_with(&origin.url(), |site| {
        site.emergency_page = bytes::Bytes::from_static(EMERGENCY.as_bytes());
    })
    .await;
    let default = Kagami::start(&origin.url()).await;
    origin.kill();

    let reply = custom.get("/cold").await;
    assert_emergency(&reply, EMERGENCY.as_bytes(), "origin-unreachable");
    assert!(reply
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/html")));
    assert!(custom.running.proxy.stats.snapshot().emergency_pages >= 1);

    let reply = default.get("/cold").await;
    assert_eq!(reply.status, 503);
    assert!(reply.header("retry-after").is_some());
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let page = reply.text();
    assert!(page.contains("一時的に表示できません"), "{page}");
    assert!(page.contains("temporarily unavailable"), "{page}");
    assert!(page.contains("lang=\"ja\""), "{page}");
}

#[tokio::test]
async fn answers_about_one_client_or_method_do_not_open_the_circuit() {
    let origin = Origin::start().await;
    origin.route("/form", Route::ok("not here").status(501));
    origin.route("/login", Route::ok("slow down").status(429));
    origin.route(
        "/page",
        Route::ok("fine").header("cache-control", "max-age=60"),
    );
    let kagami = Kagami::start_with(&origin.url(), |site| {
        site.protection.circuit_failures = 2;
        site.limit_misses = None;
    })
    .await;
    for _ in 0..5 {
        kagami.send(kagami.client.post(kagami.url("/form"))).await;
        kagami.send(kagami.client.post(kagami.url("/login"))).await;
    }
    let page = kagami.get("/page").await;
    assert_eq!((page.status, page.text().as_str()), (200, "fine"));
    assert_eq!(kagami.running.proxy.stats.snapshot().circuit_opened, 0);
}
