//! The surge bench's report: one row per phase on stdout, the same as JSON.

use super::{phase_name, Crowd, Phase, PhaseStats, ORIGIN_WORKERS, SETTLE};

pub fn report(
    crowd: &Crowd,
    phases: &[Phase],
    origin_cap: usize,
    kagami: kagami::metrics::Snapshot,
    profile: &str,
    json_path: &str,
) {
    let mut stats = crowd.stats.lock().unwrap();
    println!();
    println!(
        "{:<10} {:>8} {:>9} {:>6} {:>6} {:>7} {:>8} {:>8} {:>8} {:>9} {:>6} {:>7} {:>9} {:>9} {:>6} {:>6} {:>6}",
        "phase",
        "requests",
        "answers/s",
        "2xx %",
        "fail",
        "stale %",
        "visited%",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "age s",
        "origin",
        "peak/2s+",
        "limit/max",
        "429",
        "503",
        "errors"
    );
    let mut rows = Vec::new();
    let (mut all_requests, mut all_origin) = (0u64, 0u64);
    for &phase in phases {
        let s = &mut stats[phase as usize];
        s.latencies_us.sort_unstable();
        s.ages.sort_unstable();
        let row = Row::of(phase, s);
        println!(
            "{:<10} {:>8} {:>9.0} {:>6.2} {:>6} {:>7.2} {:>8} {:>8.2} {:>8.2} {:>9.2} {:>6} {:>7} {:>9} {:>9} {:>6} {:>6} {:>6}",
            row.phase,
            s.requests,
            row.answers_per_s,
            row.ok_pct,
            row.failures,
            row.stale_pct,
            if s.visited_requests == 0 {
                "-".to_string()
            } else {
                format!("{:.3}", row.visited_pct)
            },
            row.p50,
            row.p99,
            row.p999,
            row.median_age.map_or("-".to_string(), |a| a.to_string()),
            s.origin_requests,
            match s.origin_peak_settled {
                Some(settled) => format!("{}/{settled}", s.origin_peak),
                None => format!("{}/-", s.origin_peak),
            },
            match (s.adaptive_limit, s.adaptive_limit_max) {
                (Some(l), Some(m)) => format!("{l}/{m}"),
                _ => "-".to_string(),
            },
            s.limited,
            s.unavailable,
            s.errors,
        );
        rows.push(row.json(s));
        all_requests += s.requests;
        all_origin += s.origin_requests;
    }
    println!();
    println!(
        "origin requests: {all_origin} of {all_requests} client requests ({:.2} %); the origin \
         takes {ORIGIN_WORKERS} at once, Kagami's cap is {origin_cap}; peak/2s+: most origin \
         requests in flight when one arrived, over the whole phase / from {} s into it on; \
         limit/max: Kagami's adaptive origin limit at the phase's end and the highest during it",
        pct(all_origin, all_requests),
        SETTLE.as_secs()
    );
    println!(
        "answers/s: answers received per second; fail: requests not answered 200; age s: median \
         Age of the 200s served; visited %: share of requests for pages first answered before \
         the outage that got 200"
    );
    println!(
        "kagami: hits {} stale {} misses {} collapsed {} origin_busy {} circuit_opened {} rate_limited {} emergency_pages {}",
        kagami.hits, kagami.stale_served, kagami.misses, kagami.collapsed, kagami.origin_busy, kagami.circuit_opened,
        kagami.rate_limited, kagami.emergency_pages
    );
    let json = format!(
        "{{\"profile\":\"{profile}\",\"phases\":[{}],\"client_requests\":{all_requests},\"origin_requests\":{all_origin},\"origin_share_pct\":{:.4},\"origin_capacity\":{ORIGIN_WORKERS},\"origin_cap\":{origin_cap},\"kagami\":{{{}}}}}\n",
        rows.join(","),
        pct(all_origin, all_requests),
        kagami.pairs().iter().map(|(k, v)| format!("\"{k}\":{v}")).collect::<Vec<_>>().join(",")
    );
    match std::fs::write(json_path, json) {
        Ok(()) => println!("JSON report: {json_path}"),
        Err(err) => println!("could not write {json_path}: {err}"),
    }
}

/// The derived figures of one phase, computed once for the table and the JSON.
struct Row {
    phase: String,
    answers_per_s: f64,
    ok_pct: f64,
    failures: u64,
    stale_pct: f64,
    visited_pct: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    median_age: Option<u64>,
}

fn pct(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        100.0 * a as f64 / b as f64
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index] as f64 / 1000.0
}

impl Row {
    /// `s.latencies_us` and `s.ages` must be sorted.
    fn of(phase: Phase, s: &PhaseStats) -> Row {
        let answered = s.requests - s.errors;
        Row {
            phase: phase_name(phase),
            answers_per_s: if s.seconds > 0.0 {
                answered as f64 / s.seconds
            } else {
                0.0
            },
            ok_pct: pct(s.ok, s.requests),
            failures: s.requests - s.ok,
            stale_pct: pct(s.stale, s.requests),
            visited_pct: pct(s.visited_ok, s.visited_requests),
            p50: percentile(&s.latencies_us, 0.50),
            p99: percentile(&s.latencies_us, 0.99),
            p999: percentile(&s.latencies_us, 0.999),
            median_age: (!s.ages.is_empty()).then(|| s.ages[s.ages.len() / 2]),
        }
    }

    fn json(&self, s: &PhaseStats) -> String {
        format!(
            "{{\"phase\":\"{}\",\"seconds\":{:.3},\"requests\":{},\"answers_per_s\":{:.1},\"ok_pct\":{:.4},\"failures\":{},\"stale_pct\":{:.4},\"visited_ok_pct\":{:.4},\"visited_requests\":{},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"median_age_s\":{},\"origin_requests\":{},\"origin_peak_in_flight\":{},\"origin_peak_in_flight_after_settle\":{},\"adaptive_limit\":{},\"adaptive_limit_max\":{},\"status_429\":{},\"status_503\":{},\"errors\":{}}}",
            self.phase,
            s.seconds,
            s.requests,
            self.answers_per_s,
            self.ok_pct,
            self.failures,
            self.stale_pct,
            self.visited_pct,
            s.visited_requests,
            self.p50,
            self.p99,
            self.p999,
            self.median_age.map_or("null".to_string(), |a| a.to_string()),
            s.origin_requests,
            s.origin_peak,
            s.origin_peak_settled
                .map_or("null".to_string(), |p| p.to_string()),
            s.adaptive_limit.map_or("null".to_string(), |l| l.to_string()),
            s.adaptive_limit_max
                .map_or("null".to_string(), |l| l.to_string()),
            s.limited,
            s.unavailable,
            s.errors
        )
    }
}
