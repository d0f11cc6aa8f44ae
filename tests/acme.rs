//! ACME for real: Debian's `pebble` CA on 127.0.0.1 (with `pebble-challtestsrv` as its DNS,
//! answering every name with 127.0.0.1), Kagami with an `acme = true` site: the certificate is
//! issued over HTTP-01 through Kagami's plain listener and served over HTTPS live; a restart
//! on the same state_dir serves the same certificate with the CA gone (no new order); a
//! short-lived certificate is renewed while serving; an unreachable CA leaves the site on
//! plain HTTP.
//!
//! Without pebble on the machine the test fails when `CI` is set, and is skipped loudly
//! otherwise (`apt-get install pebble`).

mod common;
#[path = "tls_support/pki.rs"]
mod pki;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{Origin, Route};
use kagami::config::Config;
use kagami::server::Running;

const NAME: &str = "www.pref.okayama.example";
/// Issuance against pebble takes well under a second; this is the bound for a slow CI box.
const ISSUE_LIMIT: Duration = Duration::from_secs(30);

/// Kills the child processes however the test ends.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `name` on PATH, if it is installed.
fn installed(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Distinct free ports on 127.0.0.1 (all held at once, so they differ). Pebble and its DNS
/// need port numbers before they start, so they cannot be given port 0.
fn free_ports(tcp: usize) -> (Vec<u16>, u16) {
    let held: Vec<std::net::TcpListener> = (0..tcp)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let ports = held
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    (ports, udp.local_addr().unwrap().port())
}

/// Waits (bounded) until something accepts TCP connections on `port`.
async fn wait_listening(port: u16, what: &str, children: &mut Processes) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        for child in &mut children.0 {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{what} exited early: {status}");
            }
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Pebble {
    _processes: Processes,
    directory: String,
    management: u16,
    /// The CA pebble's own HTTPS listeners use (made here, as Debian ships no test certs).
    tls_ca: pki::Ca,
}

/// Starts pebble, validating HTTP-01 on `http_port` of whatever its DNS says (127.0.0.1).
/// `validity`: of the certificates it issues, in seconds (pebble's default is 5 years).
async fn start_pebble(dir: &Path, http_port: u16, pebble: &Path, validity: Option<u64>) -> Pebble {
    let (ports, dns) = free_ports(4);
    let (listen, management, tls_port, dns_management) = (ports[0], ports[1], ports[2], ports[3]);
    let tls_ca = pki::Ca::new("pebble listener CA (test)");
    let leaf = tls_ca.leaf(&["127.0.0.1", "localhost"]);
    leaf.write(dir, "pebble");
    let mut config = serde_json::json!({
        "pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.join("pebble.pem"),
            "privateKey": dir.join("pebble.key"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }
    });
    if let Some(seconds) = validity {
        config["pebble"]["certificateValidityPeriod"] = seconds.into();
    }
    let config_file = dir.join("pebble-config.json");
    std::fs::write(&config_file, config.to_string()).unwrap();
    let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
    let mut processes = Processes(Vec::new());
    // The DNS answers every A query with 127.0.0.1 and no AAAA, so that pebble's validation
    // authority only ever connects to Kagami on 127.0.0.1; its other listeners are off.
    let challtestsrv =
        installed("pebble-challtestsrv").expect("pebble-challtestsrv (package pebble)");
    processes.0.push(
        Command::new(challtestsrv)
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-management", &format!("127.0.0.1:{dns_management}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(log("dns.log"))
            .stderr(log("dns.err"))
            .spawn()
            .unwrap(),
    );
    processes.0.push(
        Command::new(pebble)
            .arg("-config")
            .arg(&config_file)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_VA_ALWAYS_VALID", "0")
            // Pebble rejects 5 % of nonces by default to exercise clients' retries; this test
            // is about issuance, not about that.
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdin(Stdio::null())
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .unwrap(),
    );
    wait_listening(dns_management, "pebble-challtestsrv", &mut processes).await;
    wait_listening(listen, "pebble", &mut processes).await;
    wait_listening(management, "pebble management", &mut processes).await;
    Pebble {
        _processes: processes,
        directory: format!("https://127.0.0.1:{listen}/dir"),
        management,
        tls_ca,
    }
}

impl Pebble {
    /// The root pebble signs issued certificates with (made afresh at each pebble start).
    async fn issuing_root(&self) -> CertificateDer<'static> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .add_root_certificate(self.tls_ca.reqwest_cert())
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let url = format!("https://127.0.0.1:{}/roots/0", self.management);
        let pem = client.get(url).send().await.unwrap().text().await.unwrap();
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM root")
    }
}

