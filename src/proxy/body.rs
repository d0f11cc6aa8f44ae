//! The response body type Kagami sends: a stored body in one piece, or chunks relayed from the
//! origin through a channel (see `proxy::fill`). A relayed chunk carries its claim on the
//! in-flight budget until hyper has written it out and dropped it.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Frame, SizeHint};
use tokio::sync::mpsc;

use super::budget::Charge;

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
    Channel(Relayed),
}

impl Body {
    pub fn empty() -> Body {
        Body::Full(None)
    }

    pub fn full(bytes: impl Into<Bytes>) -> Body {
        let bytes = bytes.into();
        Body::Full((!bytes.is_empty()).then_some(bytes))
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
            Body::Channel(relayed) => match relayed.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(piece))) => Poll::Ready(Some(Ok(Frame::data(piece)))),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
                Poll::Ready(None) if relayed.abandoned.load(Ordering::Acquire) => Poll::Ready(
                    Some(Err(Box::new(Truncated("the client took too long".into())))),
                ),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Channel(_) => SizeHint::default(),
        }
    }
}
