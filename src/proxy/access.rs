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

/// The longest path or host a line keeps, in bytes. The line lives as long as the body is
/// being sent, which a client can stretch (an HTTP/2 window of 0 on every stream); a head
/// near the size limit must not pin that much per stream, nor fill the log.
const MAX_TEXT: usize = 1024;

/// `text`, or its first `MAX_TEXT` bytes (at a character boundary) and `…`, with the
/// characters that would split or reorder a log line escaped (`log_text`). The escaped text is
/// held to `MAX_TEXT` too: an escape is up to eight times the character it stands for.
pub fn clip(text: &str) -> String {
    let escaped = crate::log_text::escape(&text[..boundary(text, MAX_TEXT)]);
    if text.len() <= MAX_TEXT && escaped.len() <= MAX_TEXT {
        return escaped.into_owned();
    }
    let kept = &escaped[..boundary(&escaped, MAX_TEXT)];
    let mut clipped = String::with_capacity(kept.len() + '…'.len_utf8());
    clipped.push_str(kept);
    clipped.push('…');
    clipped
}

/// The largest character boundary of `text` at or below `at`.
fn boundary(text: &str, at: usize) -> usize {
    let mut end = at.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_are_clipped_at_a_character_boundary() {
        assert_eq!(clip("/short"), "/short");
        let long = "é".repeat(MAX_TEXT);
        let clipped = clip(&long);
        assert!(clipped.len() <= MAX_TEXT + 3 && clipped.ends_with('…'));
        assert!(long.starts_with(clipped.trim_end_matches('…')));
    }

    #[test]
    fn clipped_texts_are_escaped_for_the_log() {
        assert_eq!(clip("/a\u{2028}b"), "/a\\u{2028}b");
        let long = format!("/\u{202E}{}", "a".repeat(MAX_TEXT));
        assert!(!clip(&long).contains('\u{202E}'));
        // Escapes are longer than what they stand for; the line still keeps at most MAX_TEXT.
        for evil in ["\u{85}", "\u{202E}", "\t"] {
            let clipped = clip(&evil.repeat(MAX_TEXT));
            assert!(clipped.len() <= MAX_TEXT + 3, "{evil:?}: {}", clipped.len());
            assert!(clipped.ends_with('…') && clipped.starts_with("\\u{"));
        }
        let just = "\t".repeat(MAX_TEXT / 8);
        assert_eq!(
            clip(&just),
            "\\u{0009}".repeat(MAX_TEXT / 8),
            "fits: not clipped"
        );
    }
}
