//! The 3.11 surge bench: a fragile municipal origin, Kagami in front of it, a crowd that ramps
//! from tens to thousands of visitors, and an origin outage in the middle. Everything runs on
//! 127.0.0.0/8 and stops by itself.
//!
//!     cargo bench --bench surge
//!     KAGAMI_SURGE_SECS=60 KAGAMI_SURGE_CLIENTS=3000 cargo bench --bench surge
//!
//! Environment: KAGAMI_SURGE_SECS (whole run, default 30), KAGAMI_SURGE_CLIENTS (peak virtual
//! clients, default 2000), KAGAMI_SURGE_PAGES (default 300), KAGAMI_SURGE_JSON (where the JSON
//! report goes, default target/surge.json). It reports; it never asserts.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use kagami::config::{Config, SiteConfig};

/// The origin's capacity: 4 workers × 200 ms per page ≈ 20 pages per second.
const ORIGIN_WORKERS: usize = 4;
const ORIGIN_SERVICE_TIME: Duration = Duration::from_millis(200);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small, fast, deterministic PRNG (xorshift64*): the bench needs spread, not secrecy.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Page popularity: Zipf with s = 1 over `n` pages, sampled by inverse CDF.
struct Zipf(Vec<f64>);

impl Zipf {
    fn new(n: usize) -> Zipf {
        let weights: Vec<f64> = (1..=n).map(|k| 1.0 / k as f64).collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        Zipf(
            weights
                .iter()
                .map(|w| {
                    acc += w / total;
                    acc
                })
                .collect(),
        )
    }
    fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.0.partition_point(|c| *c < u).min(self.0.len() - 1)
    }
}

// ---------------------------------------------------------------------------------------------
// The fragile origin

struct Site {
    pages: Vec<(String, Bytes, &'static str)>,
}

impl Site {
    fn new(count: usize) -> Site {
        let mut rng = Rng(0x5eed);
        let pages = (0..count)
            .map(|i| {
                if i % 50 == 7 {
                    let size = 200 * 1024 + (rng.next() % (824 * 1024)) as usize;
                    (
                        format!("/docs/notice-{i}.pdf"),
                        Bytes::from(vec![b'%'; size]),
                        "application/pdf",
                    )
                } else {
                    let size = 5 * 1024 + (rng.next() % (45 * 1024)) as usize;
                    (
                        format!("/pages/{i}.html"),
                        Bytes::from(vec![b'x'; size]),
                        "text/html; charset=utf-8",
                    )
                }
            })
            .collect();
        Site { pages }
    }
}

#[derive(Default)]
struct OriginCounters {
    requests: AtomicU64,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
}

struct FragileOrigin {
    addr: SocketAddr,
    site: Arc<Site>,
    counters: Arc<OriginCounters>,
    workers: Arc<Semaphore>,
    accept: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl FragileOrigin {
    async fn start(site: Arc<Site>) -> Arc<FragileOrigin> {
        let listener = bind_reusable("127.0.0.1:0".parse().unwrap());
        let origin = Arc::new(FragileOrigin {
            addr: listener.local_addr().unwrap(),
            site,
            counters: Arc::default(),
            workers: Arc::new(Semaphore::new(ORIGIN_WORKERS)),
            accept: Mutex::new(None),
        });
        origin.serve(listener);
        origin
    }

    fn serve(self: &Arc<Self>, listener: TcpListener) {
        let me = self.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let me = me.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| me.clone().answer(request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            // Aborting this task drops `connections`, which aborts every open connection.
        });
        *self.accept.lock().unwrap() = Some(task);
    }

    /// Down completely: the listener closes and open connections are dropped.
    fn down(&self) {
        if let Some(task) = self.accept.lock().unwrap().take() {
            task.abort();
        }
    }

    async fn up(self: &Arc<Self>) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.serve(bind_reusable(self.addr));
    }

