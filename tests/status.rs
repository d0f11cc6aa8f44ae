//! `GET /status` (per-site JSON that moves as requests are made, behind the token) and the
//! dashboard at `/`, loaded in real headless Chromium: it renders every site and logs nothing
//! to the console.
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::admin::{purged, send, start, status, TOKEN};
use common::{Kagami, Origin, Reply, Route};
use kagami::config::SiteConfig;
use serde_json::Value;

async fn two_sites(origin: &Origin, token: Option<&str>) -> (Kagami, String) {
    let sites = ["iwate", "miyagi"]
        .map(|name| SiteConfig::new(name, &[&format!("{name}.test")], &origin.url()).unwrap());
    start(sites.to_vec(), token).await
}

async fn get(kagami: &Kagami, host: &str, path: &str) -> Reply {
    kagami
        .send(kagami.client.get(kagami.url(path)).header("host", host))
        .await
}

fn site<'a>(status: &'a Value, name: &str) -> &'a Value {
    (status["sites"].as_array().expect("a list of sites"))
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("{name} in {status}"))
}

#[tokio::test]
async fn status_moves_as_requests_are_made() {
    let origin = Origin::start().await;
    for path in ["/a", "/b"] {
        origin.route(
            path,
            Route::ok("page").header("cache-control", "max-age=600"),
        );
    }
    let (kagami, base) = two_sites(&origin, Some(TOKEN)).await;

    let before = status(&kagami, &base).await;
    let iwate = site(&before, "iwate");
    assert_eq!(iwate["hosts"], serde_json::json!(["iwate.test"]));
    assert_eq!(iwate["health"], "healthy");
    assert_eq!(iwate["origins"][0]["circuit"], "closed");
    assert_eq!(iwate["origins"][0]["url"], origin.url());
    assert_eq!(iwate["adaptive_limit"], 32);
    assert_eq!(iwate["last_minute"]["requests"], 0);
    assert!(iwate["last_minute"]["hit_ratio"].is_null());
    assert_eq!(iwate["stored"]["objects"], 0);

    get(&kagami, "iwate.test", "/a").await;
    get(&kagami, "iwate.test", "/a").await;
    get(&kagami, "miyagi.test", "/b").await;
    // The store is counted at most every USAGE_FOR (see the test below).
    let after = status_once(&kagami, &base, |s| s["store"]["objects"] == 2).await;
    let (iwate, miyagi) = (site(&after, "iwate"), site(&after, "miyagi"));
    let minute = &iwate["last_minute"];
    assert_eq!(
        (&minute["requests"], &minute["hits"], &minute["misses"]),
        (&Value::from(2), &Value::from(1), &Value::from(1)),
        "{after}"
    );
    assert_eq!(minute["hit_ratio"], 0.5);
    let rate = minute["requests_per_second"].as_f64().unwrap();
    assert!((rate - 2.0 / 60.0).abs() < 1e-9, "{rate}");
    assert_eq!(iwate["stored"]["objects"], 1);
    assert!(iwate["stored"]["bytes"].as_u64().unwrap() > 200, "{after}");
    assert_eq!(miyagi["last_minute"]["requests"], 1);
    assert_eq!(miyagi["stored"]["objects"], 1);
    assert_eq!(after["store"]["objects"], 2);
    assert!(after["store"]["capacity"].as_u64().unwrap() > 0);

    // The origin goes down: the purged page is served stale (grace), counted by reason, and
    // the site's health says so.
    purged(&kagami, &base, r#"{"url": "http://iwate.test/a"}"#).await;
    origin.kill();
    let reply = get(&kagami, "iwate.test", "/a").await;
    assert!(reply.cache_status().contains("grace"), "{reply:?}");
    let down = status(&kagami, &base).await;
    let iwate = site(&down, "iwate");
    assert_eq!(iwate["last_minute"]["stale"], 1, "{down}");
    assert_eq!(iwate["last_minute"]["stale_by_reason"]["grace"], 1);
    assert_ne!(iwate["health"], "healthy", "{down}");
    assert_eq!(site(&down, "miyagi")["last_minute"]["stale"], 0);
}

/// `/status` once `ready` holds for it: asked every 200 ms, for at most 5 s.
async fn status_once(kagami: &Kagami, base: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let now = status(kagami, base).await;
        if ready(&now) {
            return now;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "never: {now}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Counting what each site stores walks the whole store (hundreds of thousands of entries on
/// a real Kagami), and `/status` used to do it on every call: anyone with the token could keep
/// a core busy by asking in a loop. One walk now answers for USAGE_FOR (2 s), and the calls
/// in between are told its counts; a purge makes the next call walk again.
#[tokio::test]
async fn the_store_is_walked_at_most_every_two_seconds_for_status() {
    let origin = Origin::start().await;
    for path in ["/a", "/b", "/c"] {
        origin.route(
            path,
            Route::ok("page").header("cache-control", "max-age=600"),
        );
    }
    let (kagami, base) = two_sites(&origin, Some(TOKEN)).await;
    get(&kagami, "iwate.test", "/a").await;
    // Before the walk, so the walk's counts expire no sooner than 2 s after this.
    let walked = Instant::now();
    let first = status(&kagami, &base).await;
    assert_eq!(site(&first, "iwate")["stored"]["objects"], 1, "{first}");
    get(&kagami, "iwate.test", "/b").await;
    // Many calls at once, then one by one: all told the first walk's count.
    let calls = (0..20).map(|_| status(&kagami, &base));
    let mut answers = futures_util::future::join_all(calls).await;
    answers.push(status(&kagami, &base).await);
    if walked.elapsed() < Duration::from_millis(1500) {
        for answer in &answers {
            assert_eq!(site(answer, "iwate")["stored"]["objects"], 1, "{answer}");
        }
    }
    // The counts catch up once the walk is older than 2 s.
    let later = status_once(&kagami, &base, |s| {
        site(s, "iwate")["stored"]["objects"] == 2
    })
    .await;
    assert!(walked.elapsed() >= Duration::from_secs(2), "{later}");
    // A purge is seen at once.
    get(&kagami, "iwate.test", "/c").await;
    purged(&kagami, &base, r#"{"url": "http://iwate.test/a"}"#).await;
    let after_purge = status(&kagami, &base).await;
    assert_eq!(
        site(&after_purge, "iwate")["stored"]["objects"],
        3,
        "{after_purge}"
    );
}

#[tokio::test]
async fn status_always_needs_the_token_and_the_page_needs_none() {
    let origin = Origin::start().await;
    let (kagami, base) = two_sites(&origin, Some(TOKEN)).await;
    let c = &kagami.client;
    assert_eq!(send(c.get(format!("{base}/status"))).await.0, 401);
    let wrong = c.get(format!("{base}/status")).bearer_auth("nope");
    assert_eq!(send(wrong).await.0, 401);

    // The page holds no data, so it needs no token; it may only talk to this listener.
    let page = c.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let html = page.text().await.unwrap();
    assert!(
        html.contains("サイト / Site") && !html.contains("http://") && !html.contains("https://")
    );
    let post = c.post(format!("{base}/")).bearer_auth(TOKEN);
    assert_eq!(send(post).await.0, 405);

    // Without a configured token (loopback only), only the probes and `/metrics` are served:
    // `/status` names every site, host and origin.
    let (open, open_base) = two_sites(&origin, None).await;
    let (code, body) = send(open.client.get(format!("{open_base}/status"))).await;
    assert_eq!(code, 403, "{body}");
    assert!(!body.contains("miyagi"), "{body}");
    let (code, _) = send(open.client.get(format!("{open_base}/metrics"))).await;
    assert_eq!(code, 200);
}

/// Runs Chromium with `args` for at most a minute; returns its stderr.
fn chromium(binary: &Path, profile: &Path, args: &[String]) -> String {
    let stderr = profile.with_extension("stderr");
    let mut child = Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            // Nothing but loopback (which Chromium never proxies) may leave the browser.
            "--proxy-server=http://127.0.0.1:9",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=412,915",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("chromium starts");
    let started = Instant::now();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut out).ok();
        out
    });
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium failed: {status}");
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium took over a minute");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = reader.join().unwrap();
    let log = std::fs::read_to_string(&stderr).unwrap_or_default();
    format!("{out}\n--- stderr ---\n{log}")
}

fn find_chromium() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Chromium, or `None` (and a SKIPPED line) where it is not installed; on CI it must be.
fn chromium_or_skip() -> Option<std::path::PathBuf> {
    let found = find_chromium();
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but chromium is missing: .ci/run installs it"
        );
        eprintln!("SKIPPED: chromium is not installed (apt-get install -y chromium)");
    }
    found
}

