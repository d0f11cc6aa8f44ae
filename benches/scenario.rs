//! End-to-end hit-path benchmark: keep-alive HTTP/1.1 load against Kagami serving two cached
//! objects (1 KiB and 16 KiB), and — when `nginx` is installed — against nginx `proxy_cache`
//! in front of the same origin, with the ratio of the two.
//!
//! Run: `cargo bench --bench scenario`
//!
//! * Kagami runs on a tokio runtime with ONE worker thread, pinned to the first allowed CPU;
//!   nginx runs as one process (`worker_processes 1`) pinned to the same CPU.
//! * The load generator is `wrk -t1` when installed (else a built-in hyper client on a
//!   current-thread runtime), pinned to the second allowed CPU.
//! * The origin is a tiny hyper server in this process; it counts its requests, so the
//!   offload (about one origin request per object) is checked.
//!
//! Environment: `KAGAMI_BENCH_SECS` (measurement per run, default 5), `KAGAMI_BENCH_CONNS`
//! (connections, default 64), `KAGAMI_BENCH_WARMUP_SECS` (unmeasured load before each run,
//! default 1, 0 = none), `KAGAMI_BENCH_LOADGEN=builtin` (ignore wrk),
//! `KAGAMI_BENCH_NGINX_SENDFILE=on|off` (default off, the faster setting here).
//! `KAGAMI_BENCH_LIMITS=off` (drop Kagami's per-client limiters instead of giving them a
//! budget that never runs out).
//!
//! Besides req/s and latency, the server's CPU time per request is reported (from
//! `/proc/.../stat`): with one wrk thread on the other core the load generator is close to
//! saturation, so CPU per request is the fairer efficiency comparison.
//!
//! Everything binds and targets 127.0.0.1; every load run stops by itself (time and count).

use std::convert::Infallible;
use std::io::Read;
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HOST};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// The two objects: path and body size.
const OBJECTS: [(&str, usize); 2] = [("/1k", 1024), ("/16k", 16 * 1024)];
/// Hard cap on requests in one built-in load run (the run also stops at its deadline).
const MAX_REQUESTS_PER_RUN: u64 = 20_000_000;
/// nginx `sendfile` unless `KAGAMI_BENCH_NGINX_SENDFILE=on|off` says otherwise. Off is the
/// faster setting for these small cached objects on this path (pread + writev instead of
/// pread + writev + sendfile + two cork setsockopt calls per hit), so it is the default:
/// the comparison is against nginx at its best.
const NGINX_SENDFILE_DEFAULT: bool = false;

fn main() {
    // `cargo test --all-targets` runs harness-less benches without `--bench`: stay quick there.
    if !std::env::args().any(|a| a == "--bench") {
        println!("scenario: skipped (run it with `cargo bench --bench scenario`)");
        return;
    }
    if let Err(err) = run() {
        eprintln!("scenario: error: {err:#}");
        std::process::exit(1);
    }
}

struct Settings {
    secs: u64,
    warmup_secs: u64,
    conns: usize,
    wrk: Option<PathBuf>,
    taskset: Option<PathBuf>,
    /// CPU for the server under test, CPU for the load generator (when there are two).
    server_cpu: Option<usize>,
    load_cpu: Option<usize>,
    /// nginx `sendfile` (and `tcp_nopush`).
    nginx_sendfile: bool,
}

fn env_u64(name: &str, default: u64, min: u64, max: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(v) => v.clamp(min, max),
            Err(_) => {
                println!("scenario: ignoring {name}={text:?} (not a number), using {default}");
                default
            }
        },
        Err(_) => default,
    }
}