    async fn answer(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let c = &self.counters;
        c.requests.fetch_add(1, Ordering::Relaxed);
        let now = c.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        c.peak.fetch_max(now, Ordering::Relaxed);
        // Counted down on drop too: taking the origin down aborts handlers mid-request.
        struct Leaving<'a>(&'a AtomicUsize);
        impl Drop for Leaving<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let _leaving = Leaving(&c.in_flight);
        // The origin's real limit: a few workers, each slow.
        let worker = self.workers.acquire().await;
        tokio::time::sleep(ORIGIN_SERVICE_TIME).await;
        drop(worker);
        let path = request.uri().path();
        let response = match self.site.pages.iter().find(|(p, _, _)| p == path) {
            Some((_, body, kind)) => {
                let mut r = Response::new(Full::new(body.clone()));
                r.headers_mut()
                    .insert("content-type", kind.parse().unwrap());
                r.headers_mut()
                    .insert("cache-control", "max-age=10".parse().unwrap());
                r
            }
            None => {
                let mut r = Response::new(Full::new(Bytes::from_static(b"not found")));
                *r.status_mut() = StatusCode::NOT_FOUND;
                r
            }
        };
        Ok(response)
    }
}

fn bind_reusable(addr: SocketAddr) -> TcpListener {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    socket.listen(4096).unwrap()
}

// ---------------------------------------------------------------------------------------------
// The crowd

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Ramp,
    Outage,
    Recovery,
}

const PHASES: [Phase; 3] = [Phase::Ramp, Phase::Outage, Phase::Recovery];

#[derive(Default)]
struct PhaseStats {
    requests: u64,
    ok: u64,
    stale: u64,
    limited: u64,
    unavailable: u64,
    errors: u64,
    visited_requests: u64,
    visited_ok: u64,
    latencies_us: Vec<u64>,
    origin_requests: u64,
}

struct Crowd {
    phase: Mutex<Phase>,
    stats: Mutex<[PhaseStats; 3]>,
    /// Pages that had been answered 200 before the outage began.
    visited: Mutex<HashSet<usize>>,
    stop: AtomicBool,
}

impl Crowd {
    fn record(&self, page: usize, status: u16, stale: bool, latency: Duration) {
        let phase = *self.phase.lock().unwrap();
        let visited = {
            let mut visited = self.visited.lock().unwrap();
            if phase == Phase::Ramp && status == 200 {
                visited.insert(page);
            }
            visited.contains(&page)
        };
        let mut stats = self.stats.lock().unwrap();
        let s = &mut stats[phase as usize];
        s.requests += 1;
        s.ok += u64::from(status == 200);
        s.stale += u64::from(stale);
        s.limited += u64::from(status == 429);
        s.unavailable += u64::from(status == 503);
        s.errors += u64::from(status == 0);
        if visited && phase != Phase::Ramp {
            s.visited_requests += 1;
            s.visited_ok += u64::from(status == 200);
        }
        s.latencies_us.push(latency.as_micros() as u64);
    }
}

/// The source address of virtual client `n`: spread over 127.1.0.0/16.
fn client_address(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 1, (n / 250) as u8, (n % 250 + 1) as u8))
}

async fn visitor(
    n: usize,
    kagami: SocketAddr,
    site: Arc<Site>,
    zipf: Arc<Zipf>,
    crowd: Arc<Crowd>,
) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (n as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9));
    let mut sender = None;
    while !crowd.stop.load(Ordering::Relaxed) {
        // Think time 0.5-1.5 s between page views.
        tokio::time::sleep(Duration::from_millis(500 + rng.next() % 1000)).await;
        if crowd.stop.load(Ordering::Relaxed) {
            break;
        }
        if sender.is_none() {
            sender = connect(client_address(n), kagami).await;
        }
        let Some(conn) = sender.as_mut() else {
            continue;
        };
        let page = zipf.sample(&mut rng);
        let request = Request::get(site.pages[page].0.as_str())
            .header("host", "127.0.0.1")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let started = Instant::now();
        let outcome = tokio::time::timeout(Duration::from_secs(10), async {
            let response = conn.send_request(request).await.ok()?;
            let status = response.status().as_u16();
            // Kagami reports a negative ttl exactly when it served a stale copy.
            let stale = response
                .headers()
                .get("cache-status")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("ttl=-"));
            response.into_body().collect().await.ok()?;
            Some((status, stale))
        })
        .await;
        let (status, stale) = match outcome {
            Ok(Some(result)) => result,
            _ => {
                sender = None;
                (0, false)
            }
        };
        crowd.record(page, status, stale, started.elapsed());
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(from: IpAddr, to: SocketAddr) -> Option<Sender> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(from, 0)).ok()?;
    let stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(to))
        .await
        .ok()?
        .ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(connection);
    Some(sender)
}

fn raise_fd_limit() {
    // Thousands of client sockets plus Kagami's side of them.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index] as f64 / 1000.0
}

