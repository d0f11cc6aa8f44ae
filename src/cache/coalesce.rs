//! Request coalescing: concurrent misses for one key cause one origin fetch. The first request
//! leads; the others wait on a watch channel and are woken when the leader finishes (no polling).
//! A leader that is dropped without finishing releases the key and wakes its waiters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

type SlotMap<T> = HashMap<String, (u64, watch::Receiver<Option<T>>)>;
type Slots<T> = Mutex<SlotMap<T>>;

pub struct Coalescer<T> {
    slots: Arc<Slots<T>>,
    next_id: AtomicU64,
}

impl<T> Default for Coalescer<T> {
    fn default() -> Self {
        Coalescer {
            slots: Arc::new(Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(0),
        }
    }
}

pub enum Role<T> {
    Leader(Leader<T>),
    Waiter(Waiter<T>),
}

/// The one request allowed to fetch a key. Finish it with the outcome, or drop it to give up.
pub struct Leader<T> {
    key: String,
    id: u64,
    tx: watch::Sender<Option<T>>,
    slots: Arc<Slots<T>>,
    /// This fetch replaces one that failed: see `set_retry`.
    retry: bool,
}

pub struct Waiter<T> {
    rx: watch::Receiver<Option<T>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Wait<T> {
    Done(T),
    /// The leader went away without an outcome.
    Abandoned,
    TimedOut,
}

impl<T: Clone> Coalescer<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotMap<T>> {
        // The map holds no invariant a panicking holder could break, so poisoning is ignored.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Leads `key` if nobody does, else waits on the current leader.
    pub fn join(&self, key: &str) -> Role<T> {
        let mut slots = self.lock();
        if let Some((_, rx)) = slots.get(key) {
            return Role::Waiter(Waiter { rx: rx.clone() });
        }
        Role::Leader(self.insert_leader(&mut slots, key))
    }

    /// Leads `key` only if nobody does (background revalidation: never wait, never duplicate).
    pub fn try_lead(&self, key: &str) -> Option<Leader<T>> {
        let mut slots = self.lock();
        if slots.contains_key(key) {
            return None;
        }
        Some(self.insert_leader(&mut slots, key))
    }

    fn insert_leader(&self, slots: &mut SlotMap<T>, key: &str) -> Leader<T> {
        let (tx, rx) = watch::channel(None);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        slots.insert(key.to_string(), (id, rx));
        Leader {
            key: key.to_string(),
            id,
            tx,
            slots: self.slots.clone(),
            retry: false,
        }
    }

    /// Keys being fetched right now.
    pub fn in_flight(&self) -> usize {
        self.lock().len()
    }
}

impl<T> Leader<T> {
    /// Marks this fetch as the retry of one that failed, so that its waiters can tell that the
    /// key's retry has been spent (the caller decides what a failure and a retry are).
    pub fn set_retry(&mut self) {
        self.retry = true;
    }

    pub fn is_retry(&self) -> bool {
        self.retry
    }

    /// Publishes the outcome to every waiter and releases the key.
    pub fn finish(self, outcome: T) {
        self.tx.send_replace(Some(outcome));
        // Drop releases the key.
    }
}

impl<T> Drop for Leader<T> {
    fn drop(&mut self) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if slots.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            slots.remove(&self.key);
        }
        // Dropping `tx` right after this wakes waiters that saw no outcome: they see Abandoned.
    }
}

impl<T: Clone> Waiter<T> {
    pub async fn wait(mut self, timeout: Duration) -> Wait<T> {
        match tokio::time::timeout(timeout, self.rx.wait_for(|v| v.is_some())).await {
            Err(_) => Wait::TimedOut,
            Ok(Err(_)) => Wait::Abandoned,
            Ok(Ok(value)) => match value.clone() {
                Some(v) => Wait::Done(v),
                None => Wait::Abandoned,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_get_the_leaders_outcome_and_the_key_is_released() {
        let c: Coalescer<u32> = Coalescer::default();
        let Role::Leader(leader) = c.join("k") else {
            panic!("first must lead")
        };
        let waiters: Vec<_> = (0..10)
            .map(|_| match c.join("k") {
                Role::Waiter(w) => tokio::spawn(w.wait(Duration::from_secs(5))),
                Role::Leader(_) => panic!("only one leader"),
            })
            .collect();
        assert!(c.try_lead("k").is_none());
        leader.finish(7);
        for w in waiters {
            assert_eq!(w.await.unwrap(), Wait::Done(7));
        }
        assert_eq!(c.in_flight(), 0);
        assert!(matches!(c.join("k"), Role::Leader(_)));
    }

    #[tokio::test]
    async fn a_dropped_leader_wakes_waiters_as_abandoned() {
        let c: Coalescer<u32> = Coalescer::default();
        let Role::Leader(leader) = c.join("k") else {
            panic!()
        };
        let Role::Waiter(w) = c.join("k") else {
            panic!()
        };
        let started = std::time::Instant::now();
        let handle = tokio::spawn(w.wait(Duration::from_secs(5)));
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(leader);
        assert_eq!(handle.await.unwrap(), Wait::Abandoned);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(c.try_lead("k").is_some());
    }

    #[tokio::test]
    async fn waiting_times_out() {
        let c: Coalescer<u32> = Coalescer::default();
        let _leader = c.join("k");
        let Role::Waiter(w) = c.join("k") else {
            panic!()
        };
        assert_eq!(w.wait(Duration::from_millis(20)).await, Wait::TimedOut);
    }
}
