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

/// `text` with every unsafe character written `\u{XXXX}` and every backslash doubled; borrowed
/// when there is none, which a plain ASCII path shows without looking at characters.
pub fn escape(text: &str) -> Cow<'_, str> {
    let plain = |b: &u8| (0x20..0x7f).contains(b) && *b != b'\\';
    if text.bytes().all(|b| plain(&b)) || !text.chars().any(|c| c == '\\' || unsafe_char(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c == '\\' {
            // A backslash is doubled so that a typed `\u{2028}` cannot pass for an escape.
            out.push_str("\\\\");
        } else if unsafe_char(c) {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\u{{{:04x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// The longest path or host a log line keeps, in bytes. An access line lives as long as the
/// body is being sent, which a client can stretch (an HTTP/2 window of 0 on every stream); a head
/// near the size limit must not pin that much per stream, nor fill the log.
const MAX_TEXT: usize = 1024;

/// `text`, or its first `MAX_TEXT` bytes (at a character boundary) and `…`, with the
/// characters that would split or reorder a log line escaped (`log_text`). The escaped text is
/// held to `MAX_TEXT` too: an escape is up to eight times the character it stands for.
pub fn clip(text: &str) -> String {
    let escaped = escape(&text[..boundary(text, MAX_TEXT)]);
    if text.len() <= MAX_TEXT && escaped.len() <= MAX_TEXT {
        return escaped.into_owned();
    }
    let kept = &escaped[..boundary(&escaped, MAX_TEXT)];
    let mut clipped = String::with_capacity(kept.len() + '…'.len_utf8());
    clipped.push_str(kept);
    clipped.push('…');
    clipped
}

/// The largest character boundary of `text` at or below `at`.
fn boundary(text: &str, at: usize) -> usize {
    let mut end = at.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
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
        // A typed escape stays distinguishable from a real one.
        assert_eq!(escape("/a\\u{2028}b"), "/a\\\\u{2028}b");
        assert_eq!(escape("/a\\b\u{2028}"), "/a\\\\b\\u{2028}");
        // Visible neighbours of the ranges stay as they are.
        assert_eq!(
            escape("/\u{2070}\u{FF9F}\u{3163}"),
            "/\u{2070}\u{FF9F}\u{3163}"
        );
    }

    #[test]
    fn long_texts_are_clipped_at_a_character_boundary() {
        assert_eq!(clip("/short"), "/short");
        let long = "é".repeat(MAX_TEXT);
        let clipped = clip(&long);
        assert!(clipped.len() <= MAX_TEXT + 3 && clipped.ends_with('…'));
        assert!(long.starts_with(clipped.trim_end_matches('…')));
    }

    #[test]
    fn clipped_texts_are_escaped_for_the_log() {
        assert_eq!(clip("/a\u{2028}b"), "/a\\u{2028}b");
        let long = format!("/\u{202E}{}", "a".repeat(MAX_TEXT));
        assert!(!clip(&long).contains('\u{202E}'));
        // Escapes are longer than what they stand for; the line still keeps at most MAX_TEXT.
        for evil in ["\u{85}", "\u{202E}", "\t"] {
            let clipped = clip(&evil.repeat(MAX_TEXT));
            assert!(clipped.len() <= MAX_TEXT + 3, "{evil:?}: {}", clipped.len());
            assert!(clipped.ends_with('…') && clipped.starts_with("\\u{"));
        }
        let just = "\t".repeat(MAX_TEXT / 8);
        assert_eq!(
            clip(&just),
            "\\u{0009}".repeat(MAX_TEXT / 8),
            "fits: not clipped"
        );
    }
}
