//! Does `cache.memory` bound the process? Warms a real `kagami run` (the release binary, with
//! its own allocator, in its own process) with many more objects than fit, from an origin in
//! this process, and reads the Kagami process's RSS from /proc. Everything is on 127.0.0.1 and
//! stops by itself; it reports, it never asserts.
//!
//!     cargo bench --bench memory
//!     KAGAMI_MEMORY_MIB=128 KAGAMI_MEMORY_FILL=4 cargo bench --bench memory
//!
//! Environment: KAGAMI_MEMORY_MIB (`cache.memory`, default 64), KAGAMI_MEMORY_FILL (bytes
//! warmed as a multiple of it, default 3; then the same again with new objects, as churn).
//!
//! Per mix it prints RSS at start, once full and after churn; RSS minus `cache.memory` (the
//! target is at most 48 MiB); and the overhead per stored object: (RSS growth − the body bytes
//! the store holds) / entries, with entries and body bytes as the store's own gauges report.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// An object mix: the size of object `i`.
struct Mix {
    name: &'static str,
    size: fn(u64) -> usize,
}

const MIXES: [Mix; 4] = [
    Mix {
        name: "1 KiB",
        size: |_| 1024,
    },
    Mix {
        name: "16 KiB",
        size: |_| 16 * 1024,
    },
    Mix {
        name: "256 KiB",
        size: |_| 256 * 1024,
    },
    // A municipal site: mostly pages of 4-50 KiB, some small assets, a few PDFs.
    Mix {
        name: "realistic",
        size: |i| match i % 20 {
            0 => 200 * 1024 + (i as usize * 7919) % (800 * 1024),
            1..=5 => 512 + (i as usize * 131) % 2048,
            _ => 4 * 1024 + (i as usize * 104_729) % (46 * 1024),
        },
    },
];

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The origin: `/o/<mix>/<i>` answers the mix's size for `i`, cacheable for an hour. Bodies
/// are slices of one buffer, so the origin itself allocates little.
async fn origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
    let addr = listener.local_addr().expect("origin address");
    let blob = Bytes::from(vec![b'x'; 1 << 20]);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let blob = blob.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let blob = blob.clone();
                    async move {
                        let mut parts = request.uri().path().trim_start_matches("/o/").split('/');
                        let mix = parts.next().and_then(|m| m.parse::<usize>().ok());
                        let i = parts.next().and_then(|i| i.parse::<u64>().ok());
                        let size = match (mix, i) {
                            (Some(m), Some(i)) if m < MIXES.len() => (MIXES[m].size)(i),
                            _ => 0,
                        };
                        let response = Response::builder()
                            .header("content-type", "text/html; charset=utf-8")
                            .header("cache-control", "public, max-age=3600")
                            .header("last-modified", "Mon, 23 Nov 2026 09:00:00 GMT")
                            .header("etag", format!("\"{size}-{}\"", i.unwrap_or(0)))
                            .header("server", "nginx")
                            .body(Full::new(blob.slice(..size.min(blob.len()))))
                            .expect("a valid response");
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Kills the Kagami process however the bench ends.
struct Kagami(Child);

impl Drop for Kagami {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn start_kagami(dir: &std::path::Path, origin: SocketAddr, memory_mib: u64) -> (Kagami, u16) {
    let port = free_port();
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\nworker_threads = 2\n\n\
         [cache]\nmemory = \"{memory_mib}MiB\"\n\n[log]\naccess = false\n\n\
         [limits]\nhits = \"off\"\nmisses = \"off\"\n\n\
         [[site]]\nname = \"bench\"\nhosts = [\"127.0.0.1\"]\norigin = \"http://{origin}\"\n"
    );
    let path = dir.join("kagami.toml");
    std::fs::write(&path, config).expect("write config");
    let child = Command::new(env!("CARGO_BIN_EXE_kagami"))
        .arg("run")
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "warn,kagami=info,kagami::access=off")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start kagami");
    let kagami = Kagami(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "kagami did not start listening");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (kagami, port)
}

