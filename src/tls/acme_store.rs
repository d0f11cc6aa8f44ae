//! What ACME keeps in `acme.state_dir`, so that a restart neither creates a new account nor
//! orders certificates again: `account.json` (the account key and URL, for one directory) and
//! `certs/<site>/cert.pem` + `key.pem`. Files with private keys are mode 0600, the folders 0700.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::AccountCredentials;
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};

use super::certs;
use super::renewal::Validity;
use crate::routing::HostPattern;

/// A certificate from the store or the CA, ready for the SNI table.
#[derive(Clone)]
pub struct Issued {
    pub key: Arc<CertifiedKey>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Issued {
    pub fn validity(&self) -> Validity {
        Validity {
            not_before: self.not_before,
            not_after: self.not_after,
        }
    }

    /// When to renew (`Validity::renew_at`).
    pub fn renew_at(&self) -> SystemTime {
        self.validity().renew_at()
    }
}

/// The account file: credentials belong to one CA, so they are kept with its directory URL.
#[derive(Serialize, Deserialize)]
struct AccountFile {
    directory: String,
    credentials: AccountCredentials,
}

pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: &Path) -> Store {
        Store {
            dir: dir.to_path_buf(),
        }
    }

    fn account_path(&self) -> PathBuf {
        self.dir.join("account.json")
    }

    /// The certificate and key files of `site`. Site names are short words in practice; any
    /// other byte is written `~XX` (hex), so that a name can never point outside the store and
    /// two names never share a folder (`~` is itself escaped).
    pub fn cert_paths(&self, site: &str) -> (PathBuf, PathBuf) {
        let mut safe = String::with_capacity(site.len());
        for b in site.bytes() {
            match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => safe.push(char::from(b)),
                _ => safe.push_str(&format!("~{b:02X}")),
            }
        }
        let dir = self.dir.join("certs").join(safe);
        (dir.join("cert.pem"), dir.join("key.pem"))
    }

    /// The stored account for `directory`, if there is one.
    pub fn load_account(&self, directory: &str) -> Option<AccountCredentials> {
        let path = self.account_path();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read the ACME account");
                return None;
            }
        };
        match serde_json::from_str::<AccountFile>(&text) {
            Ok(file) if file.directory == directory => Some(file.credentials),
            Ok(file) => {
                tracing::info!(
                    file = %path.display(), stored = %file.directory, %directory,
                    "the stored ACME account is for another directory: creating a new one"
                );
                None
            }
            Err(e) => {
                tracing::warn!(
                    file = %path.display(), error = %e,
                    "the stored ACME account is unreadable: creating a new one"
                );
                None
            }
        }
    }

    pub fn save_account(&self, directory: &str, credentials: AccountCredentials) -> io::Result<()> {
        let file = AccountFile {
            directory: directory.to_string(),
            credentials,
        };
        let text = serde_json::to_string_pretty(&file).map_err(io::Error::other)?;
        write_private(&self.account_path(), text.as_bytes())
    }

    /// Drops the stored account (the CA no longer knows it), so that the next attempt creates
    /// a new one. Renamed rather than deleted: someone may want to know what happened.
    pub fn forget_account(&self) {
        let path = self.account_path();
        let aside = self.dir.join("account.json.gone");
        match fs::rename(&path, &aside) {
            Ok(()) => tracing::warn!(
                file = %path.display(),
                "the CA no longer knows the ACME account: a new one will be created"
            ),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot set the ACME account aside")
            }
        }
    }

    /// The stored certificate of `site`, if it is there, valid today and covers `hosts`;
    /// otherwise why not (`Ok(None)`: nothing stored yet).
    pub fn load_cert(&self, site: &str, hosts: &[HostPattern]) -> Result<Option<Issued>, String> {
        let (cert, key) = self.cert_paths(site);
        if !cert.exists() && !key.exists() {
            return Ok(None);
        }
        let loaded = certs::load(&cert, &key, hosts, SystemTime::now()).map_err(|problems| {
            let reasons: Vec<String> = problems.into_iter().map(|p| p.reason).collect();
            reasons.join("; ")
        })?;
        issued(loaded).map(Some)
    }

    /// Stores a new certificate (key first: a crash in between leaves a pair that does not
    /// match, which `load_cert` refuses, so the certificate is ordered again).
    pub fn save_cert(&self, site: &str, chain_pem: &str, key_pem: &str) -> io::Result<()> {
        let (cert, key) = self.cert_paths(site);
        write_private(&key, key_pem.as_bytes())?;
        write_private(&cert, chain_pem.as_bytes())
    }
}

