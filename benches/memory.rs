//! Does `cache.memory` bound the process? Warms a real `kagami run` (the release binary, with
//! its own allocator, in its own process) with many more objects than fit, from an origin in
//! this process, and reads the Kagami process's RSS from /proc. Everything is on 127.0.0.1 and
//! stops by itself; it reports, it never asserts.
//!
//!     cargo bench --bench memory
//!     KAGAMI_MEMORY_MIB=128 KAGAMI_MEMORY_FILL=4 cargo bench --bench memory
//!     KAGAMI_MEMORY_ONLY=unfilled,idle cargo bench --bench memory
//!
//! Environment: KAGAMI_MEMORY_MIB (`cache.memory`, default 64), KAGAMI_MEMORY_FILL (bytes
//! warmed as a multiple of it, default 3; then the same again with new objects, as churn);
//! KAGAMI_MEMORY_BIG_MIB (the store that is not filled, default 1024) and
//! KAGAMI_MEMORY_OBJECTS (objects warmed into it, default 10000); KAGAMI_MEMORY_CONNECTIONS
//! (idle connections, default 2000); KAGAMI_MEMORY_ONLY (a comma list of `churn`, `unfilled`,
//! `idle`; default all three); KAGAMI_MEMORY_MIXES (a comma list of `1kib`, `16kib`,
//! `256kib`, `realistic`; default all).
//!
//! Three parts, each with a fresh Kagami per row:
//! - churn: per mix, RSS at start, once full and after churn; RSS minus `cache.memory` (the
//!   target is at most 48 MiB); and the overhead per stored object: (RSS growth − the body
//!   bytes the store holds) / entries, with entries as the store's own count reports.
//! - unfilled (the issue's own measure): per mix, N objects into a store they do not fill; RSS
//!   growth / N, and that minus the mean body, the overhead per object; and the same for the
//!   second half of the objects alone (RSS read between the halves), which leaves out what the
//!   first burst of fills costs once.
//! - idle: N keep-alive connections (plain, then TLS 1.3) opened and left idle, RSS growth per
//!   connection before their first request (over TLS: once the handshake is done) and after
//!   one request each (a stored 1 KiB page), and RSS once they are all closed.
//!
//! Kagami logs its heap trims (`kagami::trim`, see README "Memory"); the churn and idle rows
//! count them, and the churn rows give the slowest of a probe's hits, one every few
//! milliseconds beside the churn.

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

// Beside this file, not in benches/ itself, where Cargo would take it for a bench of its own.
#[path = "memory/idle.rs"]
mod idle;

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

/// Kills the Kagami process however the bench ends; the second field is its admin port.
struct Kagami(Child, u16);

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

/// Starts `kagami run` with `cache.memory = memory_mib` and `server` (extra `[server]` lines,
/// then, after a line `--site--`, extra lines for the site).
async fn start_kagami(
    dir: &std::path::Path,
    origin: SocketAddr,
    memory_mib: u64,
    server: &str,
) -> (Kagami, u16) {
    let port = free_port();
    let admin = free_port();
    let (server, site) = server.split_once("--site--\n").unwrap_or((server, ""));
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\nworker_threads = 2\n{server}\n\
         [cache]\nmemory = \"{memory_mib}MiB\"\n\n[log]\naccess = false\n\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\n\n\
         [limits]\nhits = \"off\"\nmisses = \"off\"\n\n\
         [[site]]\nname = \"bench\"\nhosts = [\"127.0.0.1\", \"localhost\"]\n\
         origin = \"http://{origin}\"\n{site}"
    );
    let path = dir.join("kagami.toml");
    std::fs::write(&path, config).expect("write config");
    let child = Command::new(env!("CARGO_BIN_EXE_kagami"))
        .arg("run")
        .arg("--config")
        .arg(&path)
        .env(
            "RUST_LOG",
            "warn,kagami=info,kagami::access=off,kagami::trim=debug",
        )
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start kagami");
    let kagami = Kagami(child, admin);
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

/// How many objects of mix `m` from `from` on make `bytes` body bytes.
fn count_for(m: usize, from: u64, bytes: u64) -> u64 {
    let mut count = 0;
    let mut total = 0u64;
    while total < bytes {
        total += (MIXES[m].size)(from + count) as u64;
        count += 1;
    }
    count
}

