//! A minimal origin that keeps every request it received, body included (the scriptable
//! [`Origin`](super::Origin) discards request bodies).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

/// One request as a [`RecordingOrigin`] received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub content_length: Option<String>,
    /// The whole body; empty when it did not arrive whole.
    pub body: Bytes,
    /// The error that ended a body that did not arrive whole.
    pub error: Option<String>,
}

impl Received {
    /// The length of the body, or the error that ended it.
    pub fn outcome(&self) -> Result<usize, String> {
        match &self.error {
            None => Ok(self.body.len()),
            Some(err) => Err(err.clone()),
        }
    }
}

/// Answers every request 200 with `answer(what it received)`, once the body has been read.
pub struct RecordingOrigin {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl RecordingOrigin {
    pub async fn start(answer: fn(&Received) -> String) -> RecordingOrigin {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let log = received.clone();
        let addr = super::spawn_origin(move |request: Request<Incoming>| {
            let log = log.clone();
            async move {
                let method = request.method().to_string();
                let path = request.uri().path().to_string();
                let content_length = request
                    .headers()
                    .get("content-length")
                    .map(|v| v.to_str().unwrap().to_string());
                let (body, error) = match request.into_body().collect().await {
                    Ok(body) => (body.to_bytes(), None),
                    Err(err) => (Bytes::new(), Some(err.to_string())),
                };
                let received = Received {
                    method,
                    path,
                    content_length,
                    body,
                    error,
                };
                let text = answer(&received);
                log.lock().unwrap().push(received);
                Response::new(Full::new(Bytes::from(text)))
            }
        })
        .await;
        RecordingOrigin { addr, received }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// What became of each request body so far: its length, or the error that ended it.
    pub fn outcomes(&self) -> Vec<Result<usize, String>> {
        self.received().iter().map(Received::outcome).collect()
    }
}
