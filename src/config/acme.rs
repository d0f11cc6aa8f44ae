//! The `[acme]` section (the CA Kagami obtains certificates from, and where it keeps them) and
//! the checks on sites with `acme = true`.

use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;

use super::raw::RawAcme;
use super::{Config, Problems};
use crate::routing::HostPattern;
use crate::tls::certs;

/// Where and how certificates are obtained for the sites with `acme = true`.
#[derive(Debug, Clone, PartialEq)]
pub struct AcmeConfig {
    /// The ACME directory URL (always https).
    pub directory: String,
    /// The account's contact address, if any (the CA's expiry warnings go there).
    pub email: Option<String>,
    /// Account and certificates, kept across restarts (relative paths: the config's folder).
    pub state_dir: PathBuf,
    /// Extra trust anchors for the ACME server (a private CA, or pebble's test CA).
    pub ca_bundle: Vec<CertificateDer<'static>>,
    pub ca_bundle_file: Option<PathBuf>,
}

/// Validates `[acme]`; `None` when the file has no such section.
pub(super) fn validate(
    raw: Option<RawAcme>,
    base: &Path,
    problems: &mut Problems,
) -> Option<AcmeConfig> {
    let raw = raw?;
    let directory = match raw.directory.as_deref().map(str::trim) {
        None | Some("") => {
            problems.add(
                "acme.directory",
                "missing: the ACME directory URL of the CA, such as \
                 \"https://acme-v02.api.letsencrypt.org/directory\"",
            );
            String::new()
        }
        // Every message quotes the URL with its password hidden.
        Some(text) => match (reqwest::Url::parse(text), super::hints::hide_password(text)) {
            // The account key signs every request, but the directory tells where to send them
            // and the CA's answers carry the certificates: plain HTTP would let anyone on the
            // path hand out their own.
            // ACME authenticates with the account key; a user or password in the URL would only
            // be printed (the account line at start-up) and sent to the CA.
            (Ok(url), shown) if !url.username().is_empty() || url.password().is_some() => {
                problems.add(
                    "acme.directory",
                    format!("{shown:?} must not contain credentials"),
                );
                String::new()
            }
            (Ok(url), _) if url.scheme() == "https" && url.host_str().is_some() => text.to_string(),
            (Ok(_), shown) => {
                problems.add(
                    "acme.directory",
                    format!(
                        "{shown:?} must be an https:// URL (for a private or test CA, trust its \
                         certificate with acme.ca_bundle)"
                    ),
                );
                String::new()
            }
            (Err(e), shown) => {
                problems.add("acme.directory", format!("{shown:?} is not a URL: {e}"));
                String::new()
            }
        },
    };
    let email = raw.email.map(|e| e.trim().to_string());
    if let Some(email) = &email {
        let valid = email.split_once('@').is_some_and(|(user, domain)| {
            !user.is_empty() && domain.contains('.') && !domain.contains('@')
        }) && !email.contains(|c: char| c.is_whitespace() || c == ',' || c == '<');
        if !valid {
            problems.add(
                "acme.email",
                format!("{email:?} is not an e-mail address such as \"ops@example.jp\""),
            );
        }
    }
    let state_dir = match raw.state_dir.as_deref().map(str::trim) {
        None | Some("") => {
            problems.add(
                "acme.state_dir",
                "missing: a directory for the ACME account and certificates, kept across \
                 restarts, such as \"/var/lib/kagami/acme\"",
            );
            PathBuf::new()
        }
        Some(dir) => {
            let path = base.join(dir);
            if path.exists() && !path.is_dir() {
                problems.add(
                    "acme.state_dir",
                    format!("{} exists and is not a directory", path.display()),
                );
            }
            path
        }
    };
    let (mut ca_bundle, mut ca_bundle_file) = (Vec::new(), None);
    if let Some(file) = &raw.ca_bundle {
        let path = base.join(file);
        match certs::read_chain(&path) {
            Ok(chain) => ca_bundle = chain,
            Err(reason) => problems.add("acme.ca_bundle", reason),
        }
        ca_bundle_file = Some(path);
    }
    Some(AcmeConfig {
        directory,
        email,
        state_dir,
        ca_bundle,
        ca_bundle_file,
    })
}

/// The names to put in a site's certificate: its DNS hosts (IP addresses get no SNI, so no
/// certificate; ports do not matter to certificates).
pub fn dns_names(hosts: &[HostPattern]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for pattern in hosts {
        if let HostPattern::Exact { host, .. } = pattern {
            if host.parse::<std::net::IpAddr>().is_err() && !names.contains(host) {
                names.push(host.clone());
            }
        }
    }
    names
}