#[tokio::test]
async fn the_dashboard_renders_every_site_in_chromium_without_console_errors() {
    let Some(binary) = chromium_or_skip() else {
        return;
    };
    let origin = Origin::start().await;
    origin.route("/", Route::ok("top").header("cache-control", "max-age=600"));
    let (kagami, base) = two_sites(&origin, Some(TOKEN)).await;
    get(&kagami, "iwate.test", "/").await;
    get(&kagami, "iwate.test", "/").await;

    let dir = tempfile::tempdir().unwrap();
    let url = format!("{base}/#token={TOKEN}");
    let shot = dir.path().join("dashboard.png");
    let runs = [
        ("dom", vec!["--dump-dom".to_string(), url.clone()]),
        (
            "shot",
            vec![format!("--screenshot={}", shot.display()), url],
        ),
    ];
    let mut outputs = Vec::new();
    for (name, args) in runs {
        let profile = dir.path().join(name);
        let binary = binary.clone();
        // Blocking: the test's runtime also runs the Kagami that Chromium talks to.
        let output = tokio::task::spawn_blocking(move || chromium(&binary, &profile, &args));
        outputs.push(output.await.unwrap());
    }
    let dom = &outputs[0];
    assert!(dom.contains("data-state=\"ok\""), "{dom}");
    for name in ["iwate", "miyagi"] {
        assert!(dom.contains(&format!("data-site=\"{name}\"")), "{dom}");
        assert!(dom.contains(&format!("{name}.test")), "{dom}");
    }
    assert!(
        dom.contains("サイト / Site") && dom.contains("正常 / healthy"),
        "{dom}"
    );
    // iwate's two requests: a miss, then a hit.
    assert!(dom.contains("50.0 %"), "{dom}");
    for output in &outputs {
        let console: Vec<&str> = output.lines().filter(|l| l.contains(":CONSOLE")).collect();
        assert!(console.is_empty(), "console output: {console:#?}");
    }
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 5_000,
        "{} bytes",
        png.len()
    );
    if let Some(keep) = std::env::var_os("KAGAMI_KEEP_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
}

