//! The 3.11 surge bench: a fragile municipal origin, Kagami in front of it, every page warmed
//! once (as in issue 9's scenario: the pages a crowd asks for have been visited before, at the
//! origin's own pace, and are expired but within grace by the time it comes), a crowd that ramps
//! from tens to thousands of visitors, then stays at its peak while the origin, alive, is
//! saturated (issue 9: overloaded, not dead), then an origin outage, then recovery. Everything
//! runs on 127.0.0.0/8 and stops by itself. Kagami runs with its default settings (origin cap
//! 32 against an origin that takes 4), plus an active health check.
//!
//!     cargo bench --bench surge
//!     KAGAMI_SURGE_SECS=60 KAGAMI_SURGE_CLIENTS=3000 cargo bench --bench surge
//!     KAGAMI_SURGE_PROFILE=issue9 cargo bench --bench surge
//!
//! Profiles (KAGAMI_SURGE_PROFILE):
//! - `surge` (default): 300 pages of 5-50 KiB plus a PDF of 0.2-1 MiB every 50th, visitors with
//!   0.5-1.5 s of think time each from its own 127.1.x.y address, ramp (30 % of the run),
//!   overloaded, outage (a quarter each), recovery; Kagami with an active health check.
//! - `issue9`: exactly issue 9's measurement. 300 pages of 16 KiB, 500 keep-alive connections
//!   from 127.0.0.1 in a closed loop (no think time), each request from one of 20,000 client
//!   addresses (127.1.x.y, uniform) in `X-Forwarded-For`, with `limits.trusted_proxies =
//!   ["127.0.0.1/32"]` and otherwise default settings (no health check); a third of the run
//!   (10 s of the default 30) each: overloaded (origin alive), dead, back.
//!
//! Both: the origin has 4 workers × 200 ms and sends `max-age=5`; Zipf popularity; every page is
//! warmed once first; Kagami runs on one core of its own. Per phase it prints answers/s,
//! p50/p99/p99.9, failures, stale share, median served `Age`, origin requests, the origin's peak
//! in flight over the whole phase and after its first `SETTLE` (2 s), and Kagami's adaptive limit.
//!
//! Environment: KAGAMI_SURGE_PROFILE (above), KAGAMI_SURGE_SECS (whole run, default 30),
//! KAGAMI_SURGE_CLIENTS (peak virtual clients or connections, default 2000; issue9: 500),
//! KAGAMI_SURGE_PAGES (default 300), KAGAMI_SURGE_JSON (where the JSON report goes, default
//! target/surge.json). It reports; it never asserts.

#[path = "surge/origin.rs"]
mod origin;
#[path = "surge/profile.rs"]
mod profile;
#[path = "surge/report.rs"]
mod report;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;
use tokio::task::JoinSet;

use kagami::config::{Config, SiteConfig};

use origin::{FragileOrigin, Site};
use profile::Profile;

/// The origin's capacity: 4 workers × 200 ms per page ≈ 20 pages per second.
const ORIGIN_WORKERS: usize = 4;
const ORIGIN_SERVICE_TIME: Duration = Duration::from_millis(200);
/// Issue 9's rule holds "after the first seconds": a phase's second peak counts from here on.
const SETTLE: Duration = Duration::from_secs(2);

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
// The crowd

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Ramp,
    /// The crowd at its peak, the origin alive but saturated.
    Overloaded,
    Outage,
    Recovery,
}

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
    /// The `Age` of every 200 served (0 when absent: fetched just now).
    ages: Vec<u64>,
    origin_requests: u64,
    /// Most origin requests in flight at once during the phase.
    origin_peak: usize,
    /// The same from `SETTLE` into the phase on (None: the phase was shorter).
    origin_peak_settled: Option<usize>,
    /// Kagami's adaptive origin limit at the end of the phase, if it has one.
    adaptive_limit: Option<u64>,
    /// The highest adaptive limit seen during the phase (sampled every 20 ms).
    adaptive_limit_max: Option<u64>,
    seconds: f64,
}

struct Crowd {
    phase: Mutex<Phase>,
    stats: Mutex<[PhaseStats; 4]>,
    /// Pages that had been answered 200 before the outage began.
    visited: Mutex<HashSet<usize>>,
    stop: AtomicBool,
    /// The highest adaptive limit sampled since the phase began.
    limit_max: AtomicU64,
}