fn main() {
    raise_fd_limit();
    let secs = env_or("KAGAMI_SURGE_SECS", 30).max(6);
    let peak_clients = env_or("KAGAMI_SURGE_CLIENTS", 2000).clamp(10, 20_000) as usize;
    let page_count = env_or("KAGAMI_SURGE_PAGES", 300).max(10) as usize;
    let json_path =
        std::env::var("KAGAMI_SURGE_JSON").unwrap_or_else(|_| "target/surge.json".into());

    // Kagami gets a runtime (one core) of its own; the crowd and the origin share the other.
    let kagami_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let crowd_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();

    let site = Arc::new(Site::new(page_count));
    let origin = crowd_rt.block_on(FragileOrigin::start(site.clone()));

    let mut site_config =
        SiteConfig::new("surge", &["127.0.0.1"], &format!("http://{}", origin.addr)).unwrap();
    site_config.protection.concurrency = ORIGIN_WORKERS;
    site_config.stale_while_revalidate = Duration::from_secs(10);
    // Active health checks close the circuit soon after the origin is back.
    site_config.protection.health_path = Some("/pages/0.html".into());
    site_config.protection.health_interval = Duration::from_secs(1);
    let mut config = Config::new(vec!["127.0.0.1:0".parse().unwrap()], vec![site_config]);
    config.log.access = false;
    config.server.max_connections = peak_clients + 100;
    let running = kagami_rt.block_on(kagami::server::start(&config)).unwrap();
    let kagami_addr = running.addr();
    let stats = running.proxy.stats.clone();

    let (ramp, outage) = (secs * 2 / 5, secs * 3 / 10);
    println!(
        "surge: {peak_clients} clients at peak, {page_count} pages, {secs} s \
         (ramp {ramp} s, origin down {outage} s, recovery {} s); origin ≈ {} pages/s",
        secs - ramp - outage,
        ORIGIN_WORKERS as f64 / ORIGIN_SERVICE_TIME.as_secs_f64()
    );

    let crowd = Arc::new(Crowd {
        phase: Mutex::new(Phase::Ramp),
        stats: Mutex::new(Default::default()),
        visited: Mutex::new(HashSet::new()),
        stop: AtomicBool::new(false),
    });
    let zipf = Arc::new(Zipf::new(page_count));
    let origin_requests = || origin.counters.requests.load(Ordering::Relaxed);

    crowd_rt.block_on(async {
        let mut visitors = JoinSet::new();
        let started = Instant::now();
        let mut marks = vec![origin_requests()];
        let grow = |visitors: &mut JoinSet<()>, target: usize| {
            while visitors.len() < target {
                let n = visitors.len();
                let visit = visitor(n, kagami_addr, site.clone(), zipf.clone(), crowd.clone());
                visitors.spawn(visit);
            }
        };
        // Ramp: 10 clients at first, linearly up to the peak.
        loop {
            let share = (started.elapsed().as_secs_f64() / ramp as f64).min(1.0);
            grow(
                &mut visitors,
                10 + (share * (peak_clients - 10) as f64) as usize,
            );
            if share >= 1.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        *crowd.phase.lock().unwrap() = Phase::Outage;
        marks.push(origin_requests());
        origin.down();
        tokio::time::sleep(Duration::from_secs(outage)).await;
        *crowd.phase.lock().unwrap() = Phase::Recovery;
        marks.push(origin_requests());
        origin.up().await;
        tokio::time::sleep(Duration::from_secs(secs - ramp - outage)).await;
        crowd.stop.store(true, Ordering::Relaxed);
        // Visitors finish their current request (bounded by their 10 s timeout), then stop.
        let _ = tokio::time::timeout(Duration::from_secs(12), async {
            while visitors.join_next().await.is_some() {}
        })
        .await;
        visitors.abort_all();
        let end = origin.counters.requests.load(Ordering::Relaxed);
        let mut stats = crowd.stats.lock().unwrap();
        for (i, at) in marks.iter().enumerate() {
            let next = marks.get(i + 1).copied().unwrap_or(end);
            stats[i].origin_requests = next - at;
        }
    });

    let kagami_stats = stats.snapshot();
    kagami_rt.block_on(running.shutdown(Duration::from_secs(1)));
    report(&crowd, &origin, kagami_stats, &json_path);
    origin.down();
}

fn report(
    crowd: &Crowd,
    origin: &FragileOrigin,
    kagami: kagami::metrics::Snapshot,
    json_path: &str,
) {
    let mut stats = crowd.stats.lock().unwrap();
    println!();
    println!(
        "{:<9} {:>9} {:>7} {:>7} {:>9} {:>8} {:>8} {:>9} {:>8} {:>6} {:>6} {:>7}",
        "phase",
        "requests",
        "2xx %",
        "stale %",
        "visited %",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "origin",
        "429",
        "503",
        "errors"
    );
    let mut rows = Vec::new();
    let (mut all_requests, mut all_origin) = (0u64, 0u64);
    for phase in PHASES {
        let s = &mut stats[phase as usize];
        s.latencies_us.sort_unstable();
        let row = Row::of(phase, s);
        println!(
            "{:<9} {:>9} {:>7.2} {:>7.2} {:>9} {:>8.2} {:>8.2} {:>9.2} {:>8} {:>6} {:>6} {:>7}",
            row.phase,
            s.requests,
            row.ok_pct,
            row.stale_pct,
            if s.visited_requests == 0 {
                "-".to_string()
            } else {
                format!("{:.3}", row.visited_pct)
            },
            row.p50,
            row.p99,
            row.p999,
            s.origin_requests,
            s.limited,
            s.unavailable,
            s.errors,
        );
        rows.push(row.json(s));
        all_requests += s.requests;
        all_origin += s.origin_requests;
    }
    let peak = origin.counters.peak.load(Ordering::Relaxed);
    println!();
    println!(
        "origin requests: {all_origin} of {all_requests} client requests ({:.2} %); origin peak concurrency {peak} (Kagami cap {ORIGIN_WORKERS})",
        pct(all_origin, all_requests)
    );
    println!(
        "visited %: share of requests for pages first answered before the outage that got 200"
    );
    println!(
        "kagami: hits {} stale {} misses {} collapsed {} origin_busy {} circuit_opened {} rate_limited {} emergency_pages {}",
        kagami.hits, kagami.stale_served, kagami.misses, kagami.collapsed, kagami.origin_busy, kagami.circuit_opened,
        kagami.rate_limited, kagami.emergency_pages
    );
    let json = format!(
        "{{\"phases\":[{}],\"client_requests\":{all_requests},\"origin_requests\":{all_origin},\"origin_share_pct\":{:.4},\"origin_peak_concurrency\":{peak},\"origin_cap\":{ORIGIN_WORKERS},\"kagami\":{{{}}}}}\n",
        rows.join(","),
        pct(all_origin, all_requests),
        kagami.pairs().iter().map(|(k, v)| format!("\"{k}\":{v}")).collect::<Vec<_>>().join(",")
    );
    match std::fs::write(json_path, json) {
        Ok(()) => println!("JSON report: {json_path}"),
        Err(err) => println!("could not write {json_path}: {err}"),
    }
}

/// The derived figures of one phase, computed once for the table and the JSON.
struct Row {
    phase: String,
    ok_pct: f64,
    stale_pct: f64,
    visited_pct: f64,
    p50: f64,
    p99: f64,
    p999: f64,
}

fn pct(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        100.0 * a as f64 / b as f64
    }
}

impl Row {
    /// `s.latencies_us` must be sorted.
    fn of(phase: Phase, s: &PhaseStats) -> Row {
        Row {
            phase: format!("{phase:?}").to_lowercase(),
            ok_pct: pct(s.ok, s.requests),
            stale_pct: pct(s.stale, s.requests),
            visited_pct: pct(s.visited_ok, s.visited_requests),
            p50: percentile(&s.latencies_us, 0.50),
            p99: percentile(&s.latencies_us, 0.99),
            p999: percentile(&s.latencies_us, 0.999),
        }
    }

    fn json(&self, s: &PhaseStats) -> String {
        format!(
            "{{\"phase\":\"{}\",\"requests\":{},\"ok_pct\":{:.4},\"stale_pct\":{:.4},\"visited_ok_pct\":{:.4},\"visited_requests\":{},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"origin_requests\":{},\"status_429\":{},\"status_503\":{},\"errors\":{}}}",
            self.phase,
            s.requests,
            self.ok_pct,
            self.stale_pct,
            self.visited_pct,
            s.visited_requests,
            self.p50,
            self.p99,
            self.p999,
            s.origin_requests,
            s.limited,
            s.unavailable,
            s.errors
        )
    }
}
