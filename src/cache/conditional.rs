//! Client conditional requests (RFC 9110 §13.2.2 order) and single byte ranges (RFC 9110 §14)
//! answered from a stored response.

use std::time::SystemTime;

use http::header::{
    HeaderMap, ETAG, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE,
    LAST_MODIFIED, RANGE,
};

use super::policy::http_date;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Send the stored response.
    Proceed,
    /// 304 Not Modified.
    NotModified,
    /// 412 Precondition Failed.
    Failed,
}

fn opaque(tag: &str) -> &str {
    tag.trim().strip_prefix("W/").unwrap_or(tag.trim())
}

fn is_weak(tag: &str) -> bool {
    tag.trim().starts_with("W/")
}

/// Tags in an If-Match / If-None-Match list; `None` for `*`.
fn tag_list(headers: &HeaderMap, name: http::header::HeaderName) -> Option<Vec<String>> {
    let mut tags = Vec::new();
    for value in headers.get_all(name) {
        let text = value.to_str().unwrap_or("");
        for tag in text.split(',') {
            let tag = tag.trim();
            if tag == "*" {
                return None;
            }
            if !tag.is_empty() {
                tags.push(tag.to_string());
            }
        }
    }
    Some(tags)
}

fn seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Evaluates the request's preconditions against a stored GET response.
pub fn evaluate(request: &HeaderMap, stored: &HeaderMap) -> Precondition {
    let etag = stored.get(ETAG).and_then(|v| v.to_str().ok());
    let modified = http_date(stored, LAST_MODIFIED);

    if request.contains_key(IF_MATCH) {
        // Strong comparison.
        let ok = match tag_list(request, IF_MATCH) {
            None => true,
            Some(tags) => etag.is_some_and(|e| {
                !is_weak(e) && tags.iter().any(|t| !is_weak(t) && t.trim() == e.trim())
            }),
        };
        if !ok {
            return Precondition::Failed;
        }
    } else if let Some(since) = http_date(request, IF_UNMODIFIED_SINCE) {
        // Without a Last-Modified the condition cannot be evaluated and is ignored (RFC 9110 §13.1.4).
        if modified.is_some_and(|m| seconds(m) > seconds(since)) {
            return Precondition::Failed;
        }
    }

    if request.contains_key(IF_NONE_MATCH) {
        // Weak comparison.
        let matched = match tag_list(request, IF_NONE_MATCH) {
            None => true,
            Some(tags) => etag.is_some_and(|e| tags.iter().any(|t| opaque(t) == opaque(e))),
        };
        if matched {
            return Precondition::NotModified;
        }
    } else if let (Some(since), Some(m)) = (http_date(request, IF_MODIFIED_SINCE), modified) {
        if seconds(m) <= seconds(since) {
            return Precondition::NotModified;
        }
    }
    Precondition::Proceed
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// Send the whole representation (no Range, several ranges, or If-Range did not match).
    Full,
    /// Send bytes `start..=end`.
    Partial { start: u64, end: u64 },
    /// 416 Range Not Satisfiable.
    Unsatisfiable,
}