fn run() -> anyhow::Result<()> {
    let cpus = affinity::allowed_cpus();
    let (server_cpu, load_cpu) = match cpus.as_slice() {
        [a, b, ..] => (Some(*a), Some(*b)),
        _ => (None, None),
    };
    let builtin = std::env::var("KAGAMI_BENCH_LOADGEN").is_ok_and(|v| v == "builtin");
    let settings = Settings {
        secs: env_u64("KAGAMI_BENCH_SECS", 5, 1, 600),
        warmup_secs: env_u64("KAGAMI_BENCH_WARMUP_SECS", 1, 0, 60),
        conns: env_u64("KAGAMI_BENCH_CONNS", 64, 1, 4096) as usize,
        wrk: if builtin { None } else { which("wrk") },
        taskset: which("taskset"),
        server_cpu,
        load_cpu,
        nginx_sendfile: std::env::var("KAGAMI_BENCH_NGINX_SENDFILE")
            .map_or(NGINX_SENDFILE_DEFAULT, |v| v == "on"),
    };

    println!("== Kagami scenario benchmark ==");
    println!(
        "cpus allowed: {cpus:?}; server pinned to {}, load generator to {}",
        show_cpu(settings.server_cpu),
        show_cpu(settings.load_cpu)
    );
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!(
            "load average before the run: {} (other work on the machine skews figures)",
            load.trim()
        );
    }
    println!(
        "{} s per run ({} s unmeasured warm-up), {} keep-alive HTTP/1.1 connections",
        settings.secs, settings.warmup_secs, settings.conns
    );
    match &settings.wrk {
        Some(path) => println!("load generator: {} -t1", path.display()),
        None if builtin => {
            println!("load generator: built-in hyper client (KAGAMI_BENCH_LOADGEN=builtin)")
        }
        None => println!("load generator: wrk is not installed; using the built-in hyper client"),
    }

    let origin = Origin::start()?;
    println!("origin: http://{}", origin.addr);

    let mut rows: Vec<Row> = Vec::new();

    // --- Kagami -------------------------------------------------------------------------
    let kagami = KagamiServer::start(origin.addr, settings.server_cpu)?;
    println!("kagami: http://{} (1 tokio worker thread)", kagami.addr);
    let kagami_result = measure_target(
        "kagami",
        kagami.addr,
        &origin,
        &settings,
        &mut rows,
        |h| {
            h.get("cache-status")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("hit"))
        },
        || kagami.cpu_seconds(),
    );
    kagami.stop();
    kagami_result?;

    // --- nginx --------------------------------------------------------------------------
    match which("nginx") {
        None => println!("nginx: not installed (not on PATH); skipping the nginx comparison"),
        Some(nginx_bin) => match Nginx::start(&nginx_bin, origin.addr, &settings) {
            Err(err) => {
                println!("nginx: could not be started ({err:#}); skipping the nginx comparison")
            }
            Ok(nginx) => {
                println!(
                    "nginx: http://{} (proxy_cache, worker_processes 1, sendfile {})",
                    nginx.addr,
                    if settings.nginx_sendfile { "on" } else { "off" }
                );
                let result = measure_target(
                    "nginx",
                    nginx.addr,
                    &origin,
                    &settings,
                    &mut rows,
                    |h| h.get("x-cache-status").is_some_and(|v| v == "HIT"),
                    || nginx.cpu_seconds(),
                );
                drop(nginx);
                if let Err(err) = result {
                    println!("nginx: run failed ({err:#}); its figures are incomplete");
                }
            }
        },
    }

    origin.stop();
    print_summary(&rows, &settings);
    Ok(())
}

fn show_cpu(cpu: Option<usize>) -> String {
    cpu.map_or_else(|| String::from("(not pinned)"), |c| format!("cpu {c}"))
}

/// One line of the summary.
struct Row {
    target: &'static str,
    object: &'static str,
    result: LoadResult,
    cpu: Option<ServerCpu>,
    origin_requests: u64,
}

/// CPU used by the server under test during a measured run.
#[derive(Debug, Clone, Copy)]
struct ServerCpu {
    /// CPU seconds per wall second (1.0 = one core saturated).
    busy: f64,
    us_per_request: f64,
}

