//! The admin API on its own listener: health without a token, everything else behind the
//! bearer token (401 and no action without it), purge soft and hard, Prometheus metrics.
mod common;

use std::time::Duration;

use common::{Kagami, Origin, Route};
use kagami::config::{AdminConfig, Config, SiteConfig};

const TOKEN: &str = "test-admin-token";

/// A Kagami with an admin listener on an ephemeral loopback port, token `token`.
async fn start(origin: &Origin, token: Option<&str>) -> (Kagami, String) {
    let site = SiteConfig::new("test", &["127.0.0.1", "localhost"], &origin.url()).unwrap();
    let mut config = Config::new(vec!["127.0.0.1:0".parse().unwrap()], vec![site]);
    config.log.access = false;
    config.admin = Some(AdminConfig::new("127.0.0.1:0".parse().unwrap(), token));
    let kagami = Kagami::start_config(config).await;
    let admin = kagami.running.admin_addr.expect("an admin listener");
    (kagami, format!("http://{admin}"))
}

async fn admin(kagami: &Kagami, request: reqwest::RequestBuilder) -> (u16, String) {
    let _ = kagami;
    let response = tokio::time::timeout(Duration::from_secs(10), request.send())
        .await
        .expect("admin answered in time")
        .expect("admin request succeeded");
    let status = response.status().as_u16();
    (status, response.text().await.expect("a body"))
}

