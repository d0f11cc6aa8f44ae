//! Shared test fixtures: a scriptable origin (a real hyper server on 127.0.0.1:0) and a real
//! Kagami in front of it, talked to over real TCP.
#![allow(dead_code)]

pub mod admin;
pub mod raw;
pub mod recording;
pub mod wire;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinSet;

use kagami::config::{Config, SiteConfig};
use kagami::server::Running;

type OriginBody = BoxBody<Bytes, std::io::Error>;

/// One scripted answer of the test origin.
#[derive(Clone, Debug)]
pub struct Route {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub delay: Duration,
    /// Send `Content-Length` for the whole body, then only half of it, then drop the connection.
    pub truncate: bool,
}

impl Route {
    pub fn ok(body: impl Into<Bytes>) -> Route {
        Route {
            status: 200,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
            truncate: false,
        }
    }
    pub fn status(mut self, status: u16) -> Route {
        self.status = status;
        self
    }
    pub fn header(mut self, name: &str, value: &str) -> Route {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    pub fn delay(mut self, delay: Duration) -> Route {
        self.delay = delay;
        self
    }
    pub fn truncated(mut self) -> Route {
        self.truncate = true;
        self
    }
    fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    routes: Mutex<HashMap<String, Route>>,
    hits: Mutex<HashMap<String, usize>>,
    requests: Mutex<Vec<(String, String, HeaderMap)>>,
    total: AtomicUsize,
    not_modified: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// When set, every route answers with this status (an origin in trouble).
    fail_with: Mutex<Option<u16>>,
}

/// A scriptable origin. Routes are keyed by path and query; unknown paths get 404.
pub struct Origin {
    pub addr: SocketAddr,
    state: Arc<State>,
    tasks: Mutex<Option<JoinSet<()>>>,
}

impl Origin {
    pub async fn start() -> Origin {
        Origin::start_on("127.0.0.1:0".parse().unwrap(), Arc::new(State::default())).await
    }

