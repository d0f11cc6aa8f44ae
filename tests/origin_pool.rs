//! Issue 9, "one pool per site": many sites on one origin share one connection pool, and the
//! idle connections kept to that origin are capped, whatever the number of sites.
mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use common::Kagami;
use kagami::config::{Config, SiteConfig};

const SITES: usize = 40;

#[derive(Default)]
struct Connections {
    accepted: AtomicUsize,
    open: AtomicUsize,
}

/// An origin on 127.0.0.1 that answers every path after `delay` and counts its connections.
async fn counting_origin(delay: Duration) -> (SocketAddr, Arc<Connections>, JoinSet<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Connections::default());
    let mut tasks = JoinSet::new();
    let c = counts.clone();
    tasks.spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            c.accepted.fetch_add(1, Ordering::SeqCst);
            c.open.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            connections.spawn(async move {
                let service = service_fn(move |_request| async move {
                    tokio::time::sleep(delay).await;
                    let mut response = Response::new(Full::new(Bytes::from_static(b"page")));
                    response
                        .headers_mut()
                        .insert("cache-control", "max-age=60".parse().unwrap());
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                c.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, counts, tasks)
}

async fn many_sites(origin: SocketAddr) -> Arc<Kagami> {
    let sites = (0..SITES)
        .map(|i| {
            let host = format!("s{i}.test");
            let mut site =
                SiteConfig::new(&format!("s{i}"), &[&host], &format!("http://{origin}")).unwrap();
            site.protection.concurrency = 8;
            site.protection.concurrency_per_client = 8;
            site
        })
        .collect();
    let mut config = Config::new(vec!["127.0.0.1:0".parse().unwrap()], sites);
    config.log.access = false;
    Arc::new(Kagami::start_config(config).await)
}

async fn get(kagami: &Kagami, site: usize, path: &str) -> u16 {
    kagami
        .send(
            kagami
                .client
                .get(kagami.url(path))
                .header("host", format!("s{site}.test")),
        )
        .await
        .status
}

#[tokio::test]
async fn sites_on_one_origin_reuse_one_connection() {
    let (addr, counts, _origin) = counting_origin(Duration::ZERO).await;
    let kagami = many_sites(addr).await;
    for site in 0..SITES {
        assert_eq!(get(&kagami, site, "/page").await, 200);
    }
    let accepted = counts.accepted.load(Ordering::SeqCst);
    assert!(
        accepted <= 2,
        "{SITES} sites one after the other opened {accepted} origin connections"
    );
}

#[tokio::test]
async fn idle_connections_to_one_origin_are_capped_across_sites() {
    let (addr, counts, _origin) = counting_origin(Duration::from_millis(300)).await;
    let kagami = many_sites(addr).await;
    // A burst: every site fetches at once, so the origin sees one connection per site.
    let mut burst = JoinSet::new();
    for site in 0..SITES {
        let kagami = kagami.clone();
        burst.spawn(async move { get(&kagami, site, "/burst").await });
    }
    while let Some(status) = burst.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    assert!(counts.accepted.load(Ordering::SeqCst) >= SITES / 2);
    // Once idle, at most the cap (the sites' origin_concurrency, 8) stays open.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let open = counts.open.load(Ordering::SeqCst);
    assert!(
        open <= 8,
        "{open} idle origin connections kept for one origin"
    );
}
