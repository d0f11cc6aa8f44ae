//! The answer for a request still in flight when the shutdown drain time runs out: a 503 the
//! client can act on (retry soon, on a new connection), instead of a connection closed without
//! a status line, which browsers and proxies report as a broken site.

use http::header::{CONNECTION, RETRY_AFTER};
use http::{HeaderValue, Method, Response, StatusCode, Version};

use super::body::Body;
use super::headers;
use super::respond::Canned;
use crate::cache::{CacheStatus, Phase};

/// The 503 for a request overtaken by the drain deadline. `Connection: close` only for
/// HTTP/1 (HTTP/2 forbids the field; its connection ends with GOAWAY).
pub fn shutting_down(method: &Method, version: Version) -> Response<Body> {
    let mut canned = Canned::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "kagami: restarting, try again in a moment",
    );
    canned
        .headers
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    if version < Version::HTTP_2 {
        canned
            .headers
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    let mut response = canned.response(method);
    let status = CacheStatus::new(Phase::Error).detail("shutting-down");
    if let Ok(v) = HeaderValue::from_str(&status.member()) {
        response.headers_mut().append("cache-status", v);
    }
    headers::append_via(response.headers_mut());
    response
}
