//! Connection watchdog. A connection is closed when its first request does not arrive within
//! the header-read timeout (before the protocol is even known), when a later HTTP/1 request
//! head takes longer than that from its first byte (slowloris), or when it has been idle for
//! the idle timeout.
//!
//! The head rule is ours, not hyper's: hyper's `header_read_timeout` arms a boxed timer for
//! every request and cancels it when the head is in (an allocation and a timer-wheel insert and
//! removal per request). Here the socket reads and the service call only write a state word
//! (`Head`), and the watchdog, woken once per period, judges what it sees. So the keep-alive
//! wait between requests is the idle timeout's business, as in nginx (`keepalive_timeout`
//! against `client_header_timeout`): bytes of a next head start the header-read clock. (A head
//! that came pipelined in the same read as the request before it, half complete, and then
//! stalls, shows no new bytes: that connection is closed by the idle timeout instead.)
//!
//! Idle means no request activity: no request handler under way, no request started and no
//! response body progress. Bytes on the socket do not count, because a client can make those
//! without asking for anything (HTTP/2 PING, SETTINGS, WINDOW_UPDATE of 0 bytes left) and would
//! otherwise hold a connection, and with enough of them every connection, for ever. Response
//! bodies are handed to hyper in pieces of at most `PROGRESS_CHUNK`, so a client that keeps
//! reading a long download keeps asking for the next piece and is never idle, while one that
//! stops reading stops the pieces too.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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
    /// Where the connection is between requests (`Head`), for the header-read rule.
    head: AtomicU8,
    /// Set once a request came over HTTP/2: its streams overlap and its connection carries
    /// bytes without a request (PING, SETTINGS), so the head rule does not apply.
    multiplexed: AtomicBool,
}

/// The connection's state for the header-read rule (stored in `Activity::head`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Head {
    /// Waiting for the next request, and none of its bytes have come yet: the idle timeout's
    /// business (the keep-alive wait).
    Waiting = 0,
    /// Bytes have come since the last answer ended, and no request has started from them:
    /// a head is being read (or a request body nobody asked for is being drained).
    Reading = 1,
    /// A request is under way: from its start until its response body is done.
    Busy = 2,
}

/// Marks a request whose answer outlives its service call as under way until dropped.
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
    /// A request head took longer than the header-read timeout from its first bytes.
    HeadTooSlow,
    Idle,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            events: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            // Before the first request the connection-wide rule applies (`watch`).
            head: AtomicU8::new(Head::Waiting as u8),
            multiplexed: AtomicBool::new(false),
        })
    }

    /// Bytes came from the client: if it was waiting for a request, a head has begun. One load
    /// per read, and a store once per request.
    fn bytes_arrived(&self) {
        if self.head.load(Ordering::Relaxed) == Head::Waiting as u8 {
            self.head.store(Head::Reading as u8, Ordering::Relaxed);
        }
    }

    /// The last response is done (its body ended or was dropped): waiting for the next request.
    fn answer_done(&self) {
        self.head.store(Head::Waiting as u8, Ordering::Relaxed);
    }

    fn head(&self) -> Head {
        match self.head.load(Ordering::Relaxed) {
            0 => Head::Waiting,
            1 => Head::Reading,
            _ => Head::Busy,
        }
    }

    /// A request came over HTTP/2 (see `multiplexed`).
    pub fn set_multiplexed(&self) {
        self.multiplexed.store(true, Ordering::Relaxed);
    }

    /// The connection's IO, reporting when bytes arrive (see `Head`).
    pub fn watched<T>(self: &Arc<Self>, io: T) -> Watched<T> {
        Watched {
            io,
            activity: self.clone(),
        }
    }

    fn touch(&self) {
        self.events.fetch_add(1, Ordering::Relaxed);
    }

    /// A request has started. A hit is answered within the service call (no await between this
    /// and its answer being tracked), so it is counted by this alone: two atomic adds instead
    /// of the guard's five (`still_running` for a request that waits).
    pub fn request_started(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.head.store(Head::Busy as u8, Ordering::Relaxed);
        self.touch();
    }

    /// The request just started (`request_started`) is still under way after its service call
    /// (it waits for the origin): counted as active until the guard is dropped.
    pub fn still_running(self: &Arc<Self>) -> RequestGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
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

    /// Resolves when the connection should be closed. Wakes once per period (the shorter of the
    /// two timeouts), not per request: a head or an idle spell is judged by what two looks a
    /// period apart saw, so either closes between one timeout and that plus two periods after it
    /// began.
    pub async fn watch(
        self: Arc<Self>,
        header_timeout: Duration,
        idle_timeout: Duration,
    ) -> Verdict {
        loop {
            let now = self.start.elapsed();
            if self.requests.load(Ordering::Relaxed) > 0 {
                break;
            }
            if now >= header_timeout {
                return Verdict::NoRequestInTime;
            }
            tokio::time::sleep((header_timeout - now).min(idle_timeout)).await;
        }
        let period = header_timeout.min(idle_timeout);
        let mut looks = Looks::new(Instant::now(), self.look());
        loop {
            tokio::time::sleep(period).await;
            if let Some(verdict) =
                looks.judge(Instant::now(), self.look(), header_timeout, idle_timeout)
            {
                return verdict;
            }
        }
    }

    fn look(&self) -> Look {
        Look {
            events: self.events.load(Ordering::Relaxed),
            active: self.active.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            reading_head: self.head() == Head::Reading && !self.multiplexed.load(Ordering::Relaxed),
        }
    }
}

