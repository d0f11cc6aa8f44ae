//! `/metrics` read by a real Prometheus text parser (`prometheus-parse`): the per-site request
//! counters, latency histograms, origin gauges and stale/coalesced counters move as requests
//! are made; the Grafana dashboard only queries metrics that exist.
mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Kagami, Origin, Route};
use kagami::config::{AdminConfig, Config, SiteConfig};
use prometheus_parse::{Scrape, Value};

/// A Kagami with an open admin listener (loopback, no token) on an ephemeral port.
async fn start(origin: &Origin) -> (Kagami, String) {
    start_with(origin, |_| {}).await
}

async fn start_with(origin: &Origin, adjust: impl FnOnce(&mut SiteConfig)) -> (Kagami, String) {
    let mut site = SiteConfig::new("test", &["127.0.0.1", "localhost"], &origin.url()).unwrap();
    adjust(&mut site);
    let mut config = Config::new(vec!["127.0.0.1:0".parse().unwrap()], vec![site]);
    config.log.access = false;
    config.admin = Some(AdminConfig::new("127.0.0.1:0".parse().unwrap(), None));
    let kagami = Kagami::start_config(config).await;
    let admin = kagami.running.admin_addr.expect("an admin listener");
    (kagami, format!("http://{admin}/metrics"))
}

async fn scrape(kagami: &Kagami, url: &str) -> Scrape {
    let response = tokio::time::timeout(Duration::from_secs(10), kagami.client.get(url).send())
        .await
        .expect("/metrics answered in time")
        .expect("/metrics answered");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("text/plain; version=0.0.4"));
    let text = response.text().await.expect("a body");
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("valid Prometheus text")
}

/// The value of the sample `name` whose labels include all of `labels` (0 when none has them:
/// a request counter appears once its combination has been seen).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = samples(scrape, name, labels)
        .map(|value| match value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name} is not a single value: {other:?}"),
        })
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?} matches {found:?}");
    found.first().copied().unwrap_or(0.0)
}

fn samples<'a>(
    scrape: &'a Scrape,
    name: &'a str,
    labels: &'a [(&str, &str)],
) -> impl Iterator<Item = &'a Value> {
    scrape
        .samples
        .iter()
        .filter(move |s| s.metric == name)
        .filter(move |s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| &s.value)
}

/// The `+Inf` bucket of the histogram `name` for `site` (its observation count).
fn observations(scrape: &Scrape, name: &str, site: &str) -> f64 {
    let labels = [("site", site)];
    let mut found = samples(scrape, name, &labels).map(|value| match value {
        Value::Histogram(buckets) => {
            buckets
                .iter()
                .find(|b| b.less_than == f64::INFINITY)
                .expect("a +Inf bucket")
                .count
        }
        other => panic!("{name} is not a histogram: {other:?}"),
    });
    found
        .next()
        .unwrap_or_else(|| panic!("no {name} for {site}"))
}

#[tokio::test]
async fn a_miss_then_a_hit_move_their_counters_and_histograms() {
    let origin = Origin::start().await;
    origin.route("/m", Route::ok("m").header("cache-control", "max-age=600"));
    let (kagami, metrics) = start(&origin).await;
    let before = scrape(&kagami, &metrics).await;
    let miss = [("site", "test"), ("status", "2xx"), ("cache", "miss")];
    let hit = [("site", "test"), ("status", "2xx"), ("cache", "hit")];
    assert_eq!(value(&before, "kagami_requests_total", &miss), 0.0);
    assert_eq!(
        observations(&before, "kagami_request_duration_seconds", "test"),
        0.0
    );
    assert_eq!(
        value(&before, "kagami_origin_healthy", &[("site", "test")]),
        1.0
    );
    assert!(before.docs.contains_key("kagami_requests_total"));

    assert!(kagami
        .get("/m")
        .await
        .cache_status()
        .contains("fwd=uri-miss"));
    let after_miss = scrape(&kagami, &metrics).await;
    assert_eq!(value(&after_miss, "kagami_requests_total", &miss), 1.0);
    assert_eq!(value(&after_miss, "kagami_requests_total", &hit), 0.0);

    assert!(kagami.get("/m").await.cache_status().contains("; hit"));
    let after = scrape(&kagami, &metrics).await;
    assert_eq!(value(&after, "kagami_requests_total", &miss), 1.0);
    assert_eq!(value(&after, "kagami_requests_total", &hit), 1.0);
    assert_eq!(
        observations(&after, "kagami_request_duration_seconds", "test"),
        2.0
    );
    assert_eq!(
        value(
            &after,
            "kagami_request_duration_seconds_count",
            &[("site", "test")]
        ),
        2.0
    );
    // One origin fetch for the two requests.
    assert_eq!(
        observations(&after, "kagami_origin_duration_seconds", "test"),
        1.0
    );
    assert_eq!(
        value(&after, "kagami_cache_entries", &[("tier", "memory")]),
        1.0
    );
    assert!(value(&after, "kagami_cache_bytes", &[("tier", "memory")]) > 0.0);
    let origin_label = origin.url().trim_end_matches('/').to_string();
    assert_eq!(
        value(
            &after,
            "kagami_origin_circuit_open",
            &[("site", "test"), ("origin", &origin_label)]
        ),
        0.0
    );
    assert!(value(&after, "kagami_origin_adaptive_limit", &[("site", "test")]) >= 1.0);
    // The unlabelled Stats counters are still there.
    assert_eq!(value(&after, "kagami_hits_total", &[]), 1.0);
    assert_eq!(value(&after, "kagami_origin_requests_total", &[]), 1.0);
}

