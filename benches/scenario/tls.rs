//! TLS for the HTTPS runs: one self-signed ECDSA P-256 certificate for `localhost` (rcgen, via
//! `kagami gen-cert`'s code) given to Kagami and nginx alike, the built-in generator's client
//! settings (TLS 1.3 only, ALPN `http/1.1`, resumption on or off), a probe that reports what a
//! handshake negotiated, and the kernel's count of accepted connections (to check that a
//! handshake run really opened a connection per request).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The name in the certificate, sent as SNI and Host. `localhost` rather than an IP address:
/// clients send no SNI for an address, and Kagami refuses a handshake without one; wrk resolves
/// it to 127.0.0.1 (an https URL needs a name for wrk to send SNI).
pub const NAME: &str = "localhost";

/// The certificate and key: as PEM files (for nginx) and loaded (for Kagami).
pub struct BenchCert {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub certified: Arc<CertifiedKey>,
    _dir: tempfile::TempDir,
}

impl BenchCert {
    pub fn generate() -> anyhow::Result<BenchCert> {
        let dir = tempfile::Builder::new()
            .prefix("kagami-bench-tls")
            .tempdir()?;
        let (cert_file, key_file) =
            kagami::tls::gen::write_self_signed(&[NAME.to_string()], dir.path())?;
        let chain = kagami::tls::certs::read_chain(&cert_file).map_err(|e| anyhow!(e))?;
        let key = kagami::tls::certs::read_key(&key_file).map_err(|e| anyhow!(e))?;
        let signing = kagami::tls::provider()
            .key_provider
            .load_private_key(key)
            .context("loading the bench key")?;
        Ok(BenchCert {
            cert_file,
            key_file,
            certified: Arc::new(CertifiedKey::new(chain, signing)),
            _dir: dir,
        })
    }
}

/// The built-in generator's TLS client: one config that resumes sessions, one that never does
/// (every handshake a full one).
#[derive(Clone)]
pub struct ClientTls {
    pub name: ServerName<'static>,
    pub resuming: Arc<ClientConfig>,
    pub fresh: Arc<ClientConfig>,
}

impl ClientTls {
    pub fn new() -> anyhow::Result<ClientTls> {
        let config = |resumption: Resumption| -> anyhow::Result<Arc<ClientConfig>> {
            let mut config = ClientConfig::builder_with_provider(kagami::tls::provider())
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(TrustAnything))
                .with_no_client_auth();
            // What wrk gets by default: HTTP/1.1 (wrk offers no ALPN; both servers then
            // speak HTTP/1.1 too).
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            config.resumption = resumption;
            Ok(Arc::new(config))
        };
        Ok(ClientTls {
            name: ServerName::try_from(NAME)?,
            resuming: config(Resumption::in_memory_sessions(256))?,
            fresh: config(Resumption::disabled())?,
        })
    }
}

/// One handshake (no resumption) with `addr`; what it negotiated, as one line.
pub fn probe(addr: SocketAddr, tls: &ClientTls) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            let stream = TcpStream::connect(addr).await?;
            let stream = TlsConnector::from(tls.fresh.clone())
                .connect(tls.name.clone(), stream)
                .await?;
            let session = stream.get_ref().1;
            Ok::<_, anyhow::Error>(format!(
                "{:?}, {:?}, key exchange {:?}, ALPN {}",
                session.protocol_version(),
                session.negotiated_cipher_suite().map(|s| s.suite()),
                session.negotiated_key_exchange_group().map(|g| g.name()),
                session
                    .alpn_protocol()
                    .map_or("none".into(), |p| String::from_utf8_lossy(p).into_owned()),
            ))
        })
        .await
        .map_err(|_| anyhow!("TLS probe timed out"))?
    })
}

/// TCP connections accepted so far by this machine (`PassiveOpens` in `/proc/net/snmp`): the
/// rise over a handshake run should be at least its request count. Machine-wide, so other
/// work can only raise it.
pub fn passive_opens() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let names = tcp.next()?.split_whitespace();
    let values = tcp.next()?.split_whitespace();
    names
        .zip(values)
        .find(|(name, _)| *name == "PassiveOpens")
        .and_then(|(_, value)| value.parse().ok())
}

/// Accepts the server's certificate and signatures unchecked. Only for this benchmark: the
/// server is on loopback with the certificate generated above, and checking would only load the
/// generator's CPU (an ECDSA verification per handshake, more than the server's signature).
#[derive(Debug)]
struct TrustAnything;

impl ServerCertVerifier for TrustAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        kagami::tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