#[derive(Debug, Clone)]
struct LoadResult {
    tool: &'static str,
    requests: u64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
}

/// Warms `target`'s cache (one request per object, then checks a hit), then loads each object.
fn measure_target(
    target: &'static str,
    addr: SocketAddr,
    origin: &Origin,
    settings: &Settings,
    rows: &mut Vec<Row>,
    is_hit: impl Fn(&HeaderMap) -> bool,
    server_cpu: impl Fn() -> Option<f64>,
) -> anyhow::Result<()> {
    for (path, size) in OBJECTS {
        let before = origin.count(path);
        let (status, _, len) =
            fetch_once(addr, path).with_context(|| format!("{target}: warming {path}"))?;
        if status != StatusCode::OK || len != size {
            bail!(
                "{target}: warming {path}: got {status} with {len} bytes, expected 200 with {size}"
            );
        }
        let (_, headers, _) =
            fetch_once(addr, path).with_context(|| format!("{target}: checking {path}"))?;
        if !is_hit(&headers) {
            println!("{target}: WARNING: the second request for {path} was not reported as a hit: {headers:?}");
        }
        if settings.warmup_secs > 0 {
            load(addr, path, settings.warmup_secs, settings)
                .with_context(|| format!("{target}: warm-up load on {path}"))?;
        }
        let cpu_before = server_cpu();
        let started = Instant::now();
        let result = load(addr, path, settings.secs, settings)
            .with_context(|| format!("{target}: load on {path}"))?;
        let wall = started.elapsed().as_secs_f64();
        let cpu = match (cpu_before, server_cpu()) {
            (Some(a), Some(b)) if result.requests > 0 => Some(ServerCpu {
                busy: (b - a) / wall,
                us_per_request: (b - a) * 1e6 / result.requests as f64,
            }),
            _ => None,
        };
        let origin_requests = origin.count(path) - before;
        println!(
            "{target:>6} {path:<4} {:>10.0} req/s  p50 {:>9}  p99 {:>9}  server cpu {} ({} requests, {} errors, {}; origin requests {})",
            result.rps,
            show_us(result.p50_us),
            show_us(result.p99_us),
            cpu.map_or_else(|| String::from("n/a"), |c| format!("{:.0}% = {:.1}us/req", c.busy * 100.0, c.us_per_request)),
            result.requests,
            result.errors,
            result.tool,
            origin_requests
        );
        if origin_requests > 2 {
            println!("{target:>6} {path:<4} WARNING: {origin_requests} origin requests: the cache did not absorb the load");
        }
        if result.errors > 0 {
            println!(
                "{target:>6} {path:<4} WARNING: {} failed or non-2xx answers (e.g. 429 from a rate \
                 limit): its figures do not measure the hit path",
                result.errors
            );
        }
        rows.push(Row {
            target,
            object: path,
            result,
            cpu,
            origin_requests,
        });
    }
    Ok(())
}

