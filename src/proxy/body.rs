//! The response body type Kagami sends: a stored body in one piece or in its parts, or chunks
//! relayed from the origin through a channel (see `proxy::fill`). A relayed chunk carries its claim on the
//! in-flight budget until hyper has written it out and dropped it.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Frame, SizeHint};
use tokio::sync::{mpsc, Notify};

use super::budget::{Budget, Charge, Owner};
use crate::cache::body::StoredBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The origin body ended early; the client connection is aborted instead of sent a short body.
#[derive(Debug, thiserror::Error)]
#[error("origin body cut short: {0}")]
pub struct Truncated(pub String);

/// Bytes on their way to the client, with the budget they are counted in (if any). Pieces split
/// from one another share the claim, which is released when the last of them is dropped.
pub struct Piece {
    bytes: Bytes,
    charge: Option<Arc<Charge>>,
}

impl Piece {
    pub fn new(bytes: Bytes, charge: Option<Charge>) -> Piece {
        Piece {
            bytes,
            charge: charge.map(Arc::new),
        }
    }

    pub fn empty() -> Piece {
        Piece::new(Bytes::new(), None)
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The first `at` bytes as a piece of their own (no copy), sharing the claim.
    pub fn split_to(&mut self, at: usize) -> Piece {
        Piece {
            bytes: self.bytes.split_to(at.min(self.bytes.len())),
            charge: self.charge.clone(),
        }
    }
}

impl From<Bytes> for Piece {
    fn from(bytes: Bytes) -> Piece {
        Piece::new(bytes, None)
    }
}

impl Buf for Piece {
    fn remaining(&self) -> usize {
        self.bytes.remaining()
    }

    fn chunk(&self) -> &[u8] {
        self.bytes.chunk()
    }

    fn advance(&mut self, cnt: usize) {
        self.bytes.advance(cnt)
    }
}

/// The receiving end of a relay.
pub struct Relayed {
    pub rx: mpsc::Receiver<Result<Piece, Truncated>>,
    /// Set by the relay when it gave up on the client: the body ends in an error, never in a
    /// clean end that would pass a short body off as complete.
    pub abandoned: Arc<AtomicBool>,
}

pub enum Body {
    Full(Option<Bytes>),
    /// A stored body kept in several parts (`cache::body`), sent a part per frame, uncopied.
    Parts(Parts),
    Channel(Relayed),
    /// A large body that shares a stored entry's buffer (see `Body::guarded`). Boxed: it is
    /// the largest variant by far, and every response (every hit) is moved several times on
    /// its way out at the size of its largest variant; the box costs an allocation per large
    /// answer only.
    Held(Box<Held>),
    /// Any of the others, counted for the access log (`access::Logged`).
    Logged(Box<super::access::Logged>),
}

pub struct Parts {
    body: StoredBody,
    next: usize,
    left: usize,
}

/// Bodies at most this large are handed to hyper as they are; larger ones that share a stored
/// entry's buffer go out as copied pieces of this size (see `Held`).
pub const HELD_PIECE: usize = 64 * 1024;

// Every body large enough to be held is one whose copies know when the store let go of it.
const _: () = assert!(crate::cache::body::KEPT_MIN <= HELD_PIECE);

/// A large body answered from the store. While the store still holds the entry the buffer is
/// counted there; if the entry is evicted or replaced while a client is still (not) reading,
/// this body would be the only thing keeping the whole buffer alive, uncounted. So:
/// - it is handed out as copied pieces, so hyper never holds a slice that pins the buffer;
/// - once the buffer is this body's alone, the rest is charged to the client's in-flight share,
///   and a client over its share is cut off (connection aborted, never a short body passed off
///   as complete);
/// - a watchdog lets go of the buffer when the client took nothing for `stall` while the buffer
///   was this body's alone (a stalled HTTP/2 stream is never polled, so a poll-time check alone
///   would never see it).
pub struct Held {
    state: Arc<Mutex<HeldState>>,
    len: usize,
    offset: usize,
    budget: Arc<Budget>,
    owner: Owner,
    charge: Option<Charge>,
    /// Tells the watchdog the body is done, so that it ends now, not a `stall` later (a
    /// popular download must not leave a sleeping task per answer behind).
    done: Arc<Notify>,
}

struct HeldState {
    /// `None` once the watchdog let go of it (or the body is done).
    bytes: Option<StoredBody>,
    /// Pieces handed out so far, for the watchdog.
    progress: u64,
}

impl Body {
    pub fn empty() -> Body {
        Body::Full(None)
    }

