//! One client connection's HTTP: HTTP/2 or HTTP/1.1 chosen by its first bytes, graceful
//! shutdown (`Drain`), and an idle HTTP/1.1 connection's buffers handed back between requests.
//!
//! Why not hyper-util's `auto` connection: after its first request hyper keeps an 8 KiB read
//! buffer and an 8 KiB write buffer (and its queue) for the connection's whole life, and offers
//! no way to shrink them; an idle keep-alive connection held about 21 KiB instead of 5. hyper's
//! HTTP/1 connection can, however, be ended without closing its socket and taken apart
//! (`poll_without_shutdown`, `into_parts`). So when the watchdog (`idle`) finds an HTTP/1
//! connection idle, this ends hyper's connection, keeps the socket and the service, waits for
//! the next request's first bytes with a small buffer of its own, and starts a new hyper
//! connection over the same socket with those bytes put back in front (`Rewind`). A connection
//! that keeps asking never gets there: the ask comes only after a watchdog period without
//! request activity, and it is not taken while hyper still holds answer bytes a slow reader
//! has not taken (`poll_without_shutdown` and `into_parts` would drop them). Every other end
//! (the client's close, `Connection: close`, a drain) is hyper's own: its buffer flushed, then
//! the socket shut down.

use std::error::Error as StdError;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::FutureExt;
use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;

use super::idle::Activity;
use crate::metrics::Stats;

pub type BoxError = Box<dyn StdError + Send + Sync>;

/// The client connection preface of HTTP/2 with prior knowledge (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How many bytes of the next request a shrunk connection reads itself before hyper takes over:
/// enough for a method and most of a target, small enough to sit in the connection's task.
const FIRST_BYTES: usize = 64;

/// The two protocol builders, set up once per listener.
pub struct Http {
    pub h1: http1::Builder,
    pub h2: http2::Builder<TokioExecutor>,
}

/// Graceful shutdown for every connection of a listener: `shutdown` tells them all to finish
/// what they are doing and close (HTTP/1: after the request under way; HTTP/2: GOAWAY, then the
/// open streams), and resolves once each has. (hyper-util's `GracefulShutdown` does the same,
/// but watches only hyper's own connection types.)
pub struct Drain {
    tx: watch::Sender<()>,
}

impl Drain {
    pub fn new() -> Drain {
        Drain {
            tx: watch::channel(()).0,
        }
    }

    /// Taken when a connection is accepted; held until it ends.
    pub fn watcher(&self) -> watch::Receiver<()> {
        self.tx.subscribe()
    }

    pub async fn shutdown(self) {
        let _ = self.tx.send(());
        self.tx.closed().await;
    }
}