    async fn start_on(addr: SocketAddr, state: Arc<State>) -> Origin {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(addr).unwrap();
        let listener = socket.listen(1024).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut tasks = JoinSet::new();
        tasks.spawn(accept(listener, state.clone()));
        Origin {
            addr,
            state,
            tasks: Mutex::new(Some(tasks)),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn route(&self, path: &str, route: Route) {
        self.state
            .routes
            .lock()
            .unwrap()
            .insert(path.to_string(), route);
    }

    /// Requests the origin received for `path` (304 answers included).
    pub fn hits(&self, path: &str) -> usize {
        self.state
            .hits
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    pub fn total(&self) -> usize {
        self.state.total.load(Ordering::SeqCst)
    }

    pub fn not_modified_count(&self) -> usize {
        self.state.not_modified.load(Ordering::SeqCst)
    }

    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// Headers of the last request for `path`.
    pub fn last_request_headers(&self, path: &str) -> Option<HeaderMap> {
        let requests = self.state.requests.lock().unwrap();
        requests
            .iter()
            .rev()
            .find(|(_, p, _)| p == path)
            .map(|(_, _, h)| h.clone())
    }

    /// Methods and paths in arrival order.
    pub fn log(&self) -> Vec<(String, String)> {
        let requests = self.state.requests.lock().unwrap();
        requests
            .iter()
            .map(|(m, p, _)| (m.clone(), p.clone()))
            .collect()
    }

    /// Every request is answered with `status` until `recover`.
    pub fn fail_with(&self, status: u16) {
        *self.state.fail_with.lock().unwrap() = Some(status);
    }

    pub fn recover(&self) {
        *self.state.fail_with.lock().unwrap() = None;
    }

    /// Kills the origin: the listener closes and every open connection is dropped, so new
    /// connections are refused.
    pub fn kill(&self) {
        if let Some(mut tasks) = self.tasks.lock().unwrap().take() {
            tasks.abort_all();
        }
    }

    /// Starts the origin again on the same port with the same routes and counters.
    pub async fn restart(&self) {
        self.kill();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let again = Origin::start_on(self.addr, self.state.clone()).await;
        let tasks = again.tasks.lock().unwrap().take();
        *self.tasks.lock().unwrap() = tasks;
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn accept(listener: TcpListener, state: Arc<State>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| answer(state.clone(), request));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<OriginBody>, Infallible> {
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let method = request.method().to_string();
    let headers = request.headers().clone();
    // Drain a request body so pass-through uploads complete.
    let _ = request.into_body().collect().await;

    state.total.fetch_add(1, Ordering::SeqCst);
    *state.hits.lock().unwrap().entry(path.clone()).or_insert(0) += 1;
    state
        .requests
        .lock()
        .unwrap()
        .push((method, path.clone(), headers.clone()));
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let route = state.routes.lock().unwrap().get(&path).cloned();
    let fail_with = *state.fail_with.lock().unwrap();
    let response = build(&state, route, fail_with, &headers).await;
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    Ok(response)
}

async fn build(
    state: &State,
    route: Option<Route>,
    fail_with: Option<u16>,
    request: &HeaderMap,
) -> Response<OriginBody> {
    if let Some(status) = fail_with {
        return plain(status, Vec::new(), Bytes::from("origin failure\n"));
    }
    let Some(route) = route else {
        return plain(404, Vec::new(), Bytes::from("no such test route\n"));
    };
    if !route.delay.is_zero() {
        tokio::time::sleep(route.delay).await;
    }
    let etag_matches = matches!(
        (request.get("if-none-match").and_then(|v| v.to_str().ok()), route.header_value("etag")),
        (Some(a), Some(b)) if a == b
    );
    let date_matches = !request.contains_key("if-none-match")
        && matches!(
            (request.get("if-modified-since").and_then(|v| v.to_str().ok()), route.header_value("last-modified")),
            (Some(a), Some(b)) if a == b
        );
    if route.status == 200 && (etag_matches || date_matches) {
        state.not_modified.fetch_add(1, Ordering::SeqCst);
        return plain(304, route.headers.clone(), Bytes::new());
    }
    if route.truncate {
        let half = route.body.slice(..route.body.len() / 2);
        // Let the head and the first half reach the wire before the connection is cut.
        let cut = stream::once(async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err(std::io::Error::other("cut"))
        });
        let frames = stream::iter(vec![Ok(Frame::data(half))]).chain(cut);
        let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
        *response.status_mut() = StatusCode::from_u16(route.status).unwrap();
        set_headers(response.headers_mut(), &route.headers);
        response
            .headers_mut()
            .insert("content-length", HeaderValue::from(route.body.len()));
        return response;
    }
    plain(route.status, route.headers, route.body)
}

/// A bare origin on 127.0.0.1 of which every request is answered by `handler`, over HTTP/1;
/// for answers the scriptable [`Origin`] cannot give.
pub async fn spawn_origin<F, Fut, B>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let answer = handler(request);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn set_headers(map: &mut HeaderMap, headers: &[(String, String)]) {
    for (name, value) in headers {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
}

fn plain(status: u16, headers: Vec<(String, String)>, body: Bytes) -> Response<OriginBody> {
    let mut response = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    set_headers(response.headers_mut(), &headers);
    response
}

/// Deterministic, incompressible-looking bytes (xorshift from `seed`): bodies whose every
/// offset differs, so a misplaced or repeated piece shows.
pub fn payload(len: usize, seed: u32) -> Bytes {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 7) as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// An HTTP/2 client (prior knowledge, plain TCP) to `addr` whose streams receive nothing
/// (a flow-control window of 0: a reader that never reads), ready for a request, and the task
/// driving its connection.
pub async fn h2_zero_window(
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    (client.ready().await.unwrap(), driver)
}

/// Sends `request` (no body) on an HTTP/2 connection and waits at most 5 s for its head.
pub async fn h2_answer(
    client: &mut h2::client::SendRequest<Bytes>,
    request: Request<()>,
) -> Response<h2::RecvStream> {
    let (response, _) = client.send_request(request, true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("an answer within 5 s")
        .unwrap()
}

/// A 200 the store may keep for ten minutes.
pub fn cacheable(body: impl Into<Bytes>) -> Route {
    Route::ok(body).header("cache-control", "max-age=600")
}

/// A real Kagami on 127.0.0.1:0 in front of one origin, for site "test" answering 127.0.0.1.
pub struct Kagami {
    pub running: Running,
    pub addr: SocketAddr,
    pub client: reqwest::Client,
}

impl Kagami {
    pub async fn start(origin: &str) -> Kagami {
        Kagami::start_with(origin, |_| {}).await
    }

    pub async fn start_with(origin: &str, adjust: impl FnOnce(&mut SiteConfig)) -> Kagami {
        let mut site = SiteConfig::new("test", &["127.0.0.1", "localhost"], origin).unwrap();
        adjust(&mut site);
        let mut config = Config::new(vec!["127.0.0.1:0".parse().unwrap()], vec![site]);
        config.log.access = false;
        Kagami::start_config(config).await
    }

    /// For large bodies: no rate limits, objects up to 16 MiB, a `memory` store and an
    /// `inflight` budget (a client's share is a quarter), and `idle_timeout` when given (also
    /// how long a held body may stall).
    pub async fn for_large_bodies(
        origin: &str,
        memory: u64,
        inflight: u64,
        idle_timeout: Option<Duration>,
    ) -> Kagami {
        let mut site = SiteConfig::new("test", &["127.0.0.1"], origin).unwrap();
        site.limit_hits = None;
        site.limit_misses = None;
        site.max_object_size = 16 << 20;
        let mut config = Config::new(vec!["127.0.0.1:0".parse().unwrap()], vec![site]);
        config.log.access = false;
        config.cache.memory = memory;
        config.cache.inflight_memory = Some(inflight);
        if let Some(idle) = idle_timeout {
            config.server.idle_timeout = idle;
        }
        Kagami::start_config(config).await
    }

    pub async fn start_config(config: Config) -> Kagami {
        let running = kagami::server::start(&config).await.unwrap();
        let addr = running.addr();
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Kagami {
            running,
            addr,
            client,
        }
    }

    /// Connections whose hyper buffers Kagami has given back so far (idle shrinks).
    pub fn shrunk(&self) -> u64 {
        self.running.proxy.stats.snapshot().connections_shrunk
    }

    /// Waits until Kagami has shrunk `count` connections in all, failing after `within`.
    pub async fn until_shrunk(&self, count: u64, within: Duration) {
        let started = std::time::Instant::now();
        while self.shrunk() < count {
            assert!(
                started.elapsed() < within,
                "only {} connections shrunk after {within:?}",
                self.shrunk()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.client.get(self.url(path))).await
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = tokio::time::timeout(Duration::from_secs(20), request.send())
            .await
            .expect("Kagami answered in time")
            .expect("request to Kagami succeeded");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.expect("complete body");
        Reply {
            status,
            headers,
            body,
        }
    }
}

/// A complete response from Kagami.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn cache_status(&self) -> &str {
        self.header("cache-status").unwrap_or("")
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn age(&self) -> Option<u64> {
        self.header("age").and_then(|v| v.parse().ok())
    }
}