fn kagami_config(dir: &Path, http_port: u16, origin: &str, directory: &str) -> Config {
    let text = format!(
        r#"
[server]
listen = ["127.0.0.1:{http_port}"]
listen_tls = ["127.0.0.1:0"]
drain_timeout = "1s"
[log]
access = false

[[site]]
name = "okayama"
hosts = ["{NAME}"]
origin = "{origin}"
acme = true
https_redirect = true

[acme]
directory = "{directory}"
email = "ops@example.jp"
state_dir = "acme-state"
ca_bundle = "pebble-ca.pem"
"#
    );
    let path = dir.join("kagami.toml");
    std::fs::write(&path, &text).unwrap();
    Config::load(&path).unwrap()
}

/// A TLS handshake for `name` trusting only `root`, then one GET; the served certificate and
/// the body, or why not.
async fn fetch_https(
    addr: SocketAddr,
    name: &str,
    root: &CertificateDer<'static>,
) -> Result<(Vec<u8>, String), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(kagami::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    let mut tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(server_name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let served = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let request = format!("GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer))
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())?;
    Ok((served, String::from_utf8_lossy(&answer).into_owned()))
}

async fn plain_get(addr: SocketAddr) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET / HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// Pebble's path; without it, a failure in CI and a loud skip elsewhere.
fn pebble_or_skip() -> Option<PathBuf> {
    let found = installed("pebble");
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("pebble is not installed: `apt-get install -y pebble` (.ci/run does this)");
        }
        // Straight to stderr: libtest hides what `eprintln!` prints in a passing test.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED a tests/acme.rs test: pebble is not installed (apt-get install -y \
             pebble); CI runs it ***\n"
        );
    }
    found
}

