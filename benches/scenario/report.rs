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
        "{:<13} {:<10} {:>10} {:>9} {:>9} {:>8} {:>9} {:>6} {:>8} {:>7} {:>7} {:>8}",
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
            "{:<13} {:<10} {:>10.0} {:>9} {:>9} {:>8} {:>9} {:>6} {:>8} {:>7} {:>7} {:>8}",
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
    print_ratios(rows);
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
fn print_ratios(rows: &[Row]) {
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
    println!();
    println!("== ratios: req/s (requests per server CPU-second) ==");
    if !rows
        .iter()
        .any(|r| matches!(r.target, Target::Nginx { .. } | Target::NginxTls))
    {
        println!("no nginx figures: the ratios to nginx are n/a");
    }
    let plain: Vec<&str> = PLAIN_RUNS.iter().map(|r| r.label).collect();
    let tls: Vec<&str> = TLS_RUNS.iter().map(|r| r.label).collect();
    let mut below_target = print_ratio_table(rows, &PLAIN_PAIRS, &plain);
    if rows
        .iter()
        .any(|r| matches!(r.target, Target::KagamiTls | Target::NginxTls))
    {
        below_target |= print_ratio_table(rows, &TLS_PAIRS, &tls);
    }
    if below_target {
        println!(
            "* below issue 7's targets for plain HTTP hits: kagami/nginx req/s \
             {KAGAMI_NGINX_TARGET}, kagami/bare req/s {KAGAMI_BARE_TARGET} at \
             {KAGAMI_BARE_TARGET_RUN}"
        );
    }
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

/// One table of ratios: a column per run label, a line per pair (lines without any figure
/// left out). True when a plain kagami ratio is below its target (`target_missed`).
fn print_ratio_table(rows: &[Row], pairs: &[(Target, Target)], columns: &[&str]) -> bool {
    let find = |target: Target, object: &str| {
        rows.iter()
            .find(|r| r.target == target && r.object == object)
    };
    let mut below_target = false;
    let mut header = false;
    for &(num, den) in pairs {
        let name = format!("{}/{}", num.label(), den.label());
        let mut cells = Vec::new();
        for column in columns {
            let (Some(n), Some(d)) = (find(num, column), find(den, column)) else {
                cells.push(String::from("n/a"));
                continue;
            };
            let ratio = n.result.rps / d.result.rps.max(f64::MIN_POSITIVE);
            let efficiency = match (n.cpu, d.cpu) {
                (Some(nc), Some(dc)) if nc.us_per_request > 0.0 => {
                    format!("{:.2}", dc.us_per_request / nc.us_per_request)
                }
                _ => String::from("n/a"),
            };
            let flag = if target_missed(num, den, column, ratio) {
                below_target = true;
                "*"
            } else {
                ""
            };
            cells.push(format!("{ratio:.2}{flag} ({efficiency})"));
        }
        if cells.iter().all(|c| c == "n/a") {
            continue;
        }
        if !header {
            header = true;
            print!("{:<22}", "");
            for column in columns {
                print!(" {column:>17}");
            }
            println!();
        }
        print!("{name:<22}");
        for cell in cells {
            print!(" {cell:>17}");
        }
        println!();
    }
    below_target
}
