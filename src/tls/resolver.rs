//! Certificate choice by SNI over the site table: exact names first, then `*.` wildcards with
//! the same meaning as in `hosts` (longest suffix first). A name no site lists gets no
//! certificate, and so a handshake failure: never another municipality's certificate.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::SiteConfig;
use crate::routing::HostPattern;

/// Name -> certificate, built from the sites that have `tls_cert`.
#[derive(Default)]
pub struct CertTable {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Suffixes keep their leading dot; longest first.
    wildcards: Vec<(String, Arc<CertifiedKey>)>,
}

impl CertTable {
    /// The table for `sites`. A name listed by two sites with certificates keeps the first
    /// one; config validation refuses such files (see `conflicts`), this is only the fallback.
    pub fn new(sites: &[SiteConfig]) -> CertTable {
        let mut table = CertTable::default();
        for site in sites {
            let Some(cert) = &site.tls.cert else {
                continue;
            };
            for pattern in &site.hosts {
                match pattern {
                    HostPattern::Exact { host, .. } => {
                        table
                            .exact
                            .entry(host.clone())
                            .or_insert_with(|| cert.clone());
                    }
                    HostPattern::Wildcard { suffix, .. } => {
                        if !table.wildcards.iter().any(|(s, _)| s == suffix) {
                            table.wildcards.push((suffix.clone(), cert.clone()));
                        }
                    }
                }
            }
        }
        table
            .wildcards
            .sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        table
    }

    /// Names (ports aside) that two sites with certificates both list: which certificate such
    /// a name should get cannot be told from SNI, which carries no port.
    pub fn conflicts(sites: &[SiteConfig]) -> Vec<(String, String, String)> {
        let mut owner: HashMap<String, &str> = HashMap::new();
        let mut conflicts = Vec::new();
        // ACME sites count too: theirs arrives later, and would lose to the file's silently.
        for site in sites.iter().filter(|s| s.tls.cert.is_some() || s.tls.acme) {
            for pattern in &site.hosts {
                let name = match pattern {
                    HostPattern::Exact { host, .. } => host.clone(),
                    HostPattern::Wildcard { suffix, .. } => format!("*{suffix}"),
                };
                match owner.get(&name) {
                    Some(first) if *first != site.name => {
                        conflicts.push((name, first.to_string(), site.name.clone()))
                    }
                    Some(_) => {}
                    None => {
                        owner.insert(name, &site.name);
                    }
                }
            }
        }
        conflicts
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcards.is_empty()
    }

    /// The certificate for a (normalised) SNI name.
    pub fn lookup(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        self.exact.get(name).or_else(|| {
            self.wildcards
                .iter()
                .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
                .map(|(_, cert)| cert)
        })
    }
}

/// The resolver rustls asks during each handshake. Its table can be replaced while serving
/// (a config reload, a renewed certificate): handshakes already under way keep the
/// certificate they were given, new ones see the new table.
pub struct SniResolver {
    table: RwLock<Arc<CertTable>>,
    /// Certificates obtained by ACME (`tls::acme`), replaced on their own schedule: a config
    /// reload swaps `table` without losing them. Asked only for names `table` lacks.
    acme: RwLock<Arc<CertTable>>,
}

impl SniResolver {
    pub fn new(table: CertTable) -> SniResolver {
        SniResolver {
            table: RwLock::new(Arc::new(table)),
            acme: RwLock::new(Arc::new(CertTable::default())),
        }
    }

    /// Swaps in a new table for the handshakes that follow.
    pub fn replace(&self, table: CertTable) {
        let table = Arc::new(table);
        match self.table.write() {
            Ok(mut slot) => *slot = table,
            // A panic while swapping cannot leave a half-written Arc behind.
            Err(poisoned) => *poisoned.into_inner() = table,
        }
    }

    /// Swaps in the certificates ACME holds now.
    pub fn replace_acme(&self, table: CertTable) {
        let table = Arc::new(table);
        match self.acme.write() {
            Ok(mut slot) => *slot = table,
            Err(poisoned) => *poisoned.into_inner() = table,
        }
    }