/// Serves HTTP on `io` until the connection ends, the client's or ours.
pub async fn serve<T, S, B>(
    http: &Http,
    mut io: T,
    mut service: S,
    activity: &Activity,
    stats: &Stats,
    mut drain: watch::Receiver<()>,
) -> Result<(), BoxError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B> + Unpin,
    S::Future: Unpin + Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    // A dropped sender (the listener gone) counts as a drain too, as with hyper-util's.
    let seen = drain.clone();
    let mut drained = pin!(drain.changed().fuse());
    let mut registered = false;
    let Some(first) = read_preface(&mut io).await? else {
        return Ok(());
    };
    if first.as_ref() == H2_PREFACE {
        let io = TokioIo::new(Rewind::new(first, io));
        // Boxed, as the HTTP/1 connection below: the task waiting for a first request holds
        // neither inline (hyper's connection types are several KiB).
        let mut connection = Box::pin(http.h2.serve_connection(io, service));
        let mut draining = false;
        return poll_fn(|cx| {
            if !draining && drain_seen(drained.as_mut(), &seen, &mut registered, cx) {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
            connection.as_mut().poll(cx)
        })
        .await
        .map_err(Into::into);
    }
    let mut io = Rewind::new(first, io);
    loop {
        let blocked = io.write_blocked.clone();
        let mut connection = Box::new(http.h1.serve_connection(TokioIo::new(io), service));
        let (mut draining, mut shrinking, mut watched) = (false, false, false);
        let shrunk = poll_fn(|cx| {
            if !watched {
                // Once per hyper connection: a task's waker stays the same from poll to poll.
                activity.watch_for_shrink(cx.waker());
                watched = true;
            }
            if !draining && drain_seen(drained.as_mut(), &seen, &mut registered, cx) {
                draining = true;
                Pin::new(&mut *connection).graceful_shutdown();
            }
            // Not while hyper still holds answer bytes the client has not taken (a slow reader):
            // its connection would end at once and `into_parts` drop them.
            if !draining && !shrinking && activity.shrink_asked() && !blocked.load(Relaxed) {
                // An idle connection closes at once: hyper's state goes to closed, and as
                // nothing is under way, `poll_without_shutdown` is done at this very poll.
                shrinking = true;
                Pin::new(&mut *connection).graceful_shutdown();
            }
            if shrinking {
                connection.poll_without_shutdown(cx).map_ok(|()| true)
            } else {
                // Anything but a shrink ends as hyper ends it: its write buffer flushed, then
                // the socket shut down (`poll_without_shutdown` flushes neither).
                Pin::new(&mut *connection).poll(cx).map_ok(|()| false)
            }
        })
        .await?;
        if !shrunk {
            return Ok(());
        }
        let parts = (*connection).into_parts();
        let mut rest = parts.io.into_inner();
        if draining {
            // The drain came after the ask (hyper's buffer was empty then: see `blocked`).
            let _ = rest.shutdown().await;
            return Ok(());
        }
        stats.add(&stats.connections_shrunk);
        service = parts.service;
        // Bytes hyper read beyond the last request (pipelined) start the next connection; else
        // the next request's first bytes are waited for, with no hyper buffer held meanwhile.
        let read_buf = parts.read_buf;
        let next = if !read_buf.is_empty() {
            read_buf
        } else {
            // Even empty, the `Bytes` is a slice of hyper's 8 KiB read buffer: let it go.
            drop(read_buf);
            let mut first = [0u8; FIRST_BYTES];
            let read = tokio::select! {
                read = rest.read(&mut first) => read?,
                _ = &mut drained => 0,
            };
            if read == 0 {
                let _ = rest.shutdown().await;
                return Ok(());
            }
            Bytes::copy_from_slice(&first[..read])
        };
        rest.put_back(next);
        io = rest;
    }
}

/// Whether the drain has begun, as a connection's every poll asks it. Polling `changed` each
/// time would take the watch's waiter lock (tokio's `Notified` locks its list at every poll
/// while it waits), one lock for every connection of the listener: a lock per poll shared by
/// all workers. So `changed` is polled once, which leaves the task's waker in the list (the
/// drain wakes it), and every later check is one atomic load (`has_changed`; a dropped sender
/// counts as a drain, as `changed` has it). The task's waker stays the same from poll to poll.
fn drain_seen<F: Future>(
    changed: Pin<&mut F>,
    seen: &watch::Receiver<()>,
    registered: &mut bool,
    cx: &mut Context<'_>,
) -> bool {
    if !*registered {
        *registered = true;
        return changed.poll(cx).is_ready();
    }
    seen.has_changed().unwrap_or(true)
}

/// Reads until the bytes are the HTTP/2 preface or cannot be; `None` when the client closed
/// before sending anything.
async fn read_preface<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<Option<Bytes>> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut filled = 0;
    while filled < buf.len() {
        let read = io.read(&mut buf[filled..]).await?;
        if read == 0 {
            break;
        }
        filled += read;
        if buf[..filled] != H2_PREFACE[..filled] {
            break;
        }
    }
    Ok((filled > 0).then(|| Bytes::copy_from_slice(&buf[..filled])))
}

