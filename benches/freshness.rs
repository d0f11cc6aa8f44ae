//! Micro-benchmarks of the pure functions on Kagami's hot path: Cache-Control parsing, the
//! RFC 9111 freshness arithmetic, cache keys, and a complete in-memory hit (store lookup plus
//! building the client response) for 1 KiB and 16 KiB bodies, a hit's `Cache-Status` value, and
//! a large fill's buffer: its pages in a mapping of their own against the allocator's heap.
//!
//! Run: `cargo bench --bench freshness` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::header::{HeaderMap, HeaderValue};
use http::{Request, StatusCode};

use kagami::cache::control::response_directives;
use kagami::cache::key::primary_key;
use kagami::cache::mapped::FillBuffer;
use kagami::cache::policy::{corrected_initial_age, freshness_lifetime, Heuristic};
use kagami::cache::{CacheStatus, Entry, Lookup, MemoryStore, Phase, StoreSettings};
use kagami::config::CookiePolicy;
use kagami::proxy::respond::from_entry;
use kagami::routing::target::canonical;

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            *name,
            HeaderValue::from_str(value).expect("valid header value"),
        );
    }
    map
}

fn settings() -> StoreSettings {
    StoreSettings {
        heuristic: Heuristic {
            max: Duration::from_secs(24 * 3600),
            default_ttl: Duration::ZERO,
            negative_ttl: Duration::from_secs(10),
        },
        default_swr: Duration::ZERO,
        default_sie: Duration::ZERO,
        cookies: CookiePolicy::Never,
    }
}

/// A typical origin response head for a municipal page.
fn origin_headers(now: SystemTime) -> HeaderMap {
    let date = httpdate::fmt_http_date(now);
    let modified = httpdate::fmt_http_date(now - Duration::from_secs(86_400));
    headers(&[
        ("content-type", "text/html; charset=utf-8"),
        (
            "cache-control",
            "public, max-age=3600, stale-while-revalidate=60, stale-if-error=86400",
        ),
        ("date", &date),
        ("last-modified", &modified),
        ("etag", "\"5f1c-60a7b2c3d4e5f\""),
        ("server", "Apache"),
    ])
}

fn bench_directives(c: &mut Criterion) {
    let mut group = c.benchmark_group("response_directives");
    let cases = [
        ("max-age", headers(&[("cache-control", "max-age=3600")])),
        (
            "full-cache-control",
            headers(&[(
                "cache-control",
                "public, max-age=3600, s-maxage=600, stale-while-revalidate=60, stale-if-error=86400",
            )]),
        ),
        (
            "quoted-private",
            headers(&[("cache-control", "private=\"set-cookie, x-user\", no-cache, max-age=0")]),
        ),
        (
            "cdn-cache-control",
            headers(&[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=600, stale-if-error=3600"),
            ]),
        ),
        ("absent", headers(&[("content-type", "text/html")])),
    ];
    for (name, map) in &cases {
        group.bench_with_input(BenchmarkId::from_parameter(name), map, |b, map| {
            b.iter(|| response_directives(black_box(map)))
        });
    }
    group.finish();
}

