//! Relaying an origin body to the client while (optionally) storing it, within the in-flight
//! budget (`proxy::budget`).
//!
//! While a response is being stored, the origin is read at its own pace whatever the client
//! does, and the fill's bytes count against the global budget; past it, the fill stops storing
//! (waiters are told "uncacheable") and goes on as a plain relay. A plain relay reads ahead of
//! its client only while the budget and the client's share have room; past that the client's
//! pace applies back-pressure at once. A relay that has to wait on its client gives its origin
//! slot back, and one whose client takes nothing for the stall timeout is abandoned (the
//! client's body ends in an error). After a fill is stored, the rest of a slow client's body is
//! copied out of the stored entry piece by piece instead of keeping the origin's chunks. A body
//! cut short is never stored, and the client's body ends in an error so that its connection is
//! aborted rather than given a short 200.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, StatusCode};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::body::{Body, Piece, Relayed, Truncated};
use super::budget::{Budget, Charge, Meter, Owner};
use super::Outcome;
use crate::cache::body::StoredBody;
use crate::cache::coalesce::Leader;
use crate::cache::mapped::FillBuffer;
use crate::cache::{Entry, MemoryStore, StoreSettings};
use crate::origin::Slot;

/// Room the budget must have before a relay reads ahead of its client: one chunk as hyper
/// reads them (its read buffer grows past 800 KiB on fast links), so that reading one more
/// rarely takes the count past the cap. Capped at a client's share (see `Budget::has_room`).
const READ_AHEAD_ROOM: u64 = 1 << 20;

/// Size of the pieces copied out of a stored entry for a client that lagged behind the fill.
const STORED_PIECE: usize = 64 * 1024;

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
    /// The fill's claim on the in-flight budget (the whole body when its length is known).
    pub fill: Charge,
}

/// Whose relay this is and how long it may wait on its client.
pub struct RelayLimits {
    pub budget: Arc<Budget>,
    pub client: IpAddr,
    /// How long a client may take nothing before its relay is abandoned.
    pub stall: Duration,
}

/// Starts relaying `response`'s body; returns the client's body. With `job`, the complete body
/// is stored and `leader` finishes with it; otherwise (or if the body turns out too large, or
/// the budget runs out) the leader finishes as uncacheable so that waiters fetch for themselves.
pub fn relay(
    response: reqwest::Response,
    job: Option<StoreJob>,
    leader: Option<Leader<Outcome>>,
    want_body: bool,
    origin_slot: Option<Slot>,
    limits: RelayLimits,
) -> Body {
    // One piece in the channel: everything else a slow client holds up is counted in the
    // budget, not hidden in a queue.
    let (tx, rx) = mpsc::channel::<Result<Piece, Truncated>>(1);
    let abandoned = Arc::new(AtomicBool::new(false));
    let client = Client {
        lag: limits.budget.charge(Owner::Client(limits.client)),
        owner: Owner::Client(limits.client),
        budget: limits.budget,
        stall: limits.stall,
        tx,
        open: want_body,
        abandoned: abandoned.clone(),
        meter: Arc::new(Meter::default()),
        pending: VecDeque::new(),
        pending_bytes: 0,
        rest: None,
        last_progress: Instant::now(),
    };
    tokio::spawn(pump(response, job, leader, client, origin_slot));
    if want_body {
        Body::Channel(Relayed { rx, abandoned })
    } else {
        Body::empty()
    }
}

/// The client's side of a relay: what it still has to get, and its claim on the budget.
struct Client {
    budget: Arc<Budget>,
    owner: Owner,
    stall: Duration,
    tx: mpsc::Sender<Result<Piece, Truncated>>,
    open: bool,
    abandoned: Arc<AtomicBool>,
    meter: Arc<Meter>,
    /// Origin chunks not yet handed over, counted in `lag`.
    pending: VecDeque<Bytes>,
    pending_bytes: u64,
    /// Bytes held for this client alone (pending chunks, or the stored rest it still needs).
    lag: Charge,
    /// After a fill is stored: the rest of the body comes from the stored entry.
    rest: Option<Rest>,
    last_progress: Instant,
}

