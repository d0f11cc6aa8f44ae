//! The access log: one `kagami::access` line per request, written when the response body has
//! finished or been dropped (a client that went away mid-download), so that it tells the body
//! bytes really handed to the connection and the whole time the answer took.

use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Buf;
use http::{Method, StatusCode};
use http_body::{Body as _, Frame, SizeHint};

use super::body::{Body, BoxError, Piece};
use crate::cache::CacheStatus;

/// What the line says about the request, known when the response head is ready.
pub struct Line {
    pub started: Instant,
    pub client: IpAddr,
    pub method: Method,
    pub host: Option<String>,
    pub path: String,
    pub status: StatusCode,
    pub cache: CacheStatus,
}

/// A response body that counts the bytes it hands to the connection and writes the access-log
/// line when it is dropped.
pub struct Logged {
    inner: Body,
    line: Line,
    /// Site names live as long as the proxy, not `'static`: the line owns a copy only when
    /// logging is on, so the hit path without a log pays nothing.
    site: String,
    sent: u64,
    complete: bool,
}

impl Logged {
    pub fn new(inner: Body, site: &str, line: Line) -> Logged {
        Logged {
            complete: inner.is_end_stream(),
            inner,
            line,
            site: site.to_string(),
            sent: 0,
        }
    }

    pub fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Piece>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.remaining() as u64;
                }
            }
            Poll::Ready(None) => self.complete = true,
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    pub fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    pub fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let line = &self.line;
        // A body hyper never had to poll (empty, HEAD) is complete too.
        let complete = self.complete || self.inner.is_end_stream();
        let ms = (line.started.elapsed().as_secs_f64() * 1e6).round() / 1e3;
        tracing::info!(
            target: "kagami::access",
            client = %line.client,
            method = %line.method,
            host = line.host.as_deref().unwrap_or("-"),
            path = %line.path,
            site = %self.site,
            status = line.status.as_u16(),
            cache = line.cache.phase.label(),
            detail = line.cache.detail.unwrap_or("-"),
            bytes = self.sent,
            complete,
            ms,
        );
    }
}
