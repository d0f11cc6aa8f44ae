//! Relaying an origin body to the client while (optionally) storing it.
//!
//! A task reads the origin as fast as it delivers. When the response is being stored, a slow or
//! departed client never holds up the store (the chunks are kept for the store anyway); when it
//! is not, the client's pace applies back-pressure to the origin. A body cut short is never
//! stored, and the client's body ends in an error so that its connection is aborted rather than
//! given a short 200.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderMap, StatusCode};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::body::{Body, Truncated};
use super::Outcome;
use crate::cache::coalesce::Leader;
use crate::cache::{Entry, MemoryStore, StoreSettings};

/// Everything needed to turn a complete body into a stored entry.
pub struct StoreJob {
    pub store: MemoryStore,
    pub key: String,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub request_headers: HeaderMap,
    pub request_time: SystemTime,
    pub response_time: SystemTime,
    pub settings: StoreSettings,
    pub max_size: u64,
}

/// Starts relaying `response`'s body; returns the client's body. With `job`, the complete body
/// is stored and `leader` finishes with it; otherwise (or if the body turns out too large) the
/// leader finishes as uncacheable so that waiters fetch for themselves.
pub fn relay(
    response: reqwest::Response,
    job: Option<StoreJob>,
    leader: Option<Leader<Outcome>>,
    want_body: bool,
    origin_slot: Option<OwnedSemaphorePermit>,
) -> Body {
    let (tx, rx) = mpsc::channel::<Result<Bytes, Truncated>>(16);
    let expected = response.content_length();
    tokio::spawn(pump(
        response,
        job,
        leader,
        tx,
        expected,
        want_body,
        origin_slot,
    ));
    if want_body {
        Body::Channel(rx)
    } else {
        Body::empty()
    }
}

async fn pump(
    response: reqwest::Response,
    mut job: Option<StoreJob>,
    mut leader: Option<Leader<Outcome>>,
    tx: mpsc::Sender<Result<Bytes, Truncated>>,
    expected: Option<u64>,
    want_body: bool,
    // Held while the origin is being read; released as soon as it is done, not when a slow
    // client has finished downloading.
    mut origin_slot: Option<OwnedSemaphorePermit>,
) {
    let mut stream = response.bytes_stream();
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut sent = 0usize;
    let mut received: u64 = 0;
    let mut client_open = want_body;

    loop {
        match stream.next().await {
            Some(Ok(chunk)) => {
                received += chunk.len() as u64;
                if job.as_ref().is_some_and(|j| received > j.max_size) {
                    // Too large to store after all: relay what is buffered and stop storing.
                    job = None;
                    if let Some(l) = leader.take() {
                        l.finish(Outcome::Uncacheable);
                    }
                    for pending in chunks.drain(sent..) {
                        if client_open && tx.send(Ok(pending)).await.is_err() {
                            client_open = false;
                        }
                    }
                    chunks = Vec::new();
                    sent = 0;
                }
                if job.is_some() {
                    chunks.push(chunk);
                    // Hand the client whatever it can take without waiting for it.
                    while client_open && sent < chunks.len() {
                        match tx.try_send(Ok(chunks[sent].clone())) {
                            Ok(()) => sent += 1,
                            Err(mpsc::error::TrySendError::Full(_)) => break,
                            Err(mpsc::error::TrySendError::Closed(_)) => client_open = false,
                        }
                    }
                } else if !client_open || tx.send(Ok(chunk)).await.is_err() {
                    // Nobody wants the rest: stop reading the origin.
                    return;
                }
            }
            Some(Err(err)) => {
                tracing::warn!(error = %err, received, "origin body failed; not storing");
                if client_open {
                    let _ = tx.send(Err(Truncated(err.to_string()))).await;
                }
                // `leader` is dropped: waiters wake as abandoned and try again.
                return;
            }
            None => break,
        }
    }
    origin_slot.take();

    if expected.is_some_and(|len| len != received) {
        tracing::warn!(
            received,
            ?expected,
            "origin body length mismatch; not storing"
        );
        if client_open {
            let _ = tx
                .send(Err(Truncated(format!("{received} of {expected:?} bytes"))))
                .await;
        }
        return;
    }

    if let Some(job) = job {
        let mut body = BytesMut::with_capacity(received as usize);
        for chunk in &chunks {
            body.extend_from_slice(chunk);
        }
        let entry = Arc::new(Entry::new(
            job.status,
            job.headers,
            body.freeze(),
            &job.request_headers,
            job.request_time,
            job.response_time,
            &job.settings,
        ));
        job.store.insert(job.key, entry.clone());
        if let Some(l) = leader.take() {
            l.finish(Outcome::Stored(entry));
        }
        if client_open {
            for chunk in chunks.drain(sent..) {
                if tx.send(Ok(chunk)).await.is_err() {
                    break;
                }
            }
        }
    } else if let Some(l) = leader.take() {
        l.finish(Outcome::Uncacheable);
    }
}