fn print_summary(rows: &[Row], settings: &Settings) {
    println!();
    println!(
        "== summary: {} s per run, {} connections, load generator on {}, server on {} ==",
        settings.secs,
        settings.conns,
        show_cpu(settings.load_cpu),
        show_cpu(settings.server_cpu)
    );
    println!(
        "{:<8} {:<6} {:>10} {:>9} {:>9} {:>8} {:>11} {:>7} {:>7} {:>8}",
        "target", "object", "req/s", "p50", "p99", "srv cpu", "cpu/req", "errors", "origin", "tool"
    );
    for row in rows {
        let (busy, per_request) = match row.cpu {
            Some(c) => (
                format!("{:.0}%", c.busy * 100.0),
                format!("{:.1}us", c.us_per_request),
            ),
            None => (String::from("n/a"), String::from("n/a")),
        };
        println!(
            "{:<8} {:<6} {:>10.0} {:>9} {:>9} {:>8} {:>11} {:>7} {:>7} {:>8}",
            row.target,
            row.object,
            row.result.rps,
            show_us(row.result.p50_us),
            show_us(row.result.p99_us),
            busy,
            per_request,
            row.result.errors,
            row.origin_requests,
            row.result.tool
        );
    }
    let find = |target: &str, object: &str| {
        rows.iter()
            .find(|r| r.target == target && r.object == object)
    };
    if rows.iter().all(|r| r.target != "nginx") {
        println!("ratio kagami/nginx: n/a (no nginx figures)");
        return;
    }
    for (path, _) in OBJECTS {
        let (Some(k), Some(n)) = (find("kagami", path), find("nginx", path)) else {
            println!("ratio kagami/nginx {path:<4}: n/a");
            continue;
        };
        let ratio = k.result.rps / n.result.rps.max(f64::MIN_POSITIVE);
        let note = if ratio < 1.5 {
            "  (below the 1.5 target)"
        } else {
            ""
        };
        // Requests per CPU-second: meaningful even when the load generator is the bottleneck.
        let efficiency = match (k.cpu, n.cpu) {
            (Some(kc), Some(nc)) if kc.us_per_request > 0.0 => {
                format!("{:.2}", nc.us_per_request / kc.us_per_request)
            }
            _ => String::from("n/a"),
        };
        println!("ratio kagami/nginx {path:<4}: req/s {ratio:.2}{note}; requests per server CPU-second {efficiency}");
    }
    let saturated = rows.iter().any(|r| r.cpu.is_some_and(|c| c.busy < 0.9));
    if saturated {
        println!(
            "note: a server below ~90% CPU was limited by the load generator (or by other work on \
             the machine), not by itself; compare the per-request CPU figures then"
        );
    }
}

fn show_us(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2}ms", us / 1000.0)
    } else {
        format!("{us:.0}us")
    }
}

/// Searches `PATH` for an executable.
fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A command, prefixed with `taskset -c CPU` when both are available.
fn pinned_command(program: &Path, cpu: Option<usize>, taskset: Option<&Path>) -> Command {
    match (cpu, taskset) {
        (Some(cpu), Some(taskset)) => {
            let mut command = Command::new(taskset);
            command.arg("-c").arg(cpu.to_string()).arg(program);
            command
        }
        _ => Command::new(program),
    }
}

// ----------------------------------------------------------------------------------------
// CPU affinity
// ----------------------------------------------------------------------------------------

mod affinity {
    /// The CPUs this process may run on, in order.
    #[cfg(target_os = "linux")]
    pub fn allowed_cpus() -> Vec<usize> {
        // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most `size` bytes into it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return Vec::new();
            }
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect()
        }
    }

    /// Pins the calling thread to `cpu`; false when that is not possible.
    #[cfg(target_os = "linux")]
    pub fn pin_current_thread(cpu: usize) -> bool {
        // SAFETY: as above; pid 0 means the calling thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
        }
    }

    /// The kernel id of the calling thread.
    #[cfg(target_os = "linux")]
    pub fn current_tid() -> Option<i64> {
        // SAFETY: gettid has no arguments and cannot fail.
        Some(unsafe { libc::syscall(libc::SYS_gettid) } as i64)
    }

    /// User plus system CPU time used so far, from a `/proc/.../stat` file.
    #[cfg(target_os = "linux")]
    pub fn cpu_seconds(stat_path: &str) -> Option<f64> {
        let text = std::fs::read_to_string(stat_path).ok()?;
        // Fields after "(comm)": state ppid pgrp session tty tpgid flags minflt cminflt majflt
        // cmajflt utime stime ...
        let mut fields = text
            .get(text.rfind(')')? + 1..)?
            .split_whitespace()
            .skip(11);
        let utime: u64 = fields.next()?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        // SAFETY: sysconf only reads a constant.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
    }

    #[cfg(not(target_os = "linux"))]
    pub fn allowed_cpus() -> Vec<usize> {
        Vec::new()
    }

    #[cfg(not(target_os = "linux"))]
    pub fn current_tid() -> Option<i64> {
        None
    }

    #[cfg(not(target_os = "linux"))]
    pub fn cpu_seconds(_stat_path: &str) -> Option<f64> {
        None
    }

    #[cfg(not(target_os = "linux"))]
    pub fn pin_current_thread(_cpu: usize) -> bool {
        false
    }
}

