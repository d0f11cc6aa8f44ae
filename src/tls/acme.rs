//! Automatic certificates for sites with `acme = true` (instant-acme, HTTP-01): stored ones are
//! put in the SNI table at start, missing or ageing ones are ordered in the background, and
//! each new certificate joins the table live. Until a site has one, its HTTPS handshakes fail
//! cleanly (no certificate for the name) while plain HTTP serves it as usual.
//!
//! The CA checks each name by fetching `/.well-known/acme-challenge/<token>` over plain HTTP;
//! the plain listeners answer those from `AcmeState` before any routing or caching.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AuthorizationStatus, BodyWrapper, ChallengeType, HttpClient, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::acme_store::{Issued, Store};
use super::renewal::{Outcome, Schedule};
use super::{CertTable, SniResolver};
use crate::config::{AcmeConfig, Config, SiteConfig, ACME_CHALLENGE_PREFIX};

/// Without anything due, look again this often (a clock that jumped, a CA that recovered).
const CHECK_EVERY: Duration = Duration::from_secs(3600);
/// One whole issuance (account, order, validation, certificate); a CA that stops answering
/// must not stall renewals for the other sites forever.
const ISSUE_LIMIT: Duration = Duration::from_secs(300);
/// How long the CA may take to validate the challenges, then to sign.
const VALIDATION_LIMIT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME: {0}")]
    Protocol(#[from] instant_acme::Error),
    #[error("{0}")]
    Other(String),
}

/// What the request path needs to know of ACME: the HTTP-01 answers offered right now
/// (token -> the name it proves and the key authorization), and which sites have a
/// certificate yet.
#[derive(Default)]
pub struct AcmeState {
    tokens: RwLock<HashMap<String, Offered>>,
    issued: RwLock<HashSet<String>>,
}

impl AcmeState {
    /// Whether the ACME site `site` has a certificate: until then its `https_redirect` is not
    /// applied, as the redirect would lead to a failing handshake.
    pub fn has_certificate(&self, site: &str) -> bool {
        let issued = self.issued.read().unwrap_or_else(|p| p.into_inner());
        issued.contains(site)
    }

    fn set_issued(&self, sites: HashSet<String>) {
        *self.issued.write().unwrap_or_else(|p| p.into_inner()) = sites;
    }

    /// The answer for a request path asked with Host `host` (normalised: lowercase, no port,
    /// no trailing dot), if it is a challenge this Kagami is taking part in for that very name.
    /// The CA asks each name's token on that name (RFC 8555 §8.3), so any other Host (another
    /// site's, a name no site has) goes on to routing like any request, and an origin behind
    /// another site may run its own ACME client. Other challenge paths go on to the site too.
    pub fn answer(&self, path: &str, host: &str) -> Option<String> {
        let token = path.strip_prefix(ACME_CHALLENGE_PREFIX)?;
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        let offered = tokens.get(token)?;
        (offered.name == host).then(|| offered.key_authorization.clone())
    }

    /// Offers `key_authorization` for `token` on the DNS name `name` until withdrawn. The ACME
    /// manager does this for each authorization of an order; public for tests.
    pub fn publish(&self, token: &str, name: &str, key_authorization: &str) {
        let offered = Offered {
            name: name.trim_end_matches('.').to_ascii_lowercase(),
            key_authorization: key_authorization.to_string(),
        };
        let mut tokens = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        tokens.insert(token.to_string(), offered);
    }

    fn withdraw(&self, token: &str) {
        let mut tokens = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        tokens.remove(token);
    }
}

/// One HTTP-01 answer on offer: the DNS name it proves (normalised as `Authority::host`).
struct Offered {
    name: String,
    key_authorization: String,
}

/// Withdraws the tokens of one order however it ends (done, failed, timed out, cancelled).
struct Published<'a> {
    challenges: &'a AcmeState,
    tokens: Vec<String>,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        for token in &self.tokens {
            self.challenges.withdraw(token);
        }
    }
}

/// One site with `acme = true`, with the state of its certificate.
struct Managed {
    site: SiteConfig,
    names: Vec<String>,
    issued: Option<Issued>,
    /// No attempt before a hold (after failures, or a certificate that came already old),
    /// and the hold after the next one (`renewal`).
    schedule: Schedule,
}