/// Requests objects `from..from + count` of mix `m`, 32 at a time; returns the next index.
async fn warm(client: &reqwest::Client, port: u16, m: usize, from: u64, count: u64) -> u64 {
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

/// What Kagami's log said by the time it stopped.
#[derive(Default)]
struct Logged {
    /// The store's entries and weighted bytes at shutdown.
    entries: u64,
    weighted: u64,
    /// Heap trims (`kagami::trim` at debug) and the longest one, in microseconds.
    trims: u64,
    longest_trim_us: u64,
    /// Idle connections that gave hyper's buffers back, from the "shutting down" line.
    shrunk: u64,
}

impl Logged {
    fn trims(&self) -> String {
        match self.trims {
            0 => "none".into(),
            n => format!(
                "{n}, longest {:.1} ms",
                self.longest_trim_us as f64 / 1000.0
            ),
        }
    }
}

/// A `name=<digits>` field of a log line.
fn field(line: &str, name: &str) -> Option<u64> {
    let rest = &line[line.find(&format!("{name}="))? + name.len() + 1..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Stops Kagami with SIGTERM and reads its log: the store's entry count and weighted size
/// from the "shutting down" line, and the heap trims.
fn stop_and_count(mut kagami: Kagami) -> Logged {
    // SAFETY: kill(2) on our own child's pid; no memory is touched.
    unsafe {
        libc::kill(kagami.0.id() as libc::pid_t, libc::SIGTERM);
    }
    let mut out = String::new();
    if let Some(mut stdout) = kagami.0.stdout.take() {
        use std::io::Read;
        let _ = stdout.read_to_string(&mut out);
    }
    let mut logged = Logged::default();
    for line in out.lines() {
        if line.contains("trimmed the heap") {
            logged.trims += 1;
            let took = field(line, "took_us").unwrap_or(0);
            logged.longest_trim_us = logged.longest_trim_us.max(took);
        } else if line.contains("shutting down") {
            logged.entries = field(line, "entries").unwrap_or(0);
            logged.weighted = field(line, "weighted_bytes").unwrap_or(0);
            logged.shrunk = field(line, "connections_shrunk").unwrap_or(0);
        }
    }
    logged
}

/// How long a run waits for Kagami to settle: longer than its trim thread's interval (5 s),
/// so that the thread has looked at least once.
const SETTLE: Duration = Duration::from_secs(6);

/// Settings shared by the runs.
struct Bench {
    origin: SocketAddr,
    dir: tempfile::TempDir,
    client: reqwest::Client,
    memory_mib: u64,
    fill: u64,
    big_mib: u64,
    objects: u64,
    connections: usize,
}

/// Starts Kagami and makes one request, so that the runtime and pools exist before the
/// baseline; returns it, its port and its RSS then.
async fn started(bench: &Bench, memory_mib: u64, m: usize, server: &str) -> (Kagami, u16, u64) {
    let (kagami, port) = start_kagami(bench.dir.path(), bench.origin, memory_mib, server).await;
    let _ = bench
        .client
        .get(format!("http://127.0.0.1:{port}/o/{m}/0"))
        .send()
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = rss_kib(kagami.0.id());
    (kagami, port, start)
}

/// Fills a `memory_mib` store `fill` times over, then churns as much again with new objects.
async fn churn(bench: &Bench, m: usize) {
    let (kagami, port, start) = started(bench, bench.memory_mib, m, "").await;
    let pid = kagami.0.id();
    let bytes = bench.fill * (bench.memory_mib << 20);
    let next = warm(&bench.client, port, m, 1, count_for(m, 1, bytes)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let full = rss_kib(pid);
    // A probe beside the churn: a trim that holds up requests shows as a slow hit.
    let done = std::sync::atomic::AtomicBool::new(false);
    let churned = async {
        let end = warm(&bench.client, port, m, next, count_for(m, next, bytes)).await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        end
    };
    let (end, slowest_churn) = tokio::join!(churned, probe(&bench.client, port, m, 0, &done));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(pid);
    tokio::time::sleep(SETTLE).await;
    let settled = rss_kib(pid);
    let logged = stop_and_count(kagami);
    let kept = logged.entries.max(1);
    let body_kib = kept as f64 * mean_size(m, end) / 1024.0;
    let overhead = (after.saturating_sub(start) as f64 - body_kib) * 1024.0 / kept as f64;
    // The store keeps the realistic mix's small objects rather than its large ones, so the
    // mean body of what was sent is not that of what is kept: no per-object figure there
    // (the unfilled part gives one).
    let overhead = match MIXES[m].name {
        "realistic" => "n/a".to_string(),
        _ => format!("{:.2} KiB", overhead / 1024.0),
    };
    println!(
        "| {} | {} | {:.0} MiB | {:.0} MiB | {:.0} MiB | {:+.0} MiB | {:+.0} MiB | {} ({:.0} MiB weighed) | {} | {} | {:.1} ms |",
        MIXES[m].name,
        end - 1,
        mib(start),
        mib(full),
        mib(after),
        mib(after) - bench.memory_mib as f64,
        mib(settled) - bench.memory_mib as f64,
        kept,
        logged.weighted as f64 / (1 << 20) as f64,
        overhead,
        logged.trims(),
        slowest_churn.as_secs_f64() * 1000.0,
    );
}

/// Requests object `i` of mix `m` one at a time, a few milliseconds apart, until `done` (at
/// most five minutes); returns the slowest answer.
async fn probe(
    client: &reqwest::Client,
    port: u16,
    m: usize,
    i: u64,
    done: &std::sync::atomic::AtomicBool,
) -> Duration {
    let url = format!("http://127.0.0.1:{port}/o/{m}/{i}");
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut slowest = Duration::ZERO;
    while !done.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
        let started = Instant::now();
        if let Ok(response) = client.get(&url).send().await {
            let _ = response.bytes().await;
        }
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    slowest
}

/// The issue's own measure: `objects` objects into a store big enough for all of them (at most
/// three quarters of it in bodies, so nothing is evicted); RSS growth per object, and that
/// minus the object's body.
/// jemalloc's counts in Kagami (`kagami_allocator_bytes` on its admin API), in KiB; `None`
/// for a build without jemalloc.
#[derive(Clone, Copy, Default)]
struct Allocator {
    allocated: f64,
    active: f64,
    metadata: f64,
    resident: f64,
}

async fn allocator(client: &reqwest::Client, admin: u16) -> Option<Allocator> {
    let text = client
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let kind = |name: &str| {
        let prefix = format!("kagami_allocator_bytes{{kind=\"{name}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|bytes| bytes / 1024.0)
    };
    Some(Allocator {
        allocated: kind("allocated")?,
        active: kind("active")?,
        metadata: kind("metadata")?,
        resident: kind("resident")?,
    })
}

/// Where a half's RSS went, per object, from jemalloc's counts: a row of the breakdown table.
/// Bodies with pages in mappings of their own (`cache::mapped`) are outside jemalloc.
fn breakdown(
    name: &str,
    from: Allocator,
    to: Allocator,
    rss_kib: f64,
    n: f64,
    body: f64,
) -> String {
    let per = |to: f64, from: f64| (to - from) / n;
    let allocated = per(to.allocated, from.allocated);
    let rounding = per(to.active - to.allocated, from.active - from.allocated);
    let metadata = per(to.metadata, from.metadata);
    let unreturned = per(
        to.resident - to.active - to.metadata,
        from.resident - from.active - from.metadata,
    );
    let outside = rss_kib / n - per(to.resident, from.resident);
    format!(
        "| {name} | {:.2} KiB | {:.2} KiB | {allocated:.2} KiB | {rounding:.2} KiB | {metadata:.2} KiB | {unreturned:.2} KiB | {outside:.2} KiB |",
        rss_kib / n - body / 1024.0,
        body / 1024.0,
    )
}

async fn unfilled(bench: &Bench, m: usize) -> Option<String> {
    let (kagami, port, start) = started(bench, bench.big_mib, m, "").await;
    let pid = kagami.0.id();
    let counts_at_start = allocator(&bench.client, kagami.1).await;
    let room = count_for(m, 1, (bench.big_mib << 20) * 3 / 4);
    let n = bench.objects.min(room).max(1);
    // In two halves, to tell what each object costs from what the first burst of fills costs
    // once (the origin pool's connections and their buffers, thread caches, TLS roots).
    let half = n / 2;
    // RSS is read 1.5 s after each half: jemalloc gives pages freed by the fills back within
    // about a second (`dirty_decay_ms`), and RSS read sooner counts some of them.
    warm(&bench.client, port, m, 1, half).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let at_half = rss_kib(pid);
    let counts_at_half = allocator(&bench.client, kagami.1).await;
    warm(&bench.client, port, m, 1 + half, n - half).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let at_end = rss_kib(pid);
    let counts_at_end = allocator(&bench.client, kagami.1).await;
    let growth = at_end.saturating_sub(start);
    let logged = stop_and_count(kagami);
    let mean = |from: u64, to: u64| {
        (from..=to).map(|i| (MIXES[m].size)(i) as f64).sum::<f64>() / (to + 1 - from).max(1) as f64
    };
    let body = mean(1, n);
    let per_object = growth as f64 * 1024.0 / n as f64;
    let second = (n - half).max(1);
    let marginal = at_end.saturating_sub(at_half) as f64 * 1024.0 / second as f64;
    println!(
        "| {} | {n} | {} | {:+.0} MiB | {:.2} KiB | {:.2} KiB | {:.2} KiB | {:.2} KiB | {} |",
        MIXES[m].name,
        logged.entries,
        mib(growth),
        per_object / 1024.0,
        body / 1024.0,
        (per_object - body) / 1024.0,
        (marginal - mean(1 + half, n)) / 1024.0,
        logged.trims(),
    );
    let (start_counts, half_counts, end_counts) =
        (counts_at_start?, counts_at_half?, counts_at_end?);
    let first = breakdown(
        &format!("{}, first half", MIXES[m].name),
        start_counts,
        half_counts,
        at_half.saturating_sub(start) as f64,
        half.max(1) as f64,
        mean(1, half),
    );
    let second = breakdown(
        &format!("{}, second half", MIXES[m].name),
        half_counts,
        end_counts,
        at_end.saturating_sub(at_half) as f64,
        second as f64,
        mean(1 + half, n),
    );
    Some(format!("{first}\n{second}"))
}

/// The mixes KAGAMI_MEMORY_MIXES names (a comma list of `1kib`, `16kib`, `256kib`,
/// `realistic`), or all of them.
fn mixes() -> Vec<usize> {
    let named = std::env::var("KAGAMI_MEMORY_MIXES").unwrap_or_default();
    let key = |name: &str| name.replace(' ', "").to_ascii_lowercase();
    (0..MIXES.len())
        .filter(|&m| named.is_empty() || named.split(',').any(|n| key(n) == key(MIXES[m].name)))
        .collect()
}

/// Raises this process's open-files limit to its hard limit, for the idle connections.
fn raise_open_files() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct they are given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    raise_open_files();
    let only = std::env::var("KAGAMI_MEMORY_ONLY").unwrap_or_default();
    let bench = Bench {
        origin: origin().await,
        dir: tempfile::tempdir().expect("a temporary directory"),
        client: reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(64)
            .build()
            .expect("a client"),
        memory_mib: env_or("KAGAMI_MEMORY_MIB", 64),
        fill: env_or("KAGAMI_MEMORY_FILL", 3),
        big_mib: env_or("KAGAMI_MEMORY_BIG_MIB", 1024),
        objects: env_or("KAGAMI_MEMORY_OBJECTS", 10_000),
        connections: env_or("KAGAMI_MEMORY_CONNECTIONS", 2_000) as usize,
    };
    let run = |part: &str| only.is_empty() || only.split(',').any(|p| p == part);
    if run("churn") {
        println!(
            "cache.memory = {} MiB; each mix warms {}x that, then {}x new objects (churn)\n",
            bench.memory_mib, bench.fill, bench.fill
        );
        println!(
            "| mix | objects | RSS start | RSS full | RSS after churn | churn RSS - memory | 6 s later | entries kept | overhead per object | heap trims | slowest probe during churn |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        for m in mixes() {
            churn(&bench, m).await;
        }
        println!(
            "\nTargets (issue 7): RSS <= cache.memory + 48 MiB once full and under churn; \
             overhead per stored object <= 1.5 KiB. Overhead counts everything that is not body \
             bytes, per entry kept (the store's own count, logged by Kagami at shutdown).\n"
        );
    }
    if run("unfilled") {
        println!(
            "cache.memory = {} MiB, not filled: {} objects per mix (fewer when their bodies \
             would pass three quarters of the store)\n",
            bench.big_mib, bench.objects
        );
        println!(
            "| mix | objects | entries | RSS growth | per object | body | overhead per object | second half: overhead per object | heap trims |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        let mut rows = Vec::new();
        for m in mixes() {
            rows.extend(unfilled(&bench, m).await);
        }
        println!(
            "\nTarget (issue 7): overhead <= 1.5 KiB per object (16 KiB objects: <= 17.5 KiB of \
             RSS each). Overhead: RSS growth since the first request, per object, minus the mean \
             body; second half: the RSS the second half of the objects added, per object, minus \
             their mean body (what one more object costs, without what the first burst of fills \
             costs once).\n"
        );
        if !rows.is_empty() {
            println!(
                "Each half, per object, from jemalloc's counts (kagami_allocator_bytes; metadata \
                 counts address space it reserved, so some of it is not in RSS)\n\n\
                 | mix | overhead (RSS - body) | body | jemalloc: allocated | rounding and free slots | metadata | freed, not yet returned | RSS outside jemalloc (mapped bodies, stacks) |\n\
                 |---|---|---|---|---|---|---|---|"
            );
            for row in rows {
                println!("{row}");
            }
            println!();
        }
    }
    if run("idle") {
        println!("Idle HTTP/1.1 keep-alive connections, RSS growth per connection\n");
        println!(
            "| connections | opened | served one request | RSS start | before a request | after one request | idle past a shrink (shrunk) | RSS once closed | heap trims |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        idle::idle_connections(&bench, None).await;
        let tls = idle::Tls::new(bench.dir.path());
        idle::idle_connections(&bench, Some(&tls)).await;
    }
}
