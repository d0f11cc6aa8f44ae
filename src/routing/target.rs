//! Request targets: the path and query Kagami sends to the origin and keys the cache on, made
//! canonical once, on bytes, so that the key describes exactly what the origin receives.
//!
//! Two spellings that the origin could tell apart must never share a key (that is cache
//! poisoning), and the origin must receive the spelling the key was built from. So the target
//! is normalised the way RFC 3986 §6.2.2 allows (percent-encoded unreserved characters decoded,
//! hex digits uppercased, characters that may not stand in a URI percent-encoded, dot segments
//! removed), and then that one string is both the key and what is sent: the origin URL parser
//! (WHATWG, in reqwest) leaves a canonical target as it is.

use std::borrow::Cow;

/// Why a target was refused (the request gets 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("the request target is not an absolute path")]
    NotAPath,
    #[error("a % in the request target is not followed by two hex digits")]
    StrayPercent,
}

/// The canonical form of an origin-form target (`/path?query`; a bare `?query` means `/`).
/// The asterisk form (`*`, for `OPTIONS *`) is not a path and is refused here.
/// Borrows when the target is canonical already, as nearly every real one is (this runs per
/// request).
pub fn canonical(raw: &str) -> Result<Cow<'_, str>, TargetError> {
    if already_canonical(raw) {
        return Ok(Cow::Borrowed(raw));
    }
    let raw = match raw {
        "" => "/",
        _ => raw,
    };
    let (path, query) = match raw.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (raw, None),
    };
    let path = if path.is_empty() { "/" } else { path };
    if !path.starts_with('/') {
        return Err(TargetError::NotAPath);
    }
    // A target that is canonical already was answered above (`already_canonical`).
    let mut out = remove_dot_segments(&percent_normalised(path.as_bytes(), Part::Path)?);
    if let Some(query) = query {
        out.push('?');
        out.push_str(&percent_normalised(query.as_bytes(), Part::Query)?);
    }
    Ok(Cow::Owned(out))
}

/// Whether `raw` is canonical as it is (an absolute path, every byte literal, no `%`, no `.` or
/// `..` segment), in one pass over the bytes with a table per byte: it runs for every
/// request, and the splits and searches of the slow path cost several times more.
fn already_canonical(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return false;
    }
    let dot_segment = |len: usize, dots: usize| (len == 1 || len == 2) && dots == len;
    let mut in_query = false;
    // The path segment being read: its length, and how many of its bytes are dots.
    let (mut len, mut dots) = (0, 0);
    for &b in bytes {
        if in_query {
            if !QUERY_LITERAL[usize::from(b)] {
                return false;
            }
        } else if b == b'/' || b == b'?' {
            if dot_segment(len, dots) {
                return false;
            }
            (len, dots) = (0, 0);
            in_query = b == b'?';
        } else if PATH_LITERAL[usize::from(b)] {
            len += 1;
            dots += usize::from(b == b'.');
        } else {
            return false;
        }
    }
    in_query || !dot_segment(len, dots)
}

/// `literal` for every byte, per part (`%` is never literal).
const PATH_LITERAL: [bool; 256] = literal_table(Part::Path);
const QUERY_LITERAL: [bool; 256] = literal_table(Part::Query);

const fn literal_table(part: Part) -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = literal(b as u8, part);
        b += 1;
    }
    table
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Path,
    Query,
}

const fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Characters that stand in a canonical target as themselves (RFC 3986 `pchar`, plus `/`, and
/// `?` in the query). Everything else is percent-encoded. `'` is encoded in the query because
/// the WHATWG parser would do it on the way to the origin, and `\` everywhere because that
/// parser reads it as `/` in a path.
const fn literal(b: u8, part: Part) -> bool {
    unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
        )
        || (b == b'\'' && matches!(part, Part::Path))
        || (b == b'?' && matches!(part, Part::Query))
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_encoded(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(b >> 4)] as char);
    out.push(HEX[usize::from(b & 15)] as char);
}

