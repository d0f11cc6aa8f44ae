//! Connection watchdog. A connection is closed when its first request does not arrive within
//! the header-read timeout (hyper's own timer only starts once the protocol is known, and
//! HTTP/2 has none), or when it has been idle for the idle timeout.
//!
//! Idle means no request activity: no request handler under way, no request started and no
//! response body progress. Bytes on the socket do not count, because a client can make those
//! without asking for anything (HTTP/2 PING, SETTINGS, WINDOW_UPDATE of 0 bytes left) and would
//! otherwise hold a connection, and with enough of them every connection, for ever. Response
//! bodies are handed to hyper in pieces of at most `PROGRESS_CHUNK`, so a client that keeps
//! reading a long download keeps asking for the next piece and is never idle, while one that
//! stops reading stops the pieces too.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body::{Body, Frame, SizeHint};

use crate::proxy::body::Piece;

/// Largest piece of a response body handed to hyper at once.
const PROGRESS_CHUNK: usize = 16 * 1024;

pub struct Activity {
    start: Instant,
    /// Request starts and ends, and response body pieces handed out.
    events: AtomicU64,
    /// Requests whose handler is running.
    active: AtomicUsize,
    /// Requests ever started on this connection.
    requests: AtomicU64,
}

/// Marks a request as under way until dropped.
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// Why the watchdog closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    NoRequestInTime,
    Idle,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            events: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        self.events.fetch_add(1, Ordering::Relaxed);
    }

    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.touch();
        RequestGuard(self.clone())
    }

    /// A response body whose progress counts as activity.
    pub fn track<B>(self: &Arc<Self>, body: B) -> Tracked<B> {
        Tracked {
            inner: body,
            rest: Piece::empty(),
            activity: self.clone(),
        }
    }

    /// Resolves when the connection should be closed.
    pub async fn watch(
        self: Arc<Self>,
        header_timeout: Duration,
        idle_timeout: Duration,
    ) -> Verdict {
        loop {
            let now = self.start.elapsed();
            if self.requests.load(Ordering::Relaxed) == 0 {
                if now >= header_timeout {
                    return Verdict::NoRequestInTime;
                }
                tokio::time::sleep((header_timeout - now).min(idle_timeout)).await;
                continue;
            }
            if self.active.load(Ordering::Relaxed) > 0 {
                // A request in progress (perhaps waiting for a slow origin) is not idleness.
                tokio::time::sleep(idle_timeout).await;
                continue;
            }
            // Idle when nothing happened during one whole timeout: closes between one and two
            // timeouts after the last activity, without reading the clock per event.
            let before = self.events.load(Ordering::Relaxed);
            tokio::time::sleep(idle_timeout).await;
            if is_idle(
                before,
                self.events.load(Ordering::Relaxed),
                self.active.load(Ordering::Relaxed),
            ) {
                return Verdict::Idle;
            }
        }
    }
}

/// The idle rule: no request under way and no request activity between two looks.
fn is_idle(events_before: u64, events_after: u64, active: usize) -> bool {
    events_before == events_after && active == 0
}

/// A response body that reports its progress to the connection's `Activity`, in pieces of at
/// most `PROGRESS_CHUNK` (slices of the same buffer, no copy).
pub struct Tracked<B> {
    inner: B,
    rest: Piece,
    activity: Arc<Activity>,
}

impl<B> Tracked<B> {
    fn piece(&mut self) -> Frame<Piece> {
        let at = self.rest.len().min(PROGRESS_CHUNK);
        self.activity.touch();
        Frame::data(self.rest.split_to(at))
    }
}

impl<B> Body for Tracked<B>
where
    B: Body<Data = Piece> + Unpin,
{
    type Data = Piece;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Piece>, B::Error>>> {
        let this = self.get_mut();
        if !this.rest.is_empty() {
            return Poll::Ready(Some(Ok(this.piece())));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    this.rest = data;
                    Poll::Ready(Some(Ok(this.piece())))
                }
                Err(frame) => {
                    this.activity.touch();
                    Poll::Ready(Some(Ok(frame)))
                }
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + rest);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + rest);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Buf, Bytes};
    use http_body_util::BodyExt;

    #[test]
    fn idle_only_without_requests_and_without_events() {
        assert!(is_idle(5, 5, 0));
        assert!(!is_idle(5, 6, 0), "a request or body progress in between");
        assert!(!is_idle(5, 5, 1), "a request under way");
    }

    #[tokio::test]
    async fn a_body_is_handed_out_in_pieces_each_counted() {
        let activity = Activity::new();
        let data = Bytes::from(vec![7u8; PROGRESS_CHUNK * 2 + 10]);
        let mut body = activity.track(crate::proxy::body::Body::full(data.clone()));
        assert_eq!(body.size_hint().exact(), Some(data.len() as u64));
        let mut sizes = Vec::new();
        let mut got = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(chunk) = frame.unwrap().into_data() else {
                panic!("a data frame");
            };
            sizes.push(chunk.len());
            got.extend_from_slice(chunk.chunk());
        }
        assert_eq!(sizes, vec![PROGRESS_CHUNK, PROGRESS_CHUNK, 10]);
        assert_eq!(got, data);
        assert!(body.is_end_stream());
        assert_eq!(activity.events.load(Ordering::Relaxed), 3);
    }
}