/// A `#token=` link with a bad %-escape (cut short in a chat message, typed by hand) made
/// `decodeURIComponent` throw: the page's script stopped with an uncaught URIError and showed
/// nothing at all. It now says what is wrong and asks for the token.
#[tokio::test]
async fn a_bad_token_fragment_is_explained_in_chromium_not_thrown() {
    let Some(binary) = chromium_or_skip() else {
        return;
    };
    let origin = Origin::start().await;
    let (_kagami, base) = two_sites(&origin, Some(TOKEN)).await;
    let dir = tempfile::tempdir().unwrap();
    let args = vec![
        "--dump-dom".to_string(),
        format!("{base}/#token=ab%zz%E0%A4%A"),
    ];
    let profile = dir.path().join("bad-fragment");
    let dom = tokio::task::spawn_blocking(move || chromium(&binary, &profile, &args))
        .await
        .unwrap();
    let console: Vec<&str> = dom.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console output: {console:#?}");
    assert!(dom.contains("data-state=\"auth\""), "{dom}");
    assert!(
        dom.contains("The #token= in the address is not valid"),
        "{dom}"
    );
}

/// DNS rebinding: a web page on `rebind.attacker.example` whose name then resolves to 127.0.0.1
/// reaches a tokenless loopback admin listener as its own origin, and could read `/status`
/// and `/metrics` (site names, hosts, origin addresses). The Host it sends names its own
/// domain, so a tokenless listener answers only Hosts that are loopback by themselves.
#[tokio::test]
async fn a_tokenless_admin_api_refuses_a_rebinding_host() {
    use common::raw::{body_of, exchange, status_of};
    let origin = Origin::start().await;
    let (kagami, base) = two_sites(&origin, None).await;
    let admin = kagami.running.admin_addr.expect("an admin listener");
    let port = admin.port();
    let get = |path: &str, host: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
    };
    for path in ["/status", "/metrics", "/"] {
        for host in [
            format!("rebind.attacker.example:{port}"),
            "rebind.attacker.example".to_string(),
            format!("127.0.0.1.attacker.example:{port}"),
            format!("localhost.attacker.example:{port}"),
        ] {
            let raw = exchange(admin, get(path, &host)).await;
            assert_eq!(status_of(&raw), 403, "{path} for {host}: {raw}");
            assert!(!body_of(&raw).contains("miyagi"), "{raw}");
        }
        // Loopback names and addresses (what the operator's browser or curl sends) still work.
        for host in [
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            "LOCALHOST".to_string(),
            format!("[::1]:{port}"),
        ] {
            let raw = exchange(admin, get(path, &host)).await;
            // `/status` needs a token whatever the Host (see the test above).
            let expected = if path == "/status" { 403 } else { 200 };
            assert_eq!(status_of(&raw), expected, "{path} for {host}: {raw}");
        }
    }
    // A request without a Host (HTTP/1.0) says nothing about where it came from: refused too.
    let raw = exchange(admin, "GET /status HTTP/1.0\r\n\r\n").await;
    assert_eq!(status_of(&raw), 403, "{raw}");
    // Probes need no Host check: they tell nothing.
    let raw = exchange(admin, get("/healthz", "probe.example")).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    // With a token, the Host does not matter (the token is what a rebinding page lacks).
    let (guarded, guarded_base) = two_sites(&origin, Some(TOKEN)).await;
    let request = (guarded.client.get(format!("{guarded_base}/status")))
        .header("host", "kagami-admin.internal")
        .bearer_auth(TOKEN);
    assert_eq!(send(request).await.0, 200);
    drop(base);
}

