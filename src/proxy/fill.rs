//! Relaying an origin body to the client while (optionally) storing it.
//!
//! A task reads the origin as fast as it delivers. When the response is being stored, a slow or
//! departed client never holds up the store (the chunks are kept for the store anyway); when it
//! is not, up to `RELAY_BUFFER` is held for a slow client, and only beyond that does the client's
//! pace apply back-pressure to the origin. The origin slot is released the moment the origin
//! body is in. A body cut short is never stored, and the client's body ends in an error so that
//! its connection is aborted rather than given a short 200.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderMap, StatusCode};
use tokio::sync::mpsc;

use super::body::{Body, Truncated};
use super::Outcome;
use crate::cache::coalesce::Leader;
use crate::cache::{Entry, MemoryStore, StoreSettings};
use crate::origin::Slot;

/// How far a client may lag behind the origin on a response that is not stored before its pace
/// holds the origin back. Below it the origin is read at full speed and its slot is freed as soon
/// as the body is in (what nginx calls proxy buffering, in memory).
const RELAY_BUFFER: usize = 1 << 20;

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
    origin_slot: Option<Slot>,
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
    mut origin_slot: Option<Slot>,
) {
    let mut stream = response.bytes_stream();
    // The whole body, while it is being stored.
    let mut stored: Vec<Bytes> = Vec::new();
    // Chunks not yet handed to the client, and their size.
    let mut pending: VecDeque<Bytes> = VecDeque::new();
    let mut pending_bytes = 0usize;
    let mut received: u64 = 0;
    let mut client_open = want_body;

    loop {
        // Hand the client whatever it can take without waiting for it.
        while client_open {
            let Some(front) = pending.front() else { break };
            match tx.try_send(Ok(front.clone())) {
                Ok(()) => {
                    pending_bytes -= front.len();
                    pending.pop_front();
                }
                Err(mpsc::error::TrySendError::Full(_)) => break,
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    client_open = false;
                    pending.clear();
                    pending_bytes = 0;
                }
            }
        }
        if !client_open && job.is_none() {
            // Nobody wants the rest: stop reading the origin.
            return;
        }
        // Not storing and the client lags too far behind: now its pace sets the origin's.
        if job.is_none() && pending_bytes > RELAY_BUFFER {
            if let Some(front) = pending.pop_front() {
                pending_bytes -= front.len();
                if tx.send(Ok(front)).await.is_err() {
                    return;
                }
            }
            continue;
        }
        match stream.next().await {
            Some(Ok(chunk)) => {
                received += chunk.len() as u64;
                if job.as_ref().is_some_and(|j| received > j.max_size) {
                    // Too large to store after all: keep relaying, stop storing.
                    job = None;
                    stored = Vec::new();
                    if let Some(l) = leader.take() {
                        l.finish(Outcome::Uncacheable);
                    }
                }
                if job.is_some() {
                    stored.push(chunk.clone());
                }
                if client_open {
                    pending_bytes += chunk.len();
                    pending.push_back(chunk);
                }
            }
            Some(Err(err)) => {
                origin_slot.take();
                tracing::warn!(error = %err, received, "origin body failed; not storing");
                finish_client(&tx, pending, client_open, Some(Truncated(err.to_string()))).await;
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
        let cut = Truncated(format!("{received} of {expected:?} bytes"));
        finish_client(&tx, pending, client_open, Some(cut)).await;
        return;
    }
    if let Some(job) = job {
        let mut body = BytesMut::with_capacity(received as usize);
        for chunk in &stored {
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
    } else if let Some(l) = leader.take() {
        l.finish(Outcome::Uncacheable);
    }
    finish_client(&tx, pending, client_open, None).await;
}

/// Sends the client what it has not had yet, then the error that aborts its connection, if any.
async fn finish_client(
    tx: &mpsc::Sender<Result<Bytes, Truncated>>,
    pending: VecDeque<Bytes>,
    client_open: bool,
    error: Option<Truncated>,
) {
    if !client_open {
        return;
    }
    for chunk in pending {
        if tx.send(Ok(chunk)).await.is_err() {
            return;
        }
    }
    if let Some(error) = error {
        let _ = tx.send(Err(error)).await;
    }
}
