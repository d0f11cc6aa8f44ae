//! The in-memory store (moka): primary key -> the stored variants of that URI.

use std::sync::Arc;

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
        match self.cache.get(key) {
            None => Lookup::Miss,
            Some(variants) => variants
                .entries
                .iter()
                .find(|e| e.matches(request))
                .map(|e| Lookup::Found(e.clone()))
                .unwrap_or(Lookup::VaryMiss),
        }
    }

    /// Stores `entry`, replacing the variant with the same secondary key. Variants that vary on
    /// other fields are dropped: the origin changed its `Vary`, so they can no longer be chosen.
    pub fn insert(&self, key: String, entry: Arc<Entry>) {
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
        entries.truncate(MAX_VARIANTS);
        self.cache.insert(key, Arc::new(Variants { entries }));
    }

    /// Removes every variant of a URI (RFC 9111 §4.4 invalidation, purge).
    pub fn invalidate(&self, key: &str) {
        self.cache.invalidate(key);
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
}