/// Requests objects `from..` of mix `m` until `bytes` body bytes went through; returns the next
/// index.
async fn warm(client: &reqwest::Client, port: u16, m: usize, from: u64, bytes: u64) -> u64 {
    let mut count = 0;
    let mut total = 0u64;
    while total < bytes {
        total += (MIXES[m].size)(from + count) as u64;
        count += 1;
    }
    stream::iter(from..from + count)
        .map(|i| {
            let client = client.clone();
            async move {
                let url = format!("http://127.0.0.1:{port}/o/{m}/{i}");
                match client.get(url).send().await {
                    Ok(response) => response.bytes().await.map_or(0, |b| b.len()),
                    Err(_) => 0,
                }
            }
        })
        .buffer_unordered(32)
        .for_each(|_| async {})
        .await;
    from + count
}

/// Mean body size of mix `m` over its first `n` objects (which ones the store keeps does not
/// change it much: the mixes are periodic).
fn mean_size(m: usize, n: u64) -> f64 {
    let n = n.clamp(1, 100_000);
    (0..n).map(|i| (MIXES[m].size)(i) as f64).sum::<f64>() / n as f64
}

/// Stops Kagami with SIGTERM and reads the store's entry count and weighted size from its
/// "shutting down" log line.
fn stop_and_count(mut kagami: Kagami) -> Option<(u64, u64)> {
    // SAFETY: kill(2) on our own child's pid; no memory is touched.
    unsafe {
        libc::kill(kagami.0.id() as libc::pid_t, libc::SIGTERM);
    }
    let mut out = String::new();
    if let Some(mut stdout) = kagami.0.stdout.take() {
        use std::io::Read;
        let _ = stdout.read_to_string(&mut out);
    }
    let line = out.lines().find(|l| l.contains("shutting down"))?;
    let field = |name: &str| -> Option<u64> {
        let rest = &line[line.find(&format!("{name}="))? + name.len() + 1..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some((field("entries")?, field("weighted_bytes")?))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let memory_mib = env_or("KAGAMI_MEMORY_MIB", 64);
    let fill = env_or("KAGAMI_MEMORY_FILL", 3);
    let origin = origin().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(64)
        .build()
        .expect("a client");
    println!(
        "cache.memory = {memory_mib} MiB; each mix warms {fill}x that, then {fill}x new objects (churn)\n"
    );
    println!(
        "| mix | objects | RSS start | RSS full | RSS after churn | churn RSS - memory | entries kept | overhead per object |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (m, mix) in MIXES.iter().enumerate() {
        let (kagami, port) = start_kagami(dir.path(), origin, memory_mib).await;
        let pid = kagami.0.id();
        // One request so that the runtime and pools exist before the baseline.
        let _ = client
            .get(format!("http://127.0.0.1:{port}/o/{m}/0"))
            .send()
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let start = rss_kib(pid);
        let bytes = fill * (memory_mib << 20);
        let next = warm(&client, port, m, 1, bytes).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let full = rss_kib(pid);
        let end = warm(&client, port, m, next, bytes).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let churn = rss_kib(pid);
        let (kept, weighted) = stop_and_count(kagami).unwrap_or((0, 0));
        let kept = kept.max(1);
        let body_kib = kept as f64 * mean_size(m, end) / 1024.0;
        let overhead = (churn.saturating_sub(start) as f64 - body_kib) * 1024.0 / kept as f64;
        println!(
            "| {} | {} | {:.0} MiB | {:.0} MiB | {:.0} MiB | {:+.0} MiB | {} ({:.0} MiB weighed) | {:.2} KiB |",
            mix.name,
            end - 1,
            mib(start),
            mib(full),
            mib(churn),
            mib(churn) - memory_mib as f64,
            kept,
            weighted as f64 / (1 << 20) as f64,
            overhead / 1024.0,
        );
    }
    println!(
        "\nTargets (issue 7): RSS <= cache.memory + 48 MiB once full and under churn; overhead per \
         stored object <= 1.5 KiB. Overhead counts everything that is not body bytes, per entry \
         kept (the store's own count, logged by Kagami at shutdown)."
    );
}
