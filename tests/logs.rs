//! `[log] format = "json"`: the `kagami` binary writes one JSON object per stdout line, and
//! its access-log lines carry site, status, cache outcome, the body bytes really handed out
//! (fewer than the length for a download the client cut off), duration and client address.
mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Origin, Route};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KAGAMI: &str = env!("CARGO_BIN_EXE_kagami");

/// A `kagami run` whose stdout lines arrive on a channel; killed when dropped.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(config: &Path) -> Running {
        let mut child = Command::new(KAGAMI)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start kagami run");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, lines }
    }

    /// The next line (at most 10 s away), which must be one JSON object.
    fn next(&self) -> serde_json::Value {
        self.next_raw().1
    }

    /// The next line as written, and as parsed.
    fn next_raw(&self) -> (String, serde_json::Value) {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(10))
            .expect("a log line within 10 s");
        let value: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        assert!(value.is_object(), "{line}");
        (line, value)
    }

    /// Skips lines until one matches `wanted` (at most 50 lines).
    fn until(&self, wanted: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        for _ in 0..50 {
            let line = self.next();
            if wanted(&line) {
                return line;
            }
        }
        panic!("no such log line in 50");
    }

    fn access(&self) -> serde_json::Value {
        self.until(|l| l["target"] == "kagami::access")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

/// A `kagami run` with JSON logs, one site `city` on `origin` and the `[admin]` lines given,
/// once it has logged that it is serving: its folder, its port, the process and that line.
fn serving(origin: &Origin, admin: &str) -> (tempfile::TempDir, u16, Running, serde_json::Value) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let port = free_port();
    let config = dir.path().join("kagami.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\n\n[log]\nformat = \"json\"\n\n\
             [admin]\n{admin}\n\n[[site]]\nname = \"city\"\n\
             hosts = [\"127.0.0.1\"]\norigin = \"{}\"\n",
            origin.url()
        ),
    )
    .expect("write the config");
    let kagami = Running::start(&config);
    let line = kagami.until(|l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.contains("kagami is serving"))
    });
    (dir, port, kagami, line)
}

#[tokio::test]
async fn json_access_lines_tell_site_status_cache_bytes_and_a_cut_off_download() {
    let origin = Origin::start().await;
    origin.route(
        "/page",
        Route::ok("hello kagami").header("cache-control", "max-age=600"),
    );
    // Not storable (no freshness), so relayed from the origin only as fast as the client reads;
    // larger than any socket buffers, so a client that leaves early leaves most of it unsent.
    const BIG: usize = 24 << 20;
    origin.route("/big", Route::ok(vec![b'x'; BIG]));

    let (_dir, port, kagami, serving) = serving(&origin, "listen = \"127.0.0.1:0\"");
    assert_eq!(serving["level"], "INFO");

    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/page");
    for expected in ["miss", "hit"] {
        let reply = tokio::time::timeout(Duration::from_secs(10), client.get(&url).send())
            .await
            .expect("an answer in time")
            .expect("an answer");
        assert_eq!(reply.text().await.expect("a body"), "hello kagami");
        let line = kagami.access();
        assert_eq!(line["site"], "city", "{line}");
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["cache"], expected, "{line}");
        assert_eq!(line["bytes"], "hello kagami".len(), "{line}");
        assert_eq!(line["complete"], true, "{line}");
        assert_eq!(line["client"], "127.0.0.1", "{line}");
        assert_eq!(line["method"], "GET", "{line}");
        assert_eq!(line["path"], "/page", "{line}");
        assert!(line["ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{line}");
        assert!(line["timestamp"].is_string(), "{line}");
    }

    // A client that reads a little of the big body and hangs up.
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream
        .write_all(b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("send the request");
    let mut read = 0;
    let mut buffer = vec![0u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(10);
    while read < 64 * 1024 {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, stream.read(&mut buffer))
            .await
            .expect("bytes in time")
            .expect("a read");
        assert!(n > 0, "the body ended early");
        read += n;
    }
    drop(stream);
    let line = kagami.access();
    assert_eq!(line["path"], "/big", "{line}");
    assert_eq!(line["cache"], "miss", "{line}");
    assert_eq!(line["complete"], false, "{line}");
    let sent = line["bytes"].as_u64().expect("a byte count");
    assert!(
        sent >= 32 * 1024 && sent < BIG as u64,
        "bytes {sent} of {BIG}: {line}"
    );
}

#[test]
fn an_unknown_log_format_is_refused_with_its_key() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = dir.path().join("kagami.toml");
    std::fs::write(
        &config,
        "[log]\nformat = \"yaml\"\n\n[[site]]\nname = \"a\"\nhosts = [\"a.example\"]\n\
         origin = \"http://127.0.0.1:9\"\n",
    )
    .expect("write the config");
    let output = Command::new(KAGAMI)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .expect("run check-config");
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("kagami.toml") && err.contains("log.format") && err.contains("\"json\""),
        "{err}"
    );
}

