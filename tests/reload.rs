//! Live reload over real sockets and real TLS on 127.0.0.1: a reload adds and removes sites
//! while the cache survives, swaps a certificate under a large download in flight (which
//! completes intact while new handshakes get the new certificate), refuses a bad file and keeps
//! the old config, `POST /reload` needs the admin token, and a real SIGHUP to `kagami run`
//! picks up an edited file.

mod common;
#[path = "tls_support/pki.rs"]
mod pki;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Origin, Route};
use kagami::config::Config;
use kagami::server::Running;
use pki::{Ca, Leaf};

const LIMIT: Duration = Duration::from_secs(10);
const TOKEN: &str = "reload-test-token";

/// Site `a` (www.a.test, with a certificate) plus `extra` sites, one plain and one TLS
/// listener, an admin listener with `TOKEN`, all on ephemeral loopback ports.
fn config_text(origin: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
listen_tls = ["127.0.0.1:0"]

[log]
access = false

[admin]
listen = "127.0.0.1:0"
token = "{TOKEN}"

[[site]]
name = "a"
hosts = ["www.a.test"]
origin = "{origin}"
tls_cert = "a.pem"
tls_key = "a.key"
{extra}
"#
    )
}

fn site(name: &str, origin: &str) -> String {
    format!("\n[[site]]\nname = \"{name}\"\nhosts = [\"www.{name}.test\"]\norigin = \"{origin}\"\n")
}

struct Setup {
    dir: tempfile::TempDir,
    ca: Ca,
    a: Leaf,
    origin: Origin,
    running: Running,
}

impl Setup {
    /// Kagami serving `a` and `extra`, started from a file as `kagami run` is.
    async fn start(extra: &str) -> Setup {
        let origin = Origin::start().await;
        origin.route(
            "/page",
            Route::ok("page").header("cache-control", "max-age=600"),
        );
        origin.route("/", Route::ok("home"));
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("Kagami reload test CA");
        let a = ca.leaf(&["www.a.test"]);
        a.write(dir.path(), "a");
        let path = dir.path().join("kagami.toml");
        std::fs::write(&path, config_text(&origin.url(), extra)).unwrap();
        let config = Config::load(&path).unwrap();
        let running = kagami::server::start_with_file(&config, Some(path))
            .await
            .unwrap();
        Setup {
            dir,
            ca,
            a,
            origin,
            running,
        }
    }

    /// Rewrites the config file with `a` and `extra`.
    fn rewrite(&self, extra: &str) {
        let text = config_text(&self.origin.url(), extra);
        std::fs::write(self.dir.path().join("kagami.toml"), text).unwrap();
    }

    /// A fresh client (so fresh connections) trusting the test CA, every test name resolving
    /// to Kagami's plain or TLS listener as the URL's scheme asks.
    fn client(&self) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .tls_built_in_root_certs(false)
            .add_root_certificate(self.ca.reqwest_cert())
            .tls_info(true);
        for name in ["www.a.test", "www.b.test", "www.c.test"] {
            builder = builder.resolve(name, self.running.tls_addrs[0]);
        }
        builder.build().unwrap()
    }

    /// GET over plain HTTP with `host`, answered in time.
    async fn get(&self, host: &str, path: &str) -> (u16, String, String) {
        let url = format!("http://{}{path}", self.running.addrs[0]);
        let request = self.client().get(url).header("host", host);
        let response = tokio::time::timeout(LIMIT, request.send())
            .await
            .expect("answered in time")
            .expect("answered");
        let status = response.status().as_u16();
        let cache = (response.headers().get("cache-status"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (status, cache, response.text().await.unwrap())
    }

    fn admin(&self) -> String {
        format!("http://{}/reload", self.running.admin_addr.unwrap())
    }
}

fn peer_certificate(response: &reqwest::Response) -> Vec<u8> {
    let info = response.extensions().get::<reqwest::tls::TlsInfo>();
    info.and_then(|i| i.peer_certificate()).unwrap().to_vec()
}

async fn post(request: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
    let response = tokio::time::timeout(LIMIT, request.send())
        .await
        .expect("admin answered in time")
        .expect("admin answered");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(text.into()))
}

