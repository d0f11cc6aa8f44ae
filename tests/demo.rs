//! `kagami demo` runs the README's Quick start as written: the printed addresses work, the
//! second request is a hit, after the demo origin is taken down the pages the demo stored at
//! start are still served (an expired one stale, with 200), and after it is brought back a
//! page never stored is served again within about a second.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

/// Kills the demo process when the test ends, however it ends.
struct Demo {
    child: Child,
    /// Kept open: the demo treats a closed stdin as "run in the background".
    _stdin: Option<ChildStdin>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The URL printed after `label`, e.g. "Through Kagami:   http://127.0.0.1:PORT/".
fn url_after(line: &str, label: &str) -> Option<String> {
    let rest = &line[line.find(label)? + label.len()..];
    let url = rest.split_whitespace().next()?;
    url.starts_with("http://127.0.0.1:")
        .then(|| url.trim_end_matches('/').to_string())
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, String, String) {
    let response = tokio::time::timeout(Duration::from_secs(5), client.get(url).send())
        .await
        .unwrap_or_else(|_| panic!("GET {url} answered in time"))
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let cache_status = response
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = response.text().await.unwrap();
    (status, cache_status, body)
}

async fn head(client: &reqwest::Client, url: &str) -> (u16, String) {
    let response = tokio::time::timeout(Duration::from_secs(5), client.head(url).send())
        .await
        .unwrap_or_else(|_| panic!("HEAD {url} answered in time"))
        .unwrap_or_else(|e| panic!("HEAD {url}: {e}"));
    let cache_status = response
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (response.status().as_u16(), cache_status)
}

#[tokio::test]
async fn demo_serves_hits_and_stale_copies_during_an_outage() {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kagami"))
        .args(["demo", "--listen", "127.0.0.1:0", "--origin", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kagami demo");
    let stdout = child.stdout.take().unwrap();
    let stdin = child.stdin.take();
    let _demo = Demo {
        child,
        _stdin: stdin,
    };

    // Read stdout for the whole run (so the pipe never fills), forwarding lines.
    let (lines_tx, mut lines) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let (mut kagami, mut origin) = (None, None);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while kagami.is_none() || origin.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = tokio::time::timeout(left, lines.recv())
            .await
            .unwrap_or_else(|_| panic!("the demo printed its addresses in time; got {seen:#?}"))
            .unwrap_or_else(|| panic!("the demo exited early; printed {seen:#?}"));
        kagami = kagami.or_else(|| url_after(&line, "Through Kagami:"));
        origin = origin.or_else(|| url_after(&line, "Demo origin:"));
        seen.push(line);
    }
    let (kagami, origin) = (kagami.unwrap(), origin.unwrap());
    assert_ne!(kagami, origin);

    let client = reqwest::Client::builder().no_proxy().build().unwrap();

    // The README's Quick start, step by step.
    // 1. `curl -sI .../water.html` twice: a miss that is stored, then a hit.
    let (status, cache_status) = head(&client, &format!("{kagami}/water.html")).await;
    assert_eq!(status, 200);
    assert!(
        cache_status.contains("fwd=uri-miss") && cache_status.contains("stored"),
        "{cache_status}"
    );
    let (status, cache_status) = head(&client, &format!("{kagami}/water.html")).await;
    assert_eq!(status, 200);
    let ttl: i64 = cache_status
        .strip_prefix("kagami; hit; ttl=")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("a hit with a ttl: {cache_status}"));
    assert!(ttl > 60, "fresh for minutes, not seconds: {cache_status}");

    // The switch is refused through Kagami, without its header, and from another site's page.
    let switch = |request: reqwest::RequestBuilder| async move {
        tokio::time::timeout(Duration::from_secs(5), request.send())
            .await
            .expect("outage switch answered in time")
            .expect("outage switch")
            .status()
            .as_u16()
    };
    let header = ("x-kagami-demo", "1");
    for refused in [
        client
            .post(format!("{kagami}/_demo/outage"))
            .header(header.0, header.1),
        client.post(format!("{origin}/_demo/outage")),
        client
            .post(format!("{origin}/_demo/outage"))
            .header(header.0, header.1)
            .header("origin", "http://evil.example"),
        // DNS rebinding: a page whose name now points at 127.0.0.1, same-origin to itself.
        client
            .post(format!("{origin}/_demo/outage"))
            .header(header.0, header.1)
            .header("host", "rebind.example")
            .header("origin", "http://rebind.example"),
    ] {
        assert_eq!(switch(refused).await, 403);
    }
    let (status, _, _) = get(&client, &format!("{origin}/status.html")).await;
    assert_eq!(status, 200, "the refused switches changed nothing");

    // 2. The outage switch.
    let outage = client
        .post(format!("{origin}/_demo/outage"))
        .header(header.0, header.1);
    assert_eq!(switch(outage).await, 200);
    let (status, _, _) = get(&client, &format!("{origin}/status.html")).await;
    assert_eq!(status, 503, "the demo origin is down");

    // 3. `curl -s .../`: the index, stored by the demo at start, is still served.
    let (status, _, index) = get(&client, &format!("{kagami}/")).await;
    assert_eq!(status, 200);
    assert!(index.contains("Kagami City"), "{index}");

    // 4. /status.html (stored at start, fresh for 5 s): once expired, the stored copy is served
    // because the origin fails.
    let stale = loop {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no stale answer for /status.html"
        );
        let (status, cache_status, _) = get(&client, &format!("{kagami}/status.html")).await;
        assert_eq!(
            status, 200,
            "Kagami keeps serving /status.html: {cache_status}"
        );
        if cache_status.contains("detail=") {
            break cache_status;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(stale.contains("detail=\"grace\""), "{stale}");
    let ttl: i64 = stale
        .split(';')
        .find_map(|m| m.trim().strip_prefix("ttl="))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("a ttl in {stale}"));
    assert!(ttl <= 0, "an expired copy: {stale}");

    // 5. A page nobody stored: the emergency page, soon because the circuit is open.
    let since = Instant::now();
    loop {
        let (status, cache_status) = head(&client, &format!("{kagami}/roads.html")).await;
        assert_eq!(status, 503, "{cache_status}");
        if cache_status.contains("circuit-open") {
            break;
        }
        assert!(since.elapsed() < Duration::from_secs(10), "{cache_status}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // 6. Recover: the cold page is back within about a second (not circuit_open's 10 s).
    let recover = client
        .post(format!("{origin}/_demo/recover"))
        .header(header.0, header.1);
    assert_eq!(switch(recover).await, 200);
    let recovered = Instant::now();
    loop {
        let (status, cache_status) = head(&client, &format!("{kagami}/roads.html")).await;
        if status == 200 {
            assert!(cache_status.contains("fwd=uri-miss"), "{cache_status}");
            break;
        }
        assert!(
            recovered.elapsed() < Duration::from_millis(2500),
            "still {status} {cache_status} {:?} after recovering",
            recovered.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
