//! Two zero-window HTTP/2 streams answered whole from the same large mapped body, on a
//! connection kept busy by other requests: once the store has let go of the body, neither
//! answer is the pages' only holder (`StoredBody::is_unique`), which is what `Held` used to ask,
//! so it neither charged them nor let the watchdog drop them (the same held for heap bodies).
//! It now asks whether any entry still holds the body (`StoredBody::let_go_by_store`). One test
//! in this file (`mapped::live()` is global).
mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{cacheable, h2_zero_window, payload, Kagami, Origin};
use kagami::cache::mapped::live;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_stalled_answers_of_a_replaced_mapped_body_let_go_of_it() {
    const LEN: usize = 12 << 20;
    let origin = Origin::start().await;
    let kagami = Kagami::for_large_bodies(
        &origin.url(),
        128 << 20,
        256 << 20,
        Some(Duration::from_secs(1)),
    )
    .await;
    origin.route("/small", cacheable(Bytes::from_static(b"tick")));
    for streams in [1usize, 2] {
        let body = payload(LEN, (streams) as u32);
        origin.route("/doc.pdf", cacheable(body.clone()));
        if streams > 1 {
            let posted = kagami
                .send(kagami.client.post(kagami.url("/doc.pdf")).body("edit"))
                .await;
            assert_eq!(posted.status, 200);
        }
        assert!(kagami.get("/doc.pdf").await.body == body);
        kagami.running.proxy.store.entry_count();
        assert_eq!(live(), 1);

        let (mut client, driver) = h2_zero_window(kagami.addr).await;
        let mut held = Vec::new();
        for _ in 0..streams {
            let request = http::Request::get(format!("http://{}/doc.pdf", kagami.addr))
                .body(())
                .unwrap();
            let (response, _) = client.send_request(request, true).unwrap();
            held.push(response.await.unwrap());
            client = client.ready().await.unwrap();
        }
        let new = payload(LEN, (100 + streams) as u32);
        origin.route("/doc.pdf", cacheable(new.clone()));
        let posted = kagami
            .send(kagami.client.post(kagami.url("/doc.pdf")).body("edit"))
            .await;
        assert_eq!(posted.status, 200);
        assert!(kagami.get("/doc.pdf").await.body == new);

        // The connection stays busy (a HEAD a quarter second, answered at once) while the
        // stalled streams wait; the old pages must go within a few stall times.
        let since = Instant::now();
        let mut now = live();
        while now != 1 && since.elapsed() < Duration::from_secs(6) {
            kagami.running.proxy.store.entry_count();
            let request = http::Request::head(format!("http://{}/small", kagami.addr))
                .body(())
                .unwrap();
            if let Ok((response, _)) = client.send_request(request, true) {
                let _ = tokio::time::timeout(Duration::from_secs(1), response).await;
            }
            if let Ok(ready) = client.clone().ready().await {
                client = ready;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            now = live();
        }
        eprintln!(
            "{streams} stream(s): {now} mappings {:?} after; connection open: {}, in flight {} bytes",
            since.elapsed(),
            !driver.is_finished(),
            kagami
                .running
                .proxy
                .stats
                .inflight_bytes
                .load(std::sync::atomic::Ordering::Acquire)
        );
        assert_eq!(
            now, 1,
            "{streams} stalled stream(s) keep the replaced body mapped"
        );
        drop(held);
        driver.abort();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