/// Decides how to answer `Range` for a stored body of `length` bytes. Only single byte ranges
/// are served; anything else gets the full response, which RFC 9110 §14.2 allows.
pub fn range(request: &HeaderMap, stored: &HeaderMap, length: u64) -> RangeAnswer {
    let Some(text) = request.get(RANGE).and_then(|v| v.to_str().ok()) else {
        return RangeAnswer::Full;
    };
    if let Some(condition) = request.get(IF_RANGE).and_then(|v| v.to_str().ok()) {
        let etag = stored.get(ETAG).and_then(|v| v.to_str().ok());
        let matches = if condition.trim_start().starts_with('"')
            || condition.trim_start().starts_with("W/")
        {
            etag.is_some_and(|e| !is_weak(e) && !is_weak(condition) && e.trim() == condition.trim())
        } else {
            let stored_date = http_date(stored, LAST_MODIFIED);
            let wanted = httpdate::parse_http_date(condition.trim()).ok();
            matches!((stored_date, wanted), (Some(a), Some(b)) if seconds(a) == seconds(b))
        };
        if !matches {
            return RangeAnswer::Full;
        }
    }
    let Some(spec) = text.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Full;
    };
    if spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAnswer::Full;
    };
    let parse = |s: &str| s.trim().parse::<u64>().ok();
    let (start, end) = match (first.trim().is_empty(), last.trim().is_empty()) {
        (true, true) => return RangeAnswer::Full,
        // Suffix range: the last N bytes.
        (true, false) => match parse(last) {
            Some(0) => return RangeAnswer::Unsatisfiable,
            Some(n) if length > 0 => (length.saturating_sub(n), length - 1),
            Some(_) => return RangeAnswer::Unsatisfiable,
            None => return RangeAnswer::Full,
        },
        (false, open_end) => {
            let Some(start) = parse(first) else {
                return RangeAnswer::Full;
            };
            let end = if open_end {
                length.saturating_sub(1)
            } else {
                match parse(last) {
                    Some(e) if e >= start => e.min(length.saturating_sub(1)),
                    _ => return RangeAnswer::Full,
                }
            };
            if start >= length {
                return RangeAnswer::Unsatisfiable;
            }
            (start, end)
        }
    };
    RangeAnswer::Partial { start, end }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    const LM: &str = "Tue, 01 Oct 2024 00:00:00 GMT";
    const LATER: &str = "Wed, 02 Oct 2024 00:00:00 GMT";
    const EARLIER: &str = "Mon, 30 Sep 2024 00:00:00 GMT";

    fn stored() -> HeaderMap {
        h(&[("etag", "\"v1\""), ("last-modified", LM)])
    }

    #[test]
    fn if_none_match_uses_weak_comparison() {
        assert_eq!(
            evaluate(&h(&[("if-none-match", "W/\"v1\"")]), &stored()),
            Precondition::NotModified
        );
        assert_eq!(
            evaluate(&h(&[("if-none-match", "\"x\", \"v1\"")]), &stored()),
            Precondition::NotModified
        );
        assert_eq!(
            evaluate(&h(&[("if-none-match", "*")]), &stored()),
            Precondition::NotModified
        );
        assert_eq!(
            evaluate(&h(&[("if-none-match", "\"v2\"")]), &stored()),
            Precondition::Proceed
        );
    }

    #[test]
    fn if_modified_since_is_ignored_when_if_none_match_is_present() {
        assert_eq!(
            evaluate(&h(&[("if-modified-since", LATER)]), &stored()),
            Precondition::NotModified
        );
        assert_eq!(
            evaluate(&h(&[("if-modified-since", EARLIER)]), &stored()),
            Precondition::Proceed
        );
        let both = h(&[("if-none-match", "\"v2\""), ("if-modified-since", LATER)]);
        assert_eq!(evaluate(&both, &stored()), Precondition::Proceed);
    }

    #[test]
    fn if_match_and_if_unmodified_since_come_first() {
        assert_eq!(
            evaluate(&h(&[("if-match", "\"v2\"")]), &stored()),
            Precondition::Failed
        );
        assert_eq!(
            evaluate(&h(&[("if-match", "\"v1\"")]), &stored()),
            Precondition::Proceed
        );
        assert_eq!(
            evaluate(&h(&[("if-match", "W/\"v1\"")]), &stored()),
            Precondition::Failed
        );
        assert_eq!(
            evaluate(&h(&[("if-unmodified-since", EARLIER)]), &stored()),
            Precondition::Failed
        );
        assert_eq!(
            evaluate(&h(&[("if-unmodified-since", LATER)]), &stored()),
            Precondition::Proceed
        );
        // No Last-Modified: If-Unmodified-Since is ignored (RFC 9110 §13.1.4).
        let undated = h(&[("etag", "\"v1\"")]);
        assert_eq!(
            evaluate(&h(&[("if-unmodified-since", EARLIER)]), &undated),
            Precondition::Proceed
        );
    }

    #[test]
    fn single_ranges() {
        let s = stored();
        let r = |v: &str| range(&h(&[("range", v)]), &s, 100);
        assert_eq!(r("bytes=0-9"), RangeAnswer::Partial { start: 0, end: 9 });
        assert_eq!(r("bytes=90-"), RangeAnswer::Partial { start: 90, end: 99 });
        assert_eq!(r("bytes=-10"), RangeAnswer::Partial { start: 90, end: 99 });
        assert_eq!(
            r("bytes=50-500"),
            RangeAnswer::Partial { start: 50, end: 99 }
        );
        assert_eq!(r("bytes=100-"), RangeAnswer::Unsatisfiable);
        assert_eq!(r("bytes=0-1,5-6"), RangeAnswer::Full);
        assert_eq!(r("bytes=9-2"), RangeAnswer::Full);
        assert_eq!(r("items=0-1"), RangeAnswer::Full);
        assert_eq!(range(&HeaderMap::new(), &s, 100), RangeAnswer::Full);
    }

    #[test]
    fn if_range_must_match_strongly() {
        let s = stored();
        let q = |cond: &str| range(&h(&[("range", "bytes=0-1"), ("if-range", cond)]), &s, 10);
        assert_eq!(q("\"v1\""), RangeAnswer::Partial { start: 0, end: 1 });
        assert_eq!(q("\"v0\""), RangeAnswer::Full);
        assert_eq!(q(LM), RangeAnswer::Partial { start: 0, end: 1 });
        assert_eq!(q(LATER), RangeAnswer::Full);
    }
}
