//! `/metrics`: everything Kagami counts, in the Prometheus text exposition format (0.0.4)
//! through `prometheus-client`, names prefixed `kagami_`. The request path only bumps atomics
//! (`metrics::site`, `Stats`); a scrape reads them into a registry of its own and encodes it,
//! so scraping takes no lock the request path could wait on.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::metrics::allocator;
use crate::metrics::site::{SiteMetrics, NO_SITE};
use crate::metrics::Stats;
use crate::proxy::Proxy;

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// `Stats` values that go up and down (or are a peak), exported as gauges; the rest are
/// counters (`kagami_<name>_total`).
const GAUGES: &[&str] = &[
    "origin_in_flight",
    "origin_peak_in_flight",
    "connections_open",
    "requests_in_flight",
    "inflight_bytes",
    "inflight_peak_bytes",
];

/// `Stats` values exported with labels instead (`requests` becomes
/// `kagami_requests_total{site,status,cache}`).
const LABELLED: &[&str] = &["requests"];

type Labels = Vec<(&'static str, String)>;

/// Samples of one metric family, each with its labels.
#[derive(Debug)]
struct Series<M> {
    kind: MetricType,
    items: Vec<(Labels, M)>,
}

impl<M> Series<M> {
    fn new(kind: MetricType) -> Series<M> {
        Series {
            kind,
            items: Vec::new(),
        }
    }

    fn push(&mut self, labels: Labels, metric: M) {
        self.items.push((labels, metric));
    }
}

impl<M: EncodeMetric> EncodeMetric for Series<M> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, metric) in &self.items {
            metric.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        self.kind
    }
}

fn site(name: &str) -> Labels {
    vec![("site", name.to_string())]
}

/// The registry's help texts get a full stop appended; `Stats` docs have one already.
fn help(text: &str) -> &str {
    text.trim_end_matches('.')
}

pub fn render(proxy: &Proxy) -> String {
    let mut registry = Registry::with_prefix("kagami");
    register_stats(&mut registry, &proxy.stats);
    register_sites(&mut registry, proxy);
    register_origins(&mut registry, proxy);

    let (entries, bytes) = proxy.store_usage();
    let tier = || vec![("tier", "memory".to_string())];
    let mut stored = Series::new(MetricType::Gauge);
    stored.push(tier(), ConstGauge::new(entries));
    registry.register("cache_entries", "URLs stored, per tier", stored);
    let mut held = Series::new(MetricType::Gauge);
    held.push(tier(), ConstGauge::new(bytes));
    registry.register(
        "cache_bytes",
        "Bytes held by stored responses, per tier",
        held,
    );
    registry.register(
        "body_mappings",
        "Bodies (stored or being filled) whose pages are a mapping of their own, at most 16384",
        ConstGauge::new(crate::cache::mapped::live() as u64),
    );
    register_allocator(&mut registry);

    let mut out = String::new();
    // Writing into a String cannot fail; an encoding error would be a bug in a metric type.
    if let Err(err) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        tracing::error!(error = %err, "cannot encode /metrics");
    }
    out
}

/// jemalloc's counts, when it is the allocator (absent otherwise, rather than zeros that
/// would read as a process holding nothing).
fn register_allocator(registry: &mut Registry) {
    let Some(bytes) = allocator::now() else {
        return;
    };
    let mut series = Series::new(MetricType::Gauge);
    for (kind, value) in bytes.kinds() {
        series.push(vec![("kind", kind.to_string())], ConstGauge::new(value));
    }
    registry.register(
        "allocator_bytes",
        "Bytes the allocator (jemalloc) holds, by kind: allocated (what Kagami asked for), \
         active (their pages), metadata (jemalloc's bookkeeping), resident (in memory: active \
         pages, metadata, freed pages not yet handed back), mapped and retained (address \
         space, not memory)",
        series,
    );
}

