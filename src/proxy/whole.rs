//! Small cache fills read whole before the client is answered, so that `Cache-Status: stored`
//! is only ever said of a body that really was stored (the head goes out before a streamed body
//! is known to be complete, and a body cut short is never stored).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::origin::Slot;

use super::body::{Body, Piece, Relayed, Truncated};
use super::fill::StoreJob;
use super::Outcome;
use crate::cache::coalesce::Leader;
use crate::cache::mapped::FillBuffer;
use crate::cache::Entry;

/// Storable bodies up to this declared length are read whole before answering. Larger ones, and
/// bodies without a length, are streamed (and their `Cache-Status` does not say `stored`).
pub const HOLD_BEFORE_ANSWER: u64 = 256 * 1024;

/// `read_and_store` in its own task: a client that goes away while the body is read does not
/// cancel the fill its waiters are counting on.
pub async fn fill(
    response: reqwest::Response,
    job: StoreJob,
    leader: Option<Leader<Outcome>>,
    want_body: bool,
    origin_slot: Slot,
) -> (Body, bool) {
    let task = tokio::spawn(read_and_store(
        response,
        job,
        leader,
        want_body,
        origin_slot,
    ));
    match task.await {
        Ok(done) => done,
        Err(err) => (
            cut_short(Vec::new(), format!("fill task failed: {err}"), want_body),
            false,
        ),
    }
}

/// Reads the whole body, stores it, and returns the client's body and whether it was stored.
/// A body cut short is not stored: the client gets what came and then an error, so that its
/// connection is aborted rather than given a short answer (as when relaying), and the waiters
/// are told (`cut`).
async fn read_and_store(
    response: reqwest::Response,
    job: StoreJob,
    leader: Option<Leader<Outcome>>,
    want_body: bool,
    origin_slot: Slot,
) -> (Body, bool) {
    let expected = response.content_length();
    let mut stream = response.bytes_stream();
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut received: u64 = 0;
    let mut cut = None;
    while let Some(next) = stream.next().await {
        match next {
            Ok(chunk) => {
                received += chunk.len() as u64;
                chunks.push(chunk);
            }
            Err(err) => {
                cut = Some(err.to_string());
                break;
            }
        }
    }
    drop(origin_slot);
    if cut.is_none() && expected.is_some_and(|len| len != received) {
        cut = Some(format!("{received} of {expected:?} bytes"));
    }
    if let Some(reason) = cut {
        tracing::warn!(received, ?expected, %reason, "origin body cut short; not storing");
        super::cut::publish(leader);
        return (cut_short(chunks, reason, want_body), false);
    }
    // Storage of its own (a large body's pages in a mapping, `cache::mapped`), never the
    // origin's read buffers the chunks are slices of.
    let mut body = FillBuffer::for_length(usize::try_from(received).ok());
    for chunk in &chunks {
        body.extend_from_slice(chunk);
    }
    let body = body.into_stored();
    let entry = Arc::new(Entry::new(
        job.status,
        job.headers,
        body.clone(),
        &job.request_headers,
        job.request_time,
        job.response_time,
        &job.settings,
    ));
    let stored = job.store.insert(job.key, entry.clone());
    if let Some(leader) = leader {
        leader.finish(if stored {
            Outcome::Stored(entry)
        } else {
            Outcome::Uncacheable
        });
    }
    let body = if want_body {
        Body::stored(body)
    } else {
        Body::empty()
    };
    (body, stored)
}

/// The chunks that came, then the error that aborts the client's connection.
fn cut_short(chunks: Vec<Bytes>, reason: String, want_body: bool) -> Body {
    if !want_body {
        return Body::empty();
    }
    let (tx, rx) = mpsc::channel(chunks.len() + 1);
    for chunk in chunks {
        // The channel has room for every chunk and the error.
        let _ = tx.try_send(Ok(Piece::from(chunk)));
    }
    let _ = tx.try_send(Err(Truncated(reason)));
    Body::Channel(Relayed {
        rx,
        abandoned: Arc::new(AtomicBool::new(false)),
    })
}