/// The part of a stored body a lagging client has not had yet. Held strongly while the budget
/// counts it; otherwise weakly, so a slow client never keeps an evicted body alive.
struct Rest {
    entry: Held,
    offset: usize,
}

enum Held {
    Strong(Arc<Entry>),
    Weak(Weak<Entry>),
}

impl Client {
    fn has_more(&self) -> bool {
        self.open && (!self.pending.is_empty() || self.rest.is_some())
    }

    /// Nothing of this relay is waiting in the channel or in hyper's buffer: the client has
    /// taken everything it was given.
    fn caught_up(&self) -> bool {
        self.meter.outstanding() == 0
    }

    /// Hands the client every piece it can take now.
    fn hand_over(&mut self) {
        while self.has_more() {
            let permit = match self.tx.clone().try_reserve_owned() {
                Ok(permit) => permit,
                Err(mpsc::error::TrySendError::Full(_)) => return,
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.close();
                    return;
                }
            };
            let piece = if self.rest.is_some() {
                match self.stored_piece() {
                    Some(piece) => piece,
                    None => return,
                }
            } else {
                let Some(bytes) = self.pending.pop_front() else {
                    return;
                };
                let len = bytes.len() as u64;
                self.pending_bytes -= len;
                Piece::new(bytes, Some(self.lag.split_off(len, &self.meter)))
            };
            permit.send(Ok(piece));
            self.last_progress = Instant::now();
        }
    }

    /// A fresh claim for one stored piece (at most `STORED_PIECE`), counted in the client's
    /// meter. Past the client's share (never the global cap) when this connection has taken
    /// everything it was given: the client's other connections, or others behind the same
    /// address, may hold its share, and a small stored page must not wait for them.
    fn own_charge(&mut self, len: u64) -> Option<Charge> {
        let mut charge = self.budget.charge(self.owner);
        if !charge.try_grow(len) {
            if !(self.caught_up() && self.budget.has_room(Owner::Shared, len)) {
                return None;
            }
            charge.force_grow(len);
        }
        Some(charge.split_off(len, &self.meter))
    }

    /// The next piece of a stored body, copied so that the client never holds the entry.
    fn stored_piece(&mut self) -> Option<Piece> {
        let rest = self.rest.as_mut()?;
        let entry = match &rest.entry {
            Held::Strong(entry) => entry.clone(),
            Held::Weak(weak) => match weak.upgrade() {
                Some(entry) => entry,
                None => {
                    // Evicted while the client dawdled, and not counted: give up on it.
                    self.abandon();
                    return None;
                }
            },
        };
        let end = (rest.offset + STORED_PIECE).min(entry.body.len());
        let bytes = entry.body.copy_range(rest.offset, end);
        let len = bytes.len() as u64;
        let strong = matches!(rest.entry, Held::Strong(_));
        let charge = if strong {
            // The rest is already counted: the piece takes its share of that claim.
            self.lag.split_off(len, &self.meter)
        } else {
            self.own_charge(len)?
        };
        let rest = self.rest.as_mut()?;
        rest.offset = end;
        if end >= entry.body.len() {
            self.rest = None;
        }
        Some(Piece::new(bytes, Some(charge)))
    }

    /// The client is gone: nothing more is kept for it.
    fn close(&mut self) {
        self.open = false;
        self.pending.clear();
        self.pending_bytes = 0;
        self.rest = None;
        self.lag.shrink_to(0);
    }

    /// Gives up on a client that took too long: its body will end in an error.
    fn abandon(&mut self) {
        self.abandoned.store(true, Ordering::Release);
        self.close();
    }

    /// Waits until the client takes something, the budget frees up, or its stall time is up;
    /// returns false when the client stalled.
    async fn wait(&mut self) -> bool {
        let deadline = self.last_progress + self.stall;
        tokio::select! {
            _ = self.meter.taken.notified() => {
                self.last_progress = Instant::now();
                true
            }
            _ = self.budget.freed() => true,
            _ = tokio::time::sleep_until(deadline) => self.last_progress.elapsed() < self.stall,
        }
    }

    /// Hands over what is left, waiting on the client, then ends its body (with `error`, if
    /// any).
    async fn finish(mut self, error: Option<Truncated>) {
        loop {
            self.hand_over();
            if !self.has_more() {
                break;
            }
            if !self.wait().await {
                self.stalled();
                return;
            }
        }
        if let (true, Some(error)) = (self.open, error) {
            let _ = self.tx.send(Err(error)).await;
        }
    }

    fn stalled(&mut self) {
        self.budget.note_stall();
        tracing::debug!("client took nothing for {:?}; relay abandoned", self.stall);
        self.abandon();
    }
}