/// The counts of one walk belong to the sites that were walked: after a reload adds a site,
/// `/status` walks again at once instead of telling the new site it stores nothing for 2 s.
#[tokio::test]
async fn a_reload_makes_status_walk_the_store_again() {
    let origin = Origin::start().await;
    origin.route(
        "/a",
        Route::ok("page").header("cache-control", "max-age=600"),
    );
    let (kagami, base) = two_sites(&origin, Some(TOKEN)).await;
    get(&kagami, "iwate.test", "/a").await;
    let walked = Instant::now();
    let first = status(&kagami, &base).await;
    assert_eq!(site(&first, "iwate")["stored"]["objects"], 1, "{first}");
    let sites = ["iwate", "miyagi", "fukushima"]
        .map(|name| SiteConfig::new(name, &[&format!("{name}.test")], &origin.url()).unwrap());
    let mut config =
        kagami::config::Config::new(vec!["127.0.0.1:0".parse().unwrap()], sites.to_vec());
    config.log.access = false;
    config.admin = Some(kagami::config::AdminConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        Some(TOKEN),
    ));
    let report = kagami
        .running
        .reload(&config)
        .await
        .expect("a valid config reloads");
    assert_eq!(report.added, ["fukushima"]);
    assert_eq!(get(&kagami, "fukushima.test", "/a").await.status, 200);
    let after = status(&kagami, &base).await;
    // Only meaningful while the first walk would still be answering.
    if walked.elapsed() < Duration::from_millis(1500) {
        assert_eq!(site(&after, "fukushima")["stored"]["objects"], 1, "{after}");
    }
}
