//! The admin API from a test: a Kagami with its admin listener on 127.0.0.1:0, and calls to
//! `/purge` and `/status` with or without the bearer token.

use std::time::Duration;

use kagami::config::{AdminConfig, Config, SiteConfig};

use super::Kagami;

pub const TOKEN: &str = "test-admin-token";

/// A Kagami serving `sites`, its admin API behind `token`; returns it and the admin base URL.
pub async fn start(sites: Vec<SiteConfig>, token: Option<&str>) -> (Kagami, String) {
    let mut config = Config::new(vec!["127.0.0.1:0".parse().unwrap()], sites);
    config.log.access = false;
    config.admin = Some(AdminConfig::new("127.0.0.1:0".parse().unwrap(), token));
    let kagami = Kagami::start_config(config).await;
    let admin = kagami.running.admin_addr.expect("an admin listener");
    (kagami, format!("http://{admin}"))
}

/// Status and body of an admin request.
pub async fn send(request: reqwest::RequestBuilder) -> (u16, String) {
    let response = tokio::time::timeout(Duration::from_secs(10), request.send())
        .await
        .expect("admin answered in time")
        .expect("admin request succeeded");
    let status = response.status().as_u16();
    (status, response.text().await.expect("a body"))
}

/// `POST /purge` with the JSON `body`.
pub async fn purge(kagami: &Kagami, base: &str, body: &str, token: Option<&str>) -> (u16, String) {
    let mut request = (kagami.client.post(format!("{base}/purge")))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    send(request).await
}

/// A purge that must succeed; returns how many objects it affected.
pub async fn purged(kagami: &Kagami, base: &str, body: &str) -> u64 {
    let (status, answer) = purge(kagami, base, body, Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}: {answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).expect("a JSON answer");
    answer["purged"].as_u64().expect("a count")
}

/// `GET /status` with the token, parsed.
pub async fn status(kagami: &Kagami, base: &str) -> serde_json::Value {
    let request = kagami
        .client
        .get(format!("{base}/status"))
        .bearer_auth(TOKEN);
    let (code, body) = send(request).await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("status is JSON")
}
