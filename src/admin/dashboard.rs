//! `GET /`: the operators' dashboard, one self-contained page (inline CSS and script, no
//! external assets: it must work with no internet) that fetches `/status` every few seconds.
//!
//! The page itself holds no data, so it is served without a token. It gets the token from a
//! `#token=…` fragment (never sent to any server, removed from the address bar at once) or by
//! asking, keeps it in `sessionStorage` (gone when the tab closes) and sends it as a bearer
//! token; without a configured token (loopback only) `/status` is open.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

const PAGE: &str = include_str!("dashboard.html");

/// Only the page's own inline style and script, and requests to this listener.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; \
                   connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

pub fn page() -> Response<Full<Bytes>> {
    let mut response = super::answer(StatusCode::OK, "text/html; charset=utf-8", PAGE);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
