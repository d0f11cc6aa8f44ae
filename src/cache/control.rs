//! Cache-Control (RFC 9111 §5.2) and CDN-Cache-Control (RFC 9213) parsing into one directive set.

use http::header::{HeaderMap, CACHE_CONTROL};

/// The response directives Kagami acts on. Unknown directives are ignored (RFC 9111 §5.2.3).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Directives {
    pub no_store: bool,
    /// `no-cache`, bare or with field names (both are treated as "revalidate every time").
    pub no_cache: bool,
    /// `private`, bare or with field names: never stored by a shared cache like Kagami.
    pub private: bool,
    pub public: bool,
    /// Seconds; a malformed value is recorded as 0 so the response counts as stale.
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
}

/// RFC 9111 §1.2.2: delta-seconds too large to represent are taken as 2^31.
const MAX_DELTA: u64 = 2_147_483_648;

impl Directives {
    /// Whether the response carries explicit freshness (which also makes it storable).
    pub fn has_explicit_freshness(&self) -> bool {
        self.max_age.is_some() || self.s_maxage.is_some()
    }

    /// Directives that forbid serving the response stale without revalidation
    /// (RFC 9111 §5.2.2.2, §5.2.2.8, and §5.2.2.10: s-maxage implies proxy-revalidate).
    pub fn forbids_stale(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate || self.s_maxage.is_some() || self.no_cache
    }

    fn apply(&mut self, name: &str, value: Option<&str>) {
        let seconds = || value.map(parse_delta_seconds).unwrap_or(Some(0));
        match name {
            "no-store" => self.no_store = true,
            "no-cache" => self.no_cache = true,
            "private" => self.private = true,
            "public" => self.public = true,
            "must-revalidate" => self.must_revalidate = true,
            "proxy-revalidate" => self.proxy_revalidate = true,
            // The first occurrence wins (RFC 9111 §4.2.1); a bad value means "stale".
            "max-age" if self.max_age.is_none() => self.max_age = Some(seconds().unwrap_or(0)),
            "s-maxage" if self.s_maxage.is_none() => self.s_maxage = Some(seconds().unwrap_or(0)),
            // A malformed stale window grants nothing.
            "stale-while-revalidate" if self.stale_while_revalidate.is_none() => {
                self.stale_while_revalidate = value.and_then(parse_delta_seconds)
            }
            "stale-if-error" if self.stale_if_error.is_none() => {
                self.stale_if_error = value.and_then(parse_delta_seconds)
            }
            _ => {}
        }
    }
}

pub(crate) fn parse_delta_seconds(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse::<u64>().unwrap_or(MAX_DELTA).min(MAX_DELTA))
}

/// Parses every `Cache-Control` line of `headers` (RFC 9111 §5.2).
pub fn parse_cache_control(headers: &HeaderMap) -> Directives {
    let mut directives = Directives::default();
    for value in headers.get_all(CACHE_CONTROL) {
        let Ok(text) = value.to_str() else { continue };
        for (name, value) in split_directives(text) {
            directives.apply(&name, value.as_deref());
        }
    }
    directives
}

/// Splits `a, b=1, c="x, y"` into lowercase names and unquoted values.
fn split_directives(text: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return out;
        }
        let name_end = rest.find(['=', ',']).unwrap_or(rest.len());
        let name = rest[..name_end].trim().to_ascii_lowercase();
        rest = &rest[name_end..];
        let mut value = None;
        if let Some(after) = rest.strip_prefix('=') {
            let after = after.trim_start();
            if let Some(quoted) = after.strip_prefix('"') {
                let mut v = String::new();
                let mut chars = quoted.char_indices();
                let mut end = quoted.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, escaped)) = chars.next() {
                                v.push(escaped);
                            }
                        }
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        _ => v.push(c),
                    }
                }
                value = Some(v);
                rest = &quoted[end.min(quoted.len())..];
                rest = rest.find(',').map_or("", |i| &rest[i..]);
            } else {
                let end = after.find(',').unwrap_or(after.len());
                value = Some(after[..end].trim().to_string());
                rest = &after[end..];
            }
        }
        if !name.is_empty() {
            out.push((name, value));
        }
    }
}