    pub fn full(bytes: impl Into<Bytes>) -> Body {
        let bytes = bytes.into();
        Body::Full((!bytes.is_empty()).then_some(bytes))
    }

    /// A stored body: one frame, or a frame per part.
    pub fn stored(body: StoredBody) -> Body {
        // Moved, not cloned: a hit's body costs one reference count, as a `Bytes` did.
        match body.into_single() {
            Ok(bytes) => Body::full(bytes),
            Err(body) => Body::Parts(Parts {
                left: body.len(),
                body,
                next: 0,
            }),
        }
    }

    /// [`Body::guarded`] in place: the usual body (small, or nobody else's) is not moved at
    /// all, where `guarded` takes and gives back the whole value on every answer.
    pub fn guard(&mut self, budget: &Arc<Budget>, owner: Owner, stall: Duration) {
        if self.to_hold() {
            let body = std::mem::replace(self, Body::empty());
            *self = body.guarded(budget, owner, stall);
        }
    }

    /// Whether `guarded` makes this a `Held` body: larger than `HELD_PIECE`, sent from its
    /// start, and sharing its buffer.
    fn to_hold(&self) -> bool {
        match self {
            Body::Full(Some(bytes)) => bytes.len() > HELD_PIECE && !bytes.is_unique(),
            Body::Parts(parts) => {
                parts.next == 0 && parts.left > HELD_PIECE && !parts.body.is_unique()
            }
            _ => false,
        }
    }

    /// A body larger than `HELD_PIECE` that shares its buffer with someone else (the store)
    /// becomes a `Held` body, charged to `owner` if it ever becomes the buffer's only holder and
    /// let go of if its client then takes nothing for `stall`.
    pub fn guarded(self, budget: &Arc<Budget>, owner: Owner, stall: Duration) -> Body {
        if !self.to_hold() {
            return self;
        }
        let bytes = match self {
            Body::Full(Some(bytes)) => StoredBody::from(bytes),
            Body::Parts(parts) => parts.body,
            other => return other,
        };
        let len = bytes.len();
        let state = Arc::new(Mutex::new(HeldState {
            bytes: Some(bytes),
            progress: 0,
        }));
        let done = Arc::new(Notify::new());
        tokio::spawn(watch_held(
            Arc::downgrade(&state),
            done.clone(),
            budget.clone(),
            stall,
        ));
        Body::Held(Box::new(Held {
            state,
            len,
            offset: 0,
            budget: budget.clone(),
            owner,
            charge: None,
            done,
        }))
    }
}

/// Lets go of a held buffer whose client took nothing for a whole `stall` while the buffer was
/// the body's alone. Ends when the body is done or dropped.
async fn watch_held(
    state: Weak<Mutex<HeldState>>,
    done: Arc<Notify>,
    budget: Arc<Budget>,
    stall: Duration,
) {
    let mut seen = u64::MAX;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(stall) => {}
            _ = done.notified() => return,
        }
        let Some(state) = state.upgrade() else { return };
        let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(bytes) = &state.bytes else { return };
        if state.progress == seen && bytes.let_go_by_store() {
            state.bytes = None;
            budget.note_stall();
            return;
        }
        seen = state.progress;
    }
}

impl Held {
    fn next_piece(&mut self) -> Option<Result<Piece, Truncated>> {
        let left = self.len.checked_sub(self.offset).filter(|n| *n > 0)?;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        // Taken out while in use, so that `let_go_by_store` sees only the store's hold, if any.
        let Some(bytes) = state.bytes.take() else {
            self.offset = self.len;
            return Some(Err(Truncated("the client took too long".into())));
        };
        if self.charge.is_none() && bytes.let_go_by_store() {
            // The store let go of the entry: what is left is held for this client alone.
            let mut charge = self.budget.charge(self.owner);
            if !charge.try_grow(left as u64) {
                self.budget.note_stall();
                self.offset = self.len;
                return Some(Err(Truncated(
                    "the stored copy was evicted while this client was over its share".into(),
                )));
            }
            self.charge = Some(charge);
        }
        let end = self.offset + left.min(HELD_PIECE);
        let piece = bytes.copy_range(self.offset, end);
        state.progress += 1;
        self.offset = end;
        if self.offset < self.len {
            state.bytes = Some(bytes);
        }
        Some(Ok(Piece::from(piece)))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // A client that went away lets go at once, not at the watchdog's next look.
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bytes = None;
        // A permit is kept if the watchdog is not waiting yet, so it cannot miss this.
        self.done.notify_one();
    }
}

