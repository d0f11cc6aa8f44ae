//! HTTPS termination with rustls: TLS 1.3 and 1.2, ALPN `h2` and `http/1.1`, the certificate
//! chosen by SNI over the site table (`resolver`), certificate files checked at load
//! (`certs`), certificates obtained and renewed by ACME (`acme`, kept by `acme_store`), and
//! self-signed certificates for local trials (`gen`).
//!
//! The listener side (handshake under a timeout, then the same connection handling as plain
//! HTTP) is in `server`; what HTTPS changes for a request (421, redirects, HSTS) in `proxy`.

pub mod acme;
mod acme_store;
pub mod certs;
pub mod gen;
pub mod renewal;
mod resolver;
mod sni;

pub use resolver::{CertTable, SniResolver};
pub use sni::SniName;

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;

/// The one crypto provider Kagami uses (ring, as for the origin client), chosen explicitly so
/// that nothing depends on a process-wide default being installed.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The server-side TLS settings for every HTTPS listener, resolving certificates through
/// `resolver` (whose table can be swapped while serving).
pub fn server_config(
    resolver: Arc<SniResolver>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    // h2 first: browsers that can do both get HTTP/2. Clients without ALPN get HTTP/1.1 (or h2
    // with prior knowledge: the connection handler detects the preface either way).
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // No 0-RTT: early data can be replayed, and a proxy cannot tell which requests tolerate it.
    config.max_early_data_size = 0;
    // Stateless session tickets (keys rotated every 6 hours): returning visitors, many on
    // flaky mobile links during a disaster, resume without a full handshake, and Kagami keeps
    // no per-client state for it. rustls resumes a session only for the SNI name it was for.
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(config))
}

/// A TLS acceptor for `config`'s sites, with the resolver kept for later certificate swaps.
pub fn acceptor(
    config: &crate::config::Config,
) -> Result<(tokio_rustls::TlsAcceptor, Arc<SniResolver>), rustls::Error> {
    log_expiry(config);
    let resolver = Arc::new(SniResolver::new(CertTable::new(&config.sites)));
    let server = server_config(resolver.clone())?;
    Ok((tokio_rustls::TlsAcceptor::from(server), resolver))
}

/// Certificates are checked at load, but one can expire while Kagami runs: say when, loudly
/// when it is soon, so that staff renew it before browsers start refusing the site.
pub fn log_expiry(config: &crate::config::Config) {
    const SOON: Duration = Duration::from_secs(14 * 86_400);
    let now = SystemTime::now();
    for site in &config.sites {
        let Some(cert) = &site.tls.cert else {
            continue;
        };
        let Some(until) = cert.end_entity_cert().ok().and_then(certs::not_after) else {
            continue;
        };
        let expires = humantime::format_rfc3339_seconds(until);
        let file = site
            .tls
            .cert_file
            .as_deref()
            .unwrap_or(Path::new("-"))
            .display();
        match until.duration_since(now) {
            Ok(left) if left > SOON => {
                tracing::info!(site = %site.name, %file, %expires, "certificate")
            }
            _ => tracing::warn!(
                site = %site.name, %file, %expires,
                "certificate expires within 14 days: renew it"
            ),
        }
    }
}
