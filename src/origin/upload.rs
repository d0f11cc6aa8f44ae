//! Request bodies relayed to an origin (POST, PUT, ...): capped in size, and watched so that a
//! failure on the client's side (an upload over the limit, a client hanging up mid-upload) is
//! never mistaken for a failing origin. Whether the client sent its whole body is recorded too:
//! an origin that times out waiting for a body the client never sends is not failing.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{LengthLimitError, Limited};
use hyper::body::Incoming;

const OK: u8 = 0;
const TOO_LARGE: u8 = 1;
const CLIENT_FAILED: u8 = 2;

/// What went wrong on the client's side of an upload, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientSide {
    Fine,
    TooLarge,
    Failed,
}

pub struct Upload {
    body: Watched,
    state: Arc<AtomicU8>,
    complete: Arc<AtomicBool>,
}

impl Upload {
    pub fn new(incoming: Incoming, max: u64) -> Upload {
        let state = Arc::new(AtomicU8::new(OK));
        // An empty body (Content-Length: 0) may never be polled at all.
        let complete = Arc::new(AtomicBool::new(incoming.is_end_stream()));
        let body = Watched {
            inner: Limited::new(incoming, usize::try_from(max).unwrap_or(usize::MAX)),
            state: state.clone(),
            complete: complete.clone(),
        };
        Upload {
            body,
            state,
            complete,
        }
    }

    /// The body's exact length when it is known in advance (the client's own Content-Length,
    /// which the server side already holds the client to).
    pub(super) fn exact_len(&self) -> Option<u64> {
        self.body.size_hint().exact()
    }

    /// Splits into the body for reqwest and a handle that tells afterwards how the client did.
    pub(super) fn into_parts(self) -> (reqwest::Body, UploadState) {
        (
            reqwest::Body::wrap(self.body),
            UploadState {
                state: self.state,
                complete: self.complete,
            },
        )
    }
}

pub(super) struct UploadState {
    state: Arc<AtomicU8>,
    complete: Arc<AtomicBool>,
}

impl UploadState {
    /// True once the client has sent its whole body.
    pub(super) fn complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    pub(super) fn client_side(&self) -> ClientSide {
        match self.state.load(Ordering::Acquire) {
            TOO_LARGE => ClientSide::TooLarge,
            CLIENT_FAILED => ClientSide::Failed,
            _ => ClientSide::Fine,
        }
    }
}

struct Watched {
    inner: Limited<Incoming>,
    state: Arc<AtomicU8>,
    complete: Arc<AtomicBool>,
}

impl Body for Watched {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(err))) = &polled {
            let kind = if err.is::<LengthLimitError>() {
                TOO_LARGE
            } else {
                CLIENT_FAILED
            };
            self.state.store(kind, Ordering::Release);
        }
        // The sender may stop polling after the last frame (is_end_stream), so look at both.
        if matches!(&polled, Poll::Ready(None))
            || (matches!(&polled, Poll::Ready(Some(Ok(_)))) && self.inner.is_end_stream())
        {
            self.complete.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