/// The validity period of a loaded certificate.
pub fn issued(key: Arc<CertifiedKey>) -> Result<Issued, String> {
    let leaf = key
        .end_entity_cert()
        .map_err(|e| format!("no certificate: {e}"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    let time = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    let validity = cert.validity();
    Ok(Issued {
        not_before: time(validity.not_before.timestamp()),
        not_after: time(validity.not_after.timestamp()),
        key,
    })
}

/// Writes `path` as a whole (a temporary file renamed over it, so a reader never sees half a
/// key), readable by the owner only, creating its folders (owner only) as needed.
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    let temporary = path.with_extension("tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&temporary)?;
    // A file left over from an older run keeps its mode through `open`: set it again.
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&temporary, path)
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_names_stay_inside_the_store() {
        let store = Store::new(Path::new("/state"));
        let (cert, key) = store.cert_paths("../../etc/passwd");
        assert!(cert.starts_with("/state/certs/") && !cert.to_string_lossy().contains(".."));
        assert_eq!(key.parent(), cert.parent());
        // Two sites never share a folder (one's certificate would replace the other's, and
        // each restart would order both again, into the CA's rate limits).
        let names = ["a.b", "a_b", "a b", "a~2Eb", "a/b", "a\\b", "市", "a"];
        let folders: std::collections::HashSet<_> =
            names.iter().map(|n| store.cert_paths(n).0).collect();
        assert_eq!(folders.len(), names.len(), "{folders:?}");
        for name in names {
            let (cert, _) = store.cert_paths(name);
            assert_eq!(
                cert.parent().unwrap().parent(),
                Some(Path::new("/state/certs"))
            );
        }
        assert_eq!(
            store.cert_paths("okayama").0,
            Path::new("/state/certs/okayama/cert.pem")
        );
    }

    #[test]
    fn renewal_starts_with_a_third_of_the_lifetime_left() {
        let pair = rcgen::KeyPair::generate().unwrap();
        let der = rustls_pki_types::PrivateKeyDer::try_from(pair.serialize_der()).unwrap();
        let signing = super::super::provider()
            .key_provider
            .load_private_key(der)
            .unwrap();
        let start = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let issued = Issued {
            key: Arc::new(CertifiedKey::new(Vec::new(), signing)),
            not_before: start,
            not_after: start + Duration::from_secs(90 * 86_400),
        };
        assert_eq!(issued.renew_at(), start + Duration::from_secs(60 * 86_400));
    }

    #[cfg(unix)]
    #[test]
    fn key_files_are_private_and_replaced_whole() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(&dir.path().join("acme"));
        store.save_cert("a", "CERT", "KEY").unwrap();
        store.save_cert("a", "CERT2", "KEY2").unwrap();
        let (cert, key) = store.cert_paths("a");
        assert_eq!(fs::read_to_string(&key).unwrap(), "KEY2");
        assert_eq!(fs::read_to_string(&cert).unwrap(), "CERT2");
        for file in [&cert, &key] {
            let mode = fs::metadata(file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", file.display());
        }
        let folder = fs::metadata(dir.path().join("acme")).unwrap();
        assert_eq!(folder.permissions().mode() & 0o777, 0o700);
        // A pair that is not a certificate is refused, so it gets ordered again.
        assert!(store.load_cert("a", &[]).is_err());
        assert!(store.load_cert("b", &[]).unwrap().is_none());
    }
}