#[tokio::test]
async fn a_reload_adds_and_removes_sites_and_the_cache_survives() {
    let s = Setup::start(&site("b", "http://127.0.0.1:9")).await;
    let (status, cache, _) = s.get("www.a.test", "/page").await;
    assert_eq!(status, 200);
    assert!(cache.contains("stored"), "{cache}");
    assert_eq!(s.get("www.c.test", "/").await.0, 421, "c is not served yet");
    let store = s.running.current().store.clone();

    s.rewrite(&site("c", &s.origin.url()));
    let report = s.running.reload_file().await.expect("a valid file reloads");
    assert_eq!(report.added, ["c"]);
    assert_eq!(report.removed, ["b"]);
    assert_eq!(report.kept, ["a"]);
    assert_eq!(report.origin_state_kept, ["a"], "a's origin did not change");
    assert_eq!(report.certificates, 1);
    assert!(
        report.needs_restart.is_empty(),
        "{:?}",
        report.needs_restart
    );

    // The page stored before the reload is a hit after it: the same store, the same key.
    let (status, cache, body) = s.get("www.a.test", "/page").await;
    assert_eq!((status, body.as_str()), (200, "page"));
    assert!(cache.contains("hit"), "{cache}");
    assert_eq!(s.origin.hits("/page"), 1);
    assert_eq!(s.running.current().store.entry_count(), store.entry_count());
    // The added site is answered, the removed one is not.
    let (status, _, body) = s.get("www.c.test", "/").await;
    assert_eq!((status, body.as_str()), (200, "home"));
    assert_eq!(s.get("www.b.test", "/").await.0, 421, "b was removed");
    assert_eq!(s.running.current().sites().len(), 2);
}

