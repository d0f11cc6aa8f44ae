//! The in-memory store (moka): primary key -> the stored variants of that URI.

use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderMap;

use super::entry::Entry;
use super::footprint;

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
        let cache = moka::sync::Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|key: &String, value: &Arc<Variants>| weigh(key, value))
            .build_with_hasher(foldhash::fast::RandomState::default());
        MemoryStore { cache }
    }

    pub fn lookup(&self, key: &str, request: &HeaderMap) -> Lookup {
        self.lookup_with(key, || request)
    }

    /// `lookup`, asking for the request's headers only when a stored entry varies on some:
    /// building the headers an origin would be sent costs more than the rest of a hit, and
    /// most pages have no `Vary`.
    pub fn lookup_with<'a>(&self, key: &str, request: impl Fn() -> &'a HeaderMap) -> Lookup {
        match self.cache.get(key) {
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
        let Some(variants) = self.cache.get(key) else {
            return 0;
        };
        let count = variants.entries.len();
        let now = SystemTime::now();
        let entries = variants
            .entries
            .iter()
            .map(|e| Arc::new(e.marked_stale(now)))
            .collect();
        self.cache
            .insert(key.to_string(), Arc::new(Variants { entries }));
        count
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
    }

    /// Removes every variant of a URI (RFC 9111 §4.4 invalidation, purge).
    pub fn invalidate(&self, key: &str) {
        self.cache.invalidate(key);
    }

    /// Removes every variant of a URI; returns how many there were.
    pub fn remove(&self, key: &str) -> usize {
        self.cache.remove(key).map_or(0, |v| v.entries.len())
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
    use bytes::Bytes;
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
            Bytes::from_static(body.as_bytes()),
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
            Lookup::Found(e) => String::from_utf8(e.body.to_vec()).unwrap(),
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
}