// ----------------------------------------------------------------------------------------
// The origin
// ----------------------------------------------------------------------------------------

/// A tiny origin on its own thread and current-thread runtime, counting requests per object.
struct Origin {
    addr: SocketAddr,
    counts: Arc<[AtomicU64; 2]>,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

impl Origin {
    fn start() -> anyhow::Result<Origin> {
        let listener = StdListener::bind("127.0.0.1:0").context("origin: bind")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let counts: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let bodies: Arc<[Bytes; 2]> = Arc::new(OBJECTS.map(|(_, size)| Bytes::from(body_of(size))));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread_counts = counts.clone();
        let thread = std::thread::Builder::new()
            .name("origin".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(err) => {
                            eprintln!("origin: {err}");
                            return;
                        }
                    };
                    loop {
                        let stream = tokio::select! {
                            accepted = listener.accept() => match accepted {
                                Ok((stream, _)) => stream,
                                Err(_) => continue,
                            },
                            _ = &mut stopped => break,
                        };
                        let _ = stream.set_nodelay(true);
                        let counts = thread_counts.clone();
                        let bodies = bodies.clone();
                        let service = service_fn(move |request: Request<Incoming>| {
                            let index =
                                OBJECTS.iter().position(|(p, _)| *p == request.uri().path());
                            let response = match index {
                                Some(i) => {
                                    counts[i].fetch_add(1, Ordering::Relaxed);
                                    Response::builder()
                                        .header(CACHE_CONTROL, "max-age=3600")
                                        .header(CONTENT_TYPE, "application/octet-stream")
                                        .body(Full::new(bodies[i].clone()))
                                }
                                None => Response::builder()
                                    .status(StatusCode::NOT_FOUND)
                                    .body(Full::new(Bytes::from_static(b"not found\n"))),
                            };
                            async move { Ok::<_, Infallible>(response.expect("valid response")) }
                        });
                        tokio::spawn(async move {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                });
            })?;
        Ok(Origin {
            addr,
            counts,
            stop,
            thread,
        })
    }