impl Crowd {
    fn record(&self, page: usize, status: u16, stale: bool, age: u64, latency: Duration) {
        let phase = *self.phase.lock().unwrap();
        let visited = {
            let mut visited = self.visited.lock().unwrap();
            if matches!(phase, Phase::Ramp | Phase::Overloaded) && status == 200 {
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
        if status == 200 {
            s.ages.push(age);
        }
        if visited && matches!(phase, Phase::Outage | Phase::Recovery) {
            s.visited_requests += 1;
            s.visited_ok += u64::from(status == 200);
        }
        s.latencies_us.push(latency.as_micros() as u64);
    }
}

/// The address of virtual client `n` (below 62,500): spread over 127.1.0.0/16.
fn client_address(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 1, (n / 250) as u8, (n % 250 + 1) as u8))
}

/// How a visitor behaves (from the `Profile`).
#[derive(Clone, Copy)]
struct Load {
    think: bool,
    forwarded: Option<usize>,
}

async fn visitor(
    n: usize,
    kagami: SocketAddr,
    site: Arc<Site>,
    zipf: Arc<Zipf>,
    crowd: Arc<Crowd>,
    load: Load,
) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (n as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9));
    let mut sender = None;
    // Behind the trusted proxy every connection comes from 127.0.0.1.
    let from = match load.forwarded {
        Some(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        None => client_address(n),
    };
    let mut failed_connects = 0u32;
    while !crowd.stop.load(Ordering::Relaxed) {
        if load.think {
            // Think time 0.5-1.5 s between page views.
            tokio::time::sleep(Duration::from_millis(500 + rng.next() % 1000)).await;
        } else if failed_connects > 0 {
            // A closed loop must not spin on a refused connection.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if crowd.stop.load(Ordering::Relaxed) {
            break;
        }
        if sender.is_none() {
            sender = connect(from, kagami).await;
        }
        let Some(conn) = sender.as_mut() else {
            failed_connects += 1;
            continue;
        };
        failed_connects = 0;
        let page = zipf.sample(&mut rng);
        let mut request = Request::get(site.pages[page].0.as_str()).header("host", "127.0.0.1");
        if let Some(addresses) = load.forwarded {
            let client = client_address(rng.next() as usize % addresses);
            request = request.header("x-forwarded-for", client.to_string());
        }
        let request = request.body(Empty::<Bytes>::new()).unwrap();
        let started = Instant::now();
        let outcome = tokio::time::timeout(Duration::from_secs(10), async {
            // A closed loop sends the next request as soon as the connection is ready again.
            conn.ready().await.ok()?;
            let response = conn.send_request(request).await.ok()?;
            let status = response.status().as_u16();
            // Kagami reports a negative ttl exactly when it served a stale copy.
            let stale = response
                .headers()
                .get("cache-status")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("ttl=-"));
            let age = response
                .headers()
                .get("age")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            response.into_body().collect().await.ok()?;
            Some((status, stale, age))
        })
        .await;
        let (status, stale, age) = match outcome {
            Ok(Some(result)) => result,
            _ => {
                sender = None;
                (0, false, 0)
            }
        };
        crowd.record(page, status, stale, age, started.elapsed());
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

fn main() {
    raise_fd_limit();
    let secs = env_or("KAGAMI_SURGE_SECS", 30).max(6);
    let profile = match Profile::from_env(secs) {
        Ok(profile) => profile,
        Err(reason) => {
            eprintln!("surge: {reason}");
            std::process::exit(2);
        }
    };
    let peak_clients =
        env_or("KAGAMI_SURGE_CLIENTS", profile.default_clients()).clamp(10, 20_000) as usize;
    let page_count = env_or("KAGAMI_SURGE_PAGES", 300).max(10) as usize;
    let json_path =
        std::env::var("KAGAMI_SURGE_JSON").unwrap_or_else(|_| "target/surge.json".into());

    // Kagami gets a runtime (one core) of its own, with the binary's settings; the crowd and
    // the origin share the other.
    let kagami_rt = kagami::server::runtime::builder(Some(1))
        .enable_all()
        .build()
        .unwrap();
    let crowd_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();

    let site = Arc::new(Site::new(page_count, profile.page_size));
    let origin = crowd_rt.block_on(FragileOrigin::start(site.clone()));

    // Default settings (origin cap 32 against an origin that takes 4, no stale-while-revalidate
    // override): what a new operator runs.
    let mut site_config =
        SiteConfig::new("surge", &["127.0.0.1"], &format!("http://{}", origin.addr)).unwrap();
    if profile.health_check {
        // Active health checks close the circuit soon after the origin is back.
        site_config.protection.health_path = Some("/pages/0.html".into());
        site_config.protection.health_interval = Duration::from_secs(1);
    }
    let origin_cap = site_config.protection.concurrency;
    let mut config = Config::new(vec!["127.0.0.1:0".parse().unwrap()], vec![site_config]);
    config.log.access = false;
    config.server.max_connections = peak_clients + 100;
    if profile.forwarded.is_some() {
        // The crowd's connections all come from the "load balancer" at 127.0.0.1.
        config.limits.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    }
    let running = kagami_rt.block_on(kagami::server::start(&config)).unwrap();
    let kagami_addr = running.addr();
    let stats = running.proxy.stats.clone();

    let phases: Vec<Phase> = profile.phases.iter().map(|(p, _)| *p).collect();
    println!(
        "surge, profile {}: {peak_clients} {} at peak, {page_count} pages, {secs} s ({}); origin \
         ≈ {} pages/s, Kagami's origin cap {origin_cap}",
        profile.name,
        match (profile.think, profile.forwarded) {
            (true, _) => "clients with think time".to_string(),
            (false, Some(n)) => format!("closed-loop connections over {n} forwarded addresses"),
            (false, None) => "closed-loop clients".to_string(),
        },
        profile
            .phases
            .iter()
            .map(|(p, s)| format!("{} {s} s", phase_name(*p)))
            .collect::<Vec<_>>()
            .join(", "),
        ORIGIN_WORKERS as f64 / ORIGIN_SERVICE_TIME.as_secs_f64()
    );

    let crowd = Arc::new(Crowd {
        phase: Mutex::new(phases[0]),
        stats: Mutex::new(Default::default()),
        visited: Mutex::new(HashSet::new()),
        stop: AtomicBool::new(false),
        limit_max: AtomicU64::new(0),
    });
    let zipf = Arc::new(Zipf::new(page_count));
    let load = Load {
        think: profile.think,
        forwarded: profile.forwarded,
    };

    let warmed = crowd_rt.block_on(warm(kagami_addr, &site, &crowd));
    println!(
        "warm-up: {} of {page_count} pages stored in {:.1} s, {ORIGIN_WORKERS} at a time (not \
         measured)",
        warmed.0,
        warmed.1.as_secs_f64()
    );
    // The first phase's peaks in flight start from here, not from the warm-up's.
    origin.counters.peak.store(0, Ordering::Relaxed);
    origin.counters.settled_peak.store(0, Ordering::Relaxed);

    crowd_rt.block_on(async {
        // Samples the adaptive limit so each phase reports its highest, not only its last.
        let sampler = {
            let (crowd, stats) = (crowd.clone(), stats.clone());
            tokio::spawn(async move {
                while !crowd.stop.load(Ordering::Relaxed) {
                    if let Some(limit) = adaptive_limit(&stats) {
                        crowd.limit_max.fetch_max(limit, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let mut visitors = JoinSet::new();
        let mut since = (
            Instant::now(),
            origin.counters.requests.load(Ordering::Relaxed),
        );
        let grow = |visitors: &mut JoinSet<()>, target: usize| {
            while visitors.len() < target {
                let n = visitors.len();
                let visit = visitor(
                    n,
                    kagami_addr,
                    site.clone(),
                    zipf.clone(),
                    crowd.clone(),
                    load,
                );
                visitors.spawn(visit);
            }
        };
        for (i, &(phase, secs)) in profile.phases.iter().enumerate() {
            match phase {
                Phase::Outage => origin.down(),
                Phase::Recovery => origin.up().await,
                Phase::Ramp | Phase::Overloaded => {}
            }
            let started = Instant::now();
            let length = Duration::from_secs(secs);
            let mut settled = false;
            loop {
                // Ramp: 10 clients at first, linearly up to the peak; then the whole crowd.
                let share = match phase {
                    Phase::Ramp => (started.elapsed().as_secs_f64() / secs as f64).min(1.0),
                    _ => 1.0,
                };
                grow(
                    &mut visitors,
                    10 + (share * (peak_clients - 10) as f64) as usize,
                );
                if !settled && started.elapsed() >= SETTLE {
                    origin.counters.settled_peak.store(0, Ordering::Relaxed);
                    settled = true;
                }
                if started.elapsed() >= length {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let next = profile.phases.get(i + 1).map(|(p, _)| *p);
            close_phase(&crowd, &origin, &stats, &mut since, settled, next);
        }
        crowd.stop.store(true, Ordering::Relaxed);
        // Visitors finish their current request (bounded by their 10 s timeout), then stop.
        let _ = tokio::time::timeout(Duration::from_secs(12), async {
            while visitors.join_next().await.is_some() {}
        })
        .await;
        visitors.abort_all();
        sampler.abort();
    });

    let kagami_stats = stats.snapshot();
    kagami_rt.block_on(running.shutdown(Duration::from_secs(1)));
    report::report(
        &crowd,
        &phases,
        origin_cap,
        kagami_stats,
        profile.name,
        &json_path,
    );
    origin.down();
}

fn phase_name(phase: Phase) -> String {
    format!("{phase:?}").to_lowercase()
}

/// Visits every page once before the crowd comes, `ORIGIN_WORKERS` at a time (what the origin
/// takes at once, so that nothing queues), each warmer from an address of its own (127.2.0.x,
/// outside the crowd's). Returns how many pages were answered 200 and how long it took.
async fn warm(kagami: SocketAddr, site: &Arc<Site>, crowd: &Arc<Crowd>) -> (usize, Duration) {
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut warmers = JoinSet::new();
    for w in 0..ORIGIN_WORKERS {
        let (site, crowd, next) = (site.clone(), crowd.clone(), next.clone());
        warmers.spawn(async move {
            let from = IpAddr::V4(Ipv4Addr::new(127, 2, 0, w as u8 + 1));
            let mut sender = None;
            loop {
                let page = next.fetch_add(1, Ordering::Relaxed);
                if page >= site.pages.len() {
                    break;
                }
                // Two tries a page, each bounded, so a hiccup does not leave a page cold.
                for _ in 0..2 {
                    if sender.is_none() {
                        sender = connect(from, kagami).await;
                    }
                    let Some(conn) = sender.as_mut() else {
                        continue;
                    };
                    let request = Request::get(site.pages[page].0.as_str())
                        .header("host", "127.0.0.1")
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    let ok = tokio::time::timeout(Duration::from_secs(10), async {
                        let response = conn.send_request(request).await.ok()?;
                        let status = response.status();
                        response.into_body().collect().await.ok()?;
                        Some(status == StatusCode::OK)
                    })
                    .await;
                    match ok {
                        Ok(Some(true)) => {
                            crowd.visited.lock().unwrap().insert(page);
                            break;
                        }
                        Ok(Some(false)) => {}
                        _ => sender = None,
                    }
                }
            }
        });
    }
    while warmers.join_next().await.is_some() {}
    let stored = crowd.visited.lock().unwrap().len();
    (stored, started.elapsed())
}

/// Closes the current phase's origin figures (requests, peaks in flight, Kagami's adaptive limit,
/// duration) and moves the crowd on to `next`. `settled`: the phase lasted past `SETTLE`.
fn close_phase(
    crowd: &Crowd,
    origin: &FragileOrigin,
    kagami: &kagami::metrics::Stats,
    since: &mut (Instant, u64),
    settled: bool,
    next: Option<Phase>,
) {
    let c = &origin.counters;
    let requests = c.requests.load(Ordering::Relaxed);
    // The peak is taken at each arrival (counting what is already in flight), so a phase in
    // which nothing arrives, such as the outage, shows 0 rather than the previous phase's load.
    let peak = c.peak.swap(0, Ordering::Relaxed);
    let settled_peak = c.settled_peak.swap(0, Ordering::Relaxed);
    let mut phase = crowd.phase.lock().unwrap();
    {
        let mut stats = crowd.stats.lock().unwrap();
        let s = &mut stats[*phase as usize];
        s.origin_requests = requests - since.1;
        s.origin_peak = peak;
        s.origin_peak_settled = settled.then_some(settled_peak);
        s.adaptive_limit = adaptive_limit(kagami);
        let now = s.adaptive_limit.unwrap_or(0);
        s.adaptive_limit_max = Some(crowd.limit_max.swap(now, Ordering::Relaxed).max(now));
        s.seconds = since.0.elapsed().as_secs_f64();
    }
    if let Some(next) = next {
        *phase = next;
    }
    *since = (Instant::now(), requests);
}

/// Kagami's adaptive origin concurrency limit (the bench has one site), from its `Stats` gauge.
fn adaptive_limit(stats: &kagami::metrics::Stats) -> Option<u64> {
    stats.origin_limits.now().first().map(|(_, limit)| *limit)
}
