//! The origin side of a site: the HTTP client that fetches from it and what Kagami remembers
//! about its recent failures.

mod health;

pub use health::Health;

use std::time::Duration;

use http::{HeaderMap, Method};

use crate::config::SiteConfig;

#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("cannot connect to the origin: {0}")]
    Connect(String),
    #[error("the origin did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the origin request failed: {0}")]
    Other(String),
}

impl OriginError {
    fn from_reqwest(err: reqwest::Error, response_timeout: Duration) -> OriginError {
        if err.is_timeout() {
            OriginError::Timeout(response_timeout)
        } else if err.is_connect() {
            OriginError::Connect(source_chain(&err))
        } else {
            OriginError::Other(source_chain(&err))
        }
    }
}

/// reqwest's top-level message is generic; the cause is at the bottom of the chain.
fn source_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// One site's origin.
pub struct Origin {
    client: reqwest::Client,
    /// `scheme://host[:port]` with no trailing slash; the request's path is appended as is.
    base: String,
    response_timeout: Duration,
    pub health: Health,
}

impl Origin {
    pub fn new(site: &SiteConfig) -> Result<Origin, reqwest::Error> {
        let client = reqwest::Client::builder()
            // Redirects are the client's business: a proxy relays them.
            .redirect(reqwest::redirect::Policy::none())
            // Never route origin traffic through an environment proxy.
            .no_proxy()
            .connect_timeout(site.timeouts.connect)
            .read_timeout(site.timeouts.read)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()?;
        Ok(Origin {
            client,
            base: site.origin.as_str().trim_end_matches('/').to_string(),
            response_timeout: site.timeouts.response,
            health: Health::default(),
        })
    }

    /// Sends a request and waits (at most the response timeout) for the response head.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Option<reqwest::Body>,
    ) -> Result<reqwest::Response, OriginError> {
        let url = format!("{}{}", self.base, path_and_query);
        let mut request = self.client.request(method, url).headers(headers);
        if let Some(body) = body {
            request = request.body(body);
        }
        match tokio::time::timeout(self.response_timeout, request.send()).await {
            Err(_) => Err(OriginError::Timeout(self.response_timeout)),
            Ok(Err(err)) => Err(OriginError::from_reqwest(err, self.response_timeout)),
            Ok(Ok(response)) => Ok(response),
        }
    }
}
