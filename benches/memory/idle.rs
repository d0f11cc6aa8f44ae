//! The memory bench's idle part: many keep-alive connections to Kagami, plain and TLS 1.3,
//! left idle before and after one request each, and once Kagami has given hyper's buffers of
//! the idle connections back (`server::conn`); RSS per connection.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use http::Request;
use hyper_util::rt::TokioIo;

use super::{free_port, mib, rss_kib, started, stop_and_count, Bench, SETTLE};

/// How long after the requests the idle connections have surely been shrunk (see `measure_idle`).
const SHRINK_WAIT: Duration = Duration::from_secs(11);

/// One idle HTTP/1.1 client connection to Kagami, kept open by holding its sender (and the
/// task driving it).
struct Open {
    _sender: hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>,
    _driver: tokio::task::JoinHandle<()>,
}

/// Asks for the stored 1 KiB page over `io` and keeps the connection open.
async fn one_request<I>(io: I) -> Option<Open>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .ok()?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = Request::get("/o/0/0")
        .header("host", "localhost")
        .body(http_body_util::Empty::<Bytes>::new())
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .ok()?;
    (body.to_bytes().len() == 1024).then_some(Open {
        _sender: sender,
        _driver: driver,
    })
}

/// Opens `n` connections to `port` one after the other (TLS ones with their handshake done).
async fn connect_all<I, F, Fut>(n: usize, port: u16, wrap: F) -> Vec<I>
where
    F: Fn(tokio::net::TcpStream) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<I>>,
{
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let connected = match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(stream) => wrap(stream).await,
            Err(err) => Err(err),
        };
        match connected {
            Ok(stream) => streams.push(stream),
            Err(err) => {
                println!("connection {} failed: {err}", streams.len());
                break;
            }
        }
    }
    streams
}

/// What idle keep-alive connections hold: `connections` connections opened (over TLS: and
/// their handshake done) and left idle, RSS growth per connection; then one request (a stored
/// 1 KiB page) on each and idle again; then all closed.
pub async fn idle_connections(bench: &Bench, tls: Option<&Tls>) {
    let n = bench.connections;
    let tls_port = free_port();
    // Longer than the run, so that neither timeout closes a connection while it is measured.
    let mut server = format!(
        "header_read_timeout = \"60s\"\nidle_timeout = \"60s\"\n\
         max_connections = {}\nmax_connections_per_client = {}\n",
        n + 100,
        n + 100
    );
    if let Some(tls) = tls {
        server += &format!(
            "listen_tls = [\"127.0.0.1:{tls_port}\"]\n--site--\n\
             tls_cert = {:?}\ntls_key = {:?}\n",
            tls.cert, tls.key
        );
    }
    let (kagami, port, start) = started(bench, bench.memory_mib, 0, &server).await;
    let pid = kagami.0.id();
    let (before, after, shrunk, opened, ok) = match tls {
        None => {
            let streams = connect_all(n, port, |s| async { Ok(s) }).await;
            measure_idle(pid, streams).await
        }
        Some(tls) => {
            let streams = connect_all(n, tls_port, |s| {
                let name =
                    rustls::pki_types::ServerName::try_from("localhost").expect("a valid name");
                tls.connector.connect(name, s)
            })
            .await;
            measure_idle(pid, streams).await
        }
    };
    let closed = rss_kib(pid);
    let logged = stop_and_count(kagami);
    let per = |kib: u64| kib as f64 * 1024.0 / opened as f64;
    println!(
        "| {} | {opened} | {ok} | {:.0} MiB | {:.2} KiB | {:.2} KiB | {:.2} KiB ({}) | {:+.1} MiB | {} |",
        if tls.is_some() { "TLS 1.3" } else { "plain" },
        mib(start),
        per(before.saturating_sub(start)) / 1024.0,
        per(after.saturating_sub(start)) / 1024.0,
        per(shrunk.saturating_sub(start)) / 1024.0,
        logged.shrunk,
        mib(closed) - mib(start),
        logged.trims(),
    );
}

/// RSS with `streams` open and idle, then after one request on each, then once the idle
/// connections have been shrunk; closes them and waits for Kagami to settle. Returns the three
/// RSS figures and how many were open and served.
async fn measure_idle<I>(pid: u32, streams: Vec<I>) -> (u64, u64, u64, usize, usize)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let opened = streams.len().max(1);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before = rss_kib(pid);
    let served = stream::iter(streams)
        .map(one_request)
        .buffer_unordered(64)
        .filter_map(|open| async move { open })
        .collect::<Vec<_>>()
        .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = rss_kib(pid);
    // With both timeouts at 60 s the watchdog looks every `LONGEST_PERIOD` (5 s), and asks an
    // idle connection to shrink 5-10 s after its last answer.
    tokio::time::sleep(SHRINK_WAIT).await;
    let shrunk = rss_kib(pid);
    let ok = served.len();
    drop(served);
    tokio::time::sleep(SETTLE).await;
    (before, after, shrunk, opened, ok)
}

/// A certificate for `localhost` (Kagami's own `gen-cert` code) and a client that trusts it.
pub struct Tls {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    connector: tokio_rustls::TlsConnector,
}

impl Tls {
    pub fn new(dir: &std::path::Path) -> Tls {
        let (cert, key) = kagami::tls::gen::write_self_signed(&["localhost".into()], dir)
            .expect("a self-signed certificate");
        let mut roots = rustls::RootCertStore::empty();
        for der in kagami::tls::certs::read_chain(&cert).expect("the certificate just written") {
            roots.add(der).expect("a usable trust anchor");
        }
        let mut config = rustls::ClientConfig::builder_with_provider(kagami::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Tls {
            cert,
            key,
            connector: tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)),
        }
    }
}