impl http_body::Body for Body {
    type Data = Piece;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Piece>, BoxError>>> {
        match self.get_mut() {
            Body::Full(bytes) => {
                Poll::Ready(bytes.take().map(|b| Ok(Frame::data(Piece::new(b, None)))))
            }
            Body::Parts(parts) => {
                let part = parts.body.parts().get(parts.next).cloned();
                parts.next += 1;
                if let Some(part) = &part {
                    parts.left -= part.len();
                }
                Poll::Ready(part.map(|b| Ok(Frame::data(Piece::new(b, None)))))
            }
            Body::Held(held) => Poll::Ready(held.next_piece().map(|next| match next {
                Ok(piece) => Ok(Frame::data(piece)),
                Err(e) => Err(Box::new(e) as BoxError),
            })),
            Body::Channel(relayed) => match relayed.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(piece))) => Poll::Ready(Some(Ok(Frame::data(piece)))),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
                Poll::Ready(None) if relayed.abandoned.load(Ordering::Acquire) => Poll::Ready(
                    Some(Err(Box::new(Truncated("the client took too long".into())))),
                ),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            Body::Logged(logged) => Pin::new(logged.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(None) => true,
            Body::Parts(parts) => parts.left == 0,
            Body::Held(held) => held.offset >= held.len,
            Body::Logged(logged) => logged.is_end_stream(),
            _ => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Parts(parts) => SizeHint::with_exact(parts.left as u64),
            Body::Held(held) => SizeHint::with_exact(held.len.saturating_sub(held.offset) as u64),
            Body::Channel(_) => SizeHint::default(),
            Body::Logged(logged) => logged.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Stats;
    use http_body_util::BodyExt;

    fn big() -> Bytes {
        Bytes::from(vec![7u8; 4 * HELD_PIECE])
    }

    #[tokio::test]
    async fn a_held_body_shared_with_the_store_is_served_whole_in_copied_pieces() {
        let stored = big();
        let budget = Budget::new(1 << 20, Arc::new(Stats::default()));
        let owner = Owner::Client("127.0.0.1".parse().unwrap());
        let body = Body::full(stored.clone()).guarded(&budget, owner, Duration::from_secs(60));
        assert!(matches!(body, Body::Held(_)));
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(got, stored);
        assert_eq!(budget.used(), 0, "nothing charged while the store holds it");
        // The watchdog ends with the body, not a minute later.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let metrics = tokio::runtime::Handle::current().metrics();
        assert_eq!(metrics.num_alive_tasks(), 0, "no watchdog left sleeping");
        let small = Body::full(Bytes::from(vec![1u8; 10])).guarded(&budget, owner, Duration::ZERO);
        assert!(matches!(small, Body::Full(_)));
    }

    fn kept(len: u32) -> (Vec<u8>, StoredBody) {
        let content: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut buffer = bytes::BytesMut::with_capacity(content.len());
        buffer.extend_from_slice(&content);
        (content, StoredBody::from_buffer(buffer))
    }

    #[tokio::test]
    async fn a_stored_body_kept_in_parts_is_sent_whole_and_large_ones_are_held() {
        let budget = Budget::new(1 << 20, Arc::new(Stats::default()));
        let owner = Owner::Client("127.0.0.1".parse().unwrap());
        // 41,300 bytes: 40 KiB + 340 with jemalloc (one part with the system allocator).
        let (content, stored) = kept(41_300);
        let body = Body::stored(stored.clone()).guarded(&budget, owner, Duration::ZERO);
        assert!(
            !matches!(body, Body::Held(_)),
            "small enough to go out as it is"
        );
        assert_eq!(http_body::Body::size_hint(&body).exact(), Some(41_300));
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(got, content);
        // Larger than a held piece and shared with the store: copied pieces, as for one part.
        let (content, stored) = kept(300_001);
        let body = Body::stored(stored.clone()).guarded(&budget, owner, Duration::from_secs(60));
        assert!(matches!(body, Body::Held(_)));
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(got, content);
        assert_eq!(budget.used(), 0, "nothing charged while the store holds it");
    }

    #[tokio::test]
    async fn a_stalled_body_whose_entry_is_gone_lets_go_of_the_buffer() {
        let stored = big();
        let budget = Budget::new(1 << 30, Arc::new(Stats::default()));
        let owner = Owner::Client("127.0.0.1".parse().unwrap());
        let mut body =
            Body::full(stored.clone()).guarded(&budget, owner, Duration::from_millis(20));
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.is_data());
        // The store lets go, and the client takes nothing for longer than the stall time.
        drop(stored);
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(
            body.frame().await.unwrap().is_err(),
            "cut off, never a short end"
        );
    }
}