    fn count(&self, path: &str) -> u64 {
        OBJECTS
            .iter()
            .position(|(p, _)| *p == path)
            .map_or(0, |i| self.counts[i].load(Ordering::Relaxed))
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

fn body_of(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

// ----------------------------------------------------------------------------------------
// Kagami under test
// ----------------------------------------------------------------------------------------

/// Kagami on a one-worker tokio runtime, driven from its own OS thread.
struct KagamiServer {
    addr: SocketAddr,
    /// Kernel ids of the runtime's threads, for CPU accounting.
    tids: Arc<std::sync::Mutex<Vec<i64>>>,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

impl KagamiServer {
    fn start(origin: SocketAddr, cpu: Option<usize>) -> anyhow::Result<KagamiServer> {
        let site =
            kagami::config::SiteConfig::new("bench", &["127.0.0.1"], &format!("http://{origin}"))?;
        // All load comes from one client address, far above the default per-client budgets
        // (which answer 429). The limiters stay on the path, with a budget that never runs out,
        // so their cost is measured; KAGAMI_BENCH_LIMITS=off removes them.
        let mut site = site;
        let limits_off = std::env::var("KAGAMI_BENCH_LIMITS").is_ok_and(|v| v == "off");
        let unlimited = (!limits_off).then_some(kagami::limit::Rate {
            per_second: 1e9,
            burst: 1_000_000_000,
        });
        site.limit_hits = unlimited;
        site.limit_misses = unlimited;
        let mut config = kagami::config::Config::new(vec!["127.0.0.1:0".parse()?], vec![site]);
        config.limits.hits = unlimited;
        config.limits.misses = unlimited;
        config.log.access = false;

        let tids: Arc<std::sync::Mutex<Vec<i64>>> = Arc::default();
        let thread_tids = tids.clone();
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder
            .worker_threads(1)
            .thread_name("kagami-worker")
            .enable_all()
            .on_thread_start(move || {
                if let Some(cpu) = cpu {
                    affinity::pin_current_thread(cpu);
                }
                if let (Some(tid), Ok(mut tids)) = (affinity::current_tid(), thread_tids.lock()) {
                    tids.push(tid);
                }
            });
        let runtime = builder.build()?;

        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<SocketAddr>>();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("kagami".into())
            .spawn(move || {
                if let Some(cpu) = cpu {
                    affinity::pin_current_thread(cpu);
                }
                runtime.block_on(async move {
                    let running = match kagami::server::start(&config).await {
                        Ok(running) => running,
                        Err(err) => {
                            let _ = ready_tx.send(Err(anyhow!("kagami: {err}")));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(running.addr()));
                    let _ = stopped.await;
                    running.shutdown(Duration::from_secs(1)).await;
                });
                runtime.shutdown_timeout(Duration::from_secs(2));
            })?;
        let addr = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("kagami did not start within 10 s"))??;
        Ok(KagamiServer {
            addr,
            tids,
            stop,
            thread,
        })
    }

    /// CPU seconds used so far by the runtime's threads (those still alive).
    fn cpu_seconds(&self) -> Option<f64> {
        let tids = self.tids.lock().ok()?.clone();
        let pid = std::process::id();
        let times: Vec<f64> = tids
            .iter()
            .filter_map(|tid| affinity::cpu_seconds(&format!("/proc/{pid}/task/{tid}/stat")))
            .collect();
        (!times.is_empty()).then(|| times.iter().sum())
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

// ----------------------------------------------------------------------------------------
// nginx for comparison
// ----------------------------------------------------------------------------------------

/// nginx with `proxy_cache` in a temporary prefix; killed when dropped (also on error paths).
struct Nginx {
    addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(binary: &Path, origin: SocketAddr, settings: &Settings) -> anyhow::Result<Nginx> {
        let dir = tempfile::Builder::new()
            .prefix("kagami-bench-nginx")
            .tempdir()?;
        let root = dir.path();
        for sub in [
            "cache",
            "client_body",
            "proxy_temp",
            "fastcgi_temp",
            "uwsgi_temp",
            "scgi_temp",
        ] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        let addr = free_port()?;
        let conf = nginx_conf(root, addr, origin, settings.nginx_sendfile);
        let conf_path = root.join("nginx.conf");
        std::fs::write(&conf_path, &conf)?;
        let error_log = root.join("error.log");

        let mut command = pinned_command(binary, settings.server_cpu, settings.taskset.as_deref());
        command
            .arg("-e")
            .arg(&error_log)
            .arg("-p")
            .arg(root)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.join("stderr.log"))?);
        let child = command.spawn().context("spawning nginx")?;
        let mut nginx = Nginx {
            addr,
            child,
            _dir: dir,
        };

        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = nginx.child.try_wait()? {
                let stderr = std::fs::read_to_string(nginx._dir.path().join("stderr.log"))
                    .unwrap_or_default();
                let log = std::fs::read_to_string(&error_log).unwrap_or_default();
                bail!(
                    "nginx exited with {status}: {} {}",
                    stderr.trim(),
                    log.trim()
                );
            }
            if StdStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(nginx);
            }
            if Instant::now() > deadline {
                bail!("nginx did not listen on {addr} within 5 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Nginx {
    /// CPU seconds used so far by the nginx process.
    fn cpu_seconds(&self) -> Option<f64> {
        affinity::cpu_seconds(&format!("/proc/{}/stat", self.child.id()))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One nginx process (no master, so killing the child stops everything), caching on disk
/// in the temp dir, tuned for this load: cached open files, unlimited keep-alive requests,
/// upstream keep-alive, `sendfile` as chosen (see `NGINX_SENDFILE_DEFAULT`).
fn nginx_conf(root: &Path, listen: SocketAddr, origin: SocketAddr, sendfile: bool) -> String {
    let root = root.display();
    let sendfile = if sendfile { "on" } else { "off" };
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    sendfile {sendfile};
    tcp_nopush {sendfile};
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 100000000;
    open_file_cache max=1000 inactive=60s;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy_temp;
    fastcgi_temp_path {root}/fastcgi_temp;
    uwsgi_temp_path {root}/uwsgi_temp;
    scgi_temp_path {root}/scgi_temp;
    proxy_cache_path {root}/cache levels=1:2 keys_zone=bench:10m max_size=256m inactive=1h use_temp_path=off;

    upstream origin {{
        server {origin};
        keepalive 16;
    }}

    server {{
        listen {listen};
        server_name 127.0.0.1;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_cache bench;
            proxy_cache_lock on;
            add_header X-Cache-Status $upstream_cache_status;
        }}
    }}
}}
"#
    )
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = StdListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

// ----------------------------------------------------------------------------------------
// Load generation
// ----------------------------------------------------------------------------------------

/// One GET on a fresh connection: status, headers and body length.
fn fetch_once(addr: SocketAddr, path: &str) -> anyhow::Result<(StatusCode, HeaderMap, usize)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            let stream = TcpStream::connect(addr).await?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            let request = Request::get(path)
                .header(HOST, addr.to_string())
                .body(Empty::<Bytes>::new())?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>((status, headers, body.len()))
        })
        .await
        .map_err(|_| anyhow!("GET {path} timed out"))?
    })
}