/// An admin API with a token may listen beyond loopback; anyone who reaches it can send
/// requests with a wrong token as fast as they like. Each refusal is still counted in the log,
/// but the log gets one line per interval, not one per request (SECURITY-NOTES §5: log volume).
#[tokio::test]
async fn wrong_admin_tokens_cannot_flood_the_log() {
    let origin = Origin::start().await;
    let admin = free_port();
    let admin_lines = format!("listen = \"127.0.0.1:{admin}\"\ntoken = \"right-token\"");
    let (_dir, _port, kagami, _) = serving(&origin, &admin_lines);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{admin}");
    const TRIES: usize = 200;
    for i in 0..TRIES {
        let request = client
            .get(format!("{base}/status"))
            .bearer_auth(format!("guess-{i}"));
        let reply = tokio::time::timeout(Duration::from_secs(10), request.send())
            .await
            .expect("an answer in time")
            .expect("an answer");
        assert_eq!(reply.status().as_u16(), 401);
    }
    // A purge that works marks the end of the refusals in the log.
    let purge = (client.post(format!("{base}/purge")))
        .bearer_auth("right-token")
        .header("content-type", "application/json")
        .body(r#"{"site": "city"}"#);
    let reply = tokio::time::timeout(Duration::from_secs(10), purge.send())
        .await
        .expect("an answer in time")
        .expect("an answer");
    assert_eq!(reply.status().as_u16(), 200);
    let mut refusals = Vec::new();
    for _ in 0..TRIES + 10 {
        let line = kagami.next();
        let message = line["message"].as_str().unwrap_or_default().to_string();
        if message == "purged" {
            break;
        }
        if message.contains("refused") {
            refusals.push(line);
        }
    }
    assert!(
        !refusals.is_empty() && refusals.len() <= 3,
        "{} refusal lines for {TRIES} requests: {:?}",
        refusals.len(),
        refusals.first()
    );
    assert_eq!(refusals[0]["path"], "/status", "{}", refusals[0]);
}

/// Sends `target` as raw bytes in the request line (not percent-encoded, as a hostile client
/// sends it) with `host` to 127.0.0.1:`port`, and returns the whole answer.
async fn send_raw(port: u16, target: &str, host: &str) -> Vec<u8> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let request = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .expect("an answer");
    answer
}

/// `send_raw` with Host 127.0.0.1, for an answer that must be HTTP.
async fn send_raw_target(port: u16, target: &str) {
    let answer = send_raw(port, target, "127.0.0.1").await;
    assert!(answer.starts_with(b"HTTP/1.1 "), "{target}: {answer:?}");
}

