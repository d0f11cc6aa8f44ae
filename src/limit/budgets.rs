//! The budgets a running Kagami applies, logged at start (issue 9 §5): a load test from one
//! machine is one client to Kagami, and without this line its 429s look like a failure of the
//! proxy rather than the per-client budget doing its job.

use super::Rate;
use crate::config::Config;

/// Logs, per site, the per-client budgets and origin slots in effect, and whose forwarding
/// headers decide who a client is.
pub fn log_budgets(config: &Config) {
    for site in &config.sites {
        tracing::info!(
            site = %site.name,
            hits = %describe(site.limit_hits),
            misses = %describe(site.limit_misses),
            origin_concurrency = site.protection.concurrency,
            origin_concurrency_per_client = site.protection.concurrency_per_client,
            "per-client budgets (one client = one address, IPv6 /64)"
        );
    }
    let trusted = config.limits.trusted_proxies.len();
    if trusted == 0 {
        tracing::info!(
            "no trusted_proxies: every client is its TCP peer address, so a load generator on \
             one machine is one client and gets 429 beyond its budget (README: Load testing Kagami)"
        );
    } else {
        tracing::info!(
            trusted_proxies = trusted,
            "clients behind trusted proxies are told apart by X-Forwarded-For / Forwarded"
        );
    }
}

/// `"off"`, or e.g. `"500/s burst 1000"`.
fn describe(rate: Option<Rate>) -> String {
    match rate {
        None => "off".to_string(),
        Some(rate) if rate.per_second >= 1.0 => {
            format!("{}/s burst {}", trim(rate.per_second), rate.burst)
        }
        Some(rate) => format!("{}/m burst {}", trim(rate.per_second * 60.0), rate.burst),
    }
}

/// A rate without trailing zeros: 500, 0.5, 16.67.
fn trim(value: f64) -> String {
    let text = format!("{value:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_are_described_as_written() {
        assert_eq!(describe(None), "off");
        let rate = Rate {
            per_second: 500.0,
            burst: 1000,
        };
        assert_eq!(describe(Some(rate)), "500/s burst 1000");
        assert_eq!(describe(Some(Rate::parse("30/m").unwrap())), "30/m burst 1");
        assert_eq!(
            describe(Some(Rate::parse("2.5/s").unwrap())),
            "2.5/s burst 3"
        );
    }
}