struct Manager {
    acme: AcmeConfig,
    store: Store,
    sites: Vec<Managed>,
    resolver: Arc<SniResolver>,
    state: Arc<AcmeState>,
    account: Option<Account>,
    /// The ACME sites of each reload; `None` once the sender is gone (the process is ending).
    reloads: Option<watch::Receiver<Vec<SiteConfig>>>,
}

/// The ACME sites of a config (`acme = true`), as the manager is told of them at start and on
/// every reload.
pub fn acme_sites(config: &Config) -> Vec<SiteConfig> {
    (config.sites.iter().filter(|s| s.tls.acme))
        .cloned()
        .collect()
}

/// Puts the stored certificates of `config`'s ACME sites in `resolver` at once, then keeps
/// them issued and renewed in the background. `reloads` brings the ACME sites of each reloaded
/// config: added sites are ordered (or their stored certificate used), removed ones dropped.
/// `None` when the config has no `[acme]` section (adding one needs a restart).
pub fn start(
    config: &Config,
    resolver: Arc<SniResolver>,
    state: Arc<AcmeState>,
    reloads: watch::Receiver<Vec<SiteConfig>>,
) -> Option<JoinHandle<()>> {
    let acme = config.acme.clone()?;
    let store = Store::new(&acme.state_dir);
    let now = SystemTime::now();
    let sites: Vec<Managed> = (acme_sites(config).into_iter())
        .map(|site| Managed::load(&store, site, now))
        .collect();
    let manager = Manager {
        acme,
        store,
        sites,
        resolver,
        state,
        account: None,
        reloads: Some(reloads),
    };
    manager.install();
    Some(tokio::spawn(manager.run()))
}

impl Managed {
    /// A site to manage, with its stored certificate if `state_dir` has a usable one.
    fn load(store: &Store, site: SiteConfig, now: SystemTime) -> Managed {
        let issued = match store.load_cert(&site.name, &site.hosts) {
            Ok(Some(issued)) => {
                tracing::info!(
                    site = %site.name,
                    expires = %humantime::format_rfc3339_seconds(issued.not_after),
                    renew_after = %humantime::format_rfc3339_seconds(issued.renew_at()),
                    "ACME certificate from state_dir"
                );
                Some(issued)
            }
            Ok(None) => None,
            Err(reason) => {
                tracing::warn!(site = %site.name, %reason, "stored ACME certificate not usable: ordering a new one");
                None
            }
        };
        Managed {
            names: crate::config::dns_names(&site.hosts),
            site,
            issued,
            schedule: Schedule::new(now),
        }
    }
}

impl Manager {
    /// Swaps the ACME part of the SNI table for the certificates held now.
    fn install(&self) {
        let sites: Vec<SiteConfig> = (self.sites.iter())
            .filter_map(|m| {
                let mut site = m.site.clone();
                site.tls.cert = Some(m.issued.as_ref()?.key.clone());
                Some(site)
            })
            .collect();
        self.resolver.replace_acme(CertTable::new(&sites));
        self.state
            .set_issued(sites.into_iter().map(|s| s.name).collect());
    }

    async fn run(mut self) {
        loop {
            let now = SystemTime::now();
            for i in 0..self.sites.len() {
                if self.due(i) > now {
                    continue;
                }
                let result = tokio::time::timeout(ISSUE_LIMIT, self.issue(i)).await;
                let result = result.unwrap_or_else(|_| {
                    Err(AcmeError::Other(format!(
                        "no certificate within {}s",
                        ISSUE_LIMIT.as_secs()
                    )))
                });
                let managed = &mut self.sites[i];
                let now = SystemTime::now();
                match result {
                    Ok(issued) => {
                        let validity = issued.validity();
                        tracing::info!(
                            site = %managed.site.name, names = ?managed.names,
                            expires = %humantime::format_rfc3339_seconds(issued.not_after),
                            renew_after = %humantime::format_rfc3339_seconds(issued.renew_at()),
                            "ACME certificate issued; serving it over HTTPS"
                        );
                        if validity.came_old(now) {
                            tracing::warn!(
                                site = %managed.site.name,
                                next_order_in = ?managed.schedule.backoff,
                                "the ACME certificate came more than halfway through its life \
                                 (very short certificates, or this machine's clock is ahead): \
                                 the next order waits for the backoff"
                            );
                        }
                        managed.issued = Some(issued);
                        managed.schedule = managed.schedule.after(now, Outcome::Issued(validity));
                        // At once, not after the other sites' orders.
                        self.install();
                    }
                    Err(error) => {
                        tracing::warn!(
                            site = %managed.site.name, %error,
                            retry_in = ?managed.schedule.backoff,
                            has_certificate = managed.issued.is_some(),
                            "ACME certificate not obtained; will retry"
                        );
                        managed.schedule = managed.schedule.after(now, Outcome::Failed);
                        // A broken account (deleted at the CA, wrong key) is fetched again.
                        self.account = None;
                    }
                }
            }
            let now = SystemTime::now();
            let next = (0..self.sites.len()).map(|i| self.due(i)).min();
            let wait = next
                .and_then(|at| at.duration_since(now).ok())
                .unwrap_or(Duration::ZERO)
                .clamp(Duration::from_secs(1), CHECK_EVERY);
            self.wait(wait).await;
        }
    }