#[tokio::test]
async fn a_certificate_swap_leaves_a_download_in_flight_intact() {
    let s = Setup::start("").await;
    let big: Bytes = (0..8 << 20)
        .map(|i: u32| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    s.origin.route("/big", Route::ok(big.clone()));
    let downloader = s.client();
    let mut download = tokio::time::timeout(LIMIT, downloader.get("https://www.a.test/big").send())
        .await
        .expect("answered in time")
        .unwrap();
    assert_eq!(download.status(), 200);
    assert_eq!(peer_certificate(&download), s.a.der);
    // A slow reader: a little, then nothing while the certificate is swapped.
    let mut received = Vec::with_capacity(big.len());
    while received.len() < 256 << 10 {
        let chunk = tokio::time::timeout(LIMIT, download.chunk()).await.unwrap();
        received.extend_from_slice(&chunk.unwrap().expect("more body"));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let renewed = s.ca.leaf(&["www.a.test"]);
    renewed.write(s.dir.path(), "a");
    let report = s.running.reload_file().await.expect("a valid file reloads");
    assert_eq!(report.kept, ["a"]);
    let fresh = tokio::time::timeout(LIMIT, s.client().get("https://www.a.test/").send())
        .await
        .expect("answered in time")
        .unwrap();
    assert_eq!(fresh.status(), 200);
    assert_eq!(
        peer_certificate(&fresh),
        renewed.der,
        "a new connection gets the new certificate"
    );

    let started = Instant::now();
    while let Some(chunk) = tokio::time::timeout(LIMIT, download.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        received.extend_from_slice(&chunk);
        assert!(started.elapsed() < LIMIT, "the download finished in time");
    }
    assert_eq!(received.len(), big.len(), "the whole download arrived");
    assert!(received == big, "and intact");
}

#[tokio::test]
async fn an_invalid_file_is_refused_with_every_problem_and_the_old_config_serves() {
    let s = Setup::start("").await;
    let bad = format!(
        "{}\n[[site]]\nname = \"d\"\nhosts = [\"www.d.test\"]\norigin = \"ftp://nowhere\"\n\
         tls_cert = \"missing.pem\"\ntls_key = \"missing.key\"\n",
        site("c", &s.origin.url())
    );
    s.rewrite(&bad);
    let err = s
        .running
        .reload_file()
        .await
        .expect_err("a bad file is refused");
    let problems = err.problems();
    assert!(problems.len() >= 2, "every problem is listed: {problems:?}");
    assert!(
        problems.iter().any(|p| p.contains("origin")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("tls_cert")),
        "{problems:?}"
    );
    assert!(
        problems.iter().all(|p| p.contains("kagami.toml")),
        "{problems:?}"
    );
    // The same answer through the admin API, as JSON.
    let request = s.client().post(s.admin()).bearer_auth(TOKEN);
    let (status, body) = post(request).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["reloaded"], false);
    assert_eq!(body["problems"].as_array().unwrap().len(), problems.len());
    // The old config keeps serving; nothing of the new one is.
    assert_eq!(s.get("www.a.test", "/page").await.0, 200);
    assert_eq!(s.get("www.c.test", "/").await.0, 421);
    assert_eq!(s.running.current().sites().len(), 1);
    // A syntax error is refused too.
    std::fs::write(s.dir.path().join("kagami.toml"), "[[site]\n").unwrap();
    let (status, body) = post(s.client().post(s.admin()).bearer_auth(TOKEN)).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(s.get("www.a.test", "/page").await.0, 200);
}

#[tokio::test]
async fn post_reload_needs_the_token_and_reports_what_changed() {
    let s = Setup::start("").await;
    s.rewrite(&site("c", &s.origin.url()));
    for token in [None, Some("reload-test-tokeN")] {
        let mut request = s.client().post(s.admin());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        assert_eq!(post(request).await.0, 401, "{token:?}");
        assert_eq!(s.get("www.c.test", "/").await.0, 421, "nothing reloaded");
    }
    let (status, body) = post(s.client().post(s.admin()).bearer_auth(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reloaded"], true);
    assert_eq!(body["report"]["added"], serde_json::json!(["c"]));
    assert_eq!(body["report"]["kept"], serde_json::json!(["a"]));
    assert_eq!(s.get("www.c.test", "/").await.0, 200);
    // A setting only a restart applies is reported and otherwise left alone.
    let text = config_text(&s.origin.url(), &site("c", &s.origin.url()))
        .replace("[log]", "max_connections = 5\n\n[log]");
    std::fs::write(s.dir.path().join("kagami.toml"), text).unwrap();
    let (status, body) = post(s.client().post(s.admin()).bearer_auth(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["report"]["needs_restart"],
        serde_json::json!(["server.max_connections"])
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain-HTTP GET with `host` to `addr`; `None` when Kagami is not answering (yet).
async fn plain_get(addr: SocketAddr, host: &str) -> Option<u16> {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let request = client.get(format!("http://{addr}/")).header("host", host);
    let response = tokio::time::timeout(Duration::from_secs(2), request.send()).await;
    Some(response.ok()?.ok()?.status().as_u16())
}

/// Polls `host` on `addr` until it answers `want` (at most `LIMIT`).
async fn wait_for(addr: SocketAddr, host: &str, want: u16) -> Option<u16> {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < LIMIT {
        last = plain_get(addr, host).await;
        if last == Some(want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

fn run_config(path: &Path, port: u16, origin: &str, extra: &str) {
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[site]]\nname = \"a\"\nhosts = [\"www.a.test\"]\norigin = \"{origin}\"\n{extra}"
    );
    std::fs::write(path, text).unwrap();
}

/// Stops the child at the end of the test, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn sighup_makes_kagami_run_pick_up_the_edited_file() {
    let origin = Origin::start().await;
    origin.route("/", Route::ok("home"));
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("kagami.toml");
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    run_config(&path, port, &origin.url(), "");
    let child = Command::new(env!("CARGO_BIN_EXE_kagami"))
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kagami run");
    let mut child = Child(child);
    assert_eq!(
        wait_for(addr, "www.a.test", 200).await,
        Some(200),
        "serving"
    );
    assert_eq!(plain_get(addr, "www.c.test").await, Some(421));

    run_config(&path, port, &origin.url(), &site("c", &origin.url()));
    let pid = child.0.id() as libc::pid_t;
    // SAFETY: kill only sends a signal, to the child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    assert_eq!(
        wait_for(addr, "www.c.test", 200).await,
        Some(200),
        "reloaded"
    );
    assert_eq!(plain_get(addr, "www.a.test").await, Some(200));
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "still running after SIGHUP"
    );

    // A bad edit is refused: still running, still serving both sites.
    std::fs::write(&path, "[[site]\n").unwrap();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(child.0.try_wait().unwrap().is_none(), "still running");
    assert_eq!(plain_get(addr, "www.c.test").await, Some(200));

    // SIGTERM still stops it cleanly.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "exited in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn a_request_in_flight_finishes_on_the_config_it_started_with() {
    let s = Setup::start(&site("b", "http://127.0.0.1:9")).await;
    s.origin
        .route("/slow", Route::ok("slow").delay(Duration::from_millis(800)));
    s.rewrite(&site("b", &s.origin.url()));
    s.running.reload_file().await.unwrap();
    // One keep-alive client throughout: its connection sees each reload from the next request.
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://{}/slow", s.running.addrs[0]);
    let slow = tokio::spawn(client.get(&url).header("host", "www.b.test").send());
    let started = Instant::now();
    while s.origin.hits("/slow") == 0 {
        assert!(started.elapsed() < LIMIT, "the request reached the origin");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // b goes away while its request waits for the origin.
    s.rewrite("");
    assert_eq!(s.running.reload_file().await.unwrap().removed, ["b"]);
    let answer = tokio::time::timeout(LIMIT, slow)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "slow");
    let again = client
        .get(&url)
        .header("host", "www.b.test")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 421, "the next request sees b removed");
}
