//! Building client responses: from a stored entry (Age, conditionals, ranges, HEAD) and
//! Kagami's own short answers (errors, refusals).

use std::cell::RefCell;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderName, HeaderValue, AGE, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_LOCATION,
    CONTENT_RANGE, CONTENT_TYPE, DATE, ETAG, EXPIRES, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    IF_UNMODIFIED_SINCE, LAST_MODIFIED, RANGE, VARY,
};
use http::{Method, Response, StatusCode};

use super::body::{Body, HELD_PIECE};
use crate::cache::conditional::{self, Precondition, RangeAnswer};
use crate::cache::Entry;

pub(super) const CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");

/// A small complete response Kagami can hand to several clients (errors, shared origin errors).
#[derive(Debug, Clone)]
pub struct Canned {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Canned {
    /// A plain-text answer from Kagami itself; never cached downstream.
    pub fn error(status: StatusCode, text: &str) -> Canned {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        let body = Bytes::from(format!("{text}\n"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        Canned {
            status,
            headers,
            body,
        }
    }

    pub fn response(&self, method: &Method) -> Response<Body> {
        let body = if method == Method::HEAD {
            Body::empty()
        } else {
            Body::full(self.body.clone())
        };
        build(self.status, self.headers.clone(), body)
    }
}

pub fn build(status: StatusCode, headers: HeaderMap, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    // `Response::new` made its map with `HeaderMap::new`, which allocates nothing (http's
    // documented promise): forgotten, it frees nothing less than dropped would, and its drop
    // glue would run on every hit.
    std::mem::forget(std::mem::replace(response.headers_mut(), headers));
    response
}

/// Fields every answer from the store gets besides the stored ones (Age, Cache-Status, Via,
/// Strict-Transport-Security): room for them is made at once, so adding them never grows the map.
const ANSWER_FIELDS: usize = 4;

/// Ages with a ready-made `Age` value: a busy page is answered mostly within its first
/// minutes in the store, and `HeaderValue::from(u64)` allocates on every answer.
const AGE_TABLE: u64 = 1024;

/// The `Age` value for `secs`: from a table of static values (no allocation, and no shared
/// reference count for worker threads to fight over) below `AGE_TABLE`.
fn age_value(secs: u64) -> HeaderValue {
    static AGES: OnceLock<Box<[HeaderValue]>> = OnceLock::new();
    let ages = AGES.get_or_init(|| {
        // One buffer with every number, made once and kept for the process's life, so that
        // each value can be a `from_static` slice of it.
        let mut all = String::new();
        let mut ends = Vec::with_capacity(AGE_TABLE as usize);
        let mut number = itoa::Buffer::new();
        for n in 0..AGE_TABLE {
            all.push_str(number.format(n));
            ends.push(all.len());
        }
        let all: &'static str = Box::leak(all.into_boxed_str());
        let mut start = 0;
        (ends.into_iter())
            .map(|end| {
                let value = HeaderValue::from_static(&all[start..end]);
                start = end;
                value
            })
            .collect()
    });
    match ages.get(secs as usize) {
        Some(value) => value.clone(),
        None => HeaderValue::from(secs),
    }
}

/// Whether a request asks for a precondition check or a range: one pass over its few names
/// instead of five hashed lookups per hit.
fn asks(request: &HeaderMap) -> (bool, bool) {
    let (mut conditional, mut ranged) = (false, false);
    for name in request.keys() {
        conditional |= name == IF_MATCH
            || name == IF_NONE_MATCH
            || name == IF_MODIFIED_SINCE
            || name == IF_UNMODIFIED_SINCE;
        ranged |= name == RANGE;
    }
    (conditional, ranged)
}

/// Slots of the per-thread table of answer fields (`answer_headers`), by entry address: enough
/// for a thread's busy pages not to push each other out, and bounded (a few hundred bytes a
/// slot) whatever the store holds.
const ANSWER_SLOTS: usize = 32;

/// An entry's fields as an answer sends them, checked and ready to clone, with the entry they
/// are of.
type Ready = (Weak<Entry>, Box<[(HeaderName, HeaderValue)]>);

thread_local! {
    /// The fields of entries answered lately. The `Weak` keeps the entry's allocation (not its
    /// body) from being reused while the slot holds its address, so an equal address is the
    /// same entry; the values pin the entry's small field buffer until another entry takes the
    /// slot.
    static ANSWERS: RefCell<[Option<Ready>; ANSWER_SLOTS]> =
        const { RefCell::new([const { None }; ANSWER_SLOTS]) };
}

/// Writes the stored fields of `entry` into `headers` (emptied first), without
/// `CDN-Cache-Control` (it is addressed to Kagami, RFC 9213: stored, not passed on). Fields
/// made ready before are only cloned (a reference count each); making a value from the
/// entry's buffer checks its every byte again.
///
/// Without `Content-Length` too when `length_by_hyper`: the answer's body is the whole stored
/// body, of exactly known size, and hyper writes that length itself (HTTP/1 as it encodes the
/// head, HTTP/2 into the map), the value the stored field holds (`Entry::new` sets it from
/// the body).
fn answer_headers(entry: &Arc<Entry>, headers: &mut HeaderMap, length_by_hyper: bool) {
    let address = Arc::as_ptr(entry) as usize;
    let index = (address / std::mem::align_of::<Entry>()) % ANSWER_SLOTS;
    headers.clear();
    ANSWERS.with_borrow_mut(|slots| {
        let slot = &mut slots[index];
        let fresh =
            !matches!(slot, Some((seen, _)) if std::ptr::eq(seen.as_ptr(), Arc::as_ptr(entry)));
        if fresh {
            let ready = (entry.headers.iter())
                .filter(|(name, _)| **name != CDN_CACHE_CONTROL)
                .map(|(name, value)| (name.clone(), value))
                .collect();
            *slot = Some((Arc::downgrade(entry), ready));
        }
        if let Some((_, ready)) = slot {
            headers.reserve(ready.len() + ANSWER_FIELDS);
            for (name, value) in ready.iter() {
                if length_by_hyper && *name == CONTENT_LENGTH {
                    continue;
                }
                headers.append(name.clone(), value.clone());
            }
        }
    });
}

/// [`from_entry`] for a request that ends with this answer (a hit) and asks for no
/// precondition or range (nearly every hit): the request's own header map becomes the
/// answer's. hyper parses each request into the map of the answer before it, so a
/// connection's hits allocate no header map at all. `age` is the entry's at `now`.
pub fn from_entry_reusing<B>(
    entry: &Arc<Entry>,
    request: &mut http::Request<B>,
    age: Duration,
    now: SystemTime,
) -> Response<Body> {
    if asks(request.headers()) != (false, false) {
        return from_entry(entry, request.method(), request.headers(), now);
    }
    let mut headers = std::mem::take(request.headers_mut());
    // A 200 to a GET: the whole body, which hyper measures itself (one field less to add
    // per hit). A HEAD's empty body would not tell it, and other statuses keep the stored
    // field as they always had it.
    let length_by_hyper = request.method() == Method::GET && entry.status == StatusCode::OK;
    answer_headers(entry, &mut headers, length_by_hyper);
    // An append, not an insert: the map holds the entry's fields only, and those never
    // include `Age` (`Entry::new` drops it).
    headers.append(AGE, age_value(age.as_secs()));
    whole(entry, request.method(), headers)
}

/// Answers a request (its method and header fields) from a stored entry, with a correct
/// `Age` (RFC 9111 §5.1), client preconditions and single byte ranges.
pub fn from_entry(
    entry: &Entry,
    method: &Method,
    request: &HeaderMap,
    now: SystemTime,
) -> Response<Body> {
    let age = age_value(entry.age(now).as_secs());
    let head_only = method == Method::HEAD;
    // CDN-Cache-Control is addressed to Kagami (RFC 9213): it is stored, not passed on.
    let mut headers = entry
        .headers
        .to_map(ANSWER_FIELDS, Some(&CDN_CACHE_CONTROL));

    let (conditional, ranged) = asks(request);
    if conditional && entry.status.is_success() {
        match conditional::evaluate(request, &headers) {
            Precondition::NotModified => {
                let mut kept = HeaderMap::new();
                for name in [
                    CACHE_CONTROL,
                    CONTENT_LOCATION,
                    DATE,
                    ETAG,
                    EXPIRES,
                    LAST_MODIFIED,
                    VARY,
                ] {
                    for value in headers.get_all(&name) {
                        kept.append(name.clone(), value.clone());
                    }
                }
                kept.insert(AGE, age);
                return build(StatusCode::NOT_MODIFIED, kept, Body::empty());
            }
            Precondition::Failed => {
                let mut response =
                    Canned::error(StatusCode::PRECONDITION_FAILED, "precondition failed")
                        .response(method);
                response.headers_mut().insert(AGE, age);
                return response;
            }
            Precondition::Proceed => {}
        }
    }

    headers.insert(AGE, age.clone());
    let length = entry.body.len() as u64;
    if entry.status == StatusCode::OK && ranged {
        match conditional::range(request, &headers, length) {
            RangeAnswer::Full => {}
            RangeAnswer::Partial { start, end } => {
                let (start, end) = (start as usize, end as usize);
                headers.insert(CONTENT_LENGTH, HeaderValue::from(end - start + 1));
                if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{length}")) {
                    headers.insert(CONTENT_RANGE, v);
                }
                // A small range is copied: a slice would keep the whole stored buffer (a large
                // body's mapping) alive, uncounted, while its client does not read, and only
                // answers larger than `HELD_PIECE` are `Held` (charged once the store lets go).
                let body = if head_only {
                    Body::empty()
                } else if end - start < HELD_PIECE {
                    Body::full(entry.body.copy_range(start, end + 1))
                } else {
                    Body::stored(entry.body.slice(start..=end))
                };
                return build(StatusCode::PARTIAL_CONTENT, headers, body);
            }
            RangeAnswer::Unsatisfiable => {
                let mut headers = HeaderMap::new();
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{length}")) {
                    headers.insert(CONTENT_RANGE, v);
                }
                headers.insert(AGE, age);
                return build(StatusCode::RANGE_NOT_SATISFIABLE, headers, Body::empty());
            }
        }
    }
    whole(entry, method, headers)
}

/// The whole stored answer, with `headers` (the entry's, `Age` included).
fn whole(entry: &Entry, method: &Method, headers: HeaderMap) -> Response<Body> {
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::stored(entry.body.clone())
    };
    build(entry.status, headers, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::StoreSettings;
    use crate::config::SiteConfig;

    fn entry(etag: &'static str) -> Arc<Entry> {
        let mut headers = HeaderMap::new();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
        headers.insert(CDN_CACHE_CONTROL, HeaderValue::from_static("max-age=600"));
        headers.insert(ETAG, HeaderValue::from_static(etag));
        let site = SiteConfig::new("t", &["t.test"], "http://127.0.0.1:9").unwrap();
        let now = SystemTime::now();
        let body = Bytes::from_static(b"body");
        let settings = StoreSettings::of(&site);
        Arc::new(Entry::new(
            StatusCode::OK,
            headers,
            body,
            &HeaderMap::new(),
            now,
            now,
            &settings,
        ))
    }

    fn hit(entry: &Arc<Entry>) -> Response<Body> {
        hit_as(entry, Method::GET)
    }

    fn hit_as(entry: &Arc<Entry>, method: Method) -> Response<Body> {
        let mut request = http::Request::builder()
            .method(method)
            .uri("/")
            .header(http::header::HOST, "t.test")
            .body(())
            .unwrap();
        let now = SystemTime::now();
        from_entry_reusing(entry, &mut request, entry.age(now), now)
    }

    #[test]
    fn answers_from_the_thread_table_are_each_entrys_own() {
        let (a, b) = (entry("\"a\""), entry("\"b\""));
        let empty = HeaderMap::new();
        // First made, then from the table: the same answer both times.
        for _ in 0..2 {
            for (entry, etag) in [(&a, "\"a\""), (&b, "\"b\"")] {
                let answer = hit(entry);
                let headers = answer.headers();
                assert_eq!(headers[ETAG], etag);
                assert_eq!(headers[AGE], "0");
                assert!(
                    !headers.contains_key(CDN_CACHE_CONTROL),
                    "addressed to Kagami"
                );
                assert!(
                    !headers.contains_key(http::header::HOST),
                    "nothing of the request"
                );
                // The general path's fields, but the length: hyper writes it from the body.
                let general = from_entry(entry, &Method::GET, &empty, SystemTime::now());
                let mut expected = general.headers().clone();
                assert_eq!(expected.remove(CONTENT_LENGTH).unwrap(), "4");
                assert_eq!(*headers, expected);
                assert_eq!(http_body::Body::size_hint(answer.body()).exact(), Some(4));
                // A HEAD's body is empty: the stored length is sent as a field.
                let head = hit_as(entry, Method::HEAD);
                let general = from_entry(entry, &Method::HEAD, &empty, SystemTime::now());
                assert_eq!(head.headers(), general.headers());
                assert_eq!(head.headers()[CONTENT_LENGTH], "4");
            }
        }
        // A new entry, perhaps where a dropped one lived: never the old one's fields.
        drop(a);
        let c = entry("\"c\"");
        assert_eq!(hit(&c).headers()[ETAG], "\"c\"");
        assert_eq!(hit(&b).headers()[ETAG], "\"b\"");
    }

    #[test]
    fn age_values_from_the_table_and_beyond_it_read_as_the_number() {
        for secs in [0, 1, 9, 10, 99, 100, 599, AGE_TABLE - 1, AGE_TABLE, 86_400] {
            assert_eq!(age_value(secs), secs.to_string().as_str(), "{secs}");
        }
    }
}
