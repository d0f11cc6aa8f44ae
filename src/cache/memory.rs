//! The in-memory store (moka): primary key -> the stored variants of that URI.

use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderMap;
use moka::ops::compute::Op;

use super::entry::Entry;
use super::footprint;
use super::recent::{Changes, Table};

/// Bound on variants kept per URI, so a `Vary` on a wild header cannot fill memory with one page.
const MAX_VARIANTS: usize = 16;

#[derive(Debug, Default)]
struct Variants {
    entries: Vec<Arc<Entry>>,
}

/// Result of a lookup.
pub enum Lookup {
    Found(Arc<Entry>),
    /// The URI is stored, but not for this request's `Vary` values.
    VaryMiss,
    Miss,
}

#[derive(Clone)]
pub struct MemoryStore {
    // foldhash: fast, and seeded per process, so keys chosen by clients cannot be aimed at
    // one bucket.
    cache: moka::sync::Cache<String, Arc<Variants>, foldhash::fast::RandomState>,
    /// Moves on every write, so the threads' memos of lookups (`recent`) know when they end.
    changes: Arc<Changes>,
}

thread_local! {
    static RECENT: Table<Variants> = const { Table::new() };
}

/// What one key of the store really holds: its variants' entries (see `Entry::weight`), the
/// `Arc<Variants>` and its vector, the key, and moka's own bookkeeping for the key.
fn weigh(key: &str, variants: &Variants) -> u32 {
    let entries: u64 = variants.entries.iter().map(|e| u64::from(e.weight())).sum();
    let around = footprint::arc_footprint::<Variants>()
        + footprint::arc_vec_footprint(variants.entries.capacity())
        + key.len()
        + footprint::ALLOCATION
        + footprint::STORE_ENTRY;
    (entries + around as u64).min(u64::from(u32::MAX)) as u32
}

