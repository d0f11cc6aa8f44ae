//! What makes `kagami demo` behave as the README's Quick start says at reading speed: its
//! site recovers within about a second after an outage, and the pages the outage step shows
//! are stored before anyone asks for them.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use kagami::config::SiteConfig;

/// Pages fetched through Kagami at start, so that the outage step finds them stored (a page
/// nobody visited before the outage has nothing to serve but the emergency page).
pub const WARM_PAGES: [&str; 2] = ["/", "/status.html"];

/// Demo-only origin health settings. A real config keeps the defaults (a circuit stays open
/// 10 s, no active checks unless `health_path` is set): a demo reader who brings the origin
/// back expects to see it back at once, not 10 s of emergency pages for pages not yet stored.
pub fn tune(site: &mut SiteConfig) {
    site.protection.circuit_open = Duration::from_secs(1);
    site.protection.health_path = Some("/".to_string());
    site.protection.health_interval = Duration::from_secs(1);
    site.failure_backoff = Duration::from_secs(1);
}

/// Fetches [`WARM_PAGES`] through Kagami at `kagami`. Failures are only logged: the demo works
/// without, the outage step is just less telling.
pub async fn warm(kagami: SocketAddr) {
    let mut addr = kagami;
    if addr.ip().is_unspecified() {
        addr.set_ip(Ipv4Addr::LOCALHOST.into());
    }
    let client = match reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(client) => client,
        Err(err) => {
            tracing::warn!(error = %err, "cannot warm the demo pages");
            return;
        }
    };
    for page in WARM_PAGES {
        let result = client.get(format!("http://{addr}{page}")).send().await;
        // Read the body: a copy is stored once it is complete.
        let result = match result {
            Ok(response) => response.bytes().await.map(|_| ()),
            Err(err) => Err(err),
        };
        if let Err(err) = result {
            tracing::warn!(page, error = %err, "cannot warm a demo page");
        }
    }
}