/// IO with bytes already read from it put back in front.
pub struct Rewind<T> {
    prefix: Bytes,
    io: T,
    /// The last write or flush could not finish: bytes wait in hyper's buffer.
    write_blocked: Arc<AtomicBool>,
}

impl<T> Rewind<T> {
    fn new(prefix: Bytes, io: T) -> Rewind<T> {
        Rewind {
            prefix,
            io,
            write_blocked: Arc::default(),
        }
    }

    /// Puts `bytes` in front of what is still to be read (nothing, at the call sites).
    fn put_back(&mut self, bytes: Bytes) {
        debug_assert!(self.prefix.is_empty());
        self.prefix = bytes;
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let take = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix[..take]);
        this.prefix.advance(take);
        if this.prefix.is_empty() {
            // Let go of the buffer the bytes were a slice of (hyper's, when pipelined).
            this.prefix = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, data);
        this.write_blocked.store(polled.is_pending(), Relaxed);
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.write_blocked.store(polled.is_pending(), Relaxed);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.write_blocked.store(polled.is_pending(), Relaxed);
        polled
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `drain_seen` says drained, polled with a waker that does nothing.
    fn seen_now<F: Future>(
        changed: Pin<&mut F>,
        seen: &watch::Receiver<()>,
        registered: &mut bool,
    ) -> bool {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        drain_seen(changed, seen, registered, &mut cx)
    }

    #[test]
    fn the_drain_is_seen_after_one_poll_by_a_load_and_a_dropped_sender_counts() {
        for drop_sender in [false, true] {
            let drain = Drain::new();
            let mut rx = drain.watcher();
            let seen = rx.clone();
            let mut changed = pin!(rx.changed());
            let mut registered = false;
            for _ in 0..3 {
                assert!(!seen_now(changed.as_mut(), &seen, &mut registered));
            }
            assert!(registered, "the first check polls `changed`");
            if drop_sender {
                drop(drain);
            } else {
                drain.tx.send(()).unwrap();
            }
            assert!(seen_now(changed.as_mut(), &seen, &mut registered));
        }
    }