fn bench_freshness(c: &mut Criterion) {
    let now = SystemTime::now();
    let heuristic = settings().heuristic;
    let date = httpdate::fmt_http_date(now);
    let expires = httpdate::fmt_http_date(now + Duration::from_secs(600));
    let modified = httpdate::fmt_http_date(now - Duration::from_secs(10 * 86_400));
    let cases = [
        (
            "max-age",
            headers(&[("cache-control", "max-age=3600"), ("date", &date)]),
        ),
        (
            "expires",
            headers(&[("date", &date), ("expires", &expires)]),
        ),
        (
            "heuristic-last-modified",
            headers(&[("date", &date), ("last-modified", &modified)]),
        ),
    ];
    let mut group = c.benchmark_group("freshness_lifetime");
    for (name, map) in &cases {
        let directives = response_directives(map);
        group.bench_with_input(BenchmarkId::from_parameter(name), map, |b, map| {
            b.iter(|| {
                freshness_lifetime(
                    black_box(StatusCode::OK),
                    black_box(map),
                    black_box(&directives),
                    black_box(now),
                    heuristic,
                )
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("corrected_initial_age");
    let request_time = now - Duration::from_millis(40);
    let cases = [
        ("date-and-age", headers(&[("date", &date), ("age", "17")])),
        ("no-date", headers(&[("cache-control", "max-age=60")])),
    ];
    for (name, map) in &cases {
        group.bench_with_input(BenchmarkId::from_parameter(name), map, |b, map| {
            b.iter(|| {
                corrected_initial_age(black_box(map), black_box(request_time), black_box(now))
            })
        });
    }
    group.finish();
}

fn bench_key(c: &mut Criterion) {
    let mut group = c.benchmark_group("primary_key");
    let cases = [
        ("plain", "/kurashi/bousai/hinanjo/index.html?lang=ja"),
        (
            "percent-encoded",
            "/%E9%98%B2%E7%81%BD/%7Euser/%41bc?q=%2fx",
        ),
    ];
    for (name, path) in cases {
        group.bench_with_input(BenchmarkId::from_parameter(name), path, |b, path| {
            // The request path makes the target canonical, then builds the key from it.
            b.iter(|| {
                let target = canonical(black_box(path)).expect("a path");
                primary_key(
                    black_box("city-example"),
                    black_box("www.city.example.jp"),
                    &target,
                )
            })
        });
    }
    group.finish();
}

/// The in-memory hit path: store lookup plus the client response, for a page with the usual
/// validators (`page`: ETag, Last-Modified, Date, ...) and for the scenario's bare origin
/// answer (`bare`: Cache-Control, Content-Type, Date only).
fn bench_hit(c: &mut Criterion) {
    let store = MemoryStore::new(64 << 20);
    let mut group = c.benchmark_group("memory_hit");
    let request_headers = headers(&[
        ("host", "www.city.example.jp"),
        ("user-agent", "Mozilla/5.0 (bench)"),
        ("accept", "text/html,application/xhtml+xml"),
        ("accept-encoding", "gzip, br"),
        ("accept-language", "ja,en;q=0.8"),
    ]);
    for size in [1024usize, 16 * 1024] {
        for kind in ["page", "bare"] {
            let now = SystemTime::now();
            let response_headers = if kind == "page" {
                origin_headers(now)
            } else {
                headers(&[
                    ("cache-control", "max-age=3600"),
                    ("content-type", "application/octet-stream"),
                    ("date", &httpdate::fmt_http_date(now)),
                ])
            };
            let entry = Entry::new(
                StatusCode::OK,
                response_headers,
                Bytes::from(vec![b'x'; size]),
                &request_headers,
                now - Duration::from_millis(5),
                now,
                &settings(),
            );
            let path = format!("/{kind}/{size}");
            let key = primary_key("bench", "127.0.0.1", &path);
            store.insert(key.clone(), Arc::new(entry));

            let mut request = Request::builder()
                .uri(path.as_str())
                .body(())
                .expect("valid request");
            *request.headers_mut() = request_headers.clone();
            let (parts, ()) = request.into_parts();

            let id = format!("{kind}-{size}");
            group.bench_function(BenchmarkId::new("lookup+from_entry", &id), |b| {
                b.iter(|| {
                    let Lookup::Found(entry) =
                        store.lookup(black_box(&key), black_box(&parts.headers))
                    else {
                        panic!("entry not found");
                    };
                    from_entry(
                        &entry,
                        black_box(&parts.method),
                        black_box(&parts.headers),
                        SystemTime::now(),
                    )
                })
            });
            group.bench_function(BenchmarkId::new("key+lookup+from_entry", &id), |b| {
                b.iter(|| {
                    let key = primary_key("bench", "127.0.0.1", black_box(&path));
                    let Lookup::Found(entry) = store.lookup(&key, black_box(&parts.headers)) else {
                        panic!("entry not found");
                    };
                    from_entry(
                        &entry,
                        black_box(&parts.method),
                        black_box(&parts.headers),
                        SystemTime::now(),
                    )
                })
            });
        }
    }
    group.finish();
}

/// A hit's `Cache-Status` value: from the per-thread table (`header_value`) against formatting
/// and allocating it for every answer (`formatted`, what every hit did before the table).
fn bench_cache_status(c: &mut Criterion) {
    let mut group = c.benchmark_group("cache_status");
    let status = CacheStatus::new(Phase::Hit).ttl(297);
    group.bench_function("header_value", |b| {
        b.iter(|| black_box(&status).header_value())
    });
    group.bench_function("formatted", |b| {
        b.iter(|| HeaderValue::from_maybe_shared(Bytes::from(black_box(&status).member())).ok())
    });
    group.finish();
}

/// Kagami's allocator, so that the heap side is what a fill really gets (without Kagami's
/// settings: freed pages wait 10 s for reuse here, 1 s in Kagami).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A large body collected from 16 KiB chunks, stored, then dropped (evicted): in a mapping of
/// its own (`mapped`: mmap with its pages populated, munmap) or on the heap (`heap`).
fn bench_fill_buffer(c: &mut Criterion) {
    let mut group = c.benchmark_group("fill_buffer");
    let chunk = vec![7u8; 16 * 1024];
    for len in [262_144usize, 1_000_000] {
        let fill = |mut buffer: FillBuffer| {
            let mut left = len;
            while left > 0 {
                let n = left.min(chunk.len());
                buffer.extend_from_slice(&chunk[..n]);
                left -= n;
            }
            drop(black_box(buffer.into_stored()));
        };
        group.bench_function(BenchmarkId::new("mapped", len), |b| {
            b.iter(|| fill(FillBuffer::for_length(Some(len))))
        });
        group.bench_function(BenchmarkId::new("heap", len), |b| {
            b.iter(|| fill(FillBuffer::heap(len)))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_fill_buffer,
    bench_directives,
    bench_freshness,
    bench_key,
    bench_hit,
    bench_cache_status
);
criterion_main!(benches);
