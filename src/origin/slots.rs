//! Origin slots: the site-wide cap on origin requests under way, and within it a cap per client
//! address, so one client (32 slow downloads, say) can never hold every slot and turn everyone
//! else's misses into "origin busy".
//!
//! A request takes its client's slot first, then a site slot: a client over its own cap waits
//! without holding a site slot that someone else could use.
//!
//! The site's cap moves with the adaptive limit (`adaptive`): `set_limit` adds permits to the
//! site semaphore, or withdraws them, at once when free and otherwise as slots are given back,
//! so waiting requests keep their place in line whatever the limit does. A client's share
//! shrinks with it in proportion (`weight`), so that one client (sending requests for a slow
//! URL, say) cannot hold most of a limit its own requests talked down.
//!
//! Kagami's own background refreshes (of pages that have a copy) queue behind visitors
//! (`take_behind_visitors`): on a saturated origin a visitor of an uncached page, who has
//! nothing else to get, would otherwise wait behind a refresh for every expired page.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// One origin slot; released when dropped.
pub struct Slot {
    _site: SitePermit,
    _client: Option<ClientPermit>,
}

/// A site permit that is withdrawn instead of returned while the limit owes permits.
struct SitePermit {
    permit: Option<OwnedSemaphorePermit>,
    cap: Arc<Cap>,
}

/// The site semaphore's bookkeeping for the adaptive limit.
#[derive(Default)]
struct Cap {
    /// Permits to withdraw as soon as slots are given back (the limit fell below what is held).
    owed: AtomicUsize,
    /// Site slots held now.
    held: AtomicUsize,
    /// The limit now.
    limit: AtomicUsize,
    /// Told whenever a site slot is given back (for `take_behind_visitors`).
    released: Notify,
}

impl Drop for SitePermit {
    fn drop(&mut self) {
        self.cap.held.fetch_sub(1, Ordering::AcqRel);
        let owed = self
            .cap
            .owed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| o.checked_sub(1));
        match (owed, self.permit.take()) {
            (Ok(_), Some(permit)) => permit.forget(),
            (_, permit) => drop(permit),
        }
        // After the permit is back, so that a woken background refresh can take it.
        self.cap.released.notify_waiters();
    }
}

/// The per-client semaphores, created on first use and removed when their client holds and
/// awaits nothing, so the map stays as small as the number of clients under way.
pub(super) struct ClientSlots {
    per_client: usize,
    clients: Arc<Mutex<HashMap<IpAddr, Arc<Semaphore>>>>,
}

struct ClientPermit {
    permit: Option<OwnedSemaphorePermit>,
    ip: IpAddr,
    semaphore: Arc<Semaphore>,
    clients: Arc<Mutex<HashMap<IpAddr, Arc<Semaphore>>>>,
}

impl Drop for ClientPermit {
    fn drop(&mut self) {
        self.permit.take();
        let Ok(mut clients) = self.clients.lock() else {
            return;
        };
        // Ours and the map's are the only references: nobody holds or awaits this client's slots.
        if Arc::strong_count(&self.semaphore) == 2
            && clients
                .get(&self.ip)
                .is_some_and(|s| Arc::ptr_eq(s, &self.semaphore))
        {
            clients.remove(&self.ip);
        }
    }
}

impl ClientSlots {
    pub(super) fn new(per_client: usize) -> ClientSlots {
        ClientSlots {
            per_client: per_client.max(1),
            clients: Arc::default(),
        }
    }

    fn semaphore(&self, ip: IpAddr) -> Option<Arc<Semaphore>> {
        let mut clients = self.clients.lock().ok()?;
        Some(
            clients
                .entry(ip)
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_client)))
                .clone(),
        )
    }

    fn wrap(
        &self,
        ip: IpAddr,
        semaphore: Arc<Semaphore>,
        permit: OwnedSemaphorePermit,
    ) -> ClientPermit {
        ClientPermit {
            permit: Some(permit),
            ip,
            semaphore,
            clients: self.clients.clone(),
        }
    }

    /// A slot of `ip`'s share if one is free right now; it costs `weight` of the client's
    /// permits (`Slots::weight`).
    fn try_take(&self, ip: IpAddr, weight: u32) -> Option<ClientPermit> {
        let semaphore = self.semaphore(ip)?;
        let permit = semaphore.clone().try_acquire_many_owned(weight);
        // Build the guard even on failure so an unused entry is cleaned up on drop.
        match permit {
            Ok(permit) => Some(self.wrap(ip, semaphore, permit)),
            Err(_) => {
                drop(semaphore);
                self.forget_if_unused(ip);
                None
            }
        }
    }

    async fn take(&self, ip: IpAddr, weight: u32) -> Option<ClientPermit> {
        let semaphore = self.semaphore(ip)?;
        let permit = semaphore.clone().acquire_many_owned(weight).await.ok()?;
        Some(self.wrap(ip, semaphore, permit))
    }

    fn forget_if_unused(&self, ip: IpAddr) {
        let Ok(mut clients) = self.clients.lock() else {
            return;
        };
        if clients.get(&ip).is_some_and(|s| Arc::strong_count(s) == 1) {
            clients.remove(&ip);
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.clients.lock().map_or(0, |c| c.len())
    }
}

