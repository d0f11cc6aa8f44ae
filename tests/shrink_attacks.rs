//! Attacks on the idle-connection shrink (`server::conn`): an HTTP/1 connection's hyper
//! connection ended between requests without closing the socket, and a new one started with the
//! next request's first bytes put back. Chunked bodies and `Expect: 100-continue` across a
//! rebuild, an HTTP/2 preface trickled in, the connection caps, and a TLS close_notify or half a
//! record in the shrunk wait. Raw sockets on 127.0.0.1, every wait bounded.
mod common;
#[path = "tls_support/pki.rs"]
mod pki;

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::raw::{connect, read_one_response, status_of, wait_for_close};
use common::recording::{Received, RecordingOrigin};
use common::{Kagami, Origin, Route};
use kagami::config::{Config, SiteConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tracing_subscriber::layer::SubscriberExt;

/// The header-read timeout, and so the watchdog's period: an idle connection is asked to shrink
/// one to two periods after its last answer.
const PERIOD: Duration = Duration::from_millis(300);
const LIMIT: Duration = Duration::from_secs(5);
const GET: &[u8] = b"GET /p HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
const SMUGGLED: &[u8] = b"GET /q HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

fn config(origin: &str, adjust: impl FnOnce(&mut Config)) -> Config {
    let site = SiteConfig::new("test", &["127.0.0.1"], origin).unwrap();
    let mut config = Config::new(vec!["127.0.0.1:0".parse().unwrap()], vec![site]);
    config.log.access = false;
    config.server.header_read_timeout = PERIOD;
    config.server.idle_timeout = Duration::from_secs(20);
    adjust(&mut config);
    config
}

/// Kagami in front of a scriptable origin with a cacheable `/p` and a `/q` that must never be
/// asked for.
async fn start(adjust: impl FnOnce(&mut Config)) -> (Origin, Kagami) {
    let origin = Origin::start().await;
    origin.route(
        "/p",
        Route::ok("page").header("cache-control", "max-age=60"),
    );
    origin.route("/q", Route::ok("smuggled"));
    let kagami = Kagami::start_config(config(&origin.url(), adjust)).await;
    (origin, kagami)
}

/// Kagami in front of an origin that keeps every request body it receives.
async fn start_recording() -> (RecordingOrigin, Kagami) {
    fn echo(received: &Received) -> String {
        format!("got {} bytes", received.body.len())
    }
    let origin = RecordingOrigin::start(echo).await;
    let kagami = Kagami::start_config(config(&origin.url(), |_| {})).await;
    (origin, kagami)
}

fn open(kagami: &Kagami) -> u64 {
    kagami.running.proxy.stats.snapshot().connections_open
}

async fn ask(stream: &mut TcpStream) -> String {
    stream.write_all(GET).await.unwrap();
    read_one_response(stream, LIMIT).await
}

/// Everything the server sends within `within` (or until it closes); an empty result and no
/// close is fine.
async fn read_for(stream: &mut TcpStream, within: Duration) -> String {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(within, stream.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

/// Reads until `needle` has come (over TCP or TLS), within [`LIMIT`].
async fn read_until<S: AsyncRead + Unpin>(stream: &mut S, needle: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(needle) {
        let read = tokio::time::timeout(LIMIT, stream.read(&mut buf)).await;
        let n = read.expect("answer in time").expect("read");
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// A chunked upload whose chunks come more than a watchdog period apart, after a shrink: the
/// origin gets it once and whole, and the connection goes on after it.
#[tokio::test]
async fn a_slow_chunked_upload_across_periods_reaches_the_origin_once_and_whole() {
    let (origin, kagami) = start_recording().await;
    let mut stream = connect(kagami.addr).await;
    let head = b"POST /up HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let warm = [&head[..], b"2\r\nhi\r\n0\r\n\r\n"].concat();
    stream.write_all(&warm).await.unwrap();
    assert_eq!(status_of(&read_one_response(&mut stream, LIMIT).await), 200);
    kagami.until_shrunk(1, LIMIT).await;

    // The head's first bytes go to Kagami's small buffer; each chunk after a period's pause.
    stream.write_all(head).await.unwrap();
    let chunks: [&[u8]; 4] = [
        b"5\r\nhello\r\n",
        b"6\r\n world\r\n",
        b"1\r\n!\r\n",
        b"0\r\n\r\n",
    ];
    for chunk in chunks {
        tokio::time::sleep(PERIOD + PERIOD / 2).await;
        stream.write_all(chunk).await.unwrap();
    }
    let answer = read_one_response(&mut stream, LIMIT).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert!(answer.ends_with("got 12 bytes"), "{answer}");
    let received = origin.received();
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(received[1].body.as_ref(), b"hello world!");
    assert_eq!(received[1].error, None);

    // Shrunk again after it, and the connection still answers.
    kagami.until_shrunk(2, LIMIT).await;
    stream.write_all(&warm).await.unwrap();
    assert_eq!(status_of(&read_one_response(&mut stream, LIMIT).await), 200);
    assert_eq!(origin.received().len(), 3);
    assert_eq!(kagami.running.proxy.stats.snapshot().connections_total, 1);
}

/// A chunked body on a request answered from the cache (so not read): its rest, a chunk that
/// looks like a request and the last chunk, comes periods later. It is never read as a request
/// of its own, and nothing is answered for it.
#[tokio::test]
async fn a_late_chunked_tail_is_never_read_as_a_request_after_a_shrink() {
    let (origin, kagami) = start(|_| {}).await;
    for tail_only in [false, true] {
        let mut stream = connect(kagami.addr).await;
        ask(&mut stream).await;
        // The chunked request is read by a rebuilt hyper connection.
        kagami.until_shrunk(kagami.shrunk() + 1, LIMIT).await;
        let mut head =
            b"GET /p HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let tail = match tail_only {
            // The whole body but its end: the end alone would be a bad request line.
            true => {
                head.extend_from_slice(format!("{:x}\r\n", SMUGGLED.len()).as_bytes());
                head.extend_from_slice(SMUGGLED);
                head.extend_from_slice(b"\r\n");
                b"0\r\n\r\n".to_vec()
            }
            false => {
                head.extend_from_slice(format!("{:x}\r\n", SMUGGLED.len()).as_bytes());
                [SMUGGLED, b"\r\n0\r\n\r\n"].concat()
            }
        };
        stream.write_all(&head).await.unwrap();
        let answer = read_until(&mut stream, "page").await;
        assert_eq!(status_of(&answer), 200, "{answer}");
        tokio::time::sleep(4 * PERIOD).await;
        let _ = stream.write_all(&tail).await;
        let rest = read_for(&mut stream, 2 * PERIOD).await;
        assert!(!rest.contains("HTTP/1.1"), "the tail was answered: {rest}");
        assert_eq!(origin.hits("/q"), 0, "the body reached the origin: {rest}");
        // hyper gives up a connection whose request body it did not read: no rebuild after it.
        until_open(&kagami, 0).await;
    }
}

/// `Expect: 100-continue` on an upload: the client waits for the 100, then a watchdog period
/// more, before the body. The origin gets exactly that body, once.
#[tokio::test]
async fn an_upload_waiting_for_100_continue_across_a_period_is_forwarded_whole() {
    let (origin, kagami) = start_recording().await;
    let mut stream = connect(kagami.addr).await;
    let warm = b"POST /up HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\nhi";
    stream.write_all(warm).await.unwrap();
    assert_eq!(status_of(&read_one_response(&mut stream, LIMIT).await), 200);
    kagami.until_shrunk(1, LIMIT).await;

    let head = "POST /up HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\
                Expect: 100-continue\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let continued = read_until(&mut stream, "\r\n\r\n").await;
    assert!(continued.starts_with("HTTP/1.1 100 "), "{continued}");
    tokio::time::sleep(2 * PERIOD).await;
    stream.write_all(b"hello").await.unwrap();
    let answer = read_one_response(&mut stream, LIMIT).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert!(answer.ends_with("got 5 bytes"), "{answer}");
    let received = origin.received();
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(received[1].body.as_ref(), b"hello");
}

/// A client that sends `Expect: 100-continue` and then, instead of the body, a request: on a
/// cache hit (body never asked for) and on an upload (body waited for), across periods. The
/// declared body's bytes never reach the origin as a request.
#[tokio::test]
async fn a_request_sent_instead_of_an_expected_body_is_never_smuggled() {
    let (origin, kagami) = start(|_| {}).await;
    for method in ["GET", "POST"] {
        let mut stream = connect(kagami.addr).await;
        ask(&mut stream).await;
        kagami.until_shrunk(kagami.shrunk() + 1, LIMIT).await;
        let head = format!(
            "{method} /p HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\
             Expect: 100-continue\r\n\r\n",
            SMUGGLED.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        if method == "GET" {
            let answer = read_until(&mut stream, "page").await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        }
        tokio::time::sleep(4 * PERIOD).await;
        let _ = stream.write_all(SMUGGLED).await;
        let rest = read_for(&mut stream, 3 * PERIOD).await;
        assert!(!rest.contains("smuggled"), "{method}: {rest}");
        assert_eq!(origin.hits("/q"), 0, "{method}: {rest}");
    }
    // The upload's declared body, the request-like bytes, went to the origin as its body.
    assert_eq!(origin.log().last(), Some(&("POST".into(), "/p".into())));
}

/// Writes to `inner`, except that the first bytes, the HTTP/2 preface the test already sent by
/// hand, are checked and dropped: the h2 client sends the preface itself.
struct PrefaceSent {
    inner: TcpStream,
    skip: &'static [u8],
}

impl AsyncRead for PrefaceSent {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PrefaceSent {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if !self.skip.is_empty() {
            let n = self.skip.len().min(data.len());
            assert_eq!(&data[..n], &self.skip[..n], "the h2 client's preface");
            self.skip = &self.skip[n..];
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The HTTP/2 preface sent a byte at a time, then a real h2 client on the same socket: it is
/// answered, again after idle periods, and an HTTP/2 connection is never shrunk.
#[tokio::test]
async fn an_http2_preface_trickled_in_byte_by_byte_is_served_and_never_shrunk() {
    let (_origin, kagami) = start(|c| c.server.header_read_timeout = Duration::from_secs(1)).await;
    let preface: &'static [u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut stream = connect(kagami.addr).await;
    for byte in preface {
        stream.write_all(&[*byte]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let io = PrefaceSent {
        inner: stream,
        skip: preface,
    };
    let (client, connection) = tokio::time::timeout(LIMIT, h2::client::handshake(io))
        .await
        .expect("handshake in time")
        .expect("handshake");
    tokio::spawn(connection);
    for round in 0..2 {
        let mut client = client.clone().ready().await.unwrap();
        let request = http::Request::get("http://127.0.0.1/p").body(()).unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let response = tokio::time::timeout(LIMIT, response)
            .await
            .expect("answer in time")
            .unwrap();
        assert_eq!(response.status(), 200, "round {round}");
        let mut body = response.into_body();
        let mut got = Vec::new();
        while let Some(data) = tokio::time::timeout(LIMIT, body.data()).await.unwrap() {
            let data = data.unwrap();
            let _ = body.flow_control().release_capacity(data.len());
            got.extend_from_slice(&data);
        }
        assert_eq!(got, b"page", "round {round}");
        // Idle for three periods of the watchdog: an HTTP/1 connection would be shrunk.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    assert_eq!(kagami.shrunk(), 0);
    assert_eq!(kagami.running.proxy.stats.snapshot().connections_total, 1);
}

/// HTTP/1 request lines that begin like the HTTP/2 preface get a 4xx at once: never a wait for
/// the rest of a preface, and never the origin (PRI is no method, RFC 9113 §11.6).
#[tokio::test]
async fn http1_requests_that_start_with_pri_are_refused_not_left_hanging() {
    let (origin, kagami) = start(|_| {}).await;
    let lines: [&[u8]; 3] = [
        b"PRI /q HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"PRI * HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
    ];
    for line in lines {
        let mut stream = connect(kagami.addr).await;
        stream.write_all(line).await.unwrap();
        let started = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // Until the first answer head, or the close.
        while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
            let read = tokio::time::timeout(LIMIT / 2, stream.read(&mut buf)).await;
            let n = read.expect("an answer or a close, at once").unwrap_or(0);
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let got = String::from_utf8_lossy(&got);
        let what = String::from_utf8_lossy(line);
        assert!(
            started.elapsed() < PERIOD,
            "{what:?}: {:?}",
            started.elapsed()
        );
        assert!(!got.is_empty(), "{what:?}: closed without an answer");
        assert!((400..500).contains(&status_of(&got)), "{what:?}: {got}");
    }
    assert_eq!(origin.total(), 0, "{:?}", origin.log());
}

/// The per-client connection cap counts a shrunk connection once: with two shrunk connections
/// open, a third from the same address is refused; both still answer; closed, the count goes
/// back to zero and a new connection is taken.
#[tokio::test]
async fn shrunk_connections_count_once_against_the_per_client_cap() {
    let (_origin, kagami) = start(|c| c.server.max_connections_per_client = 2).await;
    let mut first = connect(kagami.addr).await;
    let mut second = connect(kagami.addr).await;
    for stream in [&mut first, &mut second] {
        assert_eq!(status_of(&ask(stream).await), 200);
    }
    kagami.until_shrunk(2, LIMIT).await;
    // Shrunk again each (a rebuilt connection may not take a second place).
    for stream in [&mut first, &mut second] {
        assert_eq!(status_of(&ask(stream).await), 200);
    }
    kagami.until_shrunk(4, LIMIT).await;
    assert_eq!(open(&kagami), 2);

    let mut third = connect(kagami.addr).await;
    let _ = third.write_all(GET).await;
    let (_, refused) = wait_for_close(&mut third, Instant::now(), LIMIT).await;
    assert!(
        refused.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&refused)
    );
    for stream in [&mut first, &mut second] {
        assert_eq!(status_of(&ask(stream).await), 200);
    }
    drop((first, second, third));
    until_open(&kagami, 0).await;
    let mut again = connect(kagami.addr).await;
    assert_eq!(status_of(&ask(&mut again).await), 200);
}

/// The global cap too: with two shrunk connections open a third waits, and is taken when one
/// of them closes; the count goes back to zero after.
#[tokio::test]
async fn shrunk_connections_count_once_against_the_connection_cap() {
    let (_origin, kagami) = start(|c| c.server.max_connections = 2).await;
    let mut first = connect(kagami.addr).await;
    let mut second = connect(kagami.addr).await;
    for round in 1..=2 {
        for stream in [&mut first, &mut second] {
            assert_eq!(status_of(&ask(stream).await), 200);
        }
        kagami.until_shrunk(2 * round, LIMIT).await;
    }
    let mut third = connect(kagami.addr).await;
    third.write_all(GET).await.unwrap();
    let early = read_for(&mut third, 2 * PERIOD).await;
    assert!(early.is_empty(), "the third was answered: {early}");
    assert_eq!(open(&kagami), 2);
    drop(first);
    let answered = read_one_response(&mut third, LIMIT).await;
    assert_eq!(status_of(&answered), 200, "{answered}");
    assert_eq!(status_of(&ask(&mut second).await), 200);
    drop((second, third));
    until_open(&kagami, 0).await;
}

async fn until_open(kagami: &Kagami, count: u64) {
    let started = Instant::now();
    while open(kagami) != count {
        assert!(
            started.elapsed() < LIMIT,
            "{} connections still counted open",
            open(kagami)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kagami with one HTTPS site `www.a.test` (a test CA's certificate), a short idle timeout, and
/// a TLS client config trusting that CA.
async fn start_tls() -> (tempfile::TempDir, Origin, Kagami, rustls::ClientConfig) {
    let origin = Origin::start().await;
    origin.route("/", Route::ok("home").header("cache-control", "max-age=60"));
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::Ca::new("Kagami test CA");
    ca.leaf(&["www.a.test"]).write(dir.path(), "a");
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nlisten_tls = [\"127.0.0.1:0\"]\n\
         header_read_timeout = \"300ms\"\nidle_timeout = \"{}s\"\n[log]\naccess = false\n\
         [[site]]\nname = \"a\"\nhosts = [\"www.a.test\"]\norigin = \"{}\"\n\
         tls_cert = \"a.pem\"\ntls_key = \"a.key\"\n",
        TLS_IDLE.as_secs(),
        origin.url()
    );
    let path = dir.path().join("kagami.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();
    let running = kagami::server::start(&config).await.unwrap();
    let addr = running.tls_addrs[0];
    let mut client = ca.rustls_client();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let kagami = Kagami {
        running,
        addr,
        client: reqwest::Client::new(),
    };
    (dir, origin, kagami, client)
}

const TLS_IDLE: Duration = Duration::from_secs(4);
const HOME: &[u8] = b"GET / HTTP/1.1\r\nHost: www.a.test\r\n\r\n";
type TlsClient = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS connection that has asked for the home page once and been shrunk since.
async fn shrunk_tls(kagami: &Kagami, client: &rustls::ClientConfig) -> TlsClient {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client.clone()));
    let name = rustls_pki_types::ServerName::try_from("www.a.test").unwrap();
    let tcp = connect(kagami.addr).await;
    let mut tls = tokio::time::timeout(LIMIT, connector.connect(name, tcp))
        .await
        .expect("handshake in time")
        .unwrap();
    let before = kagami.shrunk();
    tls.write_all(HOME).await.unwrap();
    read_until(&mut tls, "home").await;
    kagami.until_shrunk(before + 1, LIMIT).await;
    tls
}

/// A client's close_notify while the connection waits shrunk (with the TCP connection left
/// open, and with it closed too): Kagami closes at once, not at the idle timeout, and counts
/// the connection closed.
#[tokio::test]
async fn a_close_notify_in_the_shrunk_wait_closes_the_connection_at_once() {
    // The test's runtime is on this thread, Kagami's connection tasks too: their events come here.
    let loud = Arc::new(AtomicUsize::new(0));
    let _logs = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(CountLoud(loud.clone())),
    );
    let (_dir, _origin, kagami, client) = start_tls().await;
    for with_fin in [false, true] {
        let mut tls = shrunk_tls(&kagami, &client).await;
        let started = Instant::now();
        tls.get_mut().1.send_close_notify();
        tls.flush().await.unwrap();
        if with_fin {
            let _ = tls.get_mut().0.shutdown().await;
        }
        let mut rest = Vec::new();
        let read = tokio::time::timeout(TLS_IDLE / 2, tls.read_to_end(&mut rest)).await;
        assert!(matches!(read, Ok(Ok(0))), "fin {with_fin}: {read:?}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        until_open(&kagami, 0).await;
    }
    assert_eq!(
        loud.load(Ordering::SeqCst),
        0,
        "warn or error events were logged"
    );
}

/// Counts the events at warn level or louder.
struct CountLoud(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountLoud {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() <= tracing::Level::WARN {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Half a TLS record in the shrunk wait: with the rest soon after, the request in it is
/// answered on the same connection; left half, the connection is closed by the idle timeout at
/// the latest, never held longer.
#[tokio::test]
async fn half_a_tls_record_in_the_shrunk_wait_is_waited_for_then_cut_off() {
    let (_dir, origin, kagami, client) = start_tls().await;
    for complete in [true, false] {
        let mut tls = shrunk_tls(&kagami, &client).await;
        // The request sealed into one record by hand, then written to the socket in halves.
        let (tcp, session) = tls.get_mut();
        std::io::Write::write_all(&mut session.writer(), HOME).unwrap();
        let mut record = Vec::new();
        while session.wants_write() {
            session.write_tls(&mut record).unwrap();
        }
        let half = record.len() / 2;
        tcp.write_all(&record[..half]).await.unwrap();
        let started = Instant::now();
        if complete {
            tokio::time::sleep(PERIOD / 2).await;
            tcp.write_all(&record[half..]).await.unwrap();
            let again = read_until(&mut tls, "home").await;
            assert!(again.starts_with("HTTP/1.1 200"), "{again}");
            continue;
        }
        let mut rest = Vec::new();
        let read = tokio::time::timeout(TLS_IDLE + LIMIT, tls.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "still open after {:?}", started.elapsed());
        assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
        let after = started.elapsed();
        assert!(after < TLS_IDLE + 3 * PERIOD, "{after:?}");
    }
    assert_eq!(origin.hits("/"), 1, "one fill, the rest hits");
    until_open(&kagami, 0).await;
}
