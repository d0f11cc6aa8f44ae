//! The adaptive origin concurrency limit (issue 9 §1) over real sockets: the origin's own 503s
//! lower it, one broken URL's do not.
mod common;

use common::{Kagami, Origin, Route};

fn limit(kagami: &Kagami) -> u64 {
    kagami.running.proxy.stats.origin_limits.now()[0].1
}

#[tokio::test]
async fn an_origin_answering_503_everywhere_lowers_the_limit() {
    let origin = Origin::start().await;
    origin.route("/", Route::ok("home"));
    let kagami = Kagami::start(&origin.url()).await;
    assert_eq!(limit(&kagami), 32);
    origin.fail_with(503);
    for i in 0..5 {
        let reply = kagami.get(&format!("/cold{i}")).await;
        assert_eq!(reply.status, 503);
    }
    assert!(limit(&kagami) < 32, "limit {}", limit(&kagami));
}

#[tokio::test]
async fn one_broken_url_cannot_talk_the_limit_down() {
    let origin = Origin::start().await;
    origin.route("/", Route::ok("home"));
    origin.route("/broken", Route::ok("down").status(503));
    let kagami = Kagami::start(&origin.url()).await;
    for _ in 0..20 {
        assert_eq!(kagami.get("/broken").await.status, 503);
    }
    assert_eq!(
        limit(&kagami),
        32,
        "the probe of / found the origin healthy"
    );
}

#[tokio::test]
async fn the_limit_can_be_turned_off() {
    let origin = Origin::start().await;
    origin.route("/", Route::ok("home"));
    let kagami = Kagami::start_with(&origin.url(), |site| site.protection.adaptive = false).await;
    origin.fail_with(503);
    for i in 0..5 {
        kagami.get(&format!("/cold{i}")).await;
    }
    assert_eq!(limit(&kagami), 32);
    assert_eq!(kagami.running.proxy.sites()[0].origin.limit(), 32);
}
