//! Certificate files: PEM chains and keys, checked the way a browser would check them (key
//! matches, valid today, names covered), so that a bad file is a config error with its file and
//! reason instead of a failed handshake for every visitor.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::sign::CertifiedKey;
use rustls::InconsistentKeys;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::routing::HostPattern;

/// Which of a site's two files a problem is about (`tls_cert` or `tls_key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum File {
    Cert,
    Key,
}

/// One problem with a certificate or key file; `reason` names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct CertProblem {
    pub file: File,
    pub reason: String,
}

impl CertProblem {
    fn new(file: File, reason: String) -> CertProblem {
        CertProblem { file, reason }
    }
}

/// Reads every certificate of a PEM file (a chain: the site's certificate first).
pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read(path)?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| format!("{} is not valid PEM: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{} is not a PEM certificate: no \"-----BEGIN CERTIFICATE-----\" block{}",
            path.display(),
            swapped_hint(&bytes, "PRIVATE KEY-----", "tls_key"),
        ));
    }
    Ok(chain)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => format!(
            "{} is not a PEM private key: no \"-----BEGIN ... PRIVATE KEY-----\" block{}",
            path.display(),
            swapped_hint(&bytes, "BEGIN CERTIFICATE-----", "tls_cert"),
        ),
        e => format!("{} is not valid PEM: {e}", path.display()),
    })
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Certificate and key files are easily swapped; say so when that is what happened.
fn swapped_hint(bytes: &[u8], marker: &str, other: &str) -> String {
    let found = bytes.windows(marker.len()).any(|w| w == marker.as_bytes());
    if found {
        format!(" (it holds what belongs in {other})")
    } else {
        String::new()
    }
}

/// Loads a site's chain and key and checks them against each other, the clock (`now`) and the
/// site's `hosts`. Every problem found is returned, not just the first.
pub fn load(
    cert_path: &Path,
    key_path: &Path,
    hosts: &[HostPattern],
    now: SystemTime,
) -> Result<Arc<CertifiedKey>, Vec<CertProblem>> {
    let mut problems = Vec::new();
    let chain = read_chain(cert_path).map_err(|r| problems.push(CertProblem::new(File::Cert, r)));
    let key = read_key(key_path).map_err(|r| problems.push(CertProblem::new(File::Key, r)));
    if let Ok(chain) = &chain {
        problems.extend(check_leaf(cert_path, &chain[0], hosts, now));
    }
    let (Ok(chain), Ok(key)) = (chain, key) else {
        return Err(problems);
    };
    let signing = match super::provider().key_provider.load_private_key(key) {
        Ok(signing) => signing,
        Err(e) => {
            problems.push(CertProblem::new(
                File::Key,
                format!("{}: unsupported private key: {e}", key_path.display()),
            ));
            return Err(problems);
        }
    };
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        // A key type that cannot tell its public half is checked by the first handshake.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            let hint = match matches_a_later_certificate(&certified) {
                true => " (it matches a later one: put the site's own certificate first)",
                false => "",
            };
            problems.push(CertProblem::new(
                File::Key,
                format!(
                    "{} does not match the certificate in {}{hint}",
                    key_path.display(),
                    cert_path.display()
                ),
            ))
        }
        // The leaf did not parse: check_leaf has already said so.
        Err(_) => {}
    }
    if problems.is_empty() {
        Ok(Arc::new(certified))
    } else {
        Err(problems)
    }
}

/// A chain in the wrong order (intermediate first) looks like a wrong key; tell them apart.
fn matches_a_later_certificate(certified: &CertifiedKey) -> bool {
    let Some(spki) = certified.key.public_key() else {
        return false;
    };
    certified.cert.iter().skip(1).any(|der| {
        x509_parser::parse_x509_certificate(der)
            .is_ok_and(|(_, cert)| cert.public_key().raw == spki.as_ref())
    })
}

/// Validity period and names of the site's own certificate (the first of the chain).
fn check_leaf(
    path: &Path,
    der: &CertificateDer<'_>,
    hosts: &[HostPattern],
    now: SystemTime,
) -> Vec<CertProblem> {
    let problem = |reason: String| CertProblem::new(File::Cert, reason);
    let parsed = x509_parser::parse_x509_certificate(der);
    let (Ok((_, cert)), Ok(end_entity)) = (parsed, webpki::EndEntityCert::try_from(der)) else {
        return vec![problem(format!(
            "{}: the first certificate is not a valid X.509 certificate",
            path.display()
        ))];
    };
    let mut problems = Vec::new();
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let validity = cert.validity();
    let (not_before, not_after) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    if now < not_before {
        problems.push(problem(format!(
            "{}: the certificate is not yet valid: valid from {}",
            path.display(),
            date(not_before)
        )));
    }
    if now > not_after {
        problems.push(problem(format!(
            "{}: the certificate expired on {}",
            path.display(),
            date(not_after)
        )));
    }
    for pattern in hosts {
        let Some(name) = probe_name(pattern) else {
            continue;
        };
        let covered = ServerName::try_from(name.as_str())
            .is_ok_and(|n| end_entity.verify_is_valid_for_subject_name(&n).is_ok());
        if !covered {
            problems.push(problem(format!(
                "{}: the certificate does not cover {pattern} (it names: {})",
                path.display(),
                names(&cert)
            )));
        }
    }
    problems
}

/// The name a browser would check for a `hosts` entry: the host itself, or a one-label name
/// under a wildcard (so `*.city.example` needs a `*.city.example` certificate). IP addresses
/// are skipped: clients send no SNI for them, so they are never served over HTTPS here.
fn probe_name(pattern: &HostPattern) -> Option<String> {
    match pattern {
        HostPattern::Exact { host, .. } if host.parse::<std::net::IpAddr>().is_ok() => None,
        HostPattern::Exact { host, .. } => Some(host.clone()),
        HostPattern::Wildcard { suffix, .. } => Some(format!("kagami-probe{suffix}")),
    }
}

/// The names a certificate lists, for messages.
fn names(cert: &X509Certificate<'_>) -> String {
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some(dns.to_string()),
                GeneralName::IPAddress(bytes) => ip_text(bytes),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.push("no DNS names".to_string());
    }
    names.join(", ")
}

fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv4Addr::from(b).to_string()),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv6Addr::from(b).to_string()),
        _ => None,
    }
}

fn date(unix: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(time).to_string()
}

/// When a certificate stops being valid, if it parses.
pub fn not_after(der: &CertificateDer<'_>) -> Option<SystemTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}
