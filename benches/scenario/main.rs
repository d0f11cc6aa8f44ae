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
//! HTTPS (`KAGAMI_BENCH_TLS`): Kagami with an HTTPS listener and nginx with `listen ... ssl`,
//! both with the same self-signed ECDSA P-256 certificate for `localhost` (rcgen), TLS 1.3
//! only, HTTP/1.1 (no ALPN from wrk; `http/1.1` from the built-in client), nginx with
//! `sendfile off` (without kTLS nginx cannot sendfile into TLS anyway). Four runs each:
//! keep-alive hits on `/1k` and `/16k` over TLS (wrk with an https URL), `full-hs`: every request
//! on a new connection with a full handshake (the built-in client, session resumption off,
//! certificate not checked so that the client stays cheap), and `resumed-hs`: a new connection
//! per request with wrk `-H 'Connection: close'`, whose OpenSSL resumes the previous session
//! (a PSK handshake with a fresh key exchange). For those two runs req/s is handshakes/s and
//! CPU per request is CPU per handshake (one 1 KiB hit included); the rise in the kernel's
//! accepted-connection count is printed to show that every request really reconnected.
//!
//! Besides req/s and latency, the server's CPU time per request is reported (from
//! `/proc/.../stat`), and how busy the load generator's CPU was (from `/proc/stat`): with one
//! wrk thread on the other core the load generator is close to saturation, so CPU per
//! request is the fairer efficiency comparison.
//!
//! Environment:
//! * `KAGAMI_BENCH_SECS`: measurement per run, default 5.
//! * `KAGAMI_BENCH_ROUNDS`: how many times the whole set of targets is measured, one after
//!   the other (default 1, at most 20). With more than one, the ratios are the median of the
//!   rounds' ratios, with their range: on a shared machine one round's ratio moves with
//!   whatever else ran during it, and interleaved rounds spread that over every target.
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
//! * `KAGAMI_BENCH_TLS=both|off|only`: plain HTTP and HTTPS runs (default), plain HTTP only,
//!   or HTTPS only.
//!
//! Everything binds and targets 127.0.0.1; every load run stops by itself (time and count).
//!
//! Modules: `servers` (origin, bare hyper, Kagami), `nginx`, `load` (wrk and the built-in
//! generator), `measure` (warming, runs, per-run figures), `tls` (certificate, client settings, connection count), `affinity` (pinning and
//! CPU time), `report` (summary table and ratios).

mod affinity;
mod load;
mod measure;
mod nginx;
mod report;
mod servers;
mod tls;

use std::path::PathBuf;

use crate::load::Kind;
use crate::report::{print_summary, Row};
use crate::servers::{Flavor, Origin};

/// The two objects: path and body size.
const OBJECTS: [(&str, usize); 2] = [("/1k", 1024), ("/16k", 16 * 1024)];
/// One measured load: its label in the report, the object, how it loads the server.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub label: &'static str,
    pub path: &'static str,
    pub kind: Kind,
}

const fn keep_alive(label: &'static str) -> Run {
    Run {
        label,
        path: label,
        kind: Kind::KeepAlive,
    }
}

/// Plain HTTP: keep-alive hits on each object.
const PLAIN_RUNS: [Run; 2] = [keep_alive("/1k"), keep_alive("/16k")];
/// HTTPS: keep-alive hits on each object, then a new connection (and handshake) per 1 KiB hit.
pub const TLS_RUNS: [Run; 4] = [
    keep_alive("/1k"),
    keep_alive("/16k"),
    Run {
        label: "full-hs",
        path: "/1k",
        kind: Kind::Handshakes { resume: false },
    },
    Run {
        label: "resumed-hs",
        path: "/1k",
        kind: Kind::Handshakes { resume: true },
    },
];

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
    KagamiTls,
    NginxTls,
}

impl Target {
    pub fn label(self) -> &'static str {
        match self {
            Target::Bare => "bare",
            Target::Kagami => "kagami",
            Target::Nginx { sendfile: false } => "nginx-sf-off",
            Target::Nginx { sendfile: true } => "nginx-sf-on",
            Target::KagamiTls => "kagami-tls",
            Target::NginxTls => "nginx-tls",
        }
    }
}

pub struct Settings {
    secs: u64,
    rounds: usize,
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
    /// Plain HTTP runs, HTTPS runs (`KAGAMI_BENCH_TLS`).
    run_plain: bool,
    run_tls: bool,
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

/// `KAGAMI_BENCH_TLS`: (plain runs, HTTPS runs).
fn env_tls() -> (bool, bool) {
    match std::env::var("KAGAMI_BENCH_TLS").as_deref() {
        Ok("off") => (true, false),
        Ok("only") => (false, true),
        Ok("both") | Err(_) => (true, true),
        Ok(other) => {
            println!("scenario: ignoring KAGAMI_BENCH_TLS={other:?}, running both");
            (true, true)
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
    let (run_plain, run_tls) = env_tls();
    let settings = Settings {
        secs: env_u64("KAGAMI_BENCH_SECS", 5, 1, 600),
        rounds: env_u64("KAGAMI_BENCH_ROUNDS", 1, 1, 20) as usize,
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
        run_plain,
        run_tls,
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
        "{} s per run ({} s unmeasured warm-up), {} keep-alive HTTP/1.1 connections, {} round(s)",
        settings.secs, settings.warmup_secs, settings.conns, settings.rounds
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
    for round in 0..settings.rounds {
        if settings.rounds > 1 {
            println!("-- round {} of {} --", round + 1, settings.rounds);
        }
        let before = rows.len();
        if settings.run_plain {
            measure::measure_plain(&origin, &settings, &mut rows)?;
        }
        if settings.run_tls {
            measure::measure_tls(&origin, &settings, &mut rows)?;
        }
        for row in &mut rows[before..] {
            row.round = round;
        }
    }
    origin.stop();
    print_summary(&rows, &settings);
    Ok(())
}

pub fn show_cpu(cpu: Option<usize>) -> String {
    cpu.map_or_else(|| String::from("(not pinned)"), |c| format!("cpu {c}"))
}

/// Searches `PATH` for an executable.
pub fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
