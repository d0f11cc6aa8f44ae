//! The surge bench's fragile origin: a few workers, each slow, counting what is in flight.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{Rng, ORIGIN_SERVICE_TIME, ORIGIN_WORKERS};

pub struct Site {
    pub pages: Vec<(String, Bytes, &'static str)>,
}

impl Site {
    pub fn new(count: usize, size: Option<usize>) -> Site {
        let mut rng = Rng(0x5eed);
        let pages = (0..count)
            .map(|i| {
                if let Some(size) = size {
                    (
                        format!("/pages/{i}.html"),
                        Bytes::from(vec![b'x'; size]),
                        "text/html; charset=utf-8",
                    )
                } else if i % 50 == 7 {
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
pub struct OriginCounters {
    pub requests: AtomicU64,
    in_flight: AtomicUsize,
    pub peak: AtomicUsize,
    /// The same peak, restarted `SETTLE` into each phase.
    pub settled_peak: AtomicUsize,
}

pub struct FragileOrigin {
    pub addr: SocketAddr,
    site: Arc<Site>,
    pub counters: Arc<OriginCounters>,
    workers: Arc<Semaphore>,
    accept: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl FragileOrigin {
    pub async fn start(site: Arc<Site>) -> Arc<FragileOrigin> {
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
    pub fn down(&self) {
        if let Some(task) = self.accept.lock().unwrap().take() {
            task.abort();
        }
    }

    pub async fn up(self: &Arc<Self>) {
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
        c.settled_peak.fetch_max(now, Ordering::Relaxed);
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
                // Short, so that at the crowd's peak the revalidations alone exceed what the
                // origin can do (300 pages / 5 s = 60 a second against 20).
                r.headers_mut()
                    .insert("cache-control", "max-age=5".parse().unwrap());
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
