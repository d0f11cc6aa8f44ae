//! End-to-end hit-path benchmark: keep-alive HTTP/1.1 load on two cached objects (1 KiB and
//! 16 KiB) against a bare hyper server (the ceiling), Kagami, and — when `nginx` is
//! installed — nginx `proxy_cache` with `sendfile` off and on, with the ratios between them.
//!
//! Run: `cargo bench --bench scenario` (about a minute with the defaults).
//!
//! * Kagami runs on a tokio runtime with ONE worker thread, pinned to the first allowed CPU.
//! * The bare hyper server is a plain hyper 1 HTTP/1.1 server answering every request from
//!   memory with the same body and the origin's headers (Content-Type, Cache-Control, Date),
//!   on a current-thread tokio runtime pinned to the same CPU: what any hyper-based proxy on
//!   one core could reach at best.
//! * nginx runs as one process (`worker_processes 1`, no master) pinned to the same CPU, once
//!   with `sendfile off` (the faster setting for these small cached objects: pread + writev
//!   instead of pread + writev + sendfile + two cork setsockopt calls per hit) and once with
//!   `sendfile on; tcp_nopush on` as in the stock Debian nginx.conf.
//! * The load generator is `wrk -t1` when installed (else a built-in hyper client on a
//!   current-thread runtime), pinned to the second allowed CPU.
//! * The origin is a tiny hyper server in this process; it counts its requests, so the
//!   offload (about one origin request per object) is checked.
//!
//! Besides req/s and latency, the server's CPU time per request is reported (from
//! `/proc/.../stat`), and how busy the load generator's CPU was (from `/proc/stat`): with one
//! wrk thread on the other core the load generator is close to saturation, so CPU per
//! request is the fairer efficiency comparison.
//!
//! Environment:
//! * `KAGAMI_BENCH_SECS`: measurement per run, default 5.
//! * `KAGAMI_BENCH_CONNS`: keep-alive connections, default 64.
//! * `KAGAMI_BENCH_WARMUP_SECS`: unmeasured load before each run, default 1, 0 = none.
//! * `KAGAMI_BENCH_LOADGEN=builtin`: use the built-in client even when wrk is installed.
//! * `KAGAMI_BENCH_TARGETS`: comma-separated subset of `bare,kagami,nginx` (default all).
//! * `KAGAMI_BENCH_NGINX_SENDFILE=on|off|both`: which nginx `sendfile` settings to run,
//!   default both.
//! * `KAGAMI_BENCH_BARE_RUNTIME=current|worker`: the bare server's runtime, current-thread
//!   (default) or multi-thread with one worker like Kagami's here.
//! * `KAGAMI_BENCH_LIMITS=off`: drop Kagami's per-client limiters instead of giving them a
//!   budget that never runs out.
//!
//! Everything binds and targets 127.0.0.1; every load run stops by itself (time and count).
//!
//! Modules: `servers` (origin, bare hyper, Kagami), `nginx`, `load` (wrk and the built-in
//! generator), `affinity` (pinning and CPU time), `report` (summary table and ratios).

mod affinity;
mod load;
mod nginx;
mod report;
mod servers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context as _};
use http::{HeaderMap, StatusCode};

use crate::load::{fetch_once, load};
use crate::nginx::Nginx;
use crate::report::{print_summary, show_cpu_use, show_share, show_us, Row, ServerCpu};
use crate::servers::{start_bare, start_kagami, Flavor, Origin};

/// The two objects: path and body size.
const OBJECTS: [(&str, usize); 2] = [("/1k", 1024), ("/16k", 16 * 1024)];
/// Share of the server's CPU taken by anything else above which a run is flagged.
const OTHER_WORK_WARNING: f64 = 0.10;

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

/// A server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Bare,
    Kagami,
    Nginx { sendfile: bool },
}

impl Target {
    pub fn label(self) -> &'static str {
        match self {
            Target::Bare => "bare",
            Target::Kagami => "kagami",
            Target::Nginx { sendfile: false } => "nginx-sf-off",
            Target::Nginx { sendfile: true } => "nginx-sf-on",
        }
    }
}