/// The access line is held for as long as its body is being sent, which a client can make
/// last (an HTTP/2 window of 0 on each of thousands of streams). A path near the head-size
/// limit would then pin that much memory per stream, and fill the log: the line keeps only
/// its first part.
#[tokio::test]
async fn access_lines_keep_only_the_start_of_long_paths_and_hosts() {
    let origin = Origin::start().await;
    let (_dir, port, kagami, _) = serving(&origin, "listen = \"127.0.0.1:0\"");
    let long = format!("/{}", "a".repeat(12_000));
    let host = format!("{}.example", "h".repeat(8_000));
    for (path, host) in [(long.as_str(), "127.0.0.1"), ("/short", host.as_str())] {
        send_raw(port, path, host).await;
        let line = kagami.access();
        let (logged_path, logged_host) = (
            line["path"].as_str().expect("a path"),
            line["host"].as_str().expect("a host"),
        );
        assert!(logged_path.len() <= 1100, "{} bytes", logged_path.len());
        assert!(logged_host.len() <= 1100, "{} bytes", logged_host.len());
        assert!(path.starts_with(logged_path.trim_end_matches('…')));
        assert!(host.starts_with(logged_host.trim_end_matches('…')));
    }
}

/// Raw bytes a request sent into the log: U+2028/U+2029 are line ends to JavaScript and many
/// log viewers, and bidi controls (U+202E) reorder what follows on screen, so a path could
/// forge or hide lines. serde_json leaves all of them as they are; Kagami escapes them in the
/// access line and in the admin API's refusal line (SECURITY-NOTES §5, log integrity).
#[tokio::test]
async fn line_separators_and_bidi_controls_from_requests_are_escaped_in_the_log() {
    let origin = Origin::start().await;
    let admin = free_port();
    let admin_lines = format!("listen = \"127.0.0.1:{admin}\"\ntoken = \"right-token\"");
    let (_dir, port, kagami, _) = serving(&origin, &admin_lines);
    // A typed `\u{2028}` (with its backslash) must not pass for an escape, and a long path
    // is clipped in both lines.
    let evil = "/a\u{2028}b\u{2029}c\u{202E}d\\u{2028}".to_string() + &"x".repeat(4000);
    let expected = "/a\\u{2028}b\\u{2029}c\\u{202e}d\\\\u{2028}xxx";
    for (target, port) in [("access", port), ("admin", admin)] {
        send_raw_target(port, &evil).await;
        let mut found = None;
        for _ in 0..50 {
            let (raw, line) = kagami.next_raw();
            let wanted = match target {
                "access" => line["target"] == "kagami::access",
                _ => line["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("refused")),
            };
            if wanted {
                found = Some((raw, line));
                break;
            }
        }
        let (raw, line) = found.unwrap_or_else(|| panic!("no {target} line in 50"));
        for c in ['\u{2028}', '\u{2029}', '\u{202E}'] {
            assert!(!raw.contains(c), "{target}: {c:?} reached the log: {raw}");
        }
        let path = line["path"].as_str().expect("a path");
        assert!(path.starts_with(expected), "{target}: {raw}");
        assert!(path.len() <= 1100 && path.ends_with('…'), "{target}: {raw}");
    }
}

/// Characters that show as nothing (zero-width space, word joiner, byte-order mark, soft
/// hyphen, the Hangul filler, the invisible tag letters U+E0000...) let a path read as another
/// one in the log (`/admin` beside `/ad\u{200B}min`) or carry text no one sees. They are
/// escaped like the bidi controls.
#[tokio::test]
async fn invisible_characters_from_requests_are_escaped_in_the_access_line() {
    let origin = Origin::start().await;
    let (_dir, port, kagami, _) = serving(&origin, "listen = \"127.0.0.1:0\"");
    let evil = "/a\u{200B}b\u{2060}c\u{FEFF}d\u{AD}e\u{3164}f\u{E0041}g\u{180E}h";
    let expected = "/a\\u{200b}b\\u{2060}c\\u{feff}d\\u{00ad}e\\u{3164}f\\u{e0041}g\\u{180e}h";
    send_raw_target(port, evil).await;
    let mut found = None;
    for _ in 0..50 {
        let (raw, line) = kagami.next_raw();
        if line["target"] == "kagami::access" {
            found = Some((raw, line));
            break;
        }
    }
    let (raw, line) = found.expect("an access line in 50");
    for c in evil.chars().filter(|c| !c.is_ascii()) {
        assert!(!raw.contains(c), "{c:?} reached the log: {raw}");
    }
    assert_eq!(line["path"], expected, "{raw}");
}
