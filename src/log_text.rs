//! Request text made safe to write into a log line: characters that make a log viewer break
//! or reorder lines are written as `\u{…}` escapes.
//!
//! The JSON encoder escapes C0 controls but not U+2028/U+2029 (JavaScript and many viewers
//! treat them as line ends), and neither format touches bidi controls (U+202E turns the rest
//! of a line around on screen). A request path may carry all of them as raw UTF-8, so a
//! visitor could forge or hide log lines; whatever a request sent goes through `escape`.
//! Characters that show as nothing (Unicode's default-ignorable code points: zero-width
//! space, joiners, byte-order mark, soft hyphen, Hangul fillers, tag letters) are escaped
//! too: they make one path read as another (`/ad\u{200b}min`) or carry unseen text.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` must not reach a log line as is: controls (C0, DEL, C1 with NEL), the Unicode
/// line and paragraph separators, the bidi embedding, override, isolate and mark characters,
/// and the rest of the default-ignorable code points (Unicode's DerivedCoreProperties, which
/// hold the bidi ones too).
fn unsafe_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') || invisible(c)
}

/// Unicode 15's `Default_Ignorable_Code_Point`: characters a viewer shows as nothing.
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// `text` with every unsafe character written `\u{XXXX}`; borrowed when there is none, which
/// a plain ASCII path shows without looking at characters.
pub fn escape(text: &str) -> Cow<'_, str> {
    let plain = |b: &u8| (0x20..0x7f).contains(b);
    if text.bytes().all(|b| plain(&b)) || !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_char(c) {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\u{{{:04x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_bidi_and_controls_are_escaped_and_the_rest_kept() {
        assert!(matches!(escape("/news/2024?a=1"), Cow::Borrowed(_)));
        assert!(matches!(escape("/お知らせ"), Cow::Borrowed(_)));
        assert_eq!(
            escape("/a\u{2028}b\u{2029}c\u{202E}d\u{2066}e\u{200F}f\u{061C}g"),
            "/a\\u{2028}b\\u{2029}c\\u{202e}d\\u{2066}e\\u{200f}f\\u{061c}g"
        );
        assert_eq!(
            escape("a\u{85}b\nc\u{1b}[31m"),
            "a\\u{0085}b\\u{000a}c\\u{001b}[31m"
        );
        assert_eq!(escape("/避難\u{2028}所"), "/避難\\u{2028}所");
        assert_eq!(
            escape("/ad\u{200B}min\u{FEFF}\u{E0041}"),
            "/ad\\u{200b}min\\u{feff}\\u{e0041}"
        );
        // Visible neighbours of the ranges stay as they are.
        assert_eq!(
            escape("/\u{2070}\u{FF9F}\u{3163}"),
            "/\u{2070}\u{FF9F}\u{3163}"
        );
    }
}
