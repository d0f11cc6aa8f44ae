//! A per-thread memo of what the memory store found lately: a key's variants, valid only
//! while the store has not changed since. A hit on a busy page then skips moka's read
//! bookkeeping (its read log, frequency sketch and housekeeping, about 800 instructions of
//! a 13,000-instruction hit).
//!
//! Correctness rests on one counter per store (`Changes`): every write to the store (an
//! insert, a purge, an invalidation, moka's own evictions) moves it, and a memo is used only
//! while the counter still reads what it read before the memo's lookup. A memo never holds
//! the variants themselves, only a `Weak`, so it keeps no evicted page alive.
//!
//! What moka does not see: most reads answered here. Its eviction order (recency, and the
//! frequency that decides whether a new page may push an old one out) comes from the reads
//! it sees, so every `REPORT_EVERY`th use of a memo goes to moka again, as does each
//! thread's first read after any write. A page hit often stays often-read in moka's eyes.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

/// Memos per thread: enough for the pages busy at once on one worker, small enough to stay
/// in the CPU's cache.
const SLOTS: usize = 64;

/// Longer keys are looked up in the store every time: a memo copies its key.
const MAX_KEY: usize = 512;

/// One use of a memo in this many is a lookup in moka instead (its read counts there).
const REPORT_EVERY: u32 = 16;

/// One store's write counter, and an identity so that memos of one store are never taken
/// for another's (tests and reloads make several stores in one process).
#[derive(Debug)]
pub struct Changes {
    store: usize,
    count: AtomicU64,
}

impl Changes {
    pub fn new() -> Changes {
        static STORES: AtomicUsize = AtomicUsize::new(1);
        Changes {
            store: STORES.fetch_add(1, Ordering::Relaxed),
            count: AtomicU64::new(0),
        }
    }

    /// Read before a lookup whose result may be memoised.
    pub fn now(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Called after every write to the store.
    pub fn bump(&self) {
        self.count.fetch_add(1, Ordering::Release);
    }
}

impl Default for Changes {
    fn default() -> Changes {
        Changes::new()
    }
}

struct Memo<V> {
    store: usize,
    seen: u64,
    /// Answers given since the last lookup in moka (`REPORT_EVERY`).
    uses: u32,
    key: String,
    value: Weak<V>,
}

/// The table of one value type (the store's variants), one per thread.
pub struct Table<V> {
    slots: RefCell<[Option<Memo<V>>; SLOTS]>,
}

impl<V> Table<V> {
    pub const fn new() -> Table<V> {
        Table {
            slots: RefCell::new([const { None }; SLOTS]),
        }
    }

    /// The value memoised for `key` of `changes`' store, if the store has not changed since
    /// (and this is not the use that goes to moka, see `REPORT_EVERY`).
    pub fn get(&self, changes: &Changes, key: &str) -> Option<Arc<V>> {
        let mut slots = self.slots.try_borrow_mut().ok()?;
        let memo = slots[slot(key)].as_mut()?;
        let current =
            memo.store == changes.store && memo.seen == changes.now() && memo.key.as_str() == key;
        if !current {
            return None;
        }
        memo.uses += 1;
        if memo.uses >= REPORT_EVERY {
            // The lookup in moka that follows memoises again, from zero.
            return None;
        }
        memo.value.upgrade()
    }

    /// Memoises what the store returned for `key`, looked up after `seen = changes.now()`.
    pub fn put(&self, changes: &Changes, seen: u64, key: &str, value: &Arc<V>) {
        if key.len() > MAX_KEY {
            return;
        }
        let Ok(mut slots) = self.slots.try_borrow_mut() else {
            return;
        };
        let place = &mut slots[slot(key)];
        match place {
            Some(memo) => {
                memo.store = changes.store;
                memo.seen = seen;
                memo.uses = 0;
                memo.key.clear();
                memo.key.push_str(key);
                memo.value = Arc::downgrade(value);
            }
            None => {
                *place = Some(Memo {
                    store: changes.store,
                    seen,
                    uses: 0,
                    key: key.to_string(),
                    value: Arc::downgrade(value),
                })
            }
        }
    }
}

impl<V> Default for Table<V> {
    fn default() -> Table<V> {
        Table::new()
    }
}

/// A key's slot, by foldhash (the store's hasher too). Not seeded: a client that picks keys
/// sharing a slot only sends its own requests to the store, as they would go without the memo.
fn slot(key: &str) -> usize {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::default().hash_one(key) as usize % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memo_lasts_until_the_store_changes() {
        let table = Table::<u32>::new();
        let changes = Changes::new();
        let value = Arc::new(7);
        assert!(table.get(&changes, "k").is_none());
        table.put(&changes, changes.now(), "k", &value);
        assert_eq!(table.get(&changes, "k").as_deref(), Some(&7));
        assert!(table.get(&changes, "other").is_none());
        changes.bump();
        assert!(
            table.get(&changes, "k").is_none(),
            "a write ends every memo"
        );
    }

    #[test]
    fn one_use_in_report_every_goes_to_the_store() {
        let table = Table::<u32>::new();
        let changes = Changes::new();
        let value = Arc::new(7);
        table.put(&changes, changes.now(), "k", &value);
        let answered = (1..REPORT_EVERY)
            .filter(|_| table.get(&changes, "k").is_some())
            .count();
        assert_eq!(answered as u32, REPORT_EVERY - 1);
        assert!(table.get(&changes, "k").is_none(), "this one is moka's");
        // The lookup in moka memoises again.
        table.put(&changes, changes.now(), "k", &value);
        assert!(table.get(&changes, "k").is_some());
    }

    #[test]
    fn a_lookup_raced_by_a_write_is_never_used() {
        let table = Table::<u32>::new();
        let changes = Changes::new();
        let seen = changes.now();
        // A write lands between the counter's read and the memo.
        changes.bump();
        table.put(&changes, seen, "k", &Arc::new(1));
        assert!(table.get(&changes, "k").is_none());
    }

    #[test]
    fn memos_of_another_store_and_dropped_values_are_not_used() {
        let table = Table::<u32>::new();
        let (a, b) = (Changes::new(), Changes::new());
        let value = Arc::new(1);
        table.put(&a, a.now(), "k", &value);
        assert!(table.get(&b, "k").is_none());
        drop(value);
        assert!(
            table.get(&a, "k").is_none(),
            "only a weak reference is kept"
        );
    }

    #[test]
    fn long_keys_are_not_memoised_and_slots_are_in_range() {
        let table = Table::<u32>::new();
        let changes = Changes::new();
        let long = "x".repeat(MAX_KEY + 1);
        let value = Arc::new(1);
        table.put(&changes, changes.now(), &long, &value);
        assert!(table.get(&changes, &long).is_none());
        for key in ["", "a", "site\0host\0/index.html", &long] {
            assert!(slot(key) < SLOTS);
        }
    }
}