async fn purge(kagami: &Kagami, base: &str, body: &str, token: Option<&str>) -> (u16, String) {
    let mut request = kagami
        .client
        .post(format!("{base}/purge"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    admin(kagami, request).await
}

#[tokio::test]
async fn health_needs_no_token_and_everything_else_does() {
    let origin = Origin::start().await;
    let (kagami, base) = start(&origin, Some(TOKEN)).await;
    let c = &kagami.client;
    assert_eq!(
        admin(&kagami, c.get(format!("{base}/healthz"))).await.0,
        200
    );
    assert_eq!(admin(&kagami, c.get(format!("{base}/readyz"))).await.0, 200);
    assert_eq!(
        admin(&kagami, c.get(format!("{base}/metrics"))).await.0,
        401
    );
    let wrong = c
        .get(format!("{base}/metrics"))
        .bearer_auth("test-admin-tokeN");
    assert_eq!(admin(&kagami, wrong).await.0, 401);
    let right = c.get(format!("{base}/metrics")).bearer_auth(TOKEN);
    assert_eq!(admin(&kagami, right).await.0, 200);
    let nowhere = c.get(format!("{base}/nowhere")).bearer_auth(TOKEN);
    assert_eq!(admin(&kagami, nowhere).await.0, 404);
}

#[tokio::test]
async fn a_purge_without_the_token_does_nothing() {
    let origin = Origin::start().await;
    origin.route("/p", Route::ok("v1").header("cache-control", "max-age=600"));
    let (kagami, base) = start(&origin, Some(TOKEN)).await;
    kagami.get("/p").await;
    let body = r#"{"url": "http://127.0.0.1/p", "soft": false}"#;
    assert_eq!(purge(&kagami, &base, body, None).await.0, 401);
    assert_eq!(purge(&kagami, &base, body, Some("wrong")).await.0, 401);
    // A form-like (cross-site "simple") POST is refused even with the token.
    let simple = (kagami.client.post(format!("{base}/purge")))
        .header("content-type", "text/plain")
        .bearer_auth(TOKEN)
        .body(body);
    assert_eq!(admin(&kagami, simple).await.0, 415);
    origin.route("/p", Route::ok("v2").header("cache-control", "max-age=600"));
    assert_eq!(kagami.get("/p").await.text(), "v1");
    assert_eq!(origin.hits("/p"), 1);
}

#[tokio::test]
async fn without_a_token_only_health_and_metrics_are_served() {
    let origin = Origin::start().await;
    let (kagami, base) = start(&origin, None).await;
    let c = &kagami.client;
    assert_eq!(
        admin(&kagami, c.get(format!("{base}/metrics"))).await.0,
        200
    );
    let body = r#"{"url": "http://127.0.0.1/p"}"#;
    assert_eq!(purge(&kagami, &base, body, None).await.0, 403);
}

#[tokio::test]
async fn a_hard_purge_removes_the_page() {
    let origin = Origin::start().await;
    origin.route(
        "/news",
        Route::ok("old").header("cache-control", "max-age=600"),
    );
    let (kagami, base) = start(&origin, Some(TOKEN)).await;
    assert_eq!(kagami.get("/news").await.text(), "old");
    origin.route(
        "/news",
        Route::ok("new").header("cache-control", "max-age=600"),
    );

    // The URL may name the listener's port, as browsers send it.
    let url = format!("http://127.0.0.1:{}/news", kagami.addr.port());
    let body = format!(r#"{{"url": "{url}", "soft": false}}"#);
    let (status, answer) = purge(&kagami, &base, &body, Some(TOKEN)).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("\"purged\":1"), "{answer}");
    assert_eq!(kagami.get("/news").await.text(), "new");

    // Nothing stored under that URL any more after a second purge of an absent page.
    let body = r#"{"url": "http://127.0.0.1/absent", "soft": false}"#;
    let (_, answer) = purge(&kagami, &base, body, Some(TOKEN)).await;
    assert!(answer.contains("\"purged\":0"), "{answer}");
    let (status, _) = purge(
        &kagami,
        &base,
        r#"{"url": "http://nowhere.jp/"}"#,
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_soft_purge_revalidates_but_serves_stale_while_the_origin_is_down() {
    let origin = Origin::start().await;
    origin.route(
        "/notice",
        Route::ok("v1").header("cache-control", "max-age=600"),
    );
    let (kagami, base) = start(&origin, Some(TOKEN)).await;
    assert_eq!(kagami.get("/notice").await.text(), "v1");

    let body = r#"{"url": "http://127.0.0.1/notice"}"#;
    let (status, answer) = purge(&kagami, &base, body, Some(TOKEN)).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer.contains("\"purged\":1") && answer.contains("\"soft\":true"),
        "{answer}"
    );

    // The origin is down: the purged copy is still served (grace), not an error.
    origin.kill();
    let reply = kagami.get("/notice").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "v1");

    // Back up with a corrected notice: the purged copy is replaced.
    origin.restart().await;
    origin.route(
        "/notice",
        Route::ok("v2").header("cache-control", "max-age=600"),
    );
    let mut text = String::new();
    for _ in 0..50 {
        text = kagami.get("/notice").await.text();
        if text == "v2" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(text, "v2");
}

/// The sum of `name`'s samples, whatever their labels (`tests/metrics.rs` parses properly).
fn value(metrics: &str, name: &str) -> u64 {
    assert!(
        metrics.contains(&format!("# TYPE {name} ")),
        "{name} not in {metrics}"
    );
    metrics
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn metrics_move_as_requests_are_made() {
    let origin = Origin::start().await;
    origin.route("/m", Route::ok("m").header("cache-control", "max-age=600"));
    let (kagami, base) = start(&origin, Some(TOKEN)).await;
    let scrape = || async {
        let request = kagami
            .client
            .get(format!("{base}/metrics"))
            .bearer_auth(TOKEN);
        admin(&kagami, request).await.1
    };
    let before = scrape().await;
    assert!(
        before.contains("# TYPE kagami_requests_total counter"),
        "{before}"
    );
    assert!(
        before.contains("# TYPE kagami_connections_open gauge"),
        "{before}"
    );
    assert_eq!(value(&before, "kagami_requests_total"), 0);
    kagami.get("/m").await;
    kagami.get("/m").await;
    let after = scrape().await;
    assert_eq!(value(&after, "kagami_requests_total"), 2);
    assert_eq!(value(&after, "kagami_hits_total"), 1);
    assert_eq!(value(&after, "kagami_misses_total"), 1);
    assert_eq!(value(&after, "kagami_cache_entries"), 1);
    assert!(value(&after, "kagami_cache_bytes") > 0);
    assert!(
        after.contains("kagami_origin_adaptive_limit{site=\"test\"} "),
        "{after}"
    );
}

#[tokio::test]
async fn readyz_answers_503_while_draining() {
    let origin = Origin::start().await;
    origin.route(
        "/slow",
        Route::ok("slow").delay(Duration::from_millis(1500)),
    );
    let (kagami, base) = start(&origin, Some(TOKEN)).await;
    let client = kagami.client.clone();
    let url = kagami.url("/slow");
    let in_flight = tokio::spawn(async move { client.get(url).send().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let Kagami {
        running, client, ..
    } = kagami;
    let draining = tokio::spawn(running.shutdown(Duration::from_secs(5)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        client.get(format!("{base}/readyz")).send(),
    )
    .await
    .expect("in time")
    .expect("admin still answers while draining");
    assert_eq!(response.status().as_u16(), 503);
    let _ = in_flight.await;
    tokio::time::timeout(Duration::from_secs(10), draining)
        .await
        .expect("shutdown in time")
        .expect("shutdown task");
}

#[tokio::test]
async fn the_proxy_listener_does_not_serve_the_admin_api() {
    let origin = Origin::start().await;
    origin.route("/p", Route::ok("v1").header("cache-control", "max-age=600"));
    let (kagami, _base) = start(&origin, Some(TOKEN)).await;
    kagami.get("/p").await;
    // Sent to the public port, /purge is just a path relayed to the origin.
    let request = (kagami.client.post(kagami.url("/purge")))
        .header("content-type", "application/json")
        .bearer_auth(TOKEN)
        .body(r#"{"url": "http://127.0.0.1/p", "soft": false}"#);
    kagami.send(request).await;
    assert_eq!(origin.hits("/purge"), 1);
    origin.route("/p", Route::ok("v2").header("cache-control", "max-age=600"));
    assert_eq!(kagami.get("/p").await.text(), "v1");
}

/// The admin listener shares the process's file descriptors with the public listeners, and
/// with a token it may listen beyond loopback. Connections that send nothing are held for the
/// 10 s head timeout; without a cap, anyone reaching the admin port could pile them up until
/// the public listeners cannot accept. Beyond the cap, new admin connections are closed at once.
#[tokio::test]
async fn idle_admin_connections_are_capped() {
    use common::raw::{connect, exchange, status_of, wait_for_close};
    use std::time::Instant;
    let origin = Origin::start().await;
    origin.route(
        "/",
        Route::ok("public").header("cache-control", "max-age=60"),
    );
    let (kagami, _) = start(&origin, Some(TOKEN)).await;
    let addr = kagami.running.admin_addr.expect("an admin listener");
    const OPENED: usize = 100;
    let mut idle = Vec::new();
    for _ in 0..OPENED {
        idle.push(connect(addr).await);
    }
    // The ones beyond the cap are closed without waiting for the head timeout.
    let since = Instant::now();
    let mut closed = 0;
    for stream in idle.iter_mut().rev().take(OPENED - 64) {
        let (after, _) = wait_for_close(stream, since, Duration::from_secs(3)).await;
        assert!(after < Duration::from_secs(3));
        closed += 1;
    }
    assert_eq!(closed, OPENED - 64);
    // The public side is unaffected, and the admin API answers again once they are gone.
    assert_eq!(kagami.get("/").await.status, 200);
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let raw = exchange(addr, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await;
        if status_of(&raw) == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "admin API still refusing: {raw:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
