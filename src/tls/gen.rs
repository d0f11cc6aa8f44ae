//! `kagami gen-cert`: a self-signed certificate and key for trying HTTPS locally (rcgen).

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, DnType, KeyPair};

use crate::routing::HostPattern;

#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("give at least one --host")]
    NoHosts,
    #[error("--host {0:?}: {1}")]
    BadHost(String, String),
    #[error("cannot generate the certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{}: already exists; remove it first (keys are never overwritten)", .0.display())]
    Exists(PathBuf),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A self-signed certificate for `hosts` (names, `*.` wildcards or IP addresses), valid from
/// an hour ago (clocks drift) for one year. Returns the certificate and the key, in PEM.
pub fn self_signed(hosts: &[String]) -> Result<(String, String), GenError> {
    if hosts.is_empty() {
        return Err(GenError::NoHosts);
    }
    let mut names = Vec::new();
    for host in hosts {
        let name = match HostPattern::parse(host) {
            Ok(HostPattern::Exact { host, port: None }) => host,
            Ok(HostPattern::Wildcard { suffix, port: None }) => format!("*{suffix}"),
            Ok(_) => {
                return Err(GenError::BadHost(
                    host.clone(),
                    "a certificate names hosts without a port".into(),
                ))
            }
            Err(reason) => return Err(GenError::BadHost(host.clone(), reason)),
        };
        names.push(name);
    }
    let mut params = CertificateParams::new(names.clone())?;
    params
        .distinguished_name
        .push(DnType::CommonName, names[0].clone());
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(365);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes `dir/cert.pem` and `dir/key.pem` (the key readable by its owner only), creating
/// `dir` if needed. Existing files are left alone: overwriting a key by mistake is costly.
pub fn write_self_signed(hosts: &[String], dir: &Path) -> Result<(PathBuf, PathBuf), GenError> {
    let (cert, key) = self_signed(hosts)?;
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    for path in [&cert_path, &key_path] {
        if path.exists() {
            return Err(GenError::Exists(path.clone()));
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| GenError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    write_new(&key_path, key.as_bytes(), 0o600)?;
    write_new(&cert_path, cert.as_bytes(), 0o644)?;
    Ok((cert_path, key_path))
}

/// Creates a file that must not exist yet, with `mode` from the start (never briefly
/// readable by others).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), GenError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let result = options.open(path).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    result.map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => GenError::Exists(path.to_path_buf()),
        _ => GenError::Write {
            path: path.to_path_buf(),
            source,
        },
    })
}
