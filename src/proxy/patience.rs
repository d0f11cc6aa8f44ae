//! No visitor waits on a slow origin when a copy exists (`site.origin_patience`).
//!
//! An expired page whose stored copy may still be served stale to this visitor (shareable 2xx,
//! within `grace` or stale-if-error, as when the origin fails):
//! - while the origin is under stress (every slot of its adaptive limit taken, or its latency
//!   showing queueing against its baseline, see `origin::adaptive`), is answered from the copy at once and
//!   refreshed in the background, one fetch per key, waiting its turn for a slot behind the
//!   visitors waiting for one: under stress the slots are full, and a refresh that never runs
//!   would let pages grow old;
//! - otherwise is revalidated as before, but the visitor waits at most `origin_patience`: then
//!   the copy is served and the fetch (or the wait on another visitor's fetch, so coalesced
//!   waiters follow the same rule) finishes in the background and updates the store.
//!
//! Both say `detail="origin-slow"`. A strict site (`site.strict`) and `origin_patience = "0s"`
//! keep the old behaviour: the visitor waits for the origin.

use std::sync::Arc;
use std::time::SystemTime;

use http::Method;

use super::respond::from_entry;
use super::{check, request_sie, Proxy, Req, Served};
use crate::cache::policy::stale_on_error;
use crate::cache::{CacheStatus, Entry, Phase};

/// The `detail` of a copy served because the origin was too slow.
pub const ORIGIN_SLOW: &str = "origin-slow";

impl Proxy {
    /// Revalidates `stale` (or fetches, for a miss) under the rules above.
    pub(super) async fn fetch_patiently(
        self: &Arc<Self>,
        req: Req,
        key: String,
        stale: Option<Arc<Entry>>,
        phase: Phase,
    ) -> Served {
        let site = &self.sites[req.site];
        let patience = site.config.origin_patience;
        let copy = stale.as_ref().filter(|entry| {
            phase == Phase::Revalidated
                && !site.config.strict
                && !patience.is_zero()
                && self.may_stand_in(&req, entry)
        });
        let Some(copy) = copy.cloned() else {
            return self.fetch_coalesced(req, key, stale, phase).await;
        };
        // A copy marked stale by a POST must be revalidated first; it still gets patience.
        if copy.may_serve_while_revalidating() && site.origin.stressed() {
            if let Err(wait) = check(&site.hits, req.ip) {
                return self.too_many(wait, &req.parts.method);
            }
            self.refresh_when_possible(&req, key, copy.clone());
            return self.slow_copy(&req, &copy, Phase::StaleHit);
        }
        // The fetch runs in its own task so that it outlives this visitor's patience.
        let proxy = self.clone();
        let background = req.copy_as(req.parts.method.clone());
        let fetch =
            tokio::spawn(async move { proxy.fetch_coalesced(background, key, stale, phase).await });
        match tokio::time::timeout(patience, fetch).await {
            Ok(Ok(served)) => served,
            // The task failed (it never should): the copy is still a good answer.
            Ok(Err(_)) | Err(_) => self.slow_copy(&req, &copy, Phase::StaleOnError),
        }
    }

    /// May `entry` stand in for the origin for this visitor, as it would if the origin failed?
    fn may_stand_in(&self, req: &Req, entry: &Entry) -> bool {
        entry.may_serve_stale()
            && stale_on_error(
                &entry.stale,
                entry.staleness(SystemTime::now()),
                request_sie(&req.parts.headers),
                self.sites[req.site].grace(),
            )
            .is_some()
    }

    fn slow_copy(&self, req: &Req, entry: &Entry, phase: Phase) -> Served {
        self.stats.add(&self.stats.origin_slow);
        let now = SystemTime::now();
        let status = CacheStatus::new(phase)
            .ttl(entry.ttl(now))
            .detail(ORIGIN_SLOW);
        (
            from_entry(entry, &req.parts.method, &req.parts.headers, now),
            status,
        )
    }

    /// One background refresh per key, which queues for an origin slot behind the visitors
    /// waiting for one (at most `origin_queue_timeout`); errors never touch the stored copy
    /// (`fetch`).
    fn refresh_when_possible(self: &Arc<Self>, req: &Req, key: String, stale: Arc<Entry>) {
        let Some(leader) = self.coalescer.try_lead(&key) else {
            return;
        };
        let proxy = self.clone();
        let req = req.copy_as(Method::GET);
        tokio::spawn(async move {
            let site = &proxy.sites[req.site];
            // No slot in time: the leader is dropped, and the next visitor may try again.
            let Ok(permit) = site.origin.background_slot(Some(req.ip)).await else {
                return;
            };
            proxy.refresh(req, key, stale, leader, permit).await;
        });
    }
}
