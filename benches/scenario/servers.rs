//! The in-process servers: the origin, Kagami under test, and the bare hyper server (the
//! ceiling for any hyper-based proxy), each on its own OS thread and tokio runtime.

use std::convert::Infallible;
use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::{affinity, OBJECTS};

/// The tokio runtime a server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `new_current_thread`: everything on the thread that calls `block_on`.
    CurrentThread,
    /// `new_multi_thread` with one worker thread (how the Kagami binary's runtime works,
    /// scaled down to one core).
    OneWorker,
}

impl Flavor {
    pub fn describe(self) -> &'static str {
        match self {
            Flavor::CurrentThread => "current-thread tokio runtime",
            Flavor::OneWorker => "multi-thread tokio runtime, 1 worker thread",
        }
    }
}

/// Sends the bound address (or why there is none) once the server accepts connections.
type Ready = mpsc::Sender<anyhow::Result<SocketAddr>>;

/// A server on its own OS thread and tokio runtime, every thread pinned to `cpu` when given;
/// the kernel ids of its threads are kept for CPU accounting.
pub struct PinnedServer {
    pub addr: SocketAddr,
    tids: Arc<Mutex<Vec<i64>>>,
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

impl PinnedServer {
    /// Runs `serve(ready, stopped)` on a new runtime; `serve` reports its address on `ready`
    /// and returns after `stopped` fires.
    fn spawn<F, Fut>(
        name: &str,
        cpu: Option<usize>,
        flavor: Flavor,
        serve: F,
    ) -> anyhow::Result<PinnedServer>
    where
        F: FnOnce(Ready, oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let tids: Arc<Mutex<Vec<i64>>> = Arc::default();
        let record = {
            let tids = tids.clone();
            move || {
                if let Some(cpu) = cpu {
                    affinity::pin_current_thread(cpu);
                }
                if let (Some(tid), Ok(mut tids)) = (affinity::current_tid(), tids.lock()) {
                    tids.push(tid);
                }
            }
        };
        let mut builder = match flavor {
            Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread(),
            // Kagami's own runtime settings, for the bare server on this flavour too.
            Flavor::OneWorker => kagami::server::runtime::builder(Some(1)),
        };
        builder
            .thread_name(format!("{name}-worker"))
            .enable_all()
            .on_thread_start(record.clone());
        let runtime = builder.build()?;

        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<SocketAddr>>();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                // The thread that calls `block_on` (it does all the work on a current-thread
                // runtime; it only waits for the stop signal on a multi-thread one).
                record();
                runtime.block_on(serve(ready_tx, stopped));
                runtime.shutdown_timeout(Duration::from_secs(2));
            })?;
        let addr = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("{name} did not start within 10 s"))??;
        Ok(PinnedServer {
            addr,
            tids,
            stop,
            thread,
        })
    }

    /// CPU seconds used so far by the server's threads (those still alive).
    pub fn cpu_seconds(&self) -> Option<f64> {
        let tids = self.tids.lock().ok()?.clone();
        affinity::threads_cpu_seconds(&tids)
    }

    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// Accepts connections on `listener` until `stopped` fires, serving each with a plain hyper
/// HTTP/1.1 connection and `respond`.
async fn serve_http1<R>(listener: StdListener, mut stopped: oneshot::Receiver<()>, respond: R)
where
    R: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Clone + Send + 'static,
{
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("scenario: listener: {err}");
            return;
        }
    };
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = &mut stopped => break,
        };
        let _ = stream.set_nodelay(true);
        let respond = respond.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let response = respond(&request);
            async move { Ok::<_, Infallible>(response) }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A bound, non-blocking listener on 127.0.0.1 and its address.
fn bind_local() -> anyhow::Result<(StdListener, SocketAddr)> {
    let listener = StdListener::bind("127.0.0.1:0").context("bind 127.0.0.1")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// The bodies of `OBJECTS`, in order.
fn bodies() -> Arc<[Bytes; 2]> {
    Arc::new(OBJECTS.map(|(_, size)| Bytes::from(body_of(size))))
}

fn body_of(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

/// 200 with the body of object `index`, cacheable for an hour; hyper adds `Date` and
/// `Content-Length`. Unknown paths get 404.
fn object_response(bodies: &[Bytes; 2], index: Option<usize>) -> Response<Full<Bytes>> {
    match index {
        Some(i) => Response::builder()
            .header(CACHE_CONTROL, "max-age=3600")
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(Full::new(bodies[i].clone())),
        None => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(b"not found\n"))),
    }
    .expect("valid response")
}

