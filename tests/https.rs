//! HTTPS for several municipalities on one listener, over real TLS on 127.0.0.1 with
//! certificates made for each test: each name gets its own certificate (SNI), h2 by ALPN,
//! unknown or missing SNI fails the handshake, a Host other than the SNI name gets 421,
//! https_redirect and HSTS, a silent TLS client is dropped, and HTTPS origins are verified
//! against `origin_ca`.

mod common;
#[path = "tls_support/pki.rs"]
mod pki;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::{Origin, Route};
use kagami::config::Config;
use kagami::server::Running;
use pki::{Ca, Leaf};

const LIMIT: Duration = Duration::from_secs(10);

/// Kagami with sites `a` (www.a.test: certificate, HSTS, https_redirect), `b` (www.b.test and
/// *.city.test: another certificate) and `c` (www.c.test: no certificate), one plain and one
/// TLS listener, all in front of one scripted origin.
struct Setup {
    _dir: tempfile::TempDir,
    ca: Ca,
    a: Leaf,
    b: Leaf,
    origin: Origin,
    running: Running,
}

impl Setup {
    async fn start(server_extra: &str) -> Setup {
        let origin = Origin::start().await;
        origin.route("/", Route::ok("home").header("cache-control", "max-age=60"));
        origin.route("/page?q=1", Route::ok("page"));
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("Kagami test CA");
        let a = ca.leaf(&["www.a.test"]);
        let b = ca.leaf(&["www.b.test", "*.city.test"]);
        a.write(dir.path(), "a");
        b.write(dir.path(), "b");
        let url = origin.url();
        let text = format!(
            r#"
[server]
listen = ["127.0.0.1:0"]
listen_tls = ["127.0.0.1:0"]
{server_extra}
[log]
access = false

[[site]]
name = "a"
hosts = ["www.a.test", "127.0.0.1"]
origin = "{url}"
tls_cert = "a.pem"
tls_key = "a.key"
https_redirect = true
hsts = "365d"

[[site]]
name = "b"
hosts = ["www.b.test", "*.city.test"]
origin = "{url}"
tls_cert = "b.pem"
tls_key = "b.key"

[[site]]
name = "c"
hosts = ["www.c.test"]
origin = "{url}"
"#
        );
        let path = dir.path().join("kagami.toml");
        std::fs::write(&path, text).unwrap();
        let config = Config::load(&path).unwrap();
        let running = kagami::server::start(&config).await.unwrap();
        Setup {
            _dir: dir,
            ca,
            a,
            b,
            origin,
            running,
        }
    }

    fn plain_addr(&self) -> SocketAddr {
        self.running.addrs[0]
    }

    fn tls_addr(&self) -> SocketAddr {
        self.running.tls_addrs[0]
    }

    /// A client trusting only the test CA, every test name resolving to `addr`.
    fn client(&self, addr: SocketAddr, http1_only: bool) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .tls_built_in_root_certs(false)
            .add_root_certificate(self.ca.reqwest_cert())
            .tls_info(true);
        if http1_only {
            builder = builder.http1_only();
        }
        for name in [
            "www.a.test",
            "www.b.test",
            "x.city.test",
            "www.c.test",
            "www.d.test",
        ] {
            builder = builder.resolve(name, addr);
        }
        builder.build().unwrap()
    }

    /// A raw TLS connection to the HTTPS listener, with `sni` (or none).
    async fn connect(&self, sni: Option<&str>) -> std::io::Result<TlsClient> {
        let mut config = self.ca.rustls_client();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.enable_sni = sni.is_some();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = ServerName::try_from(sni.unwrap_or("www.a.test").to_string()).unwrap();
        let tcp = TcpStream::connect(self.tls_addr()).await?;
        tokio::time::timeout(LIMIT, connector.connect(name, tcp))
            .await
            .expect("handshake ended in time")
    }
}

type TlsClient = tokio_rustls::client::TlsStream<TcpStream>;

async fn send(request: reqwest::RequestBuilder) -> reqwest::Result<reqwest::Response> {
    tokio::time::timeout(LIMIT, request.send())
        .await
        .expect("answered in time")
}

fn peer_certificate(response: &reqwest::Response) -> Vec<u8> {
    let info = response.extensions().get::<reqwest::tls::TlsInfo>();
    info.and_then(|i| i.peer_certificate()).unwrap().to_vec()
}