/// The site's slots and the per-client share of them.
pub(super) struct Slots {
    site: Arc<Semaphore>,
    /// The configured cap, which the adaptive limit never exceeds.
    ceiling: usize,
    cap: Arc<Cap>,
    clients: ClientSlots,
    /// Visitors waiting in `take` now.
    waiting: Arc<AtomicUsize>,
    /// One background refresh at a time watches for a free slot; the others wait in line here.
    background: Semaphore,
}

/// Counts a visitor waiting in `Slots::take` while it lives.
struct Waiting(Arc<AtomicUsize>);

impl Waiting {
    fn new(count: &Arc<AtomicUsize>) -> Waiting {
        count.fetch_add(1, Ordering::AcqRel);
        Waiting(count.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Slots {
    pub(super) fn new(site: usize, per_client: usize) -> Slots {
        let cap = Cap::default();
        cap.limit.store(site, Ordering::Release);
        Slots {
            site: Arc::new(Semaphore::new(site)),
            ceiling: site.max(1),
            cap: Arc::new(cap),
            clients: ClientSlots::new(per_client),
            waiting: Arc::default(),
            background: Semaphore::new(1),
        }
    }

    /// Site slots held now.
    pub(super) fn held(&self) -> usize {
        self.cap.held.load(Ordering::Acquire)
    }

    /// The site's cap now.
    pub(super) fn limit(&self) -> usize {
        self.cap.limit.load(Ordering::Acquire)
    }

    /// Moves the site's cap to `limit` (the caller keeps it between 1 and the configured
    /// ceiling). Called under the adaptive limit's lock, so changes never interleave.
    pub(super) fn set_limit(&self, limit: usize) {
        let old = self.cap.limit.swap(limit, Ordering::AcqRel);
        if limit > old {
            // Cancel withdrawals still owed before adding permits.
            let mut more = limit - old;
            let cancelled = self
                .cap
                .owed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| {
                    Some(o.saturating_sub(more))
                })
                .map_or(0, |o| o.min(more));
            more -= cancelled;
            self.site.add_permits(more);
        } else if limit < old {
            let fewer = old - limit;
            let withdrawn = self.site.forget_permits(fewer);
            // The rest are held now: withdrawn when given back.
            self.cap.owed.fetch_add(fewer - withdrawn, Ordering::AcqRel);
        }
    }

    /// How many of a client's permits one slot costs now: 1 at the ceiling; as the limit falls,
    /// more, so that a client holds about the same fraction of the limit as of the ceiling
    /// (and always at least one slot).
    fn weight(&self) -> u32 {
        let per_client = self.clients.per_client;
        let share = (self.limit() * per_client)
            .div_ceil(self.ceiling)
            .clamp(1, per_client);
        u32::try_from(per_client.div_ceil(share)).unwrap_or(1)
    }

    fn site_permit(&self, permit: OwnedSemaphorePermit) -> SitePermit {
        self.cap.held.fetch_add(1, Ordering::AcqRel);
        SitePermit {
            permit: Some(permit),
            cap: self.cap.clone(),
        }
    }

    /// A slot right now, if `client` (None: Kagami's own work) is under its cap and a site slot
    /// is free.
    pub(super) fn try_take(&self, client: Option<IpAddr>) -> Option<Slot> {
        let client = match client {
            Some(ip) => Some(self.clients.try_take(ip, self.weight())?),
            None => None,
        };
        let site = self.site.clone().try_acquire_owned().ok()?;
        Some(Slot {
            _site: self.site_permit(site),
            _client: client,
        })
    }

    /// A slot, waiting as long as the caller lets this future run.
    pub(super) async fn take(&self, client: Option<IpAddr>) -> Option<Slot> {
        let _waiting = Waiting::new(&self.waiting);
        let client = match client {
            Some(ip) => Some(self.clients.take(ip, self.weight()).await?),
            None => None,
        };
        let site = self.site.clone().acquire_owned().await.ok()?;
        Some(Slot {
            _site: self.site_permit(site),
            _client: client,
        })
    }
}

impl Slots {
    /// A slot for work nobody waits on (a background refresh), taken only when no visitor
    /// waits in `take`: a slot given back goes to a waiting visitor first (the semaphore hands
    /// it over in order). Waits as long as the caller lets this future run.
    pub(super) async fn take_behind_visitors(&self, client: Option<IpAddr>) -> Option<Slot> {
        let _turn = self.background.acquire().await.ok()?;
        loop {
            // Registered before looking, so that a slot given back in between is not missed.
            let released = self.cap.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if self.waiting.load(Ordering::Acquire) == 0 {
                if let Some(slot) = self.try_take(client) {
                    return Some(slot);
                }
            }
            released.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([192, 0, 2, last]))
    }

    #[test]
    fn one_client_gets_its_share_and_others_the_rest() {
        let slots = Slots::new(4, 2);
        let a1 = slots.try_take(ip(1)).expect("first");
        let _a2 = slots.try_take(ip(1)).expect("second");
        assert!(slots.try_take(ip(1)).is_none(), "over the client's cap");
        let _b1 = slots.try_take(ip(2)).expect("another client");
        let _own = slots.try_take(None).expect("Kagami's own work");
        assert!(slots.try_take(ip(3)).is_none(), "the site's cap");
        drop(a1);
        assert!(
            slots.try_take(ip(1)).is_some(),
            "a released slot is reusable"
        );
    }

    #[test]
    fn idle_clients_are_forgotten() {
        let slots = Slots::new(4, 1);
        let a = slots.try_take(ip(1)).unwrap();
        assert!(slots.try_take(ip(1)).is_none());
        assert!(slots.try_take(ip(2)).is_some());
        assert_eq!(slots.clients.tracked(), 1, "client 2 released at once");
        drop(a);
        assert_eq!(slots.clients.tracked(), 0);
    }

    #[test]
    fn the_cap_follows_the_limit_even_while_slots_are_held() {
        let slots = Slots::new(4, 4);
        let held: Vec<Slot> = (0..4).map(|_| slots.try_take(None).unwrap()).collect();
        assert_eq!(slots.held(), 4);
        slots.set_limit(2);
        assert!(slots.try_take(None).is_none());
        let mut held = held.into_iter();
        drop(held.next());
        drop(held.next());
        assert!(
            slots.try_take(None).is_none(),
            "two given back, both withdrawn"
        );
        drop(held.next());
        let again = slots.try_take(None).expect("below the new cap of 2");
        assert!(slots.try_take(None).is_none());
        assert_eq!(slots.held(), 2);
        slots.set_limit(3);
        let third = slots.try_take(None).expect("the cap grew");
        assert!(slots.try_take(None).is_none());
        drop((again, third, held));
        assert_eq!(slots.held(), 0);
        let all: Vec<Slot> = (0..3).filter_map(|_| slots.try_take(None)).collect();
        assert_eq!(all.len(), 3);
        assert!(slots.try_take(None).is_none());
    }

    #[test]
    fn a_clients_share_shrinks_with_the_limit() {
        let slots = Slots::new(32, 8);
        let full: Vec<Slot> = (0..9).filter_map(|_| slots.try_take(ip(1))).collect();
        assert_eq!(full.len(), 8, "a quarter of 32");
        drop(full);
        slots.set_limit(16);
        let half: Vec<Slot> = (0..9).filter_map(|_| slots.try_take(ip(1))).collect();
        assert_eq!(half.len(), 4, "a quarter of 16");
        drop(half);
        slots.set_limit(4);
        let low: Vec<Slot> = (0..9).filter_map(|_| slots.try_take(ip(1))).collect();
        assert_eq!(low.len(), 1, "at least one, never more than its share");
        let others: Vec<Slot> = (2..9).filter_map(|c| slots.try_take(ip(c))).collect();
        assert_eq!(
            others.len(),
            3,
            "the rest of the limit is for other clients"
        );
        drop((low, others));
        slots.set_limit(32);
        let back: Vec<Slot> = (0..9).filter_map(|_| slots.try_take(ip(1))).collect();
        assert_eq!(back.len(), 8);
    }

    #[test]
    fn raising_the_limit_first_cancels_withdrawals_still_owed() {
        let slots = Slots::new(4, 4);
        let held: Vec<Slot> = (0..4).map(|_| slots.try_take(None).unwrap()).collect();
        slots.set_limit(1);
        slots.set_limit(4);
        drop(held);
        let all: Vec<Slot> = (0..5).filter_map(|_| slots.try_take(None)).collect();
        assert_eq!(all.len(), 4, "exactly the limit, no more, no less");
        assert_eq!(slots.limit(), 4);
    }

    #[tokio::test]
    async fn a_client_over_its_cap_waits_without_taking_a_site_slot() {
        let slots = Arc::new(Slots::new(2, 1));
        let held = slots.try_take(ip(1)).unwrap();
        let waiting = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.take(ip(1)).await.is_some() })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            slots.try_take(ip(2)).is_some(),
            "the waiting client holds no site slot"
        );
        drop(held);
        assert!(tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .unwrap()
            .unwrap());
    }

    #[tokio::test]
    async fn a_waiting_visitor_gets_a_slot_before_a_background_refresh() {
        let slots = Arc::new(Slots::new(1, 1));
        let held = slots.try_take(None).unwrap();
        let refresh = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.take_behind_visitors(ip(1)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let visitor = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.take(ip(2)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        let visitor = tokio::time::timeout(Duration::from_secs(2), visitor)
            .await
            .unwrap()
            .unwrap()
            .expect("the visitor came second but got the slot");
        assert!(!refresh.is_finished(), "the refresh still waits");
        drop(visitor);
        let refreshed = tokio::time::timeout(Duration::from_secs(2), refresh)
            .await
            .unwrap()
            .unwrap();
        assert!(refreshed.is_some(), "then the refresh gets it");
    }
}
