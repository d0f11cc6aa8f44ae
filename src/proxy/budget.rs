//! The budget of body bytes held in flight (`cache.inflight_memory`): cache fills being read,
//! chunks waiting for a slow client, shared error bodies. One global cap, and a per-client share
//! for what a client's own reading pace holds, so that neither many clients nor one client with
//! many connections can make Kagami hold more than the operator allowed.
//!
//! A `Charge` is a claim on the budget that is given back when dropped; a chunk on its way to a
//! client carries its own charge, so the bytes count until hyper has written them out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::metrics::Stats;

/// The share of the budget one client's reading pace may hold (a quarter): a few slow readers,
/// or one client with many connections, cannot starve everyone else's relays.
pub const CLIENT_SHARE_DIVISOR: u64 = 4;

pub struct Budget {
    limit: u64,
    per_client: u64,
    stats: Arc<Stats>,
    /// Bytes held per client, for the per-client share (entries removed at zero).
    clients: Mutex<HashMap<IpAddr, u64>>,
    /// Woken whenever bytes are given back, for relays waiting for room.
    freed: Notify,
}

/// Whose share a charge counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Origin-paced work that serves everyone (a cache fill): only the global cap applies.
    Shared,
    /// Held at one client's pace: the global cap and that client's share apply.
    Client(IpAddr),
}

/// Bytes taken from the budget, given back when dropped. Optionally also counted in a relay's
/// `Meter`, so the relay knows when its client has taken everything.
pub struct Charge {
    budget: Arc<Budget>,
    owner: Owner,
    bytes: u64,
    meter: Option<Arc<Meter>>,
}

/// A relay's view of its bytes still on their way to the client (in the channel or in hyper's
/// write buffer).
#[derive(Default)]
pub struct Meter {
    outstanding: AtomicU64,
    pub taken: Notify,
}

impl Meter {
    pub fn outstanding(&self) -> u64 {
        self.outstanding.load(Ordering::Acquire)
    }
}

impl Budget {
    pub fn new(limit: u64, stats: Arc<Stats>) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            per_client: (limit / CLIENT_SHARE_DIVISOR).max(1),
            stats,
            clients: Mutex::new(HashMap::new()),
            freed: Notify::new(),
        })
    }

    /// Counts a relay abandoned because its client took nothing for the stall timeout.
    pub fn note_stall(&self) {
        self.stats.add(&self.stats.relay_stalls);
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.stats.inflight_bytes.load(Ordering::Acquire)
    }

    /// An empty charge for `owner`, to grow later.
    pub fn charge(self: &Arc<Self>, owner: Owner) -> Charge {
        Charge {
            budget: self.clone(),
            owner,
            bytes: 0,
            meter: None,
        }
    }

    /// Is there room for `n` more bytes for `owner`? (`n` is capped at a client's share, so a
    /// small budget still lets relays move.)
    pub fn has_room(&self, owner: Owner, n: u64) -> bool {
        let n = n.min(self.per_client);
        if self.used() + n > self.limit {
            return false;
        }
        match owner {
            Owner::Shared => true,
            Owner::Client(ip) => {
                let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
                clients.get(&ip).copied().unwrap_or(0) + n <= self.per_client
            }
        }
    }

    /// Waits until some bytes are given back (or a short while, so a missed wake-up costs
    /// little).
    pub async fn freed(&self) {
        let _ =
            tokio::time::timeout(std::time::Duration::from_millis(50), self.freed.notified()).await;
    }

    /// Takes `n` bytes for `owner`; with `force`, even past the limits (for bytes already in
    /// memory that must be accounted somewhere). Returns whether it was taken.
    fn take(&self, owner: Owner, n: u64, force: bool) -> bool {
        if n == 0 {
            return true;
        }
        // One lock for both counts keeps check-and-take atomic; it is held for a few
        // instructions, once per chunk.
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let used = self.stats.inflight_bytes.load(Ordering::Acquire);
        let client_used = match owner {
            Owner::Client(ip) => clients.get(&ip).copied().unwrap_or(0),
            Owner::Shared => 0,
        };
        let fits = used + n <= self.limit
            && (owner == Owner::Shared || client_used + n <= self.per_client);
        if !fits && !force {
            self.stats.add(&self.stats.inflight_refusals);
            return false;
        }
        if let Owner::Client(ip) = owner {
            clients.insert(ip, client_used + n);
        }
        let now = used + n;
        self.stats.inflight_bytes.store(now, Ordering::Release);
        self.stats
            .inflight_peak_bytes
            .fetch_max(now, Ordering::Relaxed);
        true
    }

    fn give_back(&self, owner: Owner, n: u64) {
        if n == 0 {
            return;
        }
        {
            let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
            if let Owner::Client(ip) = owner {
                if let Some(held) = clients.get_mut(&ip) {
                    *held = held.saturating_sub(n);
                    if *held == 0 {
                        clients.remove(&ip);
                    }
                }
            }
            let used = self.stats.inflight_bytes.load(Ordering::Acquire);
            self.stats
                .inflight_bytes
                .store(used.saturating_sub(n), Ordering::Release);
        }
        self.freed.notify_waiters();
    }
}