    fn current(&self) -> Arc<CertTable> {
        match self.table.read() {
            Ok(table) => table.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn current_acme(&self) -> Arc<CertTable> {
        match self.acme.read() {
            Ok(table) => table.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The certificate for `sni` as a client would send it (any case, maybe a trailing dot).
    pub fn certificate_for(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        let name = super::SniName::new(sni)?;
        let found = self.current().lookup(name.as_str()).cloned();
        found.or_else(|| self.current_acme().lookup(name.as_str()).cloned())
    }
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let table = self.current();
        f.debug_struct("SniResolver")
            .field("names", &table.exact.len())
            .field("wildcards", &table.wildcards.len())
            .finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // No SNI: there is no way to know which municipality the client wants.
        let sni = hello.server_name()?;
        let cert = self.certificate_for(sni);
        if cert.is_none() {
            tracing::debug!(
                sni,
                "TLS handshake for a name no site has a certificate for"
            );
        }
        cert
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    /// A key with a placeholder certificate: the table only hands certificates out.
    fn cert() -> Arc<CertifiedKey> {
        let pair = rcgen::KeyPair::generate().unwrap();
        let der = PrivateKeyDer::try_from(pair.serialize_der()).unwrap();
        let signing = super::super::provider()
            .key_provider
            .load_private_key(der)
            .unwrap();
        Arc::new(CertifiedKey::new(
            vec![CertificateDer::from(vec![0])],
            signing,
        ))
    }

    fn site(name: &str, hosts: &[&str], cert: &Arc<CertifiedKey>) -> SiteConfig {
        let mut site = SiteConfig::new(name, hosts, "http://127.0.0.1:1").unwrap();
        site.tls.cert = Some(cert.clone());
        site
    }

    fn same(found: Option<Arc<CertifiedKey>>, expected: &Arc<CertifiedKey>) -> bool {
        found.is_some_and(|f| Arc::ptr_eq(&f, expected))
    }

    #[test]
    fn exact_names_then_the_longest_wildcard_and_nothing_else() {
        let (a, b, c) = (cert(), cert(), cert());
        let plain = SiteConfig::new("plain", &["www.plain.test"], "http://127.0.0.1:1").unwrap();
        let sites = [
            site("a", &["www.a.test", "*.test.jp"], &a),
            site("b", &["*.city.test.jp"], &b),
            site("c", &["x.city.test.jp:8443"], &c),
            plain,
        ];
        let resolver = SniResolver::new(CertTable::new(&sites));
        assert!(same(resolver.certificate_for("www.a.test"), &a));
        assert!(same(resolver.certificate_for("WWW.A.TEST."), &a));
        assert!(same(resolver.certificate_for("pref.test.jp"), &a));
        assert!(same(resolver.certificate_for("www.city.test.jp"), &b));
        assert!(same(resolver.certificate_for("x.city.test.jp"), &c));
        for unknown in ["test.jp", "www.plain.test", "a.test", "evil.example", ""] {
            assert!(resolver.certificate_for(unknown).is_none(), "{unknown}");
        }
    }

    #[test]
    fn a_name_two_certificates_claim_is_a_conflict() {
        let (a, b) = (cert(), cert());
        let sites = [
            site("a", &["www.x.test:443", "*.y.test"], &a),
            site("b", &["www.x.test:8443", "*.y.test:8443"], &b),
        ];
        let conflicts = CertTable::conflicts(&sites);
        let names: Vec<&str> = conflicts.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(names, ["www.x.test", "*.y.test"]);

        // A site whose certificate ACME will bring claims its names as well.
        let mut acme = SiteConfig::new("c", &["www.x.test:8080"], "http://127.0.0.1:1").unwrap();
        acme.tls.acme = true;
        let conflicts = CertTable::conflicts(&[sites[0].clone(), acme]);
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    }

    #[test]
    fn a_replaced_table_serves_the_next_handshakes() {
        let (old, new) = (cert(), cert());
        let resolver = SniResolver::new(CertTable::new(&[site("a", &["www.a.test"], &old)]));
        assert!(same(resolver.certificate_for("www.a.test"), &old));
        resolver.replace(CertTable::new(&[site("a", &["www.a.test"], &new)]));
        assert!(same(resolver.certificate_for("www.a.test"), &new));
    }

    #[test]
    fn acme_certificates_survive_a_table_swap_and_never_shadow_files() {
        let (file, acme, other) = (cert(), cert(), cert());
        let resolver = SniResolver::new(CertTable::new(&[site("a", &["www.a.test"], &file)]));
        assert!(resolver.certificate_for("www.acme.test").is_none());
        resolver.replace_acme(CertTable::new(&[
            site("b", &["www.acme.test"], &acme),
            site("c", &["www.a.test"], &other),
        ]));
        assert!(same(resolver.certificate_for("www.acme.test"), &acme));
        assert!(same(resolver.certificate_for("www.a.test"), &file));
        resolver.replace(CertTable::default());
        assert!(same(resolver.certificate_for("www.acme.test"), &acme));
    }
}