pub struct Settings {
    secs: u64,
    warmup_secs: u64,
    conns: usize,
    wrk: Option<PathBuf>,
    taskset: Option<PathBuf>,
    /// CPU for the server under test, CPU for the load generator (when there are two).
    server_cpu: Option<usize>,
    load_cpu: Option<usize>,
    run_bare: bool,
    run_kagami: bool,
    run_nginx: bool,
    /// nginx `sendfile` (and `tcp_nopush`) settings to run, in order.
    nginx_sendfile: Vec<bool>,
    bare_flavor: Flavor,
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

/// `KAGAMI_BENCH_TARGETS`: (bare, kagami, nginx).
fn env_targets() -> (bool, bool, bool) {
    let Ok(text) = std::env::var("KAGAMI_BENCH_TARGETS") else {
        return (true, true, true);
    };
    let names: Vec<&str> = text.split(',').map(str::trim).collect();
    if let Some(unknown) = names
        .iter()
        .find(|n| !["bare", "kagami", "nginx"].contains(n))
    {
        println!("scenario: KAGAMI_BENCH_TARGETS: ignoring unknown target {unknown:?}");
    }
    let has = |name: &str| names.contains(&name);
    (has("bare"), has("kagami"), has("nginx"))
}

fn env_nginx_sendfile() -> Vec<bool> {
    match std::env::var("KAGAMI_BENCH_NGINX_SENDFILE").as_deref() {
        Ok("on") => vec![true],
        Ok("off") => vec![false],
        Ok("both") | Err(_) => vec![false, true],
        Ok(other) => {
            println!("scenario: ignoring KAGAMI_BENCH_NGINX_SENDFILE={other:?}, running both");
            vec![false, true]
        }
    }
}

fn env_bare_flavor() -> Flavor {
    match std::env::var("KAGAMI_BENCH_BARE_RUNTIME").as_deref() {
        Ok("worker") => Flavor::OneWorker,
        Ok("current") | Err(_) => Flavor::CurrentThread,
        Ok(other) => {
            println!("scenario: ignoring KAGAMI_BENCH_BARE_RUNTIME={other:?}, using current");
            Flavor::CurrentThread
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cpus = affinity::allowed_cpus();
    let (server_cpu, load_cpu) = match cpus.as_slice() {
        [a, b, ..] => (Some(*a), Some(*b)),
        _ => (None, None),
    };
    let builtin = std::env::var("KAGAMI_BENCH_LOADGEN").is_ok_and(|v| v == "builtin");
    let (run_bare, run_kagami, run_nginx) = env_targets();
    let settings = Settings {
        secs: env_u64("KAGAMI_BENCH_SECS", 5, 1, 600),
        warmup_secs: env_u64("KAGAMI_BENCH_WARMUP_SECS", 1, 0, 60),
        conns: env_u64("KAGAMI_BENCH_CONNS", 64, 1, 4096) as usize,
        wrk: if builtin { None } else { which("wrk") },
        taskset: which("taskset"),
        server_cpu,
        load_cpu,
        run_bare,
        run_kagami,
        run_nginx,
        nginx_sendfile: env_nginx_sendfile(),
        bare_flavor: env_bare_flavor(),
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
    println!("origin: http://{}", origin.addr());

    let mut rows: Vec<Row> = Vec::new();

    // --- bare hyper: the ceiling ----------------------------------------------------------
    if settings.run_bare {
        let bare = start_bare(settings.server_cpu, settings.bare_flavor)?;
        println!(
            "bare: http://{} (hyper http1 alone, {})",
            bare.addr,
            settings.bare_flavor.describe()
        );
        let result = measure_target(
            Target::Bare,
            bare.addr,
            &origin,
            &settings,
            &mut rows,
            |_| true,
            || bare.cpu_seconds(),
        );
        bare.stop();
        result?;
    }

    // --- Kagami ---------------------------------------------------------------------------
    if settings.run_kagami {
        let kagami = start_kagami(origin.addr(), settings.server_cpu)?;
        println!(
            "kagami: http://{} ({})",
            kagami.addr,
            Flavor::OneWorker.describe()
        );
        let result = measure_target(
            Target::Kagami,
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
        result?;
    }

    // --- nginx ----------------------------------------------------------------------------
    match which("nginx") {
        _ if !settings.run_nginx => {}
        None => println!("nginx: not installed (not on PATH); skipping the nginx comparison"),
        Some(nginx_bin) => {
            for &sendfile in &settings.nginx_sendfile {
                measure_nginx(&nginx_bin, sendfile, &origin, &settings, &mut rows);
            }
        }
    }

    origin.stop();
    print_summary(&rows, &settings);
    Ok(())
}

/// Starts nginx with `sendfile` as given, measures it, stops it; failures are reported and
/// leave its figures out.
fn measure_nginx(
    binary: &std::path::Path,
    sendfile: bool,
    origin: &Origin,
    settings: &Settings,
    rows: &mut Vec<Row>,
) {
    let target = Target::Nginx { sendfile };
    let nginx = match Nginx::start(binary, origin.addr(), sendfile, settings) {
        Ok(nginx) => nginx,
        Err(err) => {
            println!(
                "{}: could not be started ({err:#}); skipping it",
                target.label()
            );
            return;
        }
    };
    println!(
        "{}: http://{} (proxy_cache, worker_processes 1, sendfile {})",
        target.label(),
        nginx.addr,
        if sendfile { "on" } else { "off" }
    );
    let result = measure_target(
        target,
        nginx.addr,
        origin,
        settings,
        rows,
        |h| h.get("x-cache-status").is_some_and(|v| v == "HIT"),
        || nginx.cpu_seconds(),
    );
    drop(nginx);
    if let Err(err) = result {
        println!(
            "{}: run failed ({err:#}); its figures are incomplete",
            target.label()
        );
    }
}

pub fn show_cpu(cpu: Option<usize>) -> String {
    cpu.map_or_else(|| String::from("(not pinned)"), |c| format!("cpu {c}"))
}

/// Warms `target`'s cache (one request per object, then checks a hit), then loads each object.
fn measure_target(
    target: Target,
    addr: SocketAddr,
    origin: &Origin,
    settings: &Settings,
    rows: &mut Vec<Row>,
    is_hit: impl Fn(&HeaderMap) -> bool,
    server_cpu: impl Fn() -> Option<f64>,
) -> anyhow::Result<()> {
    let name = target.label();
    for (path, size) in OBJECTS {
        let before = origin.count(path);
        let (status, _, len) =
            fetch_once(addr, path).with_context(|| format!("{name}: warming {path}"))?;
        if status != StatusCode::OK || len != size {
            bail!(
                "{name}: warming {path}: got {status} with {len} bytes, expected 200 with {size}"
            );
        }
        let (_, headers, _) =
            fetch_once(addr, path).with_context(|| format!("{name}: checking {path}"))?;
        if !is_hit(&headers) {
            println!("{name}: WARNING: the second request for {path} was not reported as a hit: {headers:?}");
        }
        if settings.warmup_secs > 0 {
            load(addr, path, settings.warmup_secs, settings)
                .with_context(|| format!("{name}: warm-up load on {path}"))?;
        }
        let load_before = settings.load_cpu.and_then(affinity::cpu_ticks);
        let server_before = settings.server_cpu.and_then(affinity::cpu_ticks);
        let cpu_before = server_cpu();
        let started = Instant::now();
        let result = load(addr, path, settings.secs, settings)
            .with_context(|| format!("{name}: load on {path}"))?;
        let wall = started.elapsed().as_secs_f64();
        let cpu = match (cpu_before, server_cpu()) {
            (Some(a), Some(b)) if result.requests > 0 => Some(ServerCpu {
                busy: (b - a) / wall,
                us_per_request: (b - a) * 1e6 / result.requests as f64,
            }),
            _ => None,
        };
        let load_busy =
            affinity::busy_share(load_before, settings.load_cpu.and_then(affinity::cpu_ticks));
        // Time the server's CPU spent on anything but the server: other processes (or
        // interrupts) that disturbed this run.
        let other_busy = match (
            affinity::busy_share(
                server_before,
                settings.server_cpu.and_then(affinity::cpu_ticks),
            ),
            cpu,
        ) {
            (Some(total), Some(own)) => Some((total - own.busy).max(0.0)),
            _ => None,
        };
        let origin_requests = origin.count(path) - before;
        let (busy, per_request) = show_cpu_use(cpu);
        println!(
            "{name:>12} {path:<4} {:>10.0} req/s  p50 {:>9}  p99 {:>9}  server cpu {busy} = {per_request}/req, other work on its cpu {}, load generator cpu {} ({} requests, {} errors, {}; origin requests {origin_requests})",
            result.rps,
            show_us(result.p50_us),
            show_us(result.p99_us),
            show_share(other_busy),
            show_share(load_busy),
            result.requests,
            result.errors,
            result.tool,
        );
        if origin_requests > 2 {
            println!("{name:>12} {path:<4} WARNING: {origin_requests} origin requests: the cache did not absorb the load");
        }
        if let Some(other) = other_busy.filter(|o| *o > OTHER_WORK_WARNING) {
            println!(
                "{name:>12} {path:<4} WARNING: other work took {:.0}% of the server's cpu during \
                 this run: its figures are disturbed",
                other * 100.0
            );
        }
        if result.errors > 0 {
            println!(
                "{name:>12} {path:<4} WARNING: {} failed or non-2xx answers (e.g. 429 from a rate \
                 limit): its figures do not measure the hit path",
                result.errors
            );
        }
        rows.push(Row {
            target,
            object: path,
            result,
            cpu,
            load_busy,
            other_busy,
            origin_requests,
        });
    }
    Ok(())
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
