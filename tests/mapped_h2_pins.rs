//! A small Range answer from a large mapped body (`src/cache/mapped.rs`) on an HTTP/2 stream
//! whose flow-control window the client keeps at zero: once the store has let go of the body,
//! the answer must not keep its pages mapped, uncounted, until the connection times out. One test in
//! this file, so that `kagami::cache::mapped::live()` counts only this test's mappings.
mod common;

use std::time::{Duration, Instant};

use common::{cacheable, h2_zero_window, payload, Kagami, Origin};
use kagami::cache::mapped::live;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_window_range_streams_do_not_keep_replaced_pages_mapped() {
    const LEN: usize = 12 << 20;
    const PAGES: usize = 3;
    let origin = Origin::start().await;
    let kagami = Kagami::for_large_bodies(
        &origin.url(),
        128 << 20,
        256 << 20,
        Some(Duration::from_secs(3)),
    )
    .await;
    for i in 0..PAGES {
        let path = format!("/doc/{i}.pdf");
        let body = payload(LEN, (i) as u32);
        origin.route(&path, cacheable(body.clone()));
        assert!(kagami.get(&path).await.body == body);
    }
    kagami.running.proxy.store.entry_count();
    assert_eq!(live(), PAGES);

    // One connection, a small range of each page on a stream that may receive nothing.
    let (mut client, driver) = h2_zero_window(kagami.addr).await;
    let mut responses = Vec::new();
    for i in 0..PAGES {
        let request = http::Request::get(format!("http://{}/doc/{i}.pdf", kagami.addr))
            .header("range", "bytes=0-1023")
            .body(())
            .unwrap();
        let response = common::h2_answer(&mut client, request).await;
        assert_eq!(response.status(), 206);
        responses.push(response);
        client = client.ready().await.unwrap();
    }

    // Every page changes; the store now holds only the new bodies.
    for i in 0..PAGES {
        let path = format!("/doc/{i}.pdf");
        let body = payload(LEN, (100 + i) as u32);
        origin.route(&path, cacheable(body.clone()));
        let posted = kagami
            .send(kagami.client.post(kagami.url(&path)).body("edit"))
            .await;
        assert_eq!(posted.status, 200);
        assert!(kagami.get(&path).await.body == body);
    }
    // The 1 KiB answers waiting on their streams must not keep 12 MiB bodies mapped (and
    // uncounted: they are not `Held`, so never charged) until the connection times out.
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut now = live();
    while now != PAGES && Instant::now() < deadline {
        kagami.running.proxy.store.entry_count();
        tokio::time::sleep(Duration::from_millis(50)).await;
        now = live();
    }
    assert!(!driver.is_finished(), "the connection is still open");
    assert_eq!(
        now,
        PAGES,
        "{} replaced {LEN}-byte bodies stay mapped for 1 KiB ranges on zero-window streams",
        now.saturating_sub(PAGES)
    );
    drop(responses);
    driver.abort();
}