fn object_index(path: &str) -> Option<usize> {
    OBJECTS.iter().position(|(p, _)| *p == path)
}

// ----------------------------------------------------------------------------------------
// The origin
// ----------------------------------------------------------------------------------------

/// A tiny origin (unpinned, current-thread runtime) counting its requests per object.
pub struct Origin {
    server: PinnedServer,
    counts: Arc<[AtomicU64; 2]>,
}

impl Origin {
    pub fn start() -> anyhow::Result<Origin> {
        let (listener, addr) = bind_local().context("origin")?;
        let counts: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let thread_counts = counts.clone();
        let bodies = bodies();
        let server = PinnedServer::spawn(
            "origin",
            None,
            Flavor::CurrentThread,
            move |ready, stopped| {
                let _ = ready.send(Ok(addr));
                serve_http1(listener, stopped, move |request| {
                    let index = object_index(request.uri().path());
                    if let Some(i) = index {
                        thread_counts[i].fetch_add(1, Ordering::Relaxed);
                    }
                    object_response(&bodies, index)
                })
            },
        )?;
        Ok(Origin { server, counts })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Requests the origin has answered for `path` so far.
    pub fn count(&self, path: &str) -> u64 {
        object_index(path).map_or(0, |i| self.counts[i].load(Ordering::Relaxed))
    }

    pub fn stop(self) {
        self.server.stop();
    }
}

// ----------------------------------------------------------------------------------------
// Bare hyper: the ceiling
// ----------------------------------------------------------------------------------------

/// A plain hyper 1 HTTP/1.1 server answering every request from memory with the object's
/// body and the origin's headers (Content-Type, Cache-Control; hyper adds Date and
/// Content-Length): no routing, cache, limits, timers or protocol detection. What a
/// hyper-based proxy on the same core could reach at best.
pub fn start_bare(cpu: Option<usize>, flavor: Flavor) -> anyhow::Result<PinnedServer> {
    let (listener, addr) = bind_local().context("bare hyper")?;
    let bodies = bodies();
    PinnedServer::spawn("bare", cpu, flavor, move |ready, stopped| {
        let _ = ready.send(Ok(addr));
        serve_http1(listener, stopped, move |request| {
            object_response(&bodies, object_index(request.uri().path()))
        })
    })
}

// ----------------------------------------------------------------------------------------
// Kagami under test
// ----------------------------------------------------------------------------------------

/// Kagami (`kagami::server::start`) proxying to `origin`, on a one-worker tokio runtime. With
/// `tls`, it also gets an HTTPS listener with that certificate for `tls::NAME`, and the
/// address returned is that listener's.
pub fn start_kagami(
    origin: SocketAddr,
    cpu: Option<usize>,
    tls: Option<Arc<rustls::sign::CertifiedKey>>,
) -> anyhow::Result<PinnedServer> {
    let mut site = kagami::config::SiteConfig::new(
        "bench",
        &["127.0.0.1", crate::tls::NAME],
        &format!("http://{origin}"),
    )?;
    // All load comes from one client address, far above the default per-client budgets
    // (which answer 429). The limiters stay on the path, with a budget that never runs out,
    // so their cost is measured; KAGAMI_BENCH_LIMITS=off removes them.
    let limits_off = std::env::var("KAGAMI_BENCH_LIMITS").is_ok_and(|v| v == "off");
    let unlimited = (!limits_off).then_some(kagami::limit::Rate {
        per_second: 1e9,
        burst: 1_000_000_000,
    });
    site.limit_hits = unlimited;
    site.limit_misses = unlimited;
    let mut config = kagami::config::Config::new(vec!["127.0.0.1:0".parse()?], vec![site]);
    config.limits.hits = unlimited;
    config.limits.misses = unlimited;
    config.log.access = false;
    let https = tls.is_some();
    if let Some(cert) = tls {
        config.sites[0].tls.cert = Some(cert);
        config.server.listen_tls = vec!["127.0.0.1:0".parse()?];
    }

    PinnedServer::spawn(
        "kagami",
        cpu,
        Flavor::OneWorker,
        move |ready, stopped| async move {
            let running = match kagami::server::start(&config).await {
                Ok(running) => running,
                Err(err) => {
                    let _ = ready.send(Err(anyhow!("kagami: {err}")));
                    return;
                }
            };
            let addr = match running.tls_addrs.first() {
                Some(tls) if https => *tls,
                _ => running.addr(),
            };
            let _ = ready.send(Ok(addr));
            let _ = stopped.await;
            running.shutdown(Duration::from_secs(1)).await;
        },
    )
}
