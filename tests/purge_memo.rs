//! A purge is seen at once on every worker thread, however warm that thread's memo of the
//! store (`src/cache/recent.rs`): many keep-alive connections on a four-worker runtime read one
//! page over and over, the origin changes it, one purge returns, and the very next request on
//! every connection gets the new page.
mod common;

use common::admin::{purged, start, TOKEN};
use common::{Origin, Route};
use kagami::config::SiteConfig;

const CONNECTIONS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_returned_purge_is_seen_by_every_worker() {
    let origin = Origin::start().await;
    let page = |body: &str| Route::ok(body.to_string()).header("cache-control", "max-age=600");
    origin.route("/notice", page("v1"));
    let site = SiteConfig::new("city", &["city.test"], &origin.url()).unwrap();
    let (kagami, admin) = start(vec![site], Some(TOKEN)).await;
    let get = || {
        let kagami = &kagami;
        async move {
            (kagami.send(
                kagami
                    .client
                    .get(kagami.url("/notice"))
                    .header("host", "city.test"),
            ))
            .await
        }
    };

    for round in 0..3 {
        let version = format!("v{}", round + 1);
        // Warm: every connection reads the page several times (memos on every worker).
        for _ in 0..4 {
            let replies = futures_util::future::join_all((0..CONNECTIONS).map(|_| get())).await;
            for reply in replies {
                assert_eq!(reply.status, 200);
                assert_eq!(reply.body, version.as_bytes(), "round {round}");
            }
        }
        let next = format!("v{}", round + 2);
        origin.route("/notice", page(&next));
        let body = r#"{"url": "http://city.test/notice"}"#;
        assert_eq!(purged(&kagami, &admin, body).await, 1);
        let replies = futures_util::future::join_all((0..CONNECTIONS).map(|_| get())).await;
        for reply in replies {
            assert_eq!(
                reply.body,
                next.as_bytes(),
                "round {round}: served after the purge"
            );
        }
    }
    // Every version was fetched: v1 to v4.
    assert!(origin.hits("/notice") >= 4, "{}", origin.hits("/notice"));
}