/// Sends one raw HTTP/1.1 request with `host` on `stream` and returns the whole answer.
async fn raw_request(mut stream: TlsClient, host: &str) -> String {
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(LIMIT, stream.read_to_end(&mut answer)).await;
    // A peer that closes without close_notify is fine here: the answer is what counts.
    let _ = read.expect("answer in time");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn two_sites_on_one_listener_each_get_their_own_certificate() {
    let s = Setup::start("").await;
    let client = s.client(s.tls_addr(), false);
    for (url, leaf) in [
        ("https://www.a.test/", &s.a),
        ("https://www.b.test/", &s.b),
        ("https://x.city.test/", &s.b),
    ] {
        let response = send(client.get(url)).await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        assert_eq!(
            peer_certificate(&response),
            leaf.der,
            "{url}: wrong certificate"
        );
        assert!(response.headers().contains_key("cache-status"));
        assert_eq!(response.bytes().await.unwrap(), "home");
    }
    // The origin heard the HTTPS scheme from Kagami.
    let sent = s.origin.last_request_headers("/").unwrap();
    assert_eq!(sent["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn alpn_chooses_h2_or_http1_on_the_same_listener() {
    let s = Setup::start("").await;
    let h2 = send(s.client(s.tls_addr(), false).get("https://www.a.test/")).await;
    assert_eq!(h2.unwrap().version(), http::Version::HTTP_2);
    let h1 = send(s.client(s.tls_addr(), true).get("https://www.a.test/")).await;
    assert_eq!(h1.unwrap().version(), http::Version::HTTP_11);
}

#[tokio::test]
async fn unknown_or_missing_sni_fails_the_handshake() {
    let s = Setup::start("").await;
    // A name no site lists, and a site without a certificate: no certificate at all, never
    // another municipality's.
    for name in ["www.d.test", "www.c.test"] {
        let Err(err) = s.connect(Some(name)).await else {
            panic!("{name}: the handshake succeeded");
        };
        // Refused by Kagami (an alert), not by the client rejecting some other certificate.
        assert!(
            err.to_string().contains("received fatal alert"),
            "{name}: {err}"
        );
        let url = format!("https://{name}/");
        assert!(send(s.client(s.tls_addr(), false).get(url)).await.is_err());
    }
    let Err(err) = s.connect(None).await else {
        panic!("a handshake without SNI succeeded");
    };
    assert!(err.to_string().contains("received fatal alert"), "{err}");
    // The listener is still fine afterwards.
    assert!(s.connect(Some("www.a.test")).await.is_ok());
}

#[tokio::test]
async fn a_host_other_than_the_sni_name_gets_421() {
    let s = Setup::start("").await;
    let answer = raw_request(s.connect(Some("www.a.test")).await.unwrap(), "www.b.test").await;
    assert!(answer.starts_with("HTTP/1.1 421"), "{answer}");
    // Also when the other name is on the same certificate's site.
    let answer = raw_request(s.connect(Some("www.b.test")).await.unwrap(), "x.city.test").await;
    assert!(answer.starts_with("HTTP/1.1 421"), "{answer}");
    // Spellings of the SNI name itself (case, trailing dot, port) are the same host.
    for host in ["www.a.test", "WWW.A.Test.", "www.a.test:443"] {
        let answer = raw_request(s.connect(Some("www.a.test")).await.unwrap(), host).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{host}: {answer}");
    }
    // HTTP/2, as a browser reusing a connection for another name would send it.
    let mut config = s.ca.rustls_client();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(s.tls_addr()).await.unwrap();
    let name = ServerName::try_from("www.a.test").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (mut h2, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    for (authority, status) in [("www.b.test", 421), ("www.a.test", 200)] {
        let request = http::Request::get(format!("https://{authority}/"))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let response = tokio::time::timeout(LIMIT, h2.send_request(request)).await;
        assert_eq!(response.unwrap().unwrap().status(), status, "{authority}");
    }
    assert_eq!(s.origin.total(), 1, "a 421 never reaches the origin");
}

#[tokio::test]
async fn https_redirect_and_hsts() {
    let s = Setup::start("").await;
    let plain = s.client(s.plain_addr(), false);
    let response = send(plain.get("http://www.a.test/page?q=1")).await.unwrap();
    assert_eq!(response.status(), 301);
    let location = response.headers()["location"].to_str().unwrap();
    assert_eq!(location, "https://www.a.test/page?q=1");
    assert!(!response.headers().contains_key("strict-transport-security"));
    // ACME HTTP-01 challenges stay on plain HTTP (here: the origin's 404).
    let challenge = "http://www.a.test/.well-known/acme-challenge/token";
    let response = send(plain.get(challenge)).await.unwrap();
    assert_eq!(response.status(), 404);
    assert!(!response.headers().contains_key("strict-transport-security"));
    // IP-address hosts are never served over HTTPS, so they are not redirected either.
    let by_ip = format!("http://{}/", s.plain_addr());
    assert_eq!(send(plain.get(by_ip)).await.unwrap().status(), 200);
    // A site without https_redirect is served over plain HTTP.
    let response = send(plain.get("http://www.b.test/")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        s.origin.hits("/page?q=1"),
        0,
        "a redirect never reaches the origin"
    );

    let secure = s.client(s.tls_addr(), false);
    let response = send(secure.get("https://www.a.test/page?q=1"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["strict-transport-security"],
        "max-age=31536000"
    );
    let response = send(secure.get("https://www.b.test/")).await.unwrap();
    assert!(!response.headers().contains_key("strict-transport-security"));
}

#[tokio::test]
async fn a_silent_tls_client_is_dropped_after_the_header_read_timeout() {
    let s = Setup::start(r#"header_read_timeout = "300ms""#).await;
    let started = Instant::now();
    let mut tcp = TcpStream::connect(s.tls_addr()).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(LIMIT, tcp.read(&mut buf)).await;
    let read = read.expect("Kagami closed the silent connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_slow_head_over_tls_after_a_first_request_is_cut_off() {
    let s = Setup::start(r#"header_read_timeout = "300ms""#).await;
    let mut tls = s.connect(Some("www.a.test")).await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: www.a.test\r\n\r\n")
        .await
        .unwrap();
    assert!(read_home(&mut tls).await.starts_with("HTTP/1.1 200"));
    tls.write_all(b"GET / HTTP/1.1\r\nHost: www.a.test\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(LIMIT, tls.read(&mut buf)).await;
    let read = read.expect("Kagami closed the connection with the stalled head");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// Reads one answer of the small cached page `/` (until its body has come).
async fn read_home(tls: &mut TlsClient) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).ends_with("home") {
        let n = tokio::time::timeout(LIMIT, tls.read(&mut buf))
            .await
            .expect("the answer in time")
            .unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn an_idle_tls_connection_gives_its_buffers_back_and_answers_again() {
    // The watchdog's period is the header-read timeout: the shrink comes 0.3-0.6 s after.
    let s = Setup::start(r#"header_read_timeout = "300ms""#).await;
    let mut tls = s.connect(Some("www.a.test")).await.unwrap();
    let request = b"GET / HTTP/1.1\r\nHost: www.a.test\r\n\r\n";
    tls.write_all(request).await.unwrap();
    assert!(read_home(&mut tls).await.starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    while s.running.proxy.stats.snapshot().connections_shrunk == 0 {
        assert!(
            started.elapsed() < LIMIT,
            "the idle connection was never shrunk"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The next request, over the same TLS session, in two writes (two TLS records).
    tls.write_all(&request[..5]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    tls.write_all(&request[5..]).await.unwrap();
    let again = read_home(&mut tls).await;
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");
    assert!(again.contains("cache-status: kagami; hit"), "{again}");
    let stats = s.running.proxy.stats.snapshot();
    assert_eq!(stats.connections_total, 1, "one connection: {stats:?}");
    assert_eq!(s.origin.hits("/"), 1);
}

/// An HTTPS origin on 127.0.0.1 answering as `localhost` with `leaf`; records the SNI names
/// of completed handshakes.
async fn tls_origin(leaf: &Leaf) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let chain = vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(kagami::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let names = Arc::new(Mutex::new(Vec::new()));
    let seen = names.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(Ok(tls)) = tokio::time::timeout(LIMIT, acceptor.accept(tcp)).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().unwrap_or("-").to_string();
                seen.lock().unwrap().push(sni);
                let service = service_fn(|_request| async {
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(
                        "secure origin",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, names)
}

#[tokio::test]
async fn https_origins_are_verified_with_origin_ca() {
    let dir = tempfile::tempdir().unwrap();
    let private = Ca::new("Municipal private CA");
    let (origin, names) = tls_origin(&private.leaf(&["localhost"])).await;
    std::fs::write(dir.path().join("origin-ca.pem"), &private.pem).unwrap();
    let port = origin.port();
    let text = format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
[log]
access = false
[[site]]
name = "trusting"
hosts = ["trusting.test"]
origin = "https://localhost:{port}"
origin_ca = "origin-ca.pem"
[[site]]
name = "default-roots"
hosts = ["default.test"]
origin = "https://localhost:{port}"
"#
    );
    let path = dir.path().join("kagami.toml");
    std::fs::write(&path, text).unwrap();
    let running = kagami::server::start(&Config::load(&path).unwrap())
        .await
        .unwrap();
    let client = reqwest::Client::builder()
        .no_proxy()
        .resolve("trusting.test", running.addr())
        .resolve("default.test", running.addr())
        .build()
        .unwrap();
    let response = send(client.get("http://trusting.test/")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap(), "secure origin");
    assert_eq!(
        *names.lock().unwrap(),
        ["localhost"],
        "origin's name as SNI"
    );
    // Without origin_ca the private CA is not trusted: the origin is refused, never used.
    let response = send(client.get("http://default.test/")).await.unwrap();
    assert_eq!(response.status(), 503);
    let status = response.headers()["cache-status"].to_str().unwrap();
    assert!(status.contains("origin-unreachable"), "{status}");
    assert_eq!(names.lock().unwrap().len(), 1, "no handshake completed");
    running.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn answers_for_http_and_https_are_stored_apart_and_invalidated_together() {
    // The origin answers with the scheme Kagami told it, cacheable for a minute.
    let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = fetches.clone();
    let origin = common::spawn_origin(move |request: http::Request<hyper::body::Incoming>| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let proto = request.headers()["x-forwarded-proto"].to_str().unwrap();
            let mut response = http::Response::new(Full::new(Bytes::from(proto.to_string())));
            response.headers_mut().insert(
                "cache-control",
                http::HeaderValue::from_static("max-age=60"),
            );
            response
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("CA");
    ca.leaf(&["www.b.test"]).write(dir.path(), "b");
    let text = format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
listen_tls = ["127.0.0.1:0"]
[log]
access = false
[[site]]
name = "b"
hosts = ["www.b.test"]
origin = "http://{origin}"
tls_cert = "b.pem"
tls_key = "b.key"
"#
    );
    let path = dir.path().join("kagami.toml");
    std::fs::write(&path, text).unwrap();
    let running = kagami::server::start(&Config::load(&path).unwrap())
        .await
        .unwrap();
    let client = |addr| {
        reqwest::Client::builder()
            .no_proxy()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca.reqwest_cert())
            .resolve("www.b.test", addr)
            .build()
            .unwrap()
    };
    let (plain, secure) = (client(running.addrs[0]), client(running.tls_addrs[0]));
    let body = |response: reqwest::Response| async move { response.text().await.unwrap() };
    for _ in 0..2 {
        let http = send(plain.get("http://www.b.test/")).await.unwrap();
        assert_eq!(body(http).await, "http");
        let https = send(secure.get("https://www.b.test/")).await.unwrap();
        assert_eq!(body(https).await, "https");
    }
    assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 2);
    // A successful POST over plain HTTP invalidates the HTTPS copy too.
    let post = send(plain.post("http://www.b.test/")).await.unwrap();
    assert_eq!(post.status(), 200);
    let https = send(secure.get("https://www.b.test/")).await.unwrap();
    assert!(https.headers()["cache-status"]
        .to_str()
        .unwrap()
        .contains("fwd="));
    assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 4);
    running.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn returning_clients_resume_their_session() {
    let s = Setup::start("").await;
    let mut config = s.ca.rustls_client();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let connect = || async {
        let tcp = TcpStream::connect(s.tls_addr()).await.unwrap();
        let name = ServerName::try_from("www.a.test").unwrap();
        let connecting = connector.connect(name, tcp);
        tokio::time::timeout(LIMIT, connecting)
            .await
            .unwrap()
            .unwrap()
    };
    let first = connect().await;
    assert_eq!(
        first.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    // TLS 1.3 tickets arrive after the handshake: read an answer to receive them.
    assert!(raw_request(first, "www.a.test")
        .await
        .starts_with("HTTP/1.1 200"));
    let again = connect().await;
    assert_eq!(
        again.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    assert!(raw_request(again, "www.a.test")
        .await
        .starts_with("HTTP/1.1 200"));
}