/// Checks that need the whole file: what `acme = true` needs.
pub(super) fn finish(config: &Config, problems: &mut Problems) {
    for (i, site) in config.sites.iter().enumerate() {
        if !site.tls.acme {
            continue;
        }
        let key = format!("site[{i}].acme");
        if site.tls.cert_file.is_some() {
            problems.add(
                &key,
                "cannot be combined with tls_cert/tls_key: use either a certificate file or one \
                 obtained automatically",
            );
        }
        if config.acme.is_none() {
            problems.add(
                &key,
                "needs an [acme] section with directory, email and state_dir",
            );
        }
        if config.server.listen_tls.is_empty() {
            problems.add(
                &key,
                "needs server.listen_tls: there is no HTTPS listener to use the certificate on",
            );
        }
        if config.server.listen.is_empty() {
            problems.add(
                &key,
                "needs a plain server.listen address (port 80 for a public CA): the CA checks \
                 HTTP-01 challenges over plain HTTP",
            );
        }
        for pattern in &site.hosts {
            if let HostPattern::Wildcard { .. } = pattern {
                problems.add(
                    &key,
                    format!(
                        "{pattern}: HTTP-01 cannot prove control of wildcard names; list the \
                         names, or use tls_cert with a certificate obtained elsewhere"
                    ),
                );
            }
        }
        if dns_names(&site.hosts).is_empty() {
            problems.add(
                &key,
                "the site lists no DNS name (IP addresses cannot get a certificate)",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError, Problem};
    use std::path::Path;

    fn problems(text: &str) -> Vec<Problem> {
        match Config::parse(text, Path::new("k.toml")) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected invalid config, got {other:?}"),
        }
    }

    const SITE: &str = "[[site]]\nname = \"okayama\"\nhosts = [\"www.pref.okayama.example\"]\n\
                        origin = \"http://127.0.0.1:9\"\nacme = true\n";
    const ACME: &str = "[acme]\ndirectory = \"https://127.0.0.1:14000/dir\"\n\
                        email = \"ops@example.jp\"\nstate_dir = \"acme-state\"\n";

    #[test]
    fn a_complete_acme_site_is_accepted() {
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:8080\"]\nlisten_tls = [\"127.0.0.1:8443\"]\n\
             {ACME}{SITE}"
        );
        let config = Config::parse(&text, Path::new("/etc/kagami/k.toml")).unwrap();
        let acme = config.acme.expect("an [acme] section");
        assert_eq!(acme.directory, "https://127.0.0.1:14000/dir");
        assert_eq!(acme.email.as_deref(), Some("ops@example.jp"));
        assert_eq!(acme.state_dir, Path::new("/etc/kagami/acme-state"));
        assert!(config.sites[0].tls.acme);
    }

    #[test]
    fn acme_needs_its_section_a_tls_listener_and_no_certificate_file() {
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:8080\"]\n{SITE}tls_cert = \"a.pem\"\n\
             tls_key = \"a.key\"\nhosts = [\"*.city.example\"]\n"
        )
        .replace("hosts = [\"www.pref.okayama.example\"]\n", "");
        let found = problems(&text);
        let acme: Vec<&str> = found
            .iter()
            .filter(|p| p.key == "site[0].acme")
            .map(|p| p.reason.as_str())
            .collect();
        for expected in [
            "tls_cert",
            "[acme]",
            "listen_tls",
            "wildcard",
            "no DNS name",
        ] {
            assert!(
                acme.iter().any(|r| r.contains(expected)),
                "{expected} in {acme:?}"
            );
        }
        assert!(found
            .iter()
            .all(|p| p.site.as_deref() == Some("okayama") || !p.key.starts_with("site[0]")));
    }

    #[test]
    fn the_acme_section_is_checked_key_by_key() {
        let text = format!(
            "[server]\nlisten_tls = [\"127.0.0.1:8443\"]\n[acme]\n\
             directory = \"http://acme.example/dir\"\nemail = \"not an address\"\n\
             ca_bundle = \"missing.pem\"\n{SITE}"
        );
        let keys: Vec<String> = problems(&text).into_iter().map(|p| p.key).collect();
        for key in [
            "acme.directory",
            "acme.email",
            "acme.state_dir",
            "acme.ca_bundle",
        ] {
            assert!(keys.iter().any(|k| k == key), "{key} in {keys:?}");
        }
    }

    #[test]
    fn a_directory_url_with_credentials_is_refused_without_showing_them() {
        for directory in [
            "https://user:s3cret-pw@127.0.0.1:14000/dir",
            "http://user:s3cret-pw@127.0.0.1:14000/dir",
            "https://user:s3cret/pw@127.0.0.1:14000/dir",
        ] {
            let text = format!(
                "[server]\nlisten_tls = [\"127.0.0.1:8443\"]\n[acme]\n\
                 directory = \"{directory}\"\nemail = \"ops@example.jp\"\n{SITE}"
            );
            let found = problems(&text);
            let directory_problems: Vec<_> =
                found.iter().filter(|p| p.key == "acme.directory").collect();
            assert!(!directory_problems.is_empty(), "{directory}: {found:?}");
            for problem in found {
                assert!(!problem.to_string().contains("s3cret"), "{problem}");
            }
        }
    }
}
