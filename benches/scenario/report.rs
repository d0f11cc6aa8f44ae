//! The end-of-run report: one table row per target and run, then the throughput and
//! CPU-efficiency ratios between targets (plain HTTP, then HTTPS), all from the same run.

use crate::load::LoadResult;
use crate::{show_cpu, Settings, Target, PLAIN_RUNS, TLS_RUNS};

/// Issue 7's targets for plain keep-alive hits, flagged with `*` when a run misses them:
/// kagami/nginx req/s at both sizes, and kagami/bare at 1 KiB.
const KAGAMI_NGINX_TARGET: f64 = 1.2;
const KAGAMI_BARE_TARGET: f64 = 0.9;
const KAGAMI_BARE_TARGET_RUN: &str = "/1k";

/// One measured run: a target serving one object (or, for a handshake run, a new connection
/// per request).
pub struct Row {
    pub target: Target,
    /// The run's label (`Run::label`): the object, or the kind of handshake.
    pub object: &'static str,
    pub result: LoadResult,
    pub cpu: Option<ServerCpu>,
    /// Share of the load generator's CPU that was busy during the run (0.0 to 1.0).
    pub load_busy: Option<f64>,
    /// Share of the server's CPU used by anything but the server during the run.
    pub other_busy: Option<f64>,
    pub origin_requests: u64,
    /// Which round of `KAGAMI_BENCH_ROUNDS` it belongs to, from 0.
    pub round: usize,
}

/// CPU used by the server under test during a measured run.
#[derive(Debug, Clone, Copy)]
pub struct ServerCpu {
    /// CPU seconds per wall second (1.0 = one core saturated).
    pub busy: f64,
    pub us_per_request: f64,
}

pub fn show_us(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2}ms", us / 1000.0)
    } else {
        format!("{us:.0}us")
    }
}

/// A 0.0 to 1.0 share as a percentage, or `n/a`.
pub fn show_share(share: Option<f64>) -> String {
    share.map_or_else(|| String::from("n/a"), |s| format!("{:.0}%", s * 100.0))
}

/// `busy` and `us/req` for a run line, or `n/a`.
pub fn show_cpu_use(cpu: Option<ServerCpu>) -> (String, String) {
    match cpu {
        Some(c) => (
            format!("{:.0}%", c.busy * 100.0),
            format!("{:.1}us", c.us_per_request),
        ),
        None => (String::from("n/a"), String::from("n/a")),
    }
}

pub fn print_summary(rows: &[Row], settings: &Settings) {
    println!();
    println!(
        "== summary: {} s per run, {} connections, load generator on {}, server on {} ==",
        settings.secs,
        settings.conns,
        show_cpu(settings.load_cpu),
        show_cpu(settings.server_cpu)
    );
    println!(
        "bare = hyper http1 alone ({}); kagami = the proxy, cache hits; nginx-sf-off / \
         nginx-sf-on = nginx proxy_cache hits with sendfile off / on (on is what the stock \
         Debian nginx.conf sets; nginx's built-in default is off)",
        settings.bare_flavor.describe()
    );
    println!(
        "{:<5} {:<13} {:<10} {:>10} {:>9} {:>9} {:>8} {:>9} {:>6} {:>8} {:>7} {:>7} {:>8}",
        "round",
        "target",
        "object",
        "req/s",
        "p50",
        "p99",
        "srv cpu",
        "cpu/req",
        "other",
        "gen cpu",
        "errors",
        "origin",
        "tool"
    );
    for row in rows {
        let (busy, per_request) = show_cpu_use(row.cpu);
        println!(
            "{:<5} {:<13} {:<10} {:>10.0} {:>9} {:>9} {:>8} {:>9} {:>6} {:>8} {:>7} {:>7} {:>8}",
            row.round + 1,
            row.target.label(),
            row.object,
            row.result.rps,
            show_us(row.result.p50_us),
            show_us(row.result.p99_us),
            busy,
            per_request,
            show_share(row.other_busy),
            show_share(row.load_busy),
            row.result.errors,
            row.origin_requests,
            row.result.tool
        );
    }
    if rows
        .iter()
        .any(|r| matches!(r.target, Target::KagamiTls | Target::NginxTls))
    {
        println!(
            "kagami-tls / nginx-tls = the same over TLS 1.3 with one certificate; full-hs: a new \
             connection and full handshake per 1 KiB hit (built-in client, no resumption), \
             resumed-hs: a new connection per hit resuming the last session (wrk \
             -H 'Connection: close'); for those req/s = handshakes/s and cpu/req = cpu per handshake"
        );
    }
    print_ratios(rows, settings.rounds);
    println!(
        "srv cpu: the server's CPU time per wall second; other: the rest of the server's CPU's busy \
         time (other processes, interrupts); gen cpu: how busy the load generator's CPU was (all \
         processes on it)"
    );
    if rows.iter().any(|r| r.cpu.is_some_and(|c| c.busy < 0.9)) {
        println!(
            "note: a server below ~90% CPU was limited by the load generator (or by other work on \
             the machine), not by itself; compare the per-request CPU figures then"
        );
    }
}