impl MemoryStore {
    pub fn new(capacity_bytes: u64) -> MemoryStore {
        let changes = Arc::new(Changes::new());
        // moka's own removals (evictions for size, and every other cause) end memos too.
        let evicted = changes.clone();
        let cache = moka::sync::Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|key: &String, value: &Arc<Variants>| weigh(key, value))
            .eviction_listener(move |_, _, _| evicted.bump())
            .build_with_hasher(foldhash::fast::RandomState::default());
        MemoryStore { cache, changes }
    }

    /// A key's variants: this thread's memo while the store has not changed since, else
    /// moka's (then memoised). A thread being torn down has no memo: moka's only
    /// (`try_with`, where `with` would panic).
    fn variants(&self, key: &str) -> Option<Arc<Variants>> {
        let memo = RECENT.try_with(|recent| recent.get(&self.changes, key));
        if let Ok(Some(found)) = memo {
            return Some(found);
        }
        // Read before the lookup: a write racing it ends the memo made from it.
        let seen = self.changes.now();
        let found = self.cache.get(key)?;
        let _ = RECENT.try_with(|recent| recent.put(&self.changes, seen, key, &found));
        Some(found)
    }

    pub fn lookup(&self, key: &str, request: &HeaderMap) -> Lookup {
        self.lookup_with(key, || request)
    }

    /// `lookup`, asking for the request's headers only when a stored entry varies on some:
    /// building the headers an origin would be sent costs more than the rest of a hit, and
    /// most pages have no `Vary`.
    pub fn lookup_with<'a>(&self, key: &str, request: impl Fn() -> &'a HeaderMap) -> Lookup {
        match self.variants(key) {
            None => Lookup::Miss,
            Some(variants) => variants
                .entries
                .iter()
                .find(|e| e.variant.is_empty() || e.matches(request()))
                .map(|e| {
                    e.last_used.touch();
                    Lookup::Found(e.clone())
                })
                .unwrap_or(Lookup::VaryMiss),
        }
    }

    /// Stores `entry`, replacing the variant with the same secondary key. Variants that vary on
    /// other fields are dropped: the origin changed its `Vary`, so they can no longer be chosen.
    /// Past `MAX_VARIANTS` the least recently used variant goes, so junk values of a varied
    /// header cannot push out the popular one. An answer other than 2xx is never stored over a
    /// stored 2xx of the URI (those stay for outages): then nothing is stored and `false` is
    /// returned.
    pub fn insert(&self, key: String, entry: Arc<Entry>) -> bool {
        if !entry.status.is_success() && self.has_success(&key) {
            return false;
        }
        let names = |e: &Entry| e.variant.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        let new_names = names(&entry);
        let mut entries: Vec<Arc<Entry>> = self
            .cache
            .get(&key)
            .map(|v| {
                v.entries
                    .iter()
                    .filter(|e| names(e) == new_names && e.variant != entry.variant)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        entries.insert(0, entry);
        while entries.len() > MAX_VARIANTS {
            // The new entry (index 0) is never the one evicted.
            let Some((lru, _)) = entries
                .iter()
                .enumerate()
                .skip(1)
                .min_by_key(|(_, e)| e.last_used.get())
            else {
                break;
            };
            entries.remove(lru);
        }
        self.cache.insert(key, Arc::new(Variants { entries }));
        self.changes.bump();
        true
    }

    /// Is a 2xx stored for any variant of `key`?
    pub fn has_success(&self, key: &str) -> bool {
        self.cache
            .get(key)
            .is_some_and(|v| v.entries.iter().any(|e| e.status.is_success()))
    }

    /// Is a 2xx variant of `key` stored that may be given to anyone (the outage copy)?
    pub fn has_shared_success(&self, key: &str) -> bool {
        self.cache
            .get(key)
            .is_some_and(|v| v.entries.iter().any(|e| e.shared && e.status.is_success()))
    }

    /// Marks every variant of a URI stale: it must be revalidated before it is served again,
    /// but stays for grace while the origin fails (RFC 9111 §4.4 invalidation that an
    /// anonymous POST cannot use to delete the outage copy).
    /// Returns how many variants were marked.
    pub fn mark_stale(&self, key: &str) -> usize {
        self.purge_key(key, &|_| true, true)
    }

    /// Marks stale (`soft`) or removes the variants of `key` that `matches`; returns how many.
    /// Done as one compute on the key (moka serialises those), so concurrent purges and
    /// invalidations of a key never undo each other's marks. A fill's plain insert at the same
    /// instant may still be replaced by the marked old copy; that copy must be revalidated
    /// before it is served fresh, so the next request fetches the new page anyway.
    pub fn purge_key(&self, key: &str, matches: &dyn Fn(&Entry) -> bool, soft: bool) -> usize {
        let mut affected = 0;
        let now = SystemTime::now();
        self.cache.entry_by_ref(key).and_compute_with(|current| {
            let Some(current) = current else {
                return Op::Nop;
            };
            let variants = current.into_value();
            affected = variants.entries.iter().filter(|e| matches(e)).count();
            if affected == 0 {
                return Op::Nop;
            }
            let entries: Vec<Arc<Entry>> = match soft {
                true => (variants.entries.iter())
                    .map(|e| match matches(e) {
                        true => Arc::new(e.marked_stale(now)),
                        false => e.clone(),
                    })
                    .collect(),
                false => (variants.entries.iter())
                    .filter(|e| !matches(e))
                    .cloned()
                    .collect(),
            };
            match entries.is_empty() {
                true => Op::Remove,
                false => Op::Put(Arc::new(Variants { entries })),
            }
        });
        self.changes.bump();
        affected
    }

    /// Purges (see `purge_key`) the variants that `matches` under every stored key that
    /// `key_matches`; returns how many variants were affected. This walks the whole store
    /// (moka's iterator takes no lock for long, so requests are not held up), so callers run
    /// it off the async workers (`spawn_blocking`).
    pub fn purge_where(
        &self,
        key_matches: &dyn Fn(&str) -> bool,
        matches: &dyn Fn(&Entry) -> bool,
        soft: bool,
    ) -> usize {
        // Keys first, then one atomic update each: the iterator is never held across updates.
        let keys: Vec<Arc<String>> = (self.cache.iter())
            .filter(|(key, variants)| {
                key_matches(key) && variants.entries.iter().any(|e| matches(e))
            })
            .map(|(key, _)| key)
            .collect();
        keys.iter()
            .map(|key| self.purge_key(key, matches, soft))
            .sum()
    }

    /// Variants stored and bytes held (the weigher's measure) per group of keys, `group`
    /// naming a key's group (a site: the key's first part) or `None` to leave it out. Walks
    /// the whole store, like `purge_where`.
    pub fn usage_by<'k>(
        &self,
        group: impl Fn(&str) -> Option<&'k str>,
    ) -> std::collections::HashMap<&'k str, (u64, u64)> {
        let mut usage = std::collections::HashMap::new();
        for (key, variants) in self.cache.iter() {
            if let Some(name) = group(&key) {
                let slot: &mut (u64, u64) = usage.entry(name).or_default();
                slot.0 += variants.entries.len() as u64;
                slot.1 += u64::from(weigh(&key, &variants));
            }
        }
        usage
    }

    /// Removes one stored variant (the one `entry` was looked up as), keeping the others.
    pub fn remove_variant(&self, key: &str, entry: &Entry) {
        let Some(variants) = self.cache.get(key) else {
            return;
        };
        let entries: Vec<Arc<Entry>> = variants
            .entries
            .iter()
            .filter(|e| e.variant != entry.variant)
            .cloned()
            .collect();
        if entries.is_empty() {
            self.cache.invalidate(key);
        } else {
            self.cache
                .insert(key.to_string(), Arc::new(Variants { entries }));
        }
        self.changes.bump();
    }

    /// Removes every variant of a URI (RFC 9111 §4.4 invalidation, purge).
    pub fn invalidate(&self, key: &str) {
        self.cache.invalidate(key);
        self.changes.bump();
    }

    /// Removes every variant of a URI; returns how many there were.
    pub fn remove(&self, key: &str) -> usize {
        let removed = self.cache.remove(key).map_or(0, |v| v.entries.len());
        self.changes.bump();
        removed
    }

    /// Bytes the store may hold (`cache.memory`).
    pub fn capacity(&self) -> u64 {
        self.cache.policy().max_capacity().unwrap_or(0)
    }

    /// What the store counts as held, in bytes (the weigher's sum).
    pub fn weighted_size(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }

    pub fn entry_count(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::StoreSettings;
    use crate::cache::policy::Heuristic;
    use crate::config::CookiePolicy;
    use http::{HeaderValue, StatusCode};
    use std::time::{Duration, SystemTime};

    fn entry(lang: &str, body: &'static str) -> Arc<Entry> {
        let mut req = HeaderMap::new();
        req.insert("accept-language", HeaderValue::from_str(lang).unwrap());
        let mut resp = HeaderMap::new();
        resp.insert("vary", HeaderValue::from_static("accept-language"));
        let s = StoreSettings {
            heuristic: Heuristic {
                max: Duration::ZERO,
                default_ttl: Duration::ZERO,
                negative_ttl: Duration::ZERO,
            },
            default_swr: Duration::ZERO,
            default_sie: Duration::ZERO,
            cookies: CookiePolicy::Never,
        };
        let now = SystemTime::now();
        Arc::new(Entry::new(
            StatusCode::OK,
            resp,
            crate::cache::body::StoredBody::from(body),
            &req,
            now,
            now,
            &s,
        ))
    }

    fn req(lang: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("accept-language", HeaderValue::from_str(lang).unwrap());
        h
    }

    #[test]
    fn variants_are_kept_side_by_side_and_replaced_by_key() {
        let store = MemoryStore::new(1 << 20);
        store.insert("k".into(), entry("ja", "こんにちは"));
        store.insert("k".into(), entry("en", "hello"));
        store.insert("k".into(), entry("en", "hello again"));
        let body = |lang| match store.lookup("k", &req(lang)) {
            Lookup::Found(e) => String::from_utf8(e.body.to_bytes().to_vec()).unwrap(),
            _ => String::from("none"),
        };
        assert_eq!(body("ja"), "こんにちは");
        assert_eq!(body("en"), "hello again");
        assert!(matches!(store.lookup("k", &req("fr")), Lookup::VaryMiss));
        store.invalidate("k");
        assert!(matches!(store.lookup("k", &req("ja")), Lookup::Miss));
    }

    #[test]
    fn the_variant_cap_evicts_the_least_recently_used() {
        let store = MemoryStore::new(1 << 20);
        store.insert("k".into(), entry("ja", "popular"));
        for i in 0..MAX_VARIANTS + 4 {
            // The popular variant is asked for between the junk ones.
            assert!(matches!(store.lookup("k", &req("ja")), Lookup::Found(_)));
            store.insert("k".into(), entry(&format!("junk{i}"), "junk"));
        }
        assert!(
            matches!(store.lookup("k", &req("ja")), Lookup::Found(_)),
            "the popular variant survives"
        );
        assert!(matches!(store.lookup("k", &req("junk0")), Lookup::VaryMiss));
    }

    #[test]
    fn marking_stale_keeps_the_copy_and_an_error_never_replaces_a_2xx() {
        let store = MemoryStore::new(1 << 20);
        store.insert("k".into(), entry("ja", "good"));
        store.mark_stale("k");
        let Lookup::Found(e) = store.lookup("k", &req("ja")) else {
            panic!("marked stale, not removed")
        };
        assert!(!e.is_fresh(SystemTime::now()) && e.invalidated);
        let mut not_found = (*entry("ja", "404")).clone();
        not_found.status = StatusCode::NOT_FOUND;
        assert!(!store.insert("k".into(), Arc::new(not_found)));
        let Lookup::Found(e) = store.lookup("k", &req("ja")) else {
            panic!()
        };
        assert_eq!(e.body, "good");
    }

    #[test]
    fn a_purge_walk_takes_only_the_matching_keys_and_variants() {
        let store = MemoryStore::new(1 << 20);
        store.insert("a\0h\0/x".into(), entry("ja", "a-ja"));
        store.insert("a\0h\0/x".into(), entry("en", "a-en"));
        store.insert("b\0h\0/x".into(), entry("ja", "b-ja"));
        let japanese = |e: &Entry| e.variant[0].1.as_deref() == Some("ja");
        let in_a = |key: &str| key.starts_with("a\0");
        assert_eq!(store.purge_where(&in_a, &japanese, false), 1);
        assert!(matches!(
            store.lookup("a\0h\0/x", &req("ja")),
            Lookup::VaryMiss
        ));
        let Lookup::Found(en) = store.lookup("a\0h\0/x", &req("en")) else {
            panic!("the other variant stays")
        };
        assert!(!en.invalidated);
        assert_eq!(store.purge_where(&|_| true, &japanese, true), 1);
        let Lookup::Found(b) = store.lookup("b\0h\0/x", &req("ja")) else {
            panic!("soft keeps it")
        };
        assert!(b.invalidated);
        let usage = store.usage_by(|key| ["a", "b"].into_iter().find(|s| key.starts_with(s)));
        assert_eq!(usage.get("a").map(|u| u.0), Some(1));
        assert_eq!(usage.get("b").map(|u| u.0), Some(1));
        assert!(usage["a"].1 > 0);
        assert_eq!(store.purge_where(&in_a, &|_| true, false), 1);
        assert!(matches!(store.lookup("a\0h\0/x", &req("en")), Lookup::Miss));
    }

    #[test]
    fn a_memoised_lookup_never_outlives_a_write_or_an_eviction() {
        let store = MemoryStore::new(64 << 10);
        let body = |store: &MemoryStore| match store.lookup("k", &req("ja")) {
            Lookup::Found(e) => String::from_utf8(e.body.to_bytes().to_vec()).unwrap(),
            Lookup::VaryMiss => String::from("vary-miss"),
            Lookup::Miss => String::from("miss"),
        };
        store.insert("k".into(), entry("ja", "first"));
        // Twice: the second is this thread's memo.
        assert_eq!(body(&store), "first");
        assert_eq!(body(&store), "first");
        store.insert("k".into(), entry("ja", "second"));
        assert_eq!(body(&store), "second", "a replacement");
        store.mark_stale("k");
        assert!(matches!(store.lookup("k", &req("ja")), Lookup::Found(e) if e.invalidated));
        store.invalidate("k");
        assert_eq!(body(&store), "miss", "a purge");
        store.insert("k".into(), entry("ja", "third"));
        assert_eq!(body(&store), "third");
        // Evicted for size by moka alone: far more than 64 KiB of other pages.
        for i in 0..400 {
            store.insert(
                format!("other{i}"),
                entry("ja", "0123456789abcdef0123456789abcdef"),
            );
            store.cache.run_pending_tasks();
        }
        assert!(!store.cache.contains_key("k"), "moka evicted it");
        assert_eq!(body(&store), "miss", "and the memo does not answer for it");
        // A memo of one store is never another's answer.
        let other = MemoryStore::new(1 << 20);
        assert!(matches!(other.lookup("k", &req("ja")), Lookup::Miss));
    }

    #[test]
    fn a_purge_that_returned_is_seen_by_every_threads_next_lookup() {
        let store = Arc::new(MemoryStore::new(1 << 20));
        let rounds = 200;
        let threads = 4;
        let warm = Arc::new(std::sync::Barrier::new(threads + 1));
        let purged = Arc::new(std::sync::Barrier::new(threads + 1));
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (store, warm, purged) = (store.clone(), warm.clone(), purged.clone());
                std::thread::spawn(move || {
                    let mut stale = 0;
                    for _ in 0..rounds {
                        // Twice: the second answer is this thread's memo.
                        warm.wait(); // the page is stored
                        for _ in 0..2 {
                            assert!(matches!(store.lookup("k", &req("ja")), Lookup::Found(_)));
                        }
                        warm.wait();
                        purged.wait();
                        if !matches!(store.lookup("k", &req("ja")), Lookup::Miss) {
                            stale += 1;
                        }
                        warm.wait();
                    }
                    stale
                })
            })
            .collect();
        for _ in 0..rounds {
            store.insert("k".into(), entry("ja", "page"));
            warm.wait();
            warm.wait();
            store.invalidate("k");
            purged.wait();
            warm.wait();
        }
        // Every barrier is waited on by all: the next round's insert follows every check.
        let stale: i32 = workers.into_iter().map(|w| w.join().unwrap_or(1)).sum();
        assert_eq!(stale, 0, "a lookup after a returned purge served the page");
    }

    #[test]
    fn a_page_read_often_through_the_memo_is_not_pushed_out_by_one_hit_pages() {
        let store = MemoryStore::new(64 << 10);
        store.insert("hot".into(), entry("ja", "popular"));
        for i in 0..40 {
            store.insert(format!("warm{i}"), entry("ja", "0123456789abcdef"));
        }
        store.cache.run_pending_tasks();
        // Read often with no write in between: nearly every answer is this thread's memo.
        for _ in 0..1_000 {
            assert!(matches!(store.lookup("hot", &req("ja")), Lookup::Found(_)));
        }
        for i in 0..400 {
            store.insert(
                format!("junk{i}"),
                entry("ja", "0123456789abcdef0123456789abcdef"),
            );
            store.cache.run_pending_tasks();
        }
        assert!(
            store.cache.contains_key("hot"),
            "moka saw enough of its reads to keep it"
        );
    }
}