    /// Sleeps `wait`, or less when a reload changes the ACME sites (they are applied then).
    async fn wait(&mut self, wait: Duration) {
        let Some(reloads) = self.reloads.as_mut() else {
            return tokio::time::sleep(wait).await;
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            changed = reloads.changed() => match changed {
                Ok(()) => {
                    let sites = reloads.borrow_and_update().clone();
                    self.reconcile(sites);
                }
                Err(_) => self.reloads = None,
            },
        }
    }

    /// Manages `sites` from now on: a site whose names are unchanged keeps its certificate
    /// and schedule (its other settings are taken from the new config); a new site, or one
    /// with other names, starts from `state_dir` (ordered at once if nothing usable is
    /// there); a site no longer listed is dropped, and its certificate leaves the SNI table.
    fn reconcile(&mut self, sites: Vec<SiteConfig>) {
        let now = SystemTime::now();
        let mut old: HashMap<String, Managed> = (self.sites.drain(..))
            .map(|m| (m.site.name.clone(), m))
            .collect();
        self.sites = (sites.into_iter())
            .map(|site| match old.remove(&site.name) {
                Some(mut kept) if kept.names == crate::config::dns_names(&site.hosts) => {
                    kept.site = site;
                    kept
                }
                _ => {
                    tracing::info!(site = %site.name, "ACME site added or its names changed by a reload");
                    Managed::load(&self.store, site, now)
                }
            })
            .collect();
        for name in old.keys() {
            tracing::info!(site = %name, "ACME site removed by a reload: its certificate is no longer served");
        }
        self.install();
    }

    /// When site `i` next needs an attempt.
    fn due(&self, i: usize) -> SystemTime {
        let managed = &self.sites[i];
        (managed.schedule).due(managed.issued.as_ref().map(Issued::validity))
    }

    async fn account(&mut self) -> Result<Account, AcmeError> {
        if let Some(account) = &self.account {
            return Ok(account.clone());
        }
        let directory = self.acme.directory.clone();
        let builder = Account::builder_with_http(http_client(&self.acme)?);
        let account = match self.store.load_account(&directory) {
            Some(credentials) => builder.from_credentials(credentials).await?,
            None => {
                let contact = self.acme.email.as_ref().map(|e| format!("mailto:{e}"));
                let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
                let new = NewAccount {
                    contact: &contact,
                    // Configuring [acme] is the operator's agreement to the CA's terms.
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                };
                let (account, credentials) = builder.create(&new, directory.clone(), None).await?;
                self.store
                    .save_account(&directory, credentials)
                    .map_err(|e| {
                        AcmeError::Other(format!(
                            "cannot store the ACME account in {}: {e}",
                            self.acme.state_dir.display()
                        ))
                    })?;
                tracing::info!(%directory, account = account.id(), "ACME account created");
                account
            }
        };
        self.account = Some(account.clone());
        Ok(account)
    }

