//! `/metrics`: the `Stats` counters and gauges in the Prometheus text exposition format
//! (0.0.4), names prefixed `kagami_`. Written by hand: no Prometheus crate is vendored yet.

use std::fmt::Write;

use crate::proxy::Proxy;

/// Values that go up and down (or are a peak), exported as gauges; the rest are counters.
const GAUGES: &[&str] = &[
    "origin_in_flight",
    "origin_peak_in_flight",
    "connections_open",
    "requests_in_flight",
    "inflight_bytes",
    "inflight_peak_bytes",
];

pub fn render(proxy: &Proxy) -> String {
    let mut out = String::new();
    let snapshot = proxy.stats.snapshot();
    let docs = crate::metrics::Stats::docs();
    for (name, value) in snapshot.pairs() {
        let help = docs.iter().find(|(n, _)| *n == name).map_or("", |(_, d)| d);
        let (kind, full) = match GAUGES.contains(&name) {
            true => ("gauge", format!("kagami_{name}")),
            false => (
                "counter",
                format!("kagami_{}_total", name.trim_end_matches("_total")),
            ),
        };
        metric(&mut out, &full, kind, help, value);
    }
    let limits = proxy.stats.origin_limits.now();
    if !limits.is_empty() {
        let name = "kagami_origin_adaptive_limit";
        let _ = writeln!(
            out,
            "# HELP {name} Each site's adaptive origin concurrency limit now."
        );
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (site, limit) in limits {
            let site = site
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let _ = writeln!(out, "{name}{{site=\"{site}\"}} {limit}");
        }
    }
    let (entries, bytes) = proxy.store_usage();
    metric(
        &mut out,
        "kagami_cache_entries",
        "gauge",
        "URLs stored in the memory tier.",
        entries,
    );
    metric(
        &mut out,
        "kagami_cache_bytes",
        "gauge",
        "Bytes held by the memory tier.",
        bytes,
    );
    out
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}
