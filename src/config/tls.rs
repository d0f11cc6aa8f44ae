//! The HTTPS keys of the config file: `server.listen_tls`, and per site `tls_cert`/`tls_key`,
//! `https_redirect`, `hsts` and `origin_ca`. Certificate files are read and checked here, at
//! load time, so `check-config` reports a bad one like any other config problem.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderValue;
use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;

use super::raw::RawSite;
use super::{Config, Problems};
use crate::routing::HostPattern;
use crate::tls::certs::{self, File};
use crate::tls::CertTable;

/// A site's HTTPS settings (all off by default).
#[derive(Debug, Clone, Default)]
pub struct SiteTls {
    /// The site's certificate chain and key (`tls_cert`, `tls_key`), already checked.
    pub cert: Option<Arc<CertifiedKey>>,
    /// Where they came from, for logs and a later reload.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Plain-HTTP requests get 301 to https (ACME challenge paths excepted).
    pub https_redirect: bool,
    /// The `Strict-Transport-Security` value for HTTPS answers.
    pub hsts: Option<HeaderValue>,
    /// Extra trust anchors for this site's `https://` origins.
    pub origin_ca: Vec<reqwest::Certificate>,
    /// The same anchors as read (DER): a reload keeps the site's origin client only when the
    /// file still holds exactly these.
    pub origin_ca_der: Vec<CertificateDer<'static>>,
    /// Where they came from: sites share an origin client only with the same trust.
    pub origin_ca_file: Option<PathBuf>,
    /// The port https redirects name (`None`: the default, 443).
    pub https_port: Option<u16>,
    /// `acme = true`: the certificate is obtained and renewed automatically (`tls::acme`).
    pub acme: bool,
}

/// The path under which ACME HTTP-01 challenges are answered; never redirected to https, as
/// the CA fetches them over plain HTTP.
pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

pub(super) fn listen_tls(raw: &Option<Vec<String>>, problems: &mut Problems) -> Vec<SocketAddr> {
    let mut addrs = Vec::new();
    for (i, addr) in raw.iter().flatten().enumerate() {
        match addr.parse::<SocketAddr>() {
            Ok(a) => addrs.push(a),
            Err(_) => problems.add(
                format!("server.listen_tls[{i}]"),
                format!("{addr:?} is not an IP:port address such as \"0.0.0.0:443\""),
            ),
        }
    }
    addrs
}

/// Validates one site's HTTPS keys; `hosts` and `origins` are the site's already parsed ones.
pub(super) fn site(
    raw: &RawSite,
    prefix: &str,
    base: &Path,
    hosts: &[HostPattern],
    origins: Option<&Vec<reqwest::Url>>,
    problems: &mut Problems,
) -> SiteTls {
    let key = |k: &str| format!("{prefix}.{k}");
    let mut tls = SiteTls {
        https_redirect: raw.https_redirect.unwrap_or(false),
        acme: raw.acme.unwrap_or(false),
        ..SiteTls::default()
    };
    match (&raw.tls_cert, &raw.tls_key) {
        (None, None) => {}
        (Some(_), None) => problems.add(
            key("tls_key"),
            "missing: tls_cert needs its private key (PEM)",
        ),
        (None, Some(_)) => problems.add(
            key("tls_cert"),
            "missing: tls_key needs its certificate chain (PEM)",
        ),
        (Some(cert), Some(private)) => {
            let (cert, private) = (base.join(cert), base.join(private));
            match certs::load(&cert, &private, hosts, SystemTime::now()) {
                Ok(loaded) => tls.cert = Some(loaded),
                Err(found) => {
                    for problem in found {
                        let k = match problem.file {
                            File::Cert => "tls_cert",
                            File::Key => "tls_key",
                        };
                        problems.add(key(k), problem.reason);
                    }
                }
            }
            tls.cert_file = Some(cert);
            tls.key_file = Some(private);
        }
    }
    let has_cert = raw.tls_cert.is_some();
    if tls.https_redirect && !has_cert && !tls.acme {
        problems.add(
            key("https_redirect"),
            "needs tls_cert and tls_key (or acme): visitors would be sent to an address with no \
             certificate",
        );
    }
    if raw.hsts.is_some() {
        let before = problems.0.len();
        let age = problems.duration(key("hsts"), &raw.hsts, Duration::ZERO);
        if !has_cert && !tls.acme {
            problems.add(
                key("hsts"),
                "needs tls_cert and tls_key (or acme): HSTS is only sent over HTTPS",
            );
        } else if problems.0.len() == before {
            tls.hsts = HeaderValue::from_str(&format!("max-age={}", age.as_secs())).ok();
        }
    }
    if let Some(file) = &raw.origin_ca {
        (tls.origin_ca, tls.origin_ca_der) =
            origin_ca(&key("origin_ca"), &base.join(file), problems);
        tls.origin_ca_file = Some(base.join(file));
        let https = origins.is_some_and(|o| o.iter().any(|u| u.scheme() == "https"));
        if origins.is_some() && !https {
            problems.add(
                key("origin_ca"),
                "is only used for https:// origins, and this site has none",
            );
        }
    }
    tls
}

/// The certificates of a private CA, as trust anchors for the origin client.
/// The trust anchors in `path`, for the origin client and as read.
fn origin_ca(
    key: &str,
    path: &Path,
    problems: &mut Problems,
) -> (Vec<reqwest::Certificate>, Vec<CertificateDer<'static>>) {
    let chain = match certs::read_chain(path) {
        Ok(chain) => chain,
        Err(reason) => {
            problems.add(key, reason);
            return (Vec::new(), Vec::new());
        }
    };
    let mut anchors = Vec::new();
    for der in &chain {
        match reqwest::Certificate::from_der(der) {
            Ok(cert) => anchors.push(cert),
            Err(e) => problems.add(
                key,
                format!("{}: not a usable CA certificate: {e}", path.display()),
            ),
        }
    }
    (anchors, chain)
}

/// Checks that need the whole file: listeners against sites, and names two certificates claim.
pub(super) fn finish(config: &mut Config, problems: &mut Problems) {
    let listen_tls = &config.server.listen_tls;
    let any_cert = config
        .sites
        .iter()
        .any(|s| s.tls.cert.is_some() || s.tls.acme);
    let any_cert_configured = config
        .sites
        .iter()
        .any(|s| s.tls.cert_file.is_some() || s.tls.acme);
    if !listen_tls.is_empty() && !any_cert_configured {
        problems.add(
            "server.listen_tls",
            "no site has tls_cert and tls_key or acme: every HTTPS handshake would fail",
        );
    }
    for (i, site) in config.sites.iter().enumerate() {
        if site.tls.https_redirect && listen_tls.is_empty() {
            problems.add(
                format!("site[{i}].https_redirect"),
                "needs server.listen_tls: there is no HTTPS listener to redirect to",
            );
        }
    }
    if any_cert {
        for (name, first, second) in CertTable::conflicts(&config.sites) {
            problems.add(
                "site",
                format!(
                    "{name} is listed by sites {first:?} and {second:?}, which both have a \
                     certificate: SNI carries no port, so which one to present is unclear"
                ),
            );
        }
    }
    // Redirects name the HTTPS port unless it is the default (or chosen by the system).
    let port = listen_tls
        .first()
        .map(SocketAddr::port)
        .filter(|p| *p != 443 && *p != 0);
    for site in &mut config.sites {
        site.tls.https_port = port;
    }
}