/// Byte by byte, so that multi-byte UTF-8 and percent-encoded bytes can never meet as the same
/// characters: `%XX` of an unreserved character becomes the character, other `%XX` keep their
/// encoding with uppercase hex, and every other byte that may not stand literally (non-ASCII
/// included) is percent-encoded. A `%` not followed by two hex digits is refused: kept, it could
/// form a new escape with what follows once that is decoded (`%%32%65` -> `%2e`), so the key
/// would no longer be what the origin's parser reads.
fn percent_normalised(bytes: &[u8], part: Part) -> Result<String, TargetError> {
    let mut out = String::with_capacity(bytes.len() + 8);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_value);
            let lo = bytes.get(i + 2).copied().and_then(hex_value);
            if let (Some(hi), Some(lo)) = (hi, lo) {
                let value = hi << 4 | lo;
                if unreserved(value) {
                    out.push(value as char);
                } else {
                    push_encoded(&mut out, value);
                }
                i += 3;
                continue;
            }
            return Err(TargetError::StrayPercent);
        } else if literal(b, part) {
            out.push(b as char);
        } else {
            push_encoded(&mut out, b);
        }
        i += 1;
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 on an absolute path whose unreserved characters are already decoded (so
/// `%2E` counts as `.`, as it does for the origin's URL parser).
fn remove_dot_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "." => {}
            ".." => {
                kept.pop();
            }
            other => {
                kept.push(other);
                continue;
            }
        }
        // `/a/b/..` is `/a/`: a dot segment at the end leaves the directory's trailing slash.
        if last {
            kept.push("");
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in kept {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(raw: &str) -> String {
        canonical(raw).unwrap().into_owned()
    }

    fn has_dot_segment(path: &str) -> bool {
        path.split('/')
            .any(|segment| segment == "." || segment == "..")
    }

    #[test]
    fn the_one_pass_test_agrees_with_the_slow_paths_own() {
        // The test `canonical` made before the one pass: split, then look at each part.
        let slow = |raw: &str| {
            let (path, query) = match raw.split_once('?') {
                Some((path, query)) => (path, Some(query)),
                None => (raw, None),
            };
            let plain = |text: &str, part| text.bytes().all(|b| b != b'%' && literal(b, part));
            raw.starts_with('/')
                && plain(path, Part::Path)
                && !has_dot_segment(path)
                && query.is_none_or(|q| plain(q, Part::Query))
        };
        for raw in [
            "/",
            "/1k",
            "/a/b/c.html",
            "/a?b=c",
            "/a?b=c?d/e",
            "/.",
            "/..",
            "/./a",
            "/a/.",
            "/a/..",
            "/.../a",
            "/a./b",
            "/.a",
            "/a/..b",
            "/?..",
            "/a/.?q",
            "/a/..?q",
            "/%2e",
            "/a?%20",
            "/a b",
            "/a?b c",
            "/é",
            "a/b",
            "",
            "?q",
            "*",
            "/a\\b",
            "/a'b",
            "/a?b'c",
            "/a//b",
            "//",
            "/a/b/",
            "/~user/",
            "/a?q=1&r=2;s",
            "/a#frag",
        ] {
            assert_eq!(already_canonical(raw), slow(raw), "{raw:?}");
        }
        for b in 0..=255u8 {
            for raw in [format!("/{}", b as char), format!("/a?{}", b as char)] {
                assert_eq!(already_canonical(&raw), slow(&raw), "{raw:?}");
            }
        }
    }

    #[test]
    fn dot_segments_are_removed_as_the_origin_would() {
        assert_eq!(c("/a/../b"), "/b");
        assert_eq!(c("/a/./b"), "/a/b");
        assert_eq!(c("/a/b/.."), "/a/");
        assert_eq!(c("/a/."), "/a/");
        assert_eq!(c("/../../etc"), "/etc");
        assert_eq!(c("/.."), "/");
        assert_eq!(c("/a//../b"), "/a/b");
        assert_eq!(c("/a/%2E%2e/b"), "/b");
        assert_eq!(c("/a/.%2E/b"), "/b");
        assert_eq!(c("//a"), "//a");
        assert_eq!(c("/a/..b/c"), "/a/..b/c");
        assert_eq!(c("/x?a=/../b"), "/x?a=/../b", "the query is not a path");
    }

    #[test]
    fn percent_encoding_is_normalised_on_bytes() {
        assert_eq!(c("/%7euser/%41?q=%2f"), "/~user/A?q=%2F");
        assert_eq!(c("/a%2Fb"), "/a%2Fb");
        assert_ne!(c("/a%2Fb"), c("/a/b"));
        for stray in [
            "/bad%zz",
            "/bad%",
            "/bad%2",
            "/a/%%32%65%%32%65/b",
            "/x?q=%%341",
        ] {
            assert_eq!(canonical(stray), Err(TargetError::StrayPercent), "{stray}");
        }
        // Raw UTF-8 and its percent-encoding are the same bytes to the origin.
        assert_eq!(c("/cc/x/Aあ"), "/cc/x/A%E3%81%82");
        assert_eq!(c("/cc/x/%41%e3%81%82"), "/cc/x/A%E3%81%82");
        // Bytes that merely look alike once read as Latin-1 chars stay apart (the old key
        // turned `%41あ` into `A` + U+00E3 U+0081 U+0082, the key of other raw bytes).
        assert_eq!(c("/cc/x/Aã\u{81}\u{82}"), "/cc/x/A%C3%A3%C2%81%C2%82");
        assert_ne!(c("/cc/x/Aã\u{81}\u{82}"), c("/cc/x/%41あ"));
        assert_eq!(c("/a\\..\\b"), "/a%5C..%5Cb");
        assert_eq!(c("/a b"), "/a%20b");
        assert_eq!(c("/p?x='1'"), "/p?x=%271%27");
        assert_eq!(c("/p's"), "/p's");
        assert!(matches!(
            canonical("/a/b.html?x=1&y=2"),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn empty_and_query_only_targets_mean_the_root() {
        assert_eq!(c(""), "/");
        assert_eq!(c("?a=1"), "/?a=1");
        assert_eq!(c("/p?"), "/p?");
        assert_eq!(canonical("*"), Err(TargetError::NotAPath));
        assert_eq!(canonical("x/y"), Err(TargetError::NotAPath));
    }

    /// The origin's URL parser must leave a canonical target exactly as it is: otherwise the
    /// origin would receive something other than what the key describes.
    #[test]
    fn the_origin_url_parser_leaves_canonical_targets_alone() {
        let nasty = [
            "/a/../b",
            "/%2e%2E/x",
            "/a\\..\\b",
            "/x?q='a b'&r=<s>\"t\"`u`{v}|w^",
            "/ü/%FF/%25zz/%25",
            "/p;params=1/q:r@s",
            "/x?y?z#",
            "/[a]",
            "/a%2F..%2Fb",
            "/.%2e/%2e",
            "/x?%41%7e%2a",
        ];
        for raw in nasty {
            let target = c(raw);
            assert_eq!(c(&target), target, "canonical is idempotent for {raw:?}");
            let url = reqwest::Url::parse(&format!("http://127.0.0.1:1{target}")).unwrap();
            let sent = match url.query() {
                Some(q) => format!("{}?{q}", url.path()),
                None => url.path().to_string(),
            };
            assert_eq!(
                sent, target,
                "the origin would receive something else for {raw:?}"
            );
        }
    }
}
