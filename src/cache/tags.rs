//! Purge tags: the origin's `Surrogate-Key` (space-separated, Fastly's) and `Cache-Tag`
//! (comma-separated, Cloudflare's / Akamai's) response fields. They stay in the stored fields
//! (so a tag purge can find them, and the store's weigher counts them) but are never sent to
//! visitors: they describe the origin's content structure, which is nobody else's business.

use http::header::{HeaderMap, HeaderName};

use super::fields::Fields;

pub const SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");
pub const CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");

/// Does a stored response carry `tag` in either field? Tags match exactly (case matters, as
/// Fastly's surrogate keys do).
pub fn has_tag(fields: &Fields, tag: &str) -> bool {
    let listed = |name: &HeaderName, separator: fn(char) -> bool| {
        (fields.get_all_str(name))
            .flat_map(|v| v.split(separator))
            .any(|t| t.trim() == tag)
    };
    !tag.is_empty()
        && (listed(&SURROGATE_KEY, char::is_whitespace) || listed(&CACHE_TAG, |c| c == ','))
}

/// Removes the tag fields from an answer about to leave for a visitor.
pub fn strip(headers: &mut HeaderMap) {
    // Every answer passes here and nearly none carries tags: a look at its few names (a
    // standard name never equals these) costs less than two hashed removals.
    if headers
        .keys()
        .any(|name| name == SURROGATE_KEY || name == CACHE_TAG)
    {
        headers.remove(SURROGATE_KEY);
        headers.remove(CACHE_TAG);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn both_fields_and_their_separators() {
        let mut headers = HeaderMap::new();
        headers.insert(
            SURROGATE_KEY,
            HeaderValue::from_static("news  evacuation\tmap"),
        );
        headers.append(CACHE_TAG, HeaderValue::from_static("shelter, road-closed"));
        headers.append(CACHE_TAG, HeaderValue::from_static("water"));
        let fields = Fields::copy_of(&headers);
        for tag in [
            "news",
            "evacuation",
            "map",
            "shelter",
            "road-closed",
            "water",
        ] {
            assert!(has_tag(&fields, tag), "{tag}");
        }
        for tag in ["", "new", "Evacuation", "shelter,", "news evacuation"] {
            assert!(!has_tag(&fields, tag), "{tag:?}");
        }
        strip(&mut headers);
        assert!(headers.is_empty());
    }

    #[test]
    fn strip_takes_the_tags_and_leaves_every_other_field() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/html"),
        );
        headers.insert("x-other", HeaderValue::from_static("kept"));
        headers.insert(CACHE_TAG, HeaderValue::from_static("water"));
        strip(&mut headers);
        assert_eq!(headers.len(), 2);
        assert!(!headers.contains_key(CACHE_TAG));
        assert_eq!(headers["x-other"], "kept");
        let untouched = headers.clone();
        strip(&mut headers);
        assert_eq!(headers, untouched);
    }
}
