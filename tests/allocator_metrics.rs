//! `kagami_allocator_bytes`: the `kagami` binary (jemalloc, the default build) exports
//! jemalloc's counts on `/metrics`, and they add up the way the README says.
#![cfg(feature = "jemalloc")]
mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Origin, Route};

/// A `kagami run`, killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

/// The value of `kagami_allocator_bytes{kind="<kind>"}` in a scrape.
fn kind(metrics: &str, kind: &str) -> Option<u64> {
    let prefix = format!("kagami_allocator_bytes{{kind=\"{kind}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn the_binary_exports_jemallocs_counts_and_they_follow_the_store() {
    let origin = Origin::start().await;
    // Bodies below the size that gets a mapping of its own (src/cache/body.rs), so they are
    // allocated through jemalloc.
    const PAGES: usize = 16;
    const BODY: usize = 96 << 10;
    for i in 0..PAGES {
        origin.route(
            &format!("/p/{i}"),
            Route::ok(vec![b'x'; BODY]).header("cache-control", "max-age=600"),
        );
    }
    let dir = tempfile::tempdir().expect("a temp dir");
    let (port, admin) = (free_port(), free_port());
    let config = dir.path().join("kagami.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n\
             [[site]]\nname = \"city\"\nhosts = [\"127.0.0.1\"]\norigin = \"{}\"\n",
            origin.url()
        ),
    )
    .expect("write the config");
    let _kagami = Running(
        Command::new(env!("CARGO_BIN_EXE_kagami"))
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start kagami run"),
    );
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("a client");
    let scrape = || async {
        let url = format!("http://127.0.0.1:{admin}/metrics");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(response) = client.get(&url).send().await {
                return response.text().await.expect("a scrape");
            }
            assert!(Instant::now() < deadline, "no admin listener within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let before = scrape().await;
    for name in [
        "allocated",
        "active",
        "metadata",
        "resident",
        "mapped",
        "retained",
    ] {
        assert!(kind(&before, name).is_some(), "no {name} in:\n{before}");
    }
    let count = |text: &str, name| kind(text, name).unwrap_or(0);
    assert!(count(&before, "allocated") > 0);
    assert!(count(&before, "active") >= count(&before, "allocated"));
    assert!(count(&before, "resident") >= count(&before, "active"));
    assert!(
        before.contains("# HELP kagami_allocator_bytes")
            && before.contains("# TYPE kagami_allocator_bytes gauge"),
        "{before}"
    );

    // The stored bodies are allocated through jemalloc: its count grows by at least theirs.
    for i in 0..PAGES {
        for wanted in ["fwd=uri-miss", "hit"] {
            let response = client
                .get(format!("http://127.0.0.1:{port}/p/{i}"))
                .send()
                .await
                .expect("an answer");
            let status = response.headers()["cache-status"]
                .to_str()
                .unwrap_or("")
                .to_string();
            assert!(status.contains(wanted), "{wanted}: {status}");
            assert_eq!(response.bytes().await.expect("a body").len(), BODY);
        }
    }
    let after = scrape().await;
    assert!(
        count(&after, "allocated") >= count(&before, "allocated") + (PAGES * BODY) as u64,
        "before:\n{before}\nafter:\n{after}"
    );
}
