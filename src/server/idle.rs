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
//!
//! An HTTP/1 connection found idle at a look (no request activity since the look before, and
//! no bytes of a next head) is also asked to give hyper's buffers back (`conn`): looks are at
//! most 5 s apart, so that happens 5 to 10 s after its last answer, well before the idle
//! timeout (60 s by default) closes it.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::proxy::body::Piece;

/// The longest time between two looks of the watchdog, whatever the timeouts: an idle HTTP/1
/// connection gives hyper's buffers back 5 to 10 s after its last answer.
const LONGEST_PERIOD: Duration = Duration::from_secs(5);

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
    /// Set by the watchdog for an idle HTTP/1 connection: hand hyper's buffers back (`conn`).
    shrink: AtomicBool,
    /// The connection's task, woken for `shrink`.
    shrink_waker: AtomicWaker,
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
            shrink: AtomicBool::new(false),
            shrink_waker: AtomicWaker::new(),
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

    /// A new HTTP/1 connection (hyper's) starts on the socket, polled by the task `waker`
    /// wakes: a shrink asked before it does not apply to it.
    pub fn watch_for_shrink(&self, waker: &Waker) {
        self.shrink.store(false, Ordering::Relaxed);
        self.shrink_waker.register(waker);
    }

    /// Whether the watchdog asked the connection to give its buffers back, and it still has
    /// nothing under way: no request and no bytes of a next head since its last answer (the
    /// ask came a look ago, and a request may have started since). One load per poll.
    pub fn shrink_asked(&self) -> bool {
        if !self.shrink.load(Ordering::Relaxed) {
            return false;
        }
        self.shrink.store(false, Ordering::Relaxed);
        self.head() == Head::Waiting && self.active.load(Ordering::Relaxed) == 0
    }

    pub(super) fn ask_shrink(&self) {
        self.shrink.store(true, Ordering::Relaxed);
        self.shrink_waker.wake();
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
    /// two timeouts, at most `LONGEST_PERIOD`), not per request: a head or an idle spell is
    /// judged by what two looks a period apart saw, so either closes between one timeout and
    /// that plus two periods after it began.
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
            // At most a longest period too, so that a long header timeout does not put off the
            // first shrink (the connection is asked one to two periods after its first answer).
            let nap = (header_timeout - now).min(idle_timeout).min(LONGEST_PERIOD);
            tokio::time::sleep(nap).await;
        }
        let period = header_timeout.min(idle_timeout).min(LONGEST_PERIOD);
        let mut looks = Looks::new(Instant::now(), self.look());
        loop {
            tokio::time::sleep(period).await;
            let (now, look) = (Instant::now(), self.look());
            if let Some(verdict) = looks.judge(now, look, header_timeout, idle_timeout) {
                return verdict;
            }
            if looks.shrink_due(now, look, period) {
                self.ask_shrink();
            }
        }
    }

    fn look(&self) -> Look {
        Look {
            events: self.events.load(Ordering::Relaxed),
            active: self.active.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            reading_head: self.head() == Head::Reading && !self.multiplexed.load(Ordering::Relaxed),
            waiting_head: self.head() == Head::Waiting && !self.multiplexed.load(Ordering::Relaxed),
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
    /// An HTTP/1 connection waits for its next request, none of it come yet (`Head::Waiting`).
    waiting_head: bool,
}

/// The watchdog's memory between looks: since when each condition has held.
struct Looks {
    last: Look,
    /// Since when no request activity has been seen.
    idle_since: Instant,
    /// Since when the same head (no request started since) has been seen being read.
    head_since: Instant,
    /// Whether this idle spell's shrink was asked for already.
    shrink_asked: bool,
}

impl Looks {
    fn new(now: Instant, look: Look) -> Looks {
        Looks {
            last: look,
            idle_since: now,
            head_since: now,
            shrink_asked: false,
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
            self.shrink_asked = false;
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

impl Looks {
    /// Whether to ask the connection to give its buffers back, after a look at `now` (judged):
    /// once per idle spell, when the look before already saw it idle (a period without request
    /// activity) and it is HTTP/1 waiting for a next request with none of it come.
    fn shrink_due(&mut self, now: Instant, look: Look, period: Duration) -> bool {
        let due = !self.shrink_asked
            && look.waiting_head
            && look.requests > 0
            && now.duration_since(self.idle_since) >= period;
        self.shrink_asked |= due;
        due
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
#[path = "idle_tests.rs"]
mod tests;
