//! A measurement, not a regular test (run it with `--ignored --nocapture`): RSS after 64,000
//! objects of 1 KB go through a real Kagami with `memory = "32MiB"`. The regular, robust check
//! that the weigher counts what entries hold is `tests/store_weight.rs`.
mod common;

use std::time::{Duration, Instant};

use common::{spawn_origin, Kagami};
use futures_util::stream::{self, StreamExt};
use http::Response;
use http_body_util::Full;
use kagami::config::{Config, SiteConfig};

fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn rss_with_64000_small_objects_at_32_mib() {
    const OBJECTS: usize = 64_000;
    let addr = spawn_origin(|request: http::Request<hyper::body::Incoming>| {
        let path = request.uri().path().to_string();
        async move {
            let body = format!("{path:<1024}");
            Response::builder()
                .header("content-type", "text/html; charset=utf-8")
                .header("cache-control", "public, max-age=600")
                .header("etag", format!("\"{}\"", path.len()))
                .header("last-modified", "Mon, 23 Nov 2026 09:00:00 GMT")
                .header("server", "nginx")
                .body(Full::new(bytes::Bytes::from(body)))
                .unwrap()
        }
    })
    .await;
    let mut site = SiteConfig::new("test", &["127.0.0.1"], &format!("http://{addr}")).unwrap();
    site.limit_hits = None;
    site.limit_misses = None;
    let mut config = Config::new(vec!["127.0.0.1:0".parse().unwrap()], vec![site]);
    config.log.access = false;
    config.cache.memory = 32 << 20;
    let kagami = Kagami::start_config(config).await;
    let before = rss_mib();
    let started = Instant::now();
    let client = kagami.client.clone();
    let base = format!("http://{}", kagami.addr);
    stream::iter(0..OBJECTS)
        .map(|i| {
            let client = client.clone();
            let url = format!("{base}/objects/{i:06}.html");
            async move {
                let response = client.get(url).send().await.expect("answer");
                assert_eq!(response.status(), 200);
                response.bytes().await.expect("body").len()
            }
        })
        .buffer_unordered(16)
        .for_each(|_| async {})
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let store = &kagami.running.proxy.store;
    println!(
        "{OBJECTS} objects of 1 KB at memory = 32MiB: RSS {before} -> {} MiB in {:?}; {} entries kept",
        rss_mib(),
        started.elapsed(),
        store.entry_count(),
    );
}