async fn pump(
    response: reqwest::Response,
    mut job: Option<StoreJob>,
    mut leader: Option<Leader<Outcome>>,
    mut client: Client,
    // Held while the origin is read; given back as soon as the relay stops reading it to wait
    // (on its client or on the budget), so a client's reading pace never holds an origin slot.
    mut origin_slot: Option<Slot>,
) {
    let expected = response.content_length();
    let mut stream = response.bytes_stream();
    // The body being stored, in storage of its own (never the origin's read buffers; a large
    // one's pages in a mapping, `cache::mapped`), counted in the job's `fill` charge (all of
    // it up front when the length is known).
    let mut fill = Fill {
        body: FillBuffer::for_length(match (&job, expected) {
            (Some(_), Some(len)) => usize::try_from(len).ok(),
            _ => None,
        }),
        behind: None,
    };
    let mut received: u64 = 0;

    loop {
        client.hand_over();
        if !client.open && job.is_none() {
            // Nobody wants the rest: stop reading the origin.
            return;
        }
        // While storing, the origin is read at its own pace; otherwise only while the budget
        // (and the client's quarter of it, shared by all its connections) has room.
        let may_read = job.is_some() || client.budget.has_room(client.owner, READ_AHEAD_ROOM);
        if !may_read {
            origin_slot.take();
            if client.pending.is_empty() && client.caught_up() {
                // Others hold the budget; not this relay's client, so no stall is counted.
                client.budget.freed().await;
            } else if !client.wait().await {
                client.stalled();
                return;
            }
            continue;
        }
        let next = tokio::select! {
            next = stream.next() => next,
            // Keep feeding a client that catches up while the origin is slow.
            _ = client.meter.taken.notified(), if client.has_more() => continue,
        };
        match next {
            Some(Ok(chunk)) => {
                let len = chunk.len() as u64;
                received += len;
                if let Some(j) = job.as_mut() {
                    if received > j.max_size || !fill.append(&chunk, &mut j.fill) {
                        // Too large, or no budget left to hold it: relay on, stop storing.
                        stop_storing(&mut job, &mut fill, &mut leader, &mut client);
                    }
                }
                if !client.open {
                    continue;
                }
                if job.is_some() && fill.behind.is_none() && !client.lag.try_grow(len) {
                    // The client lags too far behind the fill: it gets the rest from the
                    // stored copy once the fill is done.
                    fill.behind = Some(received - len - client.pending_bytes);
                    client.pending.clear();
                    client.pending_bytes = 0;
                    client.lag.shrink_to(0);
                    continue;
                }
                if job.is_some() && fill.behind.is_some() {
                    continue;
                }
                if job.is_none() && !client.lag.try_grow(len) {
                    // Already in memory: counted even when it takes the client past its share.
                    client.lag.force_grow(len);
                }
                client.pending_bytes += len;
                client.pending.push_back(chunk);
            }
            Some(Err(err)) => {
                origin_slot.take();
                tracing::warn!(error = %err, received, "origin body failed; not storing");
                // Waiters take a stale copy, retry once, or share the failure (`cut`).
                super::cut::publish(leader);
                drop(job);
                client.finish(Some(Truncated(err.to_string()))).await;
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
        super::cut::publish(leader);
        drop(job);
        let cut = Truncated(format!("{received} of {expected:?} bytes"));
        client.finish(Some(cut)).await;
        return;
    }
    let Some(job) = job else {
        if let Some(l) = leader.take() {
            l.finish(Outcome::Uncacheable);
        }
        client.finish(None).await;
        return;
    };
    let StoreJob {
        store,
        key,
        status,
        headers,
        request_headers,
        request_time,
        response_time,
        settings,
        fill: fill_charge,
        ..
    } = job;
    let body = fill.finish();
    let entry = Arc::new(Entry::new(
        status,
        headers,
        body,
        &request_headers,
        request_time,
        response_time,
        &settings,
    ));
    store.insert(key, entry.clone());
    // The store counts the entry now.
    drop(fill_charge);
    if let Some(l) = leader.take() {
        l.finish(Outcome::Stored(entry.clone()));
    }
    client.serve_rest_from(&entry, fill.behind);
    client.finish(None).await;
}

/// A body being stored.
struct Fill {
    body: FillBuffer,
    /// Where a client that fell behind stopped getting chunks (it gets the rest from the
    /// stored copy).
    behind: Option<u64>,
}

impl Fill {
    /// Appends a chunk, growing (and counting) the buffer when needed; false when the budget
    /// has no room for it.
    fn append(&mut self, chunk: &[u8], charge: &mut Charge) -> bool {
        let needed = self.body.len() + chunk.len();
        if needed > self.body.capacity() {
            // Doubling, as `Vec` would, but counted before it is allocated.
            let target = needed.max(self.body.capacity() * 2);
            if !charge.try_grow((target - self.body.capacity()) as u64) {
                return false;
            }
            self.body.reserve(target - self.body.len());
            let counted = charge.bytes() as usize;
            if self.body.capacity() > counted {
                charge.force_grow((self.body.capacity() - counted) as u64);
            }
        }
        self.body.extend_from_slice(chunk);
        true
    }

    /// The stored body, kept without spare capacity (see `StoredBody::from_buffer`): a stored
    /// body keeps its whole allocation alive, and the store weighs what the parts hold, not
    /// the capacity a growing buffer doubled to. No second buffer of the body's size is needed,
    /// even when the in-flight budget is full (a copy used to need room there, and without it
    /// the body kept its spare capacity while the store counted only its length).
    fn finish(&mut self) -> StoredBody {
        std::mem::take(&mut self.body).into_stored()
    }
}

impl Client {
    /// After the store: a client that fell behind gets the rest from the stored entry, and
    /// the origin's chunks it had not had yet are let go.
    fn serve_rest_from(&mut self, entry: &Arc<Entry>, behind: Option<u64>) {
        if !self.open {
            return;
        }
        let offset = match behind {
            Some(offset) => offset as usize,
            None if self.pending.is_empty() => return,
            None => entry.body.len() - self.pending_bytes as usize,
        };
        self.pending.clear();
        self.pending_bytes = 0;
        self.lag.shrink_to(0);
        let rest = (entry.body.len() - offset) as u64;
        let held = if self.lag.try_grow(rest) {
            Held::Strong(entry.clone())
        } else {
            Held::Weak(Arc::downgrade(entry))
        };
        self.rest = Some(Rest {
            entry: held,
            offset,
        });
        // It waited for the fill, not the other way round: its stall time starts now.
        self.last_progress = Instant::now();
    }
}

/// Stops storing: waiters fetch for themselves, the fill's bytes are given back, and what a
/// client that fell behind still needs is kept, counted as its own.
fn stop_storing(
    job: &mut Option<StoreJob>,
    fill: &mut Fill,
    leader: &mut Option<Leader<Outcome>>,
    client: &mut Client,
) {
    *job = None;
    let pieces = std::mem::take(&mut fill.body).into_pieces();
    if let (Some(offset), true) = (fill.behind.take(), client.open) {
        // What the client has not had yet: the pieces from `offset` on, uncopied.
        let mut skip = offset as usize;
        let rest: VecDeque<Bytes> = (pieces.into_iter())
            .filter_map(|piece| {
                let from = skip.min(piece.len());
                skip -= from;
                (from < piece.len()).then(|| piece.slice(from..))
            })
            .collect();
        let len = rest.iter().map(Bytes::len).sum::<usize>() as u64;
        client.lag.force_grow(len);
        client.pending_bytes = len;
        client.pending = rest;
    }
    if let Some(l) = leader.take() {
        l.finish(Outcome::Uncacheable);
    }
}