/// Waits (bounded) until an HTTPS handshake for `name` trusting `root` works and, if `other_than`
/// is given, presents a certificate other than that one.
async fn wait_for_certificate(
    addr: SocketAddr,
    name: &str,
    root: &CertificateDer<'static>,
    other_than: Option<&[u8]>,
    log: &Path,
) -> (Vec<u8>, String) {
    let started = Instant::now();
    loop {
        let why = match fetch_https(addr, name, root).await {
            Ok((served, body)) if other_than != Some(served.as_slice()) => {
                eprintln!("certificate served after {:?}", started.elapsed());
                return (served, body);
            }
            Ok(_) => "still the old certificate".to_string(),
            Err(why) => why,
        };
        if started.elapsed() > ISSUE_LIMIT {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("no new certificate within {ISSUE_LIMIT:?}: {why}\npebble log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn serial(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.raw_serial_as_string()
}

/// Pebble (certificates valid `validity` seconds, or its default) and a Kagami whose ACME site
/// "okayama" uses it, in front of an origin answering `/` with `home`.
struct WithPebble {
    _origin: Origin,
    dir: tempfile::TempDir,
    _pebble: Pebble,
    root: CertificateDer<'static>,
    running: Running,
    tls_addr: SocketAddr,
    log: PathBuf,
}

async fn with_pebble(pebble_bin: &Path, validity: Option<u64>, home: &str) -> WithPebble {
    let origin = Origin::start().await;
    origin.route("/", Route::ok(home.to_string()));
    let dir = tempfile::tempdir().unwrap();
    let (ports, _) = free_ports(1);
    let pebble = start_pebble(dir.path(), ports[0], pebble_bin, validity).await;
    std::fs::write(dir.path().join("pebble-ca.pem"), &pebble.tls_ca.pem).unwrap();
    let root = pebble.issuing_root().await;
    let config = kagami_config(dir.path(), ports[0], &origin.url(), &pebble.directory);
    let running = kagami::server::start(&config).await.unwrap();
    let tls_addr = running.tls_addrs[0];
    let log = dir.path().join("pebble.log");
    WithPebble {
        _origin: origin,
        dir,
        _pebble: pebble,
        root,
        running,
        tls_addr,
        log,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_is_issued_by_pebble_and_reused_after_a_restart() {
    let Some(pebble_bin) = pebble_or_skip() else {
        return;
    };
    let origin = Origin::start().await;
    origin.route("/", Route::ok("okayama home"));
    let dir = tempfile::tempdir().unwrap();
    let (ports, _) = free_ports(1);
    let http_port = ports[0];
    let pebble = start_pebble(dir.path(), http_port, &pebble_bin, None).await;
    std::fs::write(dir.path().join("pebble-ca.pem"), &pebble.tls_ca.pem).unwrap();
    let root = pebble.issuing_root().await;
    let config = kagami_config(dir.path(), http_port, &origin.url(), &pebble.directory);
    let running: Running = kagami::server::start(&config).await.unwrap();
    let tls_addr = running.tls_addrs[0];

    let log = dir.path().join("pebble.log");
    let (first, body) = wait_for_certificate(tls_addr, NAME, &root, None, &log).await;
    assert!(
        body.starts_with("HTTP/1.1 200") && body.ends_with("okayama home"),
        "{body}"
    );

    // With its certificate, the site's https_redirect applies.
    let plain = plain_get(running.addrs[0]).await;
    assert!(plain.starts_with("HTTP/1.1 301"), "{plain}");
    // (No port: the TLS listener's port was chosen by the system, so none is configured.)
    assert!(
        plain.contains(&format!("location: https://{NAME}/")),
        "{plain}"
    );

    // Kagami answered the CA's validation requests itself, before routing.
    let challenges = origin
        .log()
        .into_iter()
        .filter(|(_, path)| path.contains("acme-challenge"));
    assert_eq!(challenges.count(), 0, "challenges reached the origin");

    let state = dir.path().join("acme-state");
    for file in [
        "account.json",
        "certs/okayama/key.pem",
        "certs/okayama/cert.pem",
    ] {
        let meta = std::fs::metadata(state.join(file)).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{file}");
        }
        assert!(meta.len() > 0, "{file}");
    }
    running.shutdown(Duration::from_secs(1)).await;

    // The CA is gone: only the stored certificate can make the next handshake work.
    let directory = pebble.directory.clone();
    drop(pebble);
    let config = kagami_config(dir.path(), http_port, &origin.url(), &directory);
    let running = kagami::server::start(&config).await.unwrap();
    let (again, body) = fetch_https(running.tls_addrs[0], NAME, &root)
        .await
        .expect("the stored certificate is served at once after a restart");
    assert_eq!(
        serial(&again),
        serial(&first),
        "the same certificate, not a new one"
    );
    assert_eq!(again, first);
    assert!(body.ends_with("okayama home"), "{body}");
    running.shutdown(Duration::from_secs(1)).await;
}

/// A CA that cannot be reached: nothing crashes, the site is served over plain HTTP (not
/// redirected to an HTTPS that has no certificate), its handshake fails at once, and nothing
/// is stored. Needs no pebble.
#[tokio::test]
async fn without_its_certificate_a_site_is_served_over_plain_http_only() {
    let origin = Origin::start().await;
    origin.route("/", Route::ok("okayama home"));
    let dir = tempfile::tempdir().unwrap();
    let (ports, _) = free_ports(1);
    // Nothing listens there (the port was only held to find a free one).
    let directory = format!("https://127.0.0.1:{}/dir", ports[0]);
    std::fs::write(dir.path().join("pebble-ca.pem"), pki::Ca::new("unused").pem).unwrap();
    let config = kagami_config(dir.path(), 0, &origin.url(), &directory);
    let running = kagami::server::start(&config).await.unwrap();
    let some_root = CertificateDer::from(pki::Ca::new("any").leaf(&[NAME]).der);
    for _ in 0..3 {
        let plain = plain_get(running.addrs[0]).await;
        assert!(
            plain.starts_with("HTTP/1.1 200") && plain.ends_with("okayama home"),
            "{plain}"
        );
        let started = Instant::now();
        let refused = fetch_https(running.tls_addrs[0], NAME, &some_root).await;
        let why = refused.expect_err("no certificate yet");
        assert!(!why.contains("timed out"), "{why}");
        assert!(started.elapsed() < Duration::from_secs(2), "{why}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let certs = dir.path().join("acme-state/certs/okayama/cert.pem");
    assert!(!certs.exists());
    running.shutdown(Duration::from_secs(1)).await;
}

/// A certificate with a third of its lifetime left is replaced while serving: pebble issues
/// 9-second certificates here, so the renewal is due 6 seconds after issuance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_is_renewed_live_before_it_expires() {
    let Some(pebble_bin) = pebble_or_skip() else {
        return;
    };
    let p = with_pebble(&pebble_bin, Some(9), "okayama home").await;
    let (first, _) = wait_for_certificate(p.tls_addr, NAME, &p.root, None, &p.log).await;
    let (renewed, body) =
        wait_for_certificate(p.tls_addr, NAME, &p.root, Some(&first), &p.log).await;
    assert_ne!(serial(&renewed), serial(&first));
    assert!(body.ends_with("okayama home"), "{body}");
    // The renewed certificate is the stored one.
    let stored = std::fs::read(p.dir.path().join("acme-state/certs/okayama/cert.pem")).unwrap();
    let stored = CertificateDer::from_pem_slice(&stored).unwrap();
    assert_eq!(stored.as_ref(), renewed.as_slice());
    p.running.shutdown(Duration::from_secs(1)).await;
}

/// Sites follow a reload: an ACME site added to the file gets its certificate while Kagami
/// keeps serving (no restart), and a removed one's certificate leaves the SNI table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_orders_certificates_for_added_acme_sites_and_drops_removed_ones() {
    let Some(pebble_bin) = pebble_or_skip() else {
        return;
    };
    const ADDED: &str = "www.city.kurashiki.example";
    let p = with_pebble(&pebble_bin, None, "home").await;
    wait_for_certificate(p.tls_addr, NAME, &p.root, None, &p.log).await;
    assert!(fetch_https(p.tls_addr, ADDED, &p.root).await.is_err());

    // The same file with the site renamed and given another name.
    let text = std::fs::read_to_string(p.dir.path().join("kagami.toml"))
        .unwrap()
        .replace("\"okayama\"", "\"kurashiki\"")
        .replace(NAME, ADDED);
    let path = p.dir.path().join("kagami.toml");
    std::fs::write(&path, text).unwrap();
    let report = p
        .running
        .reload(&Config::load(&path).unwrap())
        .await
        .unwrap();
    assert_eq!(report.added, ["kurashiki"]);
    assert_eq!(report.removed, ["okayama"]);
    assert!(report.needs_restart.is_empty(), "{report:?}");

    let (_, body) = wait_for_certificate(p.tls_addr, ADDED, &p.root, None, &p.log).await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    let stored = p.dir.path().join("acme-state/certs/kurashiki/cert.pem");
    assert!(stored.exists(), "the new certificate is kept in state_dir");
    let gone = fetch_https(p.tls_addr, NAME, &p.root).await;
    assert!(
        gone.is_err(),
        "the removed site's certificate is still served"
    );
    p.running.shutdown(Duration::from_secs(1)).await;
}

/// A published HTTP-01 answer used to be given for any Host: anyone could read the key
/// authorization (account key thumbprint) off any name pointed at Kagami, and a site's origin
/// that runs its own ACME client had its challenge path shadowed by another site's order. The
/// CA asks each name's token on that name, so only that Host is answered (any port, any case);
/// every other Host goes on to routing like any request. No CA needed: the token is published
/// as the ACME manager would.
#[tokio::test]
async fn a_challenge_is_answered_only_on_the_name_it_proves() {
    let origin = Origin::start().await;
    origin.route("/.well-known/acme-challenge/tok", Route::ok("origin's own"));
    let kagami = common::Kagami::start(&origin.url()).await;
    // The test site's hosts are 127.0.0.1 and localhost; the order was for localhost.
    kagami
        .running
        .current()
        .acme
        .publish("tok", "localhost", "tok.thumbprint");
    let ask = |host: &str| {
        format!(
            "GET /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
    };
    for host in ["localhost", "LOCALHOST:8080", "localhost."] {
        let raw = common::raw::exchange(kagami.addr, ask(host)).await;
        assert_eq!(common::raw::status_of(&raw), 200, "{host}: {raw}");
        assert_eq!(
            common::raw::body_of(&raw),
            "tok.thumbprint",
            "{host}: {raw}"
        );
    }
    // The same site's other name: routed to the origin, which answers for itself.
    let raw = common::raw::exchange(kagami.addr, ask("127.0.0.1")).await;
    assert_eq!(common::raw::body_of(&raw), "origin's own", "{raw}");
    // A name no site has: refused by routing, and the answer is nowhere in it.
    let raw = common::raw::exchange(kagami.addr, ask("attacker.example")).await;
    assert_ne!(common::raw::status_of(&raw), 200, "{raw}");
    assert!(!raw.contains("tok.thumbprint"), "{raw}");
}
