//! Cache keys: site plus normalised path and query (the primary key of RFC 9111 §4).

use std::borrow::Cow;

/// The primary key of a request (RFC 9111 §2: the target URI): the site, the authority the
/// origin is asked for (`host`, normalised by `routing::split_authority`; empty when the site
/// sends the origin a fixed Host), and the path and query. Equivalent spellings of one URI
/// (percent-encoding case, encoded unreserved characters; RFC 3986 §6.2.2) share one key.
pub fn primary_key(site: &str, host: &str, path_and_query: &str) -> String {
    let normalised = normalise(path_and_query);
    let mut key = String::with_capacity(site.len() + host.len() + 3 + normalised.len());
    key.push_str(site);
    key.push('\u{0}');
    key.push_str(host);
    key.push('\u{0}');
    if !normalised.starts_with('/') {
        key.push('/');
    }
    key.push_str(&normalised);
    key
}

fn normalise(text: &str) -> Cow<'_, str> {
    if !text.contains('%') {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        // http::Uri only admits ASCII, so byte-wise handling is exact.
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = text.get(i + 1..i + 3).unwrap_or("");
            if let Ok(value) = u8::from_str_radix(hex, 16) {
                if value.is_ascii_alphanumeric() || matches!(value, b'-' | b'.' | b'_' | b'~') {
                    out.push(value as char);
                } else {
                    out.push('%');
                    out.push_str(&hex.to_ascii_uppercase());
                }
                i += 3;
                continue;
            }
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_and_hosts_do_not_share_keys() {
        assert_ne!(primary_key("a", "h", "/x"), primary_key("b", "h", "/x"));
        assert_ne!(
            primary_key("a", "www.example.jp", "/x"),
            primary_key("a", "bousai.example.jp", "/x")
        );
    }

    #[test]
    fn percent_encoding_is_normalised() {
        assert_eq!(
            primary_key("s", "", "/%7euser/%41?q=%2f"),
            primary_key("s", "", "/~user/A?q=%2F")
        );
        assert_ne!(primary_key("s", "", "/a%2Fb"), primary_key("s", "", "/a/b"));
        assert_eq!(primary_key("s", "", "/bad%zz%"), "s\u{0}\u{0}/bad%zz%");
    }

    #[test]
    fn query_is_part_of_the_key() {
        assert_ne!(
            primary_key("s", "", "/p?a=1"),
            primary_key("s", "", "/p?a=2")
        );
        assert_eq!(primary_key("s", "h", ""), "s\u{0}h\u{0}/");
    }
}
