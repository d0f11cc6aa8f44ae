//! Issue 9, "slow recovery": once the origin is back, cold pages work again within about 2 s,
//! even with the default `circuit_open` of 10 s and after a long outage (a refused connection
//! does not lengthen the wait between probes).
mod common;

use std::time::{Duration, Instant};

use common::{Kagami, Origin, Route};

#[tokio::test]
async fn cold_pages_work_again_within_two_seconds_of_the_origins_return() {
    let origin = Origin::start().await;
    for i in 0..100 {
        origin.route(&format!("/cold/{i}"), Route::ok(format!("cold {i}")));
    }
    let kagami = Kagami::start_with(&origin.url(), |site| {
        site.protection.circuit_failures = 2;
        site.failure_backoff = Duration::from_millis(1);
        assert_eq!(site.protection.circuit_open, Duration::from_secs(10));
    })
    .await;
    let stats = || kagami.running.proxy.stats.snapshot();
    assert_eq!(kagami.get("/cold/0").await.status, 200);

    origin.kill();
    let mut next = 1;
    while stats().circuit_opened == 0 {
        assert!(next < 10, "the circuit did not open");
        assert_eq!(kagami.get(&format!("/cold/{next}")).await.status, 503);
        next += 1;
    }
    // A long outage: visitors keep coming, and every probe is refused.
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_millis(3500) {
        let reply = kagami.get(&format!("/cold/{next}")).await;
        assert_eq!(reply.status, 503, "{}", reply.cache_status());
        next += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    origin.restart().await;
    let back = Instant::now();
    loop {
        let reply = kagami.get(&format!("/cold/{next}")).await;
        next += 1;
        if reply.status == 200 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_millis(2500),
            "cold pages still refused {:?} after the origin came back: {}",
            back.elapsed(),
            reply.cache_status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(next < 100);
    assert_eq!(stats().circuit_opened, 1, "one outage, one opening");
}