/// What the watchdog sees at one look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Look {
    events: u64,
    active: usize,
    requests: u64,
    /// An HTTP/1 head is being read (`Head::Reading`).
    reading_head: bool,
}

/// The watchdog's memory between looks: since when each condition has held.
struct Looks {
    last: Look,
    /// Since when no request activity has been seen.
    idle_since: Instant,
    /// Since when the same head (no request started since) has been seen being read.
    head_since: Instant,
}

impl Looks {
    fn new(now: Instant, look: Look) -> Looks {
        Looks {
            last: look,
            idle_since: now,
            head_since: now,
        }
    }

    /// The verdict, if any, after a look at `now`.
    fn judge(
        &mut self,
        now: Instant,
        look: Look,
        header_timeout: Duration,
        idle_timeout: Duration,
    ) -> Option<Verdict> {
        if !is_idle(self.last.events, look.events, look.active) {
            self.idle_since = now;
        }
        // The same head: being read at both looks with no request started in between.
        let same_head =
            self.last.reading_head && look.reading_head && self.last.requests == look.requests;
        if !same_head {
            self.head_since = now;
        }
        self.last = look;
        if same_head && now.duration_since(self.head_since) >= header_timeout {
            return Some(Verdict::HeadTooSlow);
        }
        if now.duration_since(self.idle_since) >= idle_timeout {
            return Some(Verdict::Idle);
        }
        None
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

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        // hyper drops a response body once it has it all (or the exchange is abandoned): for
        // HTTP/1 the connection then waits for the next request.
        self.activity.answer_done();
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

/// A connection's IO that tells its `Activity` when bytes arrive; everything else is passed on.
pub struct Watched<T> {
    io: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.bytes_arrived();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
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

    fn look(events: u64, requests: u64, reading_head: bool) -> Look {
        Look {
            events,
            active: 0,
            requests,
            reading_head,
        }
    }

    #[test]
    fn a_head_read_over_two_looks_a_timeout_apart_is_too_slow() {
        let (t0, second) = (Instant::now(), Duration::from_secs(1));
        let mut looks = Looks::new(t0, look(3, 1, false));
        // The head's first bytes came after this look: not judged yet.
        assert_eq!(
            looks.judge(t0 + second, look(3, 1, true), second, 60 * second),
            None
        );
        assert_eq!(
            looks.judge(t0 + 2 * second, look(3, 1, true), second, 60 * second),
            Some(Verdict::HeadTooSlow)
        );
    }

    #[test]
    fn heads_that_complete_between_looks_are_not_one_slow_head() {
        let (t0, second) = (Instant::now(), Duration::from_secs(1));
        let mut looks = Looks::new(t0, look(3, 1, true));
        // A request started in between (and the next head is being read): a new head.
        assert_eq!(
            looks.judge(t0 + second, look(5, 2, true), second, 60 * second),
            None
        );
        assert_eq!(
            looks.judge(t0 + 2 * second, look(7, 3, true), second, 60 * second),
            None
        );
    }

    #[test]
    fn the_keep_alive_wait_is_judged_by_the_idle_timeout_only() {
        let (t0, second) = (Instant::now(), Duration::from_secs(1));
        let mut looks = Looks::new(t0, look(3, 1, false));
        for n in 1..4 {
            assert_eq!(
                looks.judge(t0 + n * second, look(3, 1, false), second, 4 * second),
                None
            );
        }
        assert_eq!(
            looks.judge(t0 + 4 * second, look(3, 1, false), second, 4 * second),
            Some(Verdict::Idle)
        );
    }

    #[test]
    fn activity_between_looks_restarts_the_idle_spell() {
        let (t0, second) = (Instant::now(), Duration::from_secs(1));
        let mut looks = Looks::new(t0, look(3, 1, false));
        assert_eq!(
            looks.judge(t0 + second, look(3, 1, false), second, 2 * second),
            None
        );
        assert_eq!(
            looks.judge(t0 + 2 * second, look(4, 1, false), second, 2 * second),
            None
        );
        assert_eq!(
            looks.judge(t0 + 3 * second, look(4, 1, false), second, 2 * second),
            None
        );
        assert_eq!(
            looks.judge(t0 + 4 * second, look(4, 1, false), second, 2 * second),
            Some(Verdict::Idle)
        );
    }

    #[tokio::test]
    async fn reads_start_a_head_only_while_waiting_for_a_request() {
        let activity = Activity::new();
        activity.bytes_arrived();
        assert_eq!(activity.head(), Head::Reading);
        activity.request_started();
        let guard = activity.still_running();
        assert_eq!(activity.look().active, 1);
        activity.bytes_arrived();
        assert_eq!(activity.head(), Head::Busy, "a request body is not a head");
        drop(guard);
        assert_eq!(activity.look().active, 0);
        assert_eq!(activity.look().requests, 1);
        let body = activity.track(crate::proxy::body::Body::full(Bytes::from_static(b"x")));
        assert_eq!(
            activity.head(),
            Head::Busy,
            "the answer is still being sent"
        );
        drop(body);
        assert_eq!(activity.head(), Head::Waiting);
        assert!(!activity.look().reading_head);
        activity.bytes_arrived();
        assert!(activity.look().reading_head);
        activity.set_multiplexed();
        assert!(!activity.look().reading_head, "HTTP/2 has no heads to time");
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