/// Parses `CDN-Cache-Control` (RFC 9213) as a Structured Fields dictionary.
/// `None` when the field is absent or does not parse: then it is ignored entirely.
pub fn parse_cdn_cache_control(headers: &HeaderMap) -> Option<Directives> {
    let mut joined = String::new();
    for value in headers.get_all("cdn-cache-control") {
        if !joined.is_empty() {
            joined.push_str(", ");
        }
        joined.push_str(value.to_str().ok()?);
    }
    if joined.is_empty() {
        return None;
    }
    let dict: sfv::Dictionary = sfv::Parser::new(&joined).parse().ok()?;
    let mut directives = Directives::default();
    for (key, entry) in &dict {
        let value = match entry {
            sfv::ListEntry::Item(item) => match &item.bare_item {
                sfv::BareItem::Boolean(false) => continue,
                sfv::BareItem::Boolean(true) => None,
                sfv::BareItem::Integer(n) => Some(i64::from(*n).max(0).to_string()),
                // A non-integer where seconds are expected: malformed, so "stale".
                _ => Some(String::from("invalid")),
            },
            sfv::ListEntry::InnerList(_) => None,
        };
        directives.apply(key.as_str(), value.as_deref());
    }
    Some(directives)
}

/// The directives Kagami uses for freshness: CDN-Cache-Control when it parses, else Cache-Control.
pub fn response_directives(headers: &HeaderMap) -> Directives {
    parse_cdn_cache_control(headers).unwrap_or_else(|| parse_cache_control(headers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn cc(values: &[&str]) -> Directives {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(CACHE_CONTROL, HeaderValue::from_str(v).unwrap());
        }
        parse_cache_control(&h)
    }

    #[test]
    fn names_are_case_insensitive_and_lines_combine() {
        let d = cc(&["Max-Age=60, PUBLIC", "s-maxage=30"]);
        assert_eq!(d.max_age, Some(60));
        assert_eq!(d.s_maxage, Some(30));
        assert!(d.public);
    }

    #[test]
    fn malformed_max_age_means_stale() {
        assert_eq!(cc(&["max-age=abc"]).max_age, Some(0));
        assert_eq!(cc(&["max-age"]).max_age, Some(0));
        assert_eq!(cc(&["max-age=-5"]).max_age, Some(0));
    }

    #[test]
    fn first_max_age_wins_and_huge_values_saturate() {
        assert_eq!(cc(&["max-age=10, max-age=99"]).max_age, Some(10));
        assert_eq!(
            cc(&["max-age=99999999999999999999"]).max_age,
            Some(MAX_DELTA)
        );
    }

    #[test]
    fn quoted_values_and_unknown_directives() {
        let d = cc(&["private=\"set-cookie, x\", community=\"UCI\", no-cache"]);
        assert!(d.private && d.no_cache);
        assert_eq!(d.max_age, None);
        assert_eq!(cc(&["max-age=\"30\""]).max_age, Some(30));
    }

    #[test]
    fn stale_windows() {
        let d = cc(&["max-age=1, stale-while-revalidate=30, stale-if-error=600"]);
        assert_eq!(d.stale_while_revalidate, Some(30));
        assert_eq!(d.stale_if_error, Some(600));
        assert_eq!(cc(&["stale-if-error=x"]).stale_if_error, None);
    }

    #[test]
    fn s_maxage_forbids_stale() {
        assert!(cc(&["s-maxage=5"]).forbids_stale());
        assert!(cc(&["must-revalidate"]).forbids_stale());
        assert!(!cc(&["max-age=5"]).forbids_stale());
    }

    #[test]
    fn cdn_cache_control_replaces_cache_control_when_valid() {
        let mut h = HeaderMap::new();
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(
            "cdn-cache-control",
            HeaderValue::from_static("max-age=600, stale-if-error=60"),
        );
        let d = response_directives(&h);
        assert!(!d.no_store);
        assert_eq!(d.max_age, Some(600));
        assert_eq!(d.stale_if_error, Some(60));
    }

    #[test]
    fn unparsable_cdn_cache_control_is_ignored() {
        let mut h = HeaderMap::new();
        h.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=5"));
        h.insert(
            "cdn-cache-control",
            HeaderValue::from_static("max-age=\"600"),
        );
        assert_eq!(response_directives(&h).max_age, Some(5));
        h.insert(
            "cdn-cache-control",
            HeaderValue::from_static("no-store, max-age=?1"),
        );
        // Valid SF dictionary; max-age as a boolean is not a number: stale.
        let d = response_directives(&h);
        assert!(d.no_store);
    }
}
