//! Load generation, plain HTTP or over TLS: one-off GETs (cache warming, hit checks), and timed
//! load with `wrk -t1` or the built-in hyper client, both pinned to the load CPU: keep-alive, or
//! one request per connection (handshake runs: full handshakes always with the built-in client,
//! whose resumption can be switched off; resumed ones with wrk, whose OpenSSL resumes).

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use http::header::{CONNECTION, HOST};
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::affinity;
use crate::tls::ClientTls;
use crate::Settings;

/// Hard cap on requests in one built-in load run (the run also stops at its deadline).
const MAX_REQUESTS_PER_RUN: u64 = 20_000_000;

/// Where the load goes: plain HTTP, or HTTPS with the built-in client's TLS settings.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub tls: Option<ClientTls>,
}

impl Endpoint {
    pub fn plain(addr: SocketAddr) -> Endpoint {
        Endpoint { addr, tls: None }
    }

    /// The Host header: the certificate's name over TLS (it must match SNI, or Kagami
    /// answers 421), else the address.
    fn host(&self) -> String {
        match &self.tls {
            Some(_) => format!("{}:{}", crate::tls::NAME, self.addr.port()),
            None => self.addr.to_string(),
        }
    }

    fn url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.host())
    }
}

/// How a run loads the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `conns` keep-alive connections.
    KeepAlive,
    /// Every request on a new connection (`Connection: close`); over TLS, a new handshake,
    /// resuming the previous session or not.
    Handshakes { resume: bool },
}

/// What one measured load run saw, from the client side.
#[derive(Debug, Clone)]
pub struct LoadResult {
    pub tool: &'static str,
    pub requests: u64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: u64,
}

/// One GET on a fresh connection: status, headers and body length.
pub fn fetch_once(
    endpoint: &Endpoint,
    path: &str,
) -> anyhow::Result<(StatusCode, HeaderMap, usize)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            let mut sender = open(endpoint, false).await?;
            let request = Request::get(path)
                .header(HOST, endpoint.host())
                .body(Empty::<Bytes>::new())?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>((status, headers, body.len()))
        })
        .await
        .map_err(|_| anyhow!("GET {path} timed out"))?
    })
}

/// Connects to `endpoint` (TLS handshake included, resuming a session when `resume`) and
/// starts an HTTP/1.1 client connection on it.
async fn open(endpoint: &Endpoint, resume: bool) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(endpoint.addr).await?;
    stream.set_nodelay(true)?;
    let sender = match &endpoint.tls {
        None => {
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            sender
        }
        Some(tls) => {
            let config = if resume { &tls.resuming } else { &tls.fresh };
            let stream = TlsConnector::from(config.clone())
                .connect(tls.name.clone(), stream)
                .await?;
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            sender
        }
    };
    Ok(sender)
}

/// Loads `path` for `secs` as `kind` says, with wrk when available (and able to), else the
/// built-in client.
pub fn load(
    endpoint: &Endpoint,
    path: &str,
    kind: Kind,
    secs: u64,
    settings: &Settings,
) -> anyhow::Result<LoadResult> {
    match (&settings.wrk, kind) {
        // wrk's OpenSSL resumes the session on every reconnection: no full handshakes.
        (_, Kind::Handshakes { resume: false }) | (None, _) => {
            load_builtin(endpoint, path, kind, secs, settings)
        }
        (Some(wrk), _) => load_wrk(wrk, endpoint, path, kind, secs, settings),
    }
}

fn load_wrk(
    wrk: &Path,
    endpoint: &Endpoint,
    path: &str,
    kind: Kind,
    secs: u64,
    settings: &Settings,
) -> anyhow::Result<LoadResult> {
    let url = endpoint.url(path);
    let mut command = affinity::pinned_command(wrk, settings.load_cpu, settings.taskset.as_deref());
    if kind != Kind::KeepAlive {
        // wrk cannot turn keep-alive off; with this header the server closes every
        // connection after its answer and wrk reconnects.
        command.arg("-H").arg("Connection: close");
    }
    command
        .arg("-t1")
        .arg(format!("-c{}", settings.conns))
        .arg(format!("-d{secs}s"))
        .arg("--latency")
        .arg(&url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().context("spawning wrk")?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    // wrk stops by itself after `secs`; kill it if it has not a while later.
    let deadline = Instant::now() + Duration::from_secs(secs + 15);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("wrk did not finish within {} s; killed", secs + 15);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = reader.join().unwrap_or_default();
    let err_text = err_reader.join().unwrap_or_default();
    if !status.success() {
        bail!("wrk failed ({status}): {} {}", text.trim(), err_text.trim());
    }
    parse_wrk(&text).with_context(|| format!("parsing wrk output:\n{text}"))
}

/// Reads Requests/sec, the 50 % and 99 % latencies, the request count and errors from wrk.
fn parse_wrk(text: &str) -> anyhow::Result<LoadResult> {
    let mut rps = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut requests = 0;
    let mut errors = 0;
    for line in text.lines() {
        let line = line.trim();
        let mut words = line.split_whitespace();
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            rps = rest.trim().parse::<f64>().ok();
        } else if let Some(rest) = line.strip_prefix("50%") {
            p50 = parse_wrk_duration(rest.trim());
        } else if let Some(rest) = line.strip_prefix("99%") {
            p99 = parse_wrk_duration(rest.trim());
        } else if line.contains("requests in") {
            requests = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += rest.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            errors += rest
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1))
                .filter_map(|n| n.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    Ok(LoadResult {
        tool: "wrk",
        requests,
        rps: rps.ok_or_else(|| anyhow!("no Requests/sec line"))?,
        p50_us: p50.ok_or_else(|| anyhow!("no 50% latency line"))?,
        p99_us: p99.ok_or_else(|| anyhow!("no 99% latency line"))?,
        errors,
    })
}

/// wrk durations: `452.00us`, `1.23ms`, `2.01s`, `1.00m`; in microseconds.
fn parse_wrk_duration(text: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e6)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60e6)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3600e6)
    } else {
        return None;
    };
    number.trim().parse::<f64>().ok().map(|n| n * scale)
}