/// Every `Stats` counter and gauge, under its own name.
fn register_stats(registry: &mut Registry, stats: &Stats) {
    let docs = Stats::docs();
    for (name, value) in stats.snapshot().pairs() {
        if LABELLED.contains(&name) {
            continue;
        }
        let text = docs.iter().find(|(n, _)| *n == name).map_or("", |(_, d)| d);
        match GAUGES.contains(&name) {
            true => registry.register(name, help(text), ConstGauge::new(value)),
            // The encoder adds `_total` (and refuses a name that has it already).
            false => registry.register(
                name.trim_end_matches("_total"),
                help(text),
                ConstCounter::new(value),
            ),
        }
    }
}

/// The per-site request counters of the front door.
fn register_sites(registry: &mut Registry, proxy: &Proxy) {
    let all: Vec<&SiteMetrics> = (proxy.sites().iter().map(|s| &*s.metrics))
        .chain(std::iter::once(&*proxy.unrouted))
        .collect();
    let mut requests = Series::new(MetricType::Counter);
    let mut latency = Series::new(MetricType::Histogram);
    let mut coalesced = Series::new(MetricType::Counter);
    let mut stale = Series::new(MetricType::Counter);
    for metrics in all {
        for (class, cache, n) in metrics.requests() {
            let mut labels = site(&metrics.name);
            labels.push(("status", class.to_string()));
            labels.push(("cache", cache.to_string()));
            requests.push(labels, ConstCounter::new(n));
        }
        latency.push(site(&metrics.name), metrics.latency.snapshot());
        coalesced.push(site(&metrics.name), ConstCounter::new(metrics.coalesced()));
        // Only a site has stored copies to serve stale.
        let stale_reasons = metrics.stale().filter(|_| metrics.name != NO_SITE);
        for (reason, n) in stale_reasons {
            let mut labels = site(&metrics.name);
            labels.push(("reason", reason.to_string()));
            stale.push(labels, ConstCounter::new(n));
        }
    }
    registry.register(
        "requests",
        "Requests answered, by site (\"-\": none took it), status class of the answer and \
         cache outcome (the Cache-Status phase)",
        requests,
    );
    registry.register(
        "request_duration_seconds",
        "Time from a request's head to its response head, by site",
        latency,
    );
    registry.register(
        "coalesced_waits",
        "Requests that waited on another request's origin fetch, by site",
        coalesced,
    );
    registry.register(
        "stale_answers",
        "Stale copies served, by site and reason (the Cache-Status detail)",
        stale,
    );
}

/// What each site's origin looks like now.
fn register_origins(registry: &mut Registry, proxy: &Proxy) {
    let mut latency = Series::new(MetricType::Histogram);
    let mut healthy = Series::new(MetricType::Gauge);
    let mut circuits = Series::new(MetricType::Gauge);
    let mut limits = Series::new(MetricType::Gauge);
    for s in proxy.sites() {
        let name = &s.config.name;
        latency.push(site(name), s.origin.latency().snapshot());
        healthy.push(site(name), ConstGauge::new(u64::from(!s.origin.avoid())));
        for (origin, open) in s.origin.circuits() {
            let mut labels = site(name);
            labels.push(("origin", without_userinfo(origin)));
            circuits.push(labels, ConstGauge::new(u64::from(open)));
        }
        limits.push(site(name), ConstGauge::new(s.origin.limit() as u64));
    }
    registry.register(
        "origin_duration_seconds",
        "Time from sending an origin request to its response head (every attempt), by site",
        latency,
    );
    registry.register(
        "origin_healthy",
        "1 while a site's origin is asked for misses; 0 while it is avoided (just failed, or \
         every circuit open), stale copies then being served where allowed",
        healthy,
    );
    registry.register(
        "origin_circuit_open",
        "1 while an origin server's circuit is open (half-open included), by site and origin",
        circuits,
    );
    registry.register(
        "origin_adaptive_limit",
        "Each site's adaptive origin concurrency limit now",
        limits,
    );
}

/// An origin URL as a label: any `user:password@` left out, as a scrape is not a secret.
fn without_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_labels_leave_credentials_out() {
        assert_eq!(
            without_userinfo("http://kagami:s3cret@10.0.0.5:8080"),
            "http://10.0.0.5:8080"
        );
        assert_eq!(
            without_userinfo("https://origin.city.example"),
            "https://origin.city.example"
        );
    }
}