#[tokio::test]
async fn requests_no_site_takes_are_counted_apart() {
    let origin = Origin::start().await;
    let (kagami, metrics) = start(&origin).await;
    let reply = kagami
        .send(
            kagami
                .client
                .get(kagami.url("/"))
                .header("host", "elsewhere.example"),
        )
        .await;
    assert_eq!(reply.status, 421);
    let after = scrape(&kagami, &metrics).await;
    let labels = [("site", "-"), ("status", "4xx"), ("cache", "error")];
    assert_eq!(value(&after, "kagami_requests_total", &labels), 1.0);
    assert_eq!(origin.total(), 0);
}

#[tokio::test]
async fn stale_answers_by_reason_and_coalesced_waits_are_counted() {
    let origin = Origin::start().await;
    origin.route(
        "/news",
        Route::ok("old").header("cache-control", "max-age=1, stale-while-revalidate=30"),
    );
    origin.route(
        "/slow",
        Route::ok("slow")
            .header("cache-control", "max-age=600")
            .delay(Duration::from_millis(300)),
    );
    let (kagami, metrics) = start(&origin).await;
    let replies = futures_util::future::join_all((0..4).map(|_| kagami.get("/slow"))).await;
    let collapsed = replies
        .iter()
        .filter(|r| r.cache_status().contains("collapsed"))
        .count();
    assert!(collapsed >= 1, "the requests overlapped the slow fetch");

    kagami.get("/news").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let stale = kagami.get("/news").await;
    assert!(
        stale.cache_status().contains("stale-while-revalidate"),
        "{}",
        stale.cache_status()
    );
    let after = scrape(&kagami, &metrics).await;
    assert_eq!(
        value(&after, "kagami_coalesced_waits_total", &[("site", "test")]),
        collapsed as f64
    );
    let swr = [("site", "test"), ("reason", "stale-while-revalidate")];
    assert_eq!(value(&after, "kagami_stale_answers_total", &swr), 1.0);
    let grace = [("site", "test"), ("reason", "grace")];
    assert_eq!(value(&after, "kagami_stale_answers_total", &grace), 0.0);
    let stale_hit = [("site", "test"), ("cache", "stale-hit")];
    assert_eq!(value(&after, "kagami_requests_total", &stale_hit), 1.0);
}

#[tokio::test]
async fn a_failing_origin_shows_as_unhealthy() {
    let origin = Origin::start().await;
    origin.route("/p", Route::ok("p").header("cache-control", "max-age=600"));
    // Long enough that a slow machine still scrapes within the back-off.
    let (kagami, metrics) = start_with(&origin, |site| {
        site.failure_backoff = Duration::from_secs(60);
    })
    .await;
    origin.fail_with(503);
    let reply = kagami.get("/p").await;
    assert_eq!(reply.status, 503);
    let after = scrape(&kagami, &metrics).await;
    assert_eq!(
        value(&after, "kagami_origin_healthy", &[("site", "test")]),
        0.0
    );
    let labels = [("site", "test"), ("status", "5xx")];
    let errors: f64 = samples(&after, "kagami_requests_total", &labels)
        .map(|v| match v {
            Value::Counter(n) => *n,
            _ => 0.0,
        })
        .sum();
    assert_eq!(errors, 1.0);
    assert!(value(&after, "kagami_origin_failures_total", &[]) >= 1.0);
}

/// Every metric a query of `deploy/grafana-dashboard.json` names is one `/metrics` exports.
#[tokio::test]
async fn the_grafana_dashboard_queries_only_exported_metrics() {
    let origin = Origin::start().await;
    let (kagami, metrics) = start(&origin).await;
    let exported = scrape(&kagami, &metrics).await;
    let mut names: HashSet<String> = exported.docs.keys().cloned().collect();
    // A histogram is queried through its series.
    for base in exported.docs.keys() {
        for suffix in ["_bucket", "_sum", "_count"] {
            names.insert(format!("{base}{suffix}"));
        }
    }

    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the dashboard file"))
            .expect("the dashboard is JSON");
    let mut queries = Vec::new();
    collect_exprs(&dashboard, &mut queries);
    assert!(
        queries.len() >= 8,
        "the dashboard has its panels: {queries:?}"
    );
    let mut used = HashSet::new();
    for query in &queries {
        let mut found = false;
        for name in metric_names(query) {
            assert!(
                names.contains(&name),
                "{path}: the query {query:?} uses {name}, which /metrics does not export"
            );
            used.insert(name);
            found = true;
        }
        assert!(found, "the query {query:?} names no kagami_ metric");
    }
    for wanted in [
        "kagami_requests_total",
        "kagami_request_duration_seconds_bucket",
        "kagami_origin_duration_seconds_bucket",
        "kagami_origin_healthy",
        "kagami_origin_circuit_open",
        "kagami_origin_adaptive_limit",
        "kagami_cache_bytes",
        "kagami_stale_answers_total",
        "kagami_rate_limited_total",
    ] {
        assert!(used.contains(wanted), "no panel shows {wanted}");
    }
}

fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    // Panel queries, and the `site` variable's `label_values(…)`.
                    ("expr" | "query" | "definition", serde_json::Value::String(expr)) => {
                        out.push(expr.clone())
                    }
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The `kagami_…` identifiers in a PromQL expression.
fn metric_names(query: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = query.as_bytes();
    let mut i = 0;
    while let Some(at) = query[i..].find("kagami_") {
        let start = i + at;
        let preceded =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = query[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(query.len(), |n| start + n);
        if !preceded {
            names.push(query[start..end].to_string());
        }
        i = end;
    }
    names
}
