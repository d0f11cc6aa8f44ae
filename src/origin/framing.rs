//! Message framing at the origin boundary (RFC 9112 §6): a request carries exactly the framing
//! of the body Kagami really sends, and an origin response is relayed only with framing that
//! cannot mislead the client.
//!
//! Pooled origin connections are shared by every visitor, so a request whose `Content-Length`
//! promises a body that never comes makes the origin read the next visitor's request as that
//! body — and answer a request the attacker hid inside it, which Kagami would then store.

use http::header::{CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, StatusCode};

/// The body an origin request will carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outgoing {
    /// No body at all (GET, HEAD, and any body Kagami does not forward).
    None,
    /// A body of exactly this many bytes (the client's own length, already enforced).
    Exact(u64),
    /// A body of unknown length: the HTTP client frames it (chunked in HTTP/1.1).
    Streamed,
}

/// Replaces whatever framing the client wrote with the framing of the body actually sent.
/// `Expect` goes too: Kagami answers `100-continue` to its client itself, and the origin must
/// never wait for, or ask for, a body on Kagami's behalf.
pub fn frame_request(headers: &mut HeaderMap, body: Outgoing) {
    headers.remove(CONTENT_LENGTH);
    headers.remove(TRANSFER_ENCODING);
    headers.remove(EXPECT);
    // RFC 9110 §8.6: a sized body says its size; the HTTP client adds chunked framing for a
    // streamed one and sends no framing at all for none.
    if let Outgoing::Exact(len) = body {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
}

/// Checks and repairs the framing of an origin's final response before it goes anywhere.
/// An informational status (101 above all) is no final answer to the request Kagami sent: the
/// caller answers 502. With `Transfer-Encoding` the body was decoded by its chunks, so a
/// `Content-Length` beside it is a lie to the client (RFC 9112 §6.3: remove it). 204 and 304
/// never have a body, so they never carry a length downstream either.
pub fn frame_response(status: StatusCode, headers: &mut HeaderMap) -> Result<(), String> {
    if status.is_informational() {
        return Err(format!(
            "the origin answered {status} as its final response"
        ));
    }
    if headers.contains_key(TRANSFER_ENCODING)
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        headers.remove(CONTENT_LENGTH);
    }
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        headers.remove(TRANSFER_ENCODING);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn a_request_without_a_body_keeps_no_client_framing() {
        let mut h = with(&[
            ("content-length", "41"),
            ("transfer-encoding", "chunked"),
            ("expect", "100-continue"),
            ("accept", "*/*"),
        ]);
        frame_request(&mut h, Outgoing::None);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn a_sized_body_says_its_own_size_and_a_streamed_one_none() {
        let mut h = with(&[("content-length", "41"), ("content-length", "41")]);
        frame_request(&mut h, Outgoing::Exact(7));
        assert_eq!(h.get_all(CONTENT_LENGTH).iter().count(), 1);
        assert_eq!(h[CONTENT_LENGTH], "7");
        let mut h = with(&[
            ("content-length", "7"),
            ("transfer-encoding", "gzip, chunked"),
        ]);
        frame_request(&mut h, Outgoing::Streamed);
        assert!(h.is_empty());
    }

    #[test]
    fn transfer_encoding_wins_over_content_length() {
        let mut h = with(&[("content-length", "5"), ("transfer-encoding", "chunked")]);
        frame_response(StatusCode::OK, &mut h).unwrap();
        assert!(!h.contains_key(CONTENT_LENGTH));
        assert!(h.contains_key(TRANSFER_ENCODING));
        let mut h = with(&[("content-length", "5")]);
        frame_response(StatusCode::OK, &mut h).unwrap();
        assert_eq!(h[CONTENT_LENGTH], "5");
    }

    #[test]
    fn no_content_and_not_modified_carry_no_length() {
        for status in [StatusCode::NO_CONTENT, StatusCode::NOT_MODIFIED] {
            let mut h = with(&[("content-length", "5"), ("etag", "\"a\"")]);
            frame_response(status, &mut h).unwrap();
            assert!(!h.contains_key(CONTENT_LENGTH), "{status}");
            assert!(h.contains_key("etag"));
        }
    }

    #[test]
    fn informational_final_answers_are_refused() {
        for code in [100, 101, 103] {
            let status = StatusCode::from_u16(code).unwrap();
            assert!(frame_response(status, &mut HeaderMap::new()).is_err());
        }
    }
}