    #[tokio::test]
    async fn the_first_check_leaves_the_tasks_waker_for_the_drain_to_wake() {
        let drain = Drain::new();
        let mut rx = drain.watcher();
        let seen = rx.clone();
        let waited = tokio::spawn(async move {
            let mut changed = pin!(rx.changed());
            let mut registered = false;
            let mut polls = 0;
            poll_fn(|cx| {
                polls += 1;
                match drain_seen(changed.as_mut(), &seen, &mut registered, cx) {
                    true => Poll::Ready(polls),
                    false => Poll::Pending,
                }
            })
            .await
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        drain.tx.send(()).unwrap();
        let polls = tokio::time::timeout(std::time::Duration::from_secs(5), waited)
            .await
            .expect("the drain woke the task")
            .unwrap();
        assert_eq!(polls, 2, "one poll to watch, one when woken");
    }

    #[tokio::test]
    async fn the_preface_is_read_whole_and_anything_else_stops_at_the_first_difference() {
        let mut h2: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\x12";
        assert_eq!(
            read_preface(&mut h2).await.unwrap().as_deref(),
            Some(H2_PREFACE)
        );
        assert_eq!(h2, b"\0\0\x12", "nothing past the preface is taken");
        let mut h1: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let first = read_preface(&mut h1).await.unwrap().unwrap();
        assert!(!first.is_empty() && b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".starts_with(&first));
        // Byte by byte, as a slow client sends: no read after the first byte that differs.
        let p = AsyncReadExt::chain(&b"P"[..], &b"U"[..]);
        let mut p = AsyncReadExt::chain(p, &b"T / HTTP/1.1\r\n"[..]);
        assert_eq!(
            read_preface(&mut p).await.unwrap().as_deref(),
            Some(&b"PU"[..])
        );
        let mut rest = Vec::new();
        p.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"T / HTTP/1.1\r\n");
        let mut empty: &[u8] = b"";
        assert_eq!(read_preface(&mut empty).await.unwrap(), None);
    }

    #[tokio::test]
    async fn rewound_bytes_come_first_then_the_io() {
        let mut io = Rewind::new(Bytes::from_static(b"GET"), &b" / HTTP/1.1"[..]);
        let mut small = [0u8; 2];
        assert_eq!(io.read(&mut small).await.unwrap(), 2);
        assert_eq!(&small, b"GE");
        let mut rest = Vec::new();
        io.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"T / HTTP/1.1");
        io.put_back(Bytes::from_static(b"again"));
        let mut again = Vec::new();
        io.read_to_end(&mut again).await.unwrap();
        assert_eq!(again, b"again");
    }

    /// What ends a connection while its answer is still on the way to a slow reader.
    #[derive(Clone, Copy)]
    enum Ending {
        /// The watchdog asks for a shrink (hyper would otherwise give the connection up at
        /// once, and `into_parts` drop what it still holds).
        Shrink,
        /// A graceful shutdown.
        Drain,
    }

    /// A client that does not read while a 4 KiB answer waits in hyper's buffer (a 64-byte
    /// pipe), then `ending`, then reads: the whole answer comes, then the connection closes
    /// (nothing of a next request is answered). `close`: the client asked for the answer to be
    /// the last.
    async fn a_slow_reader_gets_its_whole_last_answer(close: bool, ending: Ending) {
        use std::time::Duration;
        let (mut client, server) = tokio::io::duplex(64);
        let http = Http {
            h1: http1::Builder::new(),
            h2: http2::Builder::new(TokioExecutor::new()),
        };
        let activity = Activity::new();
        let drain = Drain::new();
        let watcher = drain.watcher();
        let service = hyper::service::service_fn(|_req| {
            std::future::ready(Ok::<_, std::convert::Infallible>(hyper::Response::new(
                http_body_util::Full::new(Bytes::from(vec![b'x'; 4096])),
            )))
        });
        let served = {
            let activity = activity.clone();
            tokio::spawn(async move {
                let stats = Stats::default();
                serve(&http, server, service, &activity, &stats, watcher).await
            })
        };
        let request = match close {
            true => &b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"[..],
            false => &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        };
        client.write_all(request).await.unwrap();
        // Not reading: the 64-byte pipe is full and hyper waits to write the rest.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let drained = match ending {
            Ending::Shrink => {
                activity.ask_shrink();
                None
            }
            Ending::Drain => Some(tokio::spawn(drain.shutdown())),
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        while !got.ends_with(&[b'x'; 4096][..]) {
            let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed before the answer was out");
            got.extend_from_slice(&buf[..n]);
        }
        if close || matches!(ending, Ending::Drain) {
            let _ = client
                .write_all(b"GET /again HTTP/1.1\r\nHost: a\r\n\r\n")
                .await;
            let mut after = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut after))
                .await
                .expect("the connection closes after its last answer");
            assert!(read.is_ok());
            assert!(after.is_empty(), "{}", String::from_utf8_lossy(&after));
            let ended = tokio::time::timeout(Duration::from_secs(5), served).await;
            assert!(ended.is_ok(), "the connection's task ended");
        }
        if let Some(drained) = drained {
            let done = tokio::time::timeout(Duration::from_secs(5), drained).await;
            assert!(done.is_ok(), "the drain finished");
        }
    }

    #[tokio::test]
    async fn a_late_shrink_neither_cuts_an_answer_short_nor_rebuilds_a_closing_connection() {
        a_slow_reader_gets_its_whole_last_answer(true, Ending::Shrink).await;
        a_slow_reader_gets_its_whole_last_answer(false, Ending::Shrink).await;
    }

    #[tokio::test]
    async fn a_drain_lets_a_slow_reader_have_its_whole_answer_then_closes() {
        a_slow_reader_gets_its_whole_last_answer(true, Ending::Drain).await;
        a_slow_reader_gets_its_whole_last_answer(false, Ending::Drain).await;
    }
}