/// Loads `path` for `secs`, with wrk when available, else the built-in client.
fn load(
    addr: SocketAddr,
    path: &str,
    secs: u64,
    settings: &Settings,
) -> anyhow::Result<LoadResult> {
    match &settings.wrk {
        Some(wrk) => load_wrk(wrk, addr, path, secs, settings),
        None => load_builtin(addr, path, secs, settings),
    }
}

fn load_wrk(
    wrk: &Path,
    addr: SocketAddr,
    path: &str,
    secs: u64,
    settings: &Settings,
) -> anyhow::Result<LoadResult> {
    let url = format!("http://{addr}{path}");
    let mut command = pinned_command(wrk, settings.load_cpu, settings.taskset.as_deref());
    command
        .arg("-t1")
        .arg(format!("-c{}", settings.conns))
        .arg(format!("-d{secs}s"))
        .arg("--latency")
        .arg(&url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().context("spawning wrk")?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    // wrk stops by itself after `secs`; kill it if it has not a while later.
    let deadline = Instant::now() + Duration::from_secs(secs + 15);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("wrk did not finish within {} s; killed", secs + 15);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = reader.join().unwrap_or_default();
    let err_text = err_reader.join().unwrap_or_default();
    if !status.success() {
        bail!("wrk failed ({status}): {} {}", text.trim(), err_text.trim());
    }
    parse_wrk(&text).with_context(|| format!("parsing wrk output:\n{text}"))
}

/// Reads Requests/sec, the 50 % and 99 % latencies, the request count and errors from wrk.
fn parse_wrk(text: &str) -> anyhow::Result<LoadResult> {
    let mut rps = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut requests = 0;
    let mut errors = 0;
    for line in text.lines() {
        let line = line.trim();
        let mut words = line.split_whitespace();
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            rps = rest.trim().parse::<f64>().ok();
        } else if let Some(rest) = line.strip_prefix("50%") {
            p50 = parse_wrk_duration(rest.trim());
        } else if let Some(rest) = line.strip_prefix("99%") {
            p99 = parse_wrk_duration(rest.trim());
        } else if line.contains("requests in") {
            requests = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += rest.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            errors += rest
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1))
                .filter_map(|n| n.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    Ok(LoadResult {
        tool: "wrk",
        requests,
        rps: rps.ok_or_else(|| anyhow!("no Requests/sec line"))?,
        p50_us: p50.ok_or_else(|| anyhow!("no 50% latency line"))?,
        p99_us: p99.ok_or_else(|| anyhow!("no 99% latency line"))?,
        errors,
    })
}

/// wrk durations: `452.00us`, `1.23ms`, `2.01s`, `1.00m`; in microseconds.
fn parse_wrk_duration(text: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e6)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60e6)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3600e6)
    } else {
        return None;
    };
    number.trim().parse::<f64>().ok().map(|n| n * scale)
}