/// Ratios between targets per run: req/s, and in brackets requests per server CPU-second (the
/// inverse ratio of CPU per request; meaningful even when the load generator is the
/// bottleneck). Plain HTTP first, then HTTPS (and HTTPS against plain HTTP: what TLS costs).
/// Over several rounds: the median of the rounds' ratios, then their range.
fn print_ratios(rows: &[Row], rounds: usize) {
    const PLAIN_PAIRS: [(Target, Target); 5] = [
        (Target::Bare, Target::Nginx { sendfile: false }),
        (Target::Bare, Target::Nginx { sendfile: true }),
        (Target::Kagami, Target::Nginx { sendfile: false }),
        (Target::Kagami, Target::Nginx { sendfile: true }),
        (Target::Kagami, Target::Bare),
    ];
    const TLS_PAIRS: [(Target, Target); 3] = [
        (Target::KagamiTls, Target::NginxTls),
        (Target::KagamiTls, Target::Kagami),
        (Target::NginxTls, Target::Nginx { sendfile: false }),
    ];
    let has_tls = rows
        .iter()
        .any(|r| matches!(r.target, Target::KagamiTls | Target::NginxTls));
    if !rows
        .iter()
        .any(|r| matches!(r.target, Target::Nginx { .. } | Target::NginxTls))
    {
        println!();
        println!("no nginx figures: the ratios to nginx are n/a");
    }
    let plain: Vec<&str> = PLAIN_RUNS.iter().map(|r| r.label).collect();
    let tls: Vec<&str> = TLS_RUNS.iter().map(|r| r.label).collect();
    let shows: &[Show] = if rounds > 1 {
        &[Show::Median, Show::Range]
    } else {
        &[Show::Median]
    };
    let mut below_target = false;
    for &show in shows {
        println!();
        match show {
            Show::Median if rounds > 1 => println!(
                "== ratios, median of {rounds} rounds: req/s (requests per server CPU-second) =="
            ),
            Show::Median => println!("== ratios: req/s (requests per server CPU-second) =="),
            Show::Range => println!("== ratios, lowest-highest of the {rounds} rounds =="),
        }
        below_target |= print_ratio_table(rows, &PLAIN_PAIRS, &plain, show);
        if has_tls {
            below_target |= print_ratio_table(rows, &TLS_PAIRS, &tls, show);
        }
    }
    if below_target {
        println!(
            "* below issue 7's targets for plain HTTP hits: kagami/nginx req/s \
             {KAGAMI_NGINX_TARGET}, kagami/bare req/s {KAGAMI_BARE_TARGET} at \
             {KAGAMI_BARE_TARGET_RUN}"
        );
    }
}

/// What a ratio cell shows: the median over the rounds (the one value with one round), or
/// the lowest and highest.
#[derive(Clone, Copy, PartialEq)]
enum Show {
    Median,
    Range,
}

/// Whether a req/s ratio misses issue 7's target for its pair and run (plain targets only:
/// the TLS pairs are other targets).
fn target_missed(num: Target, den: Target, run: &str, ratio: f64) -> bool {
    match (num, den) {
        (Target::Kagami, Target::Nginx { .. }) => ratio < KAGAMI_NGINX_TARGET,
        (Target::Kagami, Target::Bare) => {
            run == KAGAMI_BARE_TARGET_RUN && ratio < KAGAMI_BARE_TARGET
        }
        _ => false,
    }
}

/// The median of `values` (the mean of the middle two for an even count); `None` when empty.
fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// The req/s ratios and requests-per-CPU-second ratios of `num` to `den` on one run label, one
/// per round that measured both.
fn round_ratios(rows: &[Row], num: Target, den: Target, column: &str) -> (Vec<f64>, Vec<f64>) {
    let find = |target: Target, round: usize| {
        rows.iter()
            .find(|r| r.target == target && r.object == column && r.round == round)
    };
    let (mut rps, mut efficiency) = (Vec::new(), Vec::new());
    let rounds = rows.iter().map(|r| r.round + 1).max().unwrap_or(0);
    for round in 0..rounds {
        let (Some(n), Some(d)) = (find(num, round), find(den, round)) else {
            continue;
        };
        rps.push(n.result.rps / d.result.rps.max(f64::MIN_POSITIVE));
        if let (Some(nc), Some(dc)) = (n.cpu, d.cpu) {
            if nc.us_per_request > 0.0 {
                efficiency.push(dc.us_per_request / nc.us_per_request);
            }
        }
    }
    (rps, efficiency)
}

/// One table of ratios: a column per run label, a line per pair (lines without any figure
/// left out). True when a plain kagami median ratio is below its target (`target_missed`).
fn print_ratio_table(
    rows: &[Row],
    pairs: &[(Target, Target)],
    columns: &[&str],
    show: Show,
) -> bool {
    let mut below_target = false;
    let mut header = false;
    for &(num, den) in pairs {
        let name = format!("{}/{}", num.label(), den.label());
        let mut cells = Vec::new();
        for column in columns {
            let (mut rps, mut efficiency) = round_ratios(rows, num, den, column);
            let cell = match show {
                Show::Median => median(&mut rps).map(|ratio| {
                    let flag = if target_missed(num, den, column, ratio) {
                        below_target = true;
                        "*"
                    } else {
                        ""
                    };
                    let efficiency = median(&mut efficiency)
                        .map_or_else(|| String::from("n/a"), |e| format!("{e:.2}"));
                    format!("{ratio:.2}{flag} ({efficiency})")
                }),
                Show::Range => {
                    let range = |values: &[f64]| {
                        let low = values.iter().copied().fold(f64::INFINITY, f64::min);
                        let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        (!values.is_empty()).then(|| format!("{low:.2}-{high:.2}"))
                    };
                    range(&rps).map(|r| {
                        let e = range(&efficiency).unwrap_or_else(|| String::from("n/a"));
                        format!("{r} ({e})")
                    })
                }
            };
            cells.push(cell.unwrap_or_else(|| String::from("n/a")));
        }
        if cells.iter().all(|c| c == "n/a") {
            continue;
        }
        if !header {
            header = true;
            print!("{:<22}", "");
            for column in columns {
                print!(" {column:>21}");
            }
            println!();
        }
        print!("{name:<22}");
        for cell in cells {
            print!(" {cell:>21}");
        }
        println!();
    }
    below_target
}