    /// Orders, validates and stores a certificate for site `i`.
    async fn issue(&mut self, i: usize) -> Result<Issued, AcmeError> {
        let account = self.account().await?;
        let managed = &self.sites[i];
        tracing::info!(site = %managed.site.name, names = ?managed.names, "ordering an ACME certificate");
        let identifiers: Vec<Identifier> = (managed.names.iter())
            .map(|n| Identifier::Dns(n.clone()))
            .collect();
        let mut order = match account.new_order(&NewOrder::new(&identifiers)).await {
            Ok(order) => order,
            Err(instant_acme::Error::Api(problem)) if account_gone(&problem) => {
                // Deactivated or deleted at the CA: the stored credentials would fail forever.
                self.store.forget_account();
                return Err(instant_acme::Error::Api(problem).into());
            }
            Err(e) => return Err(e.into()),
        };
        let mut published = Published {
            challenges: &self.state,
            tokens: Vec::new(),
        };
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization?;
            match authorization.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(AcmeError::Other(format!(
                        "authorization for {} is {other:?}",
                        authorization.identifier()
                    )))
                }
            }
            let mut challenge = authorization
                .challenge(ChallengeType::Http01)
                .ok_or_else(|| AcmeError::Other("the CA offers no http-01 challenge".into()))?;
            let Identifier::Dns(name) = challenge.identifier().identifier else {
                return Err(AcmeError::Other(format!(
                    "the CA asks to validate {}, which is not a DNS name",
                    challenge.identifier()
                )));
            };
            let name = name.clone();
            let answer = challenge.key_authorization();
            self.state.publish(&challenge.token, &name, answer.as_str());
            published.tokens.push(challenge.token.clone());
            challenge.set_ready().await?;
        }
        let patience = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .timeout(VALIDATION_LIMIT);
        let status = order.poll_ready(&patience).await?;
        if status != OrderStatus::Ready {
            let reason = order.state().error.as_ref().map(|e| e.to_string());
            return Err(AcmeError::Other(format!(
                "order is {status:?} after validation: {}",
                reason.as_deref().unwrap_or("the CA gave no reason")
            )));
        }
        drop(published);
        let key_pem = order.finalize().await?;
        let chain_pem = order.poll_certificate(&patience).await?;
        let name = &managed.site.name;
        self.store
            .save_cert(name, &chain_pem, &key_pem)
            .map_err(|e| AcmeError::Other(format!("cannot store the certificate: {e}")))?;
        // Read back what was stored: the same checks as for a restart, so a certificate that
        // would not load after one is not served now either.
        match self.store.load_cert(name, &managed.site.hosts) {
            Ok(Some(issued)) => Ok(issued),
            Ok(None) => Err(AcmeError::Other("the stored certificate vanished".into())),
            Err(reason) => Err(AcmeError::Other(format!(
                "the CA's certificate is not usable: {reason}"
            ))),
        }
    }
}

/// Whether the CA says the account itself is unusable (RFC 8555 §6.7, §7.3.6).
fn account_gone(problem: &instant_acme::Problem) -> bool {
    problem.r#type.as_deref().is_some_and(|t| {
        t.ends_with(":accountDoesNotExist")
            || (t.ends_with(":unauthorized")
                && problem.status == Some(403)
                && problem
                    .detail
                    .as_deref()
                    .is_some_and(|d| d.contains("deactivated")))
    })
}

/// The client instant-acme talks to the CA with: Kagami's crypto provider, the system's roots
/// and `acme.ca_bundle`.
fn http_client(acme: &AcmeConfig) -> Result<Box<dyn HttpClient>, AcmeError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // One odd system certificate must not keep ACME from working.
        let _ = roots.add(cert);
    }
    for cert in &acme.ca_bundle {
        roots
            .add(cert.clone())
            .map_err(|e| AcmeError::Other(format!("acme.ca_bundle: {e}")))?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| AcmeError::Other(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let client: HyperClient<_, BodyWrapper<Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build(connector);
    Ok(Box::new(client))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_published_tokens_are_answered_on_their_name_and_withdrawn_after_the_order() {
        let challenges = AcmeState::default();
        challenges.publish("tok", "WWW.A.Example.", "tok.thumb");
        let path = "/.well-known/acme-challenge/tok";
        assert_eq!(
            challenges.answer(path, "www.a.example").as_deref(),
            Some("tok.thumb")
        );
        assert!(challenges.answer(path, "other.example").is_none());
        assert!(challenges
            .answer("/.well-known/acme-challenge/other", "www.a.example")
            .is_none());
        assert!(challenges.answer("/tok", "www.a.example").is_none());
        drop(Published {
            challenges: &challenges,
            tokens: vec!["tok".into()],
        });
        assert!(challenges.answer(path, "www.a.example").is_none());
    }
}
