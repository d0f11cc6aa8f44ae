//! `GET /status`: what each site is doing now, as JSON (the dashboard at `/` shows the same):
//! its origins' health and circuits, the adaptive limit, the last minute's answers
//! (`metrics::window`) and what it holds in the store (counted by a walk at most every
//! `USAGE_FOR`, see `UsageCache`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::metrics::window::Minute;
use crate::origin::Server;
use crate::proxy::{site_of_key, Proxy, Site};

#[derive(Debug, Serialize)]
pub struct Status {
    pub sites: Vec<SiteStatus>,
    pub store: Stored,
}

#[derive(Debug, Serialize)]
pub struct SiteStatus {
    pub name: String,
    pub hosts: Vec<String>,
    /// `healthy`, `failing` (a recent failure, or some circuit open) or `down` (every
    /// circuit open: only stored copies are served).
    pub health: &'static str,
    pub origins: Vec<OriginStatus>,
    pub adaptive_limit: usize,
    pub concurrency: usize,
    pub last_minute: LastMinute,
    pub stored: Stored,
}

#[derive(Debug, Serialize)]
pub struct OriginStatus {
    pub url: String,
    /// `closed`, `open` (nothing is sent) or `half-open` (one probe may go).
    pub circuit: &'static str,
}

#[derive(Debug, Serialize)]
pub struct LastMinute {
    #[serde(flatten)]
    pub counts: Minute,
    /// Answers from the store (fresh or stale) among all answers; null without requests.
    pub hit_ratio: Option<f64>,
    pub requests_per_second: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Stored {
    /// Stored responses (each variant of a URL counts).
    pub objects: u64,
    /// Bytes held, as the store counts them (bodies, fields and overhead).
    pub bytes: u64,
    /// `cache.memory` (the whole store only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u64>,
}

/// How long one walk of the store answers `/status`. A walk costs time in proportion to the
/// store (hundreds of thousands of entries), and anyone with the token could otherwise make
/// Kagami walk it in a loop; the dashboard asks every 5 s, so it sees fresh counts anyway.
pub const USAGE_FOR: Duration = Duration::from_secs(2);

/// Objects and bytes stored per site name.
pub type Usage = HashMap<String, (u64, u64)>;

/// The last walk's counts. One walk at a time: callers that come while it runs wait for its
/// result instead of starting their own. The counts belong to the proxy that was walked: a
/// reload (which adds and removes sites) makes the next call walk again.
#[derive(Default)]
pub struct UsageCache(tokio::sync::Mutex<Option<Walked>>);

struct Walked {
    at: Instant,
    /// Which proxy was walked; a weak handle so the cache never keeps a replaced proxy alive.
    proxy: std::sync::Weak<Proxy>,
    usage: Arc<Usage>,
}

impl UsageCache {
    /// The counts, walked again (off the async workers) when older than `USAGE_FOR`.
    pub async fn get(&self, proxy: &Arc<Proxy>) -> Result<Arc<Usage>, tokio::task::JoinError> {
        let mut held = self.0.lock().await;
        if let Some(last) = held.as_ref() {
            // Upgraded, not compared by address: a freed proxy's address may be reused.
            let same = last.proxy.upgrade().is_some_and(|p| Arc::ptr_eq(&p, proxy));
            if same && last.at.elapsed() < USAGE_FOR {
                return Ok(last.usage.clone());
            }
        }
        let walked = proxy.clone();
        let usage = Arc::new(tokio::task::spawn_blocking(move || walk(&walked)).await?);
        *held = Some(Walked {
            at: Instant::now(),
            proxy: Arc::downgrade(proxy),
            usage: usage.clone(),
        });
        Ok(usage)
    }

    /// Forgets the counts: after a purge, which changes them, the next call walks again.
    pub async fn clear(&self) {
        *self.0.lock().await = None;
    }
}

/// Walks the store once to count each site's objects and bytes: run it off the async workers.
pub fn walk(proxy: &Proxy) -> Usage {
    let usage: HashMap<&str, (u64, u64)> = proxy.store.usage_by(|key| {
        let site = site_of_key(key)?;
        // Borrow the name from the config, not from the key, which the walk drops.
        (proxy.sites().iter())
            .map(|s| s.config.name.as_str())
            .find(|name| *name == site)
    });
    (usage.into_iter())
        .map(|(name, counts)| (name.to_string(), counts))
        .collect()
}

/// The status now, with the store counted as in `usage`.
pub fn collect(proxy: &Proxy, usage: &Usage) -> Status {
    let sites = (proxy.sites().iter())
        .map(|site| site_status(site, usage.get(site.config.name.as_str())))
        .collect();
    let (objects, bytes) = usage
        .values()
        .fold((0, 0), |(o, b), (so, sb)| (o + so, b + sb));
    Status {
        sites,
        store: Stored {
            objects,
            bytes,
            capacity: Some(proxy.store.capacity()),
        },
    }
}

fn site_status(site: &Site, usage: Option<&(u64, u64)>) -> SiteStatus {
    let origin = &site.origin;
    let servers = &origin.servers;
    let health = if servers.iter().all(|s| s.breaker.is_open()) {
        "down"
    } else if origin.backoff.is_failing() || servers.iter().any(|s| s.breaker.is_open()) {
        "failing"
    } else {
        "healthy"
    };
    let minute = site.window.last_minute();
    let (objects, bytes) = usage.copied().unwrap_or_default();
    SiteStatus {
        name: site.config.name.clone(),
        hosts: site.config.hosts.iter().map(|h| h.to_string()).collect(),
        health,
        origins: servers.iter().map(origin_status).collect(),
        adaptive_limit: origin.limit(),
        concurrency: site.config.protection.concurrency,
        last_minute: LastMinute {
            hit_ratio: minute.hit_ratio(),
            requests_per_second: minute.rate(),
            counts: minute,
        },
        stored: Stored {
            objects,
            bytes,
            capacity: None,
        },
    }
}

fn origin_status(server: &Server) -> OriginStatus {
    let circuit = match (server.breaker.is_open(), server.breaker.rejecting()) {
        (false, _) => "closed",
        (true, true) => "open",
        (true, false) => "half-open",
    };
    OriginStatus {
        url: server.base.clone(),
        circuit,
    }
}
