//! Connection watchdog: the socket counts its reads and writes (a counter, not a clock read, on
//! the hot path) and how many requests are under way. A connection is closed when its first request head does not arrive within the
//! header-read timeout (hyper's own timer only starts once the protocol is known, and HTTP/2 has
//! none), or when no request is under way and nothing has moved for the idle timeout.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub struct IdleIo {
    inner: TcpStream,
    activity: Arc<Activity>,
}

pub struct Activity {
    start: Instant,
    /// Reads and writes that moved bytes.
    ops: AtomicU64,
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
    fn touch(&self) {
        self.ops.fetch_add(1, Ordering::Relaxed);
    }

    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.touch();
        RequestGuard(self.clone())
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
            // Idle when nothing moved during one whole timeout: closes between one and two
            // timeouts after the last byte, without reading the clock per read or write.
            let before = self.ops.load(Ordering::Relaxed);
            tokio::time::sleep(idle_timeout).await;
            if self.ops.load(Ordering::Relaxed) == before
                && self.active.load(Ordering::Relaxed) == 0
            {
                return Verdict::Idle;
            }
        }
    }
}

impl IdleIo {
    pub fn new(inner: TcpStream) -> (IdleIo, Arc<Activity>) {
        let activity = Arc::new(Activity {
            start: Instant::now(),
            ops: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
        });
        (
            IdleIo {
                inner,
                activity: activity.clone(),
            },
            activity,
        )
    }
}

impl AsyncRead for IdleIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        result
    }
}

impl AsyncWrite for IdleIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