/// The built-in generator: `conns` keep-alive HTTP/1.1 connections on a current-thread runtime
/// in a thread pinned to the load CPU; each records the latency of every request.
fn load_builtin(
    addr: SocketAddr,
    path: &str,
    secs: u64,
    settings: &Settings,
) -> anyhow::Result<LoadResult> {
    let conns = settings.conns;
    let cpu = settings.load_cpu;
    let path = path.to_string();
    let thread = std::thread::Builder::new()
        .name("loadgen".into())
        .spawn(move || {
            if let Some(cpu) = cpu {
                affinity::pin_current_thread(cpu);
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(builtin_run(addr, path, secs, conns))
        })?;
    thread
        .join()
        .map_err(|_| anyhow!("load generator thread panicked"))?
}

async fn builtin_run(
    addr: SocketAddr,
    path: String,
    secs: u64,
    conns: usize,
) -> anyhow::Result<LoadResult> {
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let host = addr.to_string();
    let mut tasks = Vec::with_capacity(conns);
    for _ in 0..conns {
        let (path, host, issued) = (path.clone(), host.clone(), issued.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies: Vec<u32> = Vec::with_capacity(1 << 14);
            let mut errors = 0u64;
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            while Instant::now() < deadline
                && issued.fetch_add(1, Ordering::Relaxed) < MAX_REQUESTS_PER_RUN
            {
                let request = Request::get(path.as_str())
                    .header(HOST, host.as_str())
                    .body(Empty::<Bytes>::new())?;
                let sent = Instant::now();
                let outcome = tokio::time::timeout_at(deadline.into(), async {
                    sender.ready().await?;
                    let response = sender.send_request(request).await?;
                    let ok = response.status() == StatusCode::OK;
                    response.into_body().collect().await?;
                    Ok::<_, hyper::Error>(ok)
                })
                .await;
                match outcome {
                    // Requests cut off by the deadline are neither counted nor errors.
                    Err(_) => break,
                    Ok(Ok(true)) => {
                        latencies.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32)
                    }
                    Ok(Ok(false)) => errors += 1,
                    Ok(Err(_)) => {
                        errors += 1;
                        break;
                    }
                }
            }
            Ok::<_, anyhow::Error>((latencies, errors))
        }));
    }
    let mut all: Vec<u32> = Vec::new();
    let mut errors = 0;
    for task in tasks {
        match task.await {
            Ok(Ok((latencies, e))) => {
                all.extend(latencies);
                errors += e;
            }
            Ok(Err(_)) | Err(_) => errors += 1,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    if all.is_empty() {
        bail!("no successful request ({errors} errors)");
    }
    all.sort_unstable();
    let percentile = |p: f64| f64::from(all[((all.len() - 1) as f64 * p).round() as usize]);
    Ok(LoadResult {
        tool: "builtin",
        requests: all.len() as u64,
        rps: all.len() as f64 / elapsed,
        p50_us: percentile(0.50),
        p99_us: percentile(0.99),
        errors,
    })
}