impl Charge {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn owner(&self) -> Owner {
        self.owner
    }

    /// Grows the charge by `n` if the budget allows.
    pub fn try_grow(&mut self, n: u64) -> bool {
        let taken = self.budget.take(self.owner, n, false);
        if taken {
            self.bytes += n;
        }
        taken
    }

    /// Grows the charge by `n` whatever the limits (bytes already held that must be counted).
    pub fn force_grow(&mut self, n: u64) {
        self.budget.take(self.owner, n, true);
        self.bytes += n;
    }

    /// Gives back all but `n` bytes.
    pub fn shrink_to(&mut self, n: u64) {
        if n < self.bytes {
            self.budget.give_back(self.owner, self.bytes - n);
            self.bytes = n;
        }
    }

    /// Moves `n` bytes (at most what is held) into a new charge counted in `meter`.
    pub fn split_off(&mut self, n: u64, meter: &Arc<Meter>) -> Charge {
        let n = n.min(self.bytes);
        self.bytes -= n;
        meter.outstanding.fetch_add(n, Ordering::AcqRel);
        Charge {
            budget: self.budget.clone(),
            owner: self.owner,
            bytes: n,
            meter: Some(meter.clone()),
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give_back(self.owner, self.bytes);
        if let Some(meter) = &self.meter {
            meter.outstanding.fetch_sub(self.bytes, Ordering::AcqRel);
            meter.taken.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Owner {
        Owner::Client(IpAddr::from([192, 0, 2, last]))
    }

    #[test]
    fn the_global_cap_and_the_client_share_hold_and_bytes_come_back() {
        let stats = Arc::new(Stats::default());
        let budget = Budget::new(1000, stats.clone());
        let mut a = budget.charge(ip(1));
        assert!(a.try_grow(250), "a quarter is one client's share");
        assert!(!a.try_grow(1), "past the share");
        let mut b = budget.charge(ip(2));
        let mut fill = budget.charge(Owner::Shared);
        assert!(b.try_grow(250));
        assert!(fill.try_grow(500), "fills are held only to the global cap");
        assert!(!fill.try_grow(1), "past the global cap");
        assert_eq!(budget.used(), 1000);
        assert!(!budget.has_room(ip(3), 1));

        let meter = Arc::new(Meter::default());
        let piece = a.split_off(100, &meter);
        assert_eq!((a.bytes(), meter.outstanding()), (150, 100));
        drop(piece);
        assert_eq!((budget.used(), meter.outstanding()), (900, 0));
        a.shrink_to(0);
        drop(fill);
        assert_eq!(budget.used(), 250);
        assert!(budget.has_room(ip(1), 250));
        b.force_grow(900);
        assert_eq!(
            budget.used(),
            1150,
            "forced bytes are counted, never hidden"
        );
        drop(b);
        assert_eq!(budget.used(), 0);
        let s = stats.snapshot();
        assert_eq!(s.inflight_peak_bytes, 1150);
        assert!(s.inflight_refusals >= 2);
    }
}