/// The built-in generator: `conns` HTTP/1.1 clients on a current-thread runtime in a thread
/// pinned to the load CPU, each on one keep-alive connection or a new connection per request;
/// each records the latency of every request (connection and handshake included).
fn load_builtin(
    endpoint: &Endpoint,
    path: &str,
    kind: Kind,
    secs: u64,
    settings: &Settings,
) -> anyhow::Result<LoadResult> {
    let conns = settings.conns;
    let cpu = settings.load_cpu;
    let path = path.to_string();
    let endpoint = endpoint.clone();
    let thread = std::thread::Builder::new()
        .name("loadgen".into())
        .spawn(move || {
            if let Some(cpu) = cpu {
                affinity::pin_current_thread(cpu);
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(builtin_run(endpoint, path, kind, secs, conns))
        })?;
    thread
        .join()
        .map_err(|_| anyhow!("load generator thread panicked"))?
}

async fn builtin_run(
    endpoint: Endpoint,
    path: String,
    kind: Kind,
    secs: u64,
    conns: usize,
) -> anyhow::Result<LoadResult> {
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let host = endpoint.host();
    let mut tasks = Vec::with_capacity(conns);
    for _ in 0..conns {
        let (endpoint, path, host, issued) =
            (endpoint.clone(), path.clone(), host.clone(), issued.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies: Vec<u32> = Vec::with_capacity(1 << 14);
            let mut errors = 0u64;
            let mut kept = match kind {
                Kind::KeepAlive => Some(open(&endpoint, false).await?),
                Kind::Handshakes { .. } => None,
            };
            while Instant::now() < deadline
                && issued.fetch_add(1, Ordering::Relaxed) < MAX_REQUESTS_PER_RUN
            {
                let mut request = Request::get(path.as_str())
                    .header(HOST, host.as_str())
                    .body(Empty::<Bytes>::new())?;
                if kind != Kind::KeepAlive {
                    request
                        .headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                let sent = Instant::now();
                let outcome = tokio::time::timeout_at(deadline.into(), async {
                    let mut fresh;
                    let sender = match (&mut kept, kind) {
                        (Some(sender), _) => sender,
                        (None, Kind::Handshakes { resume }) => {
                            fresh = open(&endpoint, resume).await?;
                            &mut fresh
                        }
                        (None, Kind::KeepAlive) => bail!("keep-alive connection missing"),
                    };
                    sender.ready().await?;
                    let response = sender.send_request(request).await?;
                    let ok = response.status() == StatusCode::OK;
                    response.into_body().collect().await?;
                    Ok::<_, anyhow::Error>(ok)
                })
                .await;
                match outcome {
                    // Requests cut off by the deadline are neither counted nor errors.
                    Err(_) => break,
                    Ok(Ok(true)) => {
                        latencies.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32)
                    }
                    Ok(Ok(false)) => errors += 1,
                    // A broken keep-alive connection ends this client; a failed new
                    // connection is retried after a pause (bounded by the deadline).
                    Ok(Err(_)) if kind == Kind::KeepAlive => {
                        errors += 1;
                        break;
                    }
                    Ok(Err(_)) => {
                        errors += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            Ok::<_, anyhow::Error>((latencies, errors))
        }));
    }
    let mut all: Vec<u32> = Vec::new();
    let mut errors = 0;
    for task in tasks {
        match task.await {
            Ok(Ok((latencies, e))) => {
                all.extend(latencies);
                errors += e;
            }
            Ok(Err(_)) | Err(_) => errors += 1,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    if all.is_empty() {
        bail!("no successful request ({errors} errors)");
    }
    all.sort_unstable();
    let percentile = |p: f64| f64::from(all[((all.len() - 1) as f64 * p).round() as usize]);
    Ok(LoadResult {
        tool: "builtin",
        requests: all.len() as u64,
        rps: all.len() as f64 / elapsed,
        p50_us: percentile(0.50),
        p99_us: percentile(0.99),
        errors,
    })
}
