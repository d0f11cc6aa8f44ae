//! Friendlier messages for the mistakes people make in their first config file: TOML errors
//! from serde rewritten to say what to write instead (`[[site]]`, `"60s"`, the nearest valid
//! key), and the site a validation problem is about named by its `name`.

use std::ops::Range;

/// Keys whose value is a duration string such as `"30s"`.
pub(crate) const DURATION_KEYS: &[&str] = &[
    "header_read_timeout",
    "idle_timeout",
    "drain_timeout",
    "grace",
    "stale_while_revalidate",
    "stale_if_error",
    "heuristic_max",
    "default_ttl",
    "negative_ttl",
    "connect_timeout",
    "response_timeout",
    "read_timeout",
    "failure_backoff",
    "coalesce_timeout",
    "origin_queue_timeout",
    "circuit_open",
    "health_interval",
];

/// Keys whose value is a size string such as `"256MiB"`.
pub(crate) const SIZE_KEYS: &[&str] = &[
    "memory",
    "max_header_size",
    "max_request_body",
    "max_object_size",
];

/// Keys whose value is a rate string such as `"50/s"`.
pub(crate) const RATE_KEYS: &[&str] = &["hits", "misses", "limit_hits", "limit_misses"];

/// Keys whose values are secrets: no message shows them, not even the line toml quotes from
/// the file (a syntax error on the `token` line would otherwise print the token to a terminal,
/// a CI log or a reload's 422 answer).
pub(crate) const SECRET_KEYS: &[&str] = &["token"];

/// What a message shows instead of a secret.
const HIDDEN: &str = "<redacted>";

/// The message for a TOML/serde error in `text`: serde's own, with what to write instead when
/// the mistake is a common one, and with secrets hidden (`redact`).
pub(crate) fn explain(text: &str, err: &toml::de::Error) -> String {
    let full = err.to_string().trim_end().to_string();
    let message = err.message().trim_end();
    let Some(hint) = hint(text, err.span(), message) else {
        return redact(text, &full);
    };
    // Keep toml's line, column and source excerpt; replace only its closing sentence.
    let explained = match full.rfind(message) {
        Some(at) => format!("{}{hint}", &full[..at]),
        None => format!("{full}\n{hint}"),
    };
    redact(text, &explained)
}

/// `message`, about the config `text`, with the value of every `SECRET_KEYS` assignment and
/// every URL password in `text` hidden. toml quotes the erring line as it is, and its messages
/// may quote the value (`invalid type: integer `123``), or a line inside a multi-line token;
/// the file, line, column, key and reason stay.
pub(crate) fn redact(text: &str, message: &str) -> String {
    let mut out = message.to_string();
    // The closing quotes of a multi-line secret still open: the lines up to them are secret.
    let mut open: Option<&str> = None;
    for line in text.lines().map(str::trim) {
        if let Some(quote) = open {
            let secret = match line.find(quote) {
                Some(end) => {
                    open = None;
                    &line[..end]
                }
                None => line,
            };
            if secret.trim().len() >= 4 {
                out = out.replace(secret.trim(), HIDDEN);
            }
            continue;
        }
        let values = secret_values(line);
        open = values.iter().find_map(|v| unclosed_multi_line(v));
        if values.is_empty() {
            if let std::borrow::Cow::Owned(shown) = hide_password(line) {
                out = out.replace(line, &shown);
            }
            continue;
        }
        let mut shown = line.to_string();
        for value in &values {
            shown = shown.replace(value, HIDDEN);
        }
        out = out.replace(line, &hide_password(&shown));
        for value in values {
            let inner = value.trim_matches(['"', '\'']).trim();
            // A short value could match unrelated text (a line number); toml's quote of the
            // line is caught above whatever its length.
            if inner.len() >= 4 {
                out = out.replace(inner, HIDDEN);
            }
        }
    }
    out
}

/// The values (as written, quotes included) assigned to a `SECRET_KEYS` key anywhere on
/// `line`: not only `token = ...` but also the spellings TOML allows beside it, a dotted key
/// (`admin.token`), a quoted key (`"token"`, `'token'`) and an inline table
/// (`admin = { token = ... }`), each of which toml quotes whole in an error.
fn secret_values(line: &str) -> Vec<&str> {
    let mut values = Vec::new();
    for key in SECRET_KEYS {
        for (at, _) in line.match_indices(key) {
            let before = line[..at].trim_end_matches(['"', '\'']);
            let bounded = (before.chars().next_back())
                .is_none_or(|c| matches!(c, ' ' | '\t' | '{' | ',' | '.'));
            let after = line[at + key.len()..].trim_start_matches(['"', '\'']);
            let Some(value) = after.trim_start().strip_prefix('=') else {
                continue;
            };
            if bounded {
                values.push(value_text(value.trim_start()));
            }
        }
    }
    if values.is_empty() {
        if let Some((key, value)) = line.split_once('=') {
            if misspelt_secret(key) {
                values.push(value_text(value.trim_start()));
            }
        }
    }
    values.retain(|v| !v.is_empty());
    values
}

/// Whether the key `written` (a line's, as written) looks like a misspelt `SECRET_KEYS` key
/// (`tokne`, `Token`, `admin_token`): toml refuses it as unknown and quotes its line, whose
/// value is the secret all the same. No valid key is that close but `token_file`.
fn misspelt_secret(written: &str) -> bool {
    let key = written.rsplit('.').next().unwrap_or(written);
    let key = key.trim().trim_matches(['"', '\'']).to_ascii_lowercase();
    SECRET_KEYS.iter().any(|secret| {
        key != "token_file"
            && (key.contains(secret) || strsim::damerau_levenshtein(&key, secret) <= 2)
    })
}

/// The closing quotes of `value` when it opens a multi-line string that its line does not
/// close.
fn unclosed_multi_line(value: &str) -> Option<&'static str> {
    let quote = ["\"\"\"", "'''"]
        .into_iter()
        .find(|q| value.starts_with(q))?;
    let closed = value.len() >= 2 * quote.len() && value.ends_with(quote);
    (!closed).then_some(quote)
}

/// The TOML value at the start of `text`, as written: a quoted string up to its closing
/// quote (or the line's end when it has none), else up to the next separator.
fn value_text(text: &str) -> &str {
    for quote in ["\"\"\"", "'''", "\"", "'"] {
        let Some(rest) = text.strip_prefix(quote) else {
            continue;
        };
        // Only basic strings (`"`) have escapes; `\"` does not close one.
        let mut escaped = false;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            if !escaped && rest[i..].starts_with(quote) {
                end = i + quote.len();
                break;
            }
            escaped = !escaped && c == '\\' && quote.starts_with('"');
        }
        return &text[..quote.len() + end];
    }
    let end = text.find([',', '}', '#', ' ', '\t']).unwrap_or(text.len());
    &text[..end]
}

/// `text` with the password of every `scheme://user:password@host` in it hidden, and the
/// user of a `scheme://user@host` (which is often a token by itself); an origin URL with
/// credentials is refused, and the message saying so must not print them. A line may hold
/// several URLs.
pub(crate) fn hide_password(text: &str) -> std::borrow::Cow<'_, str> {
    let mut out = String::new();
    let mut rest = text;
    let mut hidden = false;
    while let Some(found) = rest.find("://") {
        let (head, tail) = rest.split_at(found + 3);
        out.push_str(head);
        let end = tail.find(AUTHORITY_END).unwrap_or(tail.len());
        let end = unencoded_password_end(tail, end).unwrap_or(end);
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                // The user stays when a password follows it: it tells which account.
                let shown = authority[..at].find(':').map_or(0, |colon| colon + 1);
                out.push_str(&authority[..shown]);
                out.push_str(HIDDEN);
                out.push_str(&authority[at..]);
                hidden = true;
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    if !hidden {
        return text.into();
    }
    out.push_str(rest);
    out.into()
}

/// Where the authority of `tail` (what follows `://`) really ends when a password holds an
/// unencoded `/`, `?` or `#` (`user:pa/ss@host`): such a URL fails to parse and its message
/// quotes it, so the password must be found anyway. It is one when the text seen as the
/// authority (up to `end`) has a `:` followed by something other than a port number and no
/// `@`, and an `@` follows later in the same quoted or spaced word; the authority then ends after
/// the host that follows the `@`.
fn unencoded_password_end(tail: &str, end: usize) -> Option<usize> {
    let authority = &tail[..end];
    let (_, after_colon) = authority.split_once(':')?;
    if authority.contains('@') || after_colon.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let word = tail.find(['"', '\'', ' ']).unwrap_or(tail.len());
    let at = tail[..word].rfind('@')?;
    let host_end = tail[at..]
        .find(AUTHORITY_END)
        .map_or(tail.len(), |e| at + e);
    Some(host_end)
}

/// What ends a URL's authority in config text: its own delimiters, a quote or a space.
const AUTHORITY_END: [char; 6] = ['/', '?', '#', '"', '\'', ' '];

fn hint(text: &str, span: Option<Range<usize>>, message: &str) -> Option<String> {
    let spanned = span
        .clone()
        .and_then(|s| text.get(s))
        .map(str::trim)
        .unwrap_or_default();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (unknown, rest) = rest.split_once('`')?;
        let valid: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
        return Some(match nearest(unknown, &valid) {
            Some(best) => format!("unknown key `{unknown}`: did you mean `{best}`?"),
            None => format!(
                "unknown key `{unknown}`; valid keys here: {}",
                valid.join(", ")
            ),
        });
    }
    if message.contains("expected a sequence") && spanned.starts_with("[site") {
        return Some(
            "`[site]` must be written `[[site]]` (two brackets): each website is one \
             [[site]] table, repeated once per site"
                .to_string(),
        );
    }
    if let Some(rest) = message
        .strip_prefix("invalid type: integer `")
        .or_else(|| message.strip_prefix("invalid type: floating point `"))
    {
        let (number, _) = rest.split_once('`')?;
        if !message.ends_with("expected a string") {
            return None;
        }
        let key = span.and_then(|s| key_on_line(text, s.start))?;
        let number = if SECRET_KEYS.contains(&key) {
            HIDDEN
        } else {
            number
        };
        let example = if DURATION_KEYS.contains(&key) {
            format!("a duration in quotes with a unit: {key} = \"{number}s\"")
        } else if SIZE_KEYS.contains(&key) {
            format!("a size in quotes with a unit: {key} = \"{number}MiB\"")
        } else if RATE_KEYS.contains(&key) {
            format!("a rate in quotes: {key} = \"{number}/s\"")
        } else {
            format!("the value in quotes: {key} = \"{number}\"")
        };
        return Some(format!(
            "{key} = {number} is a bare number; write {example}"
        ));
    }
    None
}

/// The key of the `key = value` line holding byte `at`.
fn key_on_line(text: &str, at: usize) -> Option<&str> {
    let start = text.get(..at)?.rfind('\n').map_or(0, |i| i + 1);
    let line = &text[start..];
    let (key, _) = line.split_once('=')?;
    Some(key.trim().trim_matches('"'))
}

/// The valid key closest to a misspelt one, if any is close enough to be a likely typo.
fn nearest<'a>(unknown: &str, valid: &[&'a str]) -> Option<&'a str> {
    valid
        .iter()
        .map(|v| (strsim::damerau_levenshtein(unknown, v), *v))
        .filter(|(distance, v)| *distance <= 2.max(v.len() / 4))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, v)| v)
        .or_else(|| {
            // A prefix or suffix dropped or added (`ttl` for `default_ttl`, `site_name`).
            valid
                .iter()
                .find(|v| unknown.len() >= 3 && (v.contains(unknown) || unknown.contains(**v)))
                .copied()
        })
}

/// Labels each `site[i]…` problem with that site's `name`, when it has one.
pub(crate) fn name_sites(problems: &mut [super::Problem], sites: &[super::raw::RawSite]) {
    for problem in problems {
        let index = problem
            .key
            .strip_prefix("site[")
            .and_then(|rest| rest.split_once(']'))
            .and_then(|(i, _)| i.parse::<usize>().ok());
        let name = index
            .and_then(|i| sites.get(i))
            .and_then(|site| site.name.as_deref())
            .map(str::trim)
            .filter(|name| !name.is_empty());
        problem.site = name.map(str::to_string);
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};
    use std::path::Path;

    fn error_of(text: &str) -> String {
        match Config::parse(text, Path::new("k.toml")) {
            Err(ConfigError::Syntax { message, .. }) => message,
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }

    const SITE: &str =
        "name = \"iwate\"\nhosts = [\"a.example\"]\norigin = \"http://127.0.0.1:1\"\n";

    #[test]
    fn secrets_and_url_passwords_are_hidden_but_line_and_key_stay() {
        let message = error_of("[admin]\ntoken = \"abcd-secret\n");
        assert!(!message.contains("abcd-secret"), "{message}");
        assert!(
            message.contains("line 2") && message.contains("token = <redacted>"),
            "{message}"
        );
        assert_eq!(
            super::hide_password("http://user:pw@h:1/x"),
            "http://user:<redacted>@h:1/x"
        );
        assert_eq!(super::hide_password("http://h:1/a@b:c"), "http://h:1/a@b:c");
        // A password with an unencoded `/`, `?` or `#` still ends at its `@`.
        for password in ["pa/ss", "pa?ss", "pa#ss", "p/a?s#s"] {
            assert_eq!(
                super::hide_password(&format!("\"http://user:{password}@h/x\" x")),
                "\"http://user:<redacted>@h/x\" x",
                "{password}"
            );
        }
        assert_eq!(super::hide_password("http://tok@h"), "http://<redacted>@h");
        assert_eq!(
            super::hide_password(r#"["http://a:p1@h", "https://b:p2@g/x"]"#),
            r#"["http://a:<redacted>@h", "https://b:<redacted>@g/x"]"#
        );
    }

    #[test]
    fn secret_values_are_found_in_every_spelling_of_the_key() {
        use super::secret_values;
        assert_eq!(secret_values(r#"token = "a b""#), [r#""a b""#]);
        assert_eq!(secret_values(r#"admin.token="x\"y" z"#), [r#""x\"y""#]);
        assert_eq!(
            secret_values(r#"admin = { listen = "l", 'token' = 'v' }"#),
            ["'v'"]
        );
        assert_eq!(secret_values("token = 123 # n"), ["123"]);
        assert_eq!(secret_values(r#"token = """abc"#), [r#""""abc"#]);
        // A misspelt key holds the token all the same.
        assert_eq!(secret_values(r#"mytoken = "t""#), [r#""t""#]);
        assert_eq!(secret_values(r#"Tokne = "t""#), [r#""t""#]);
        // Not the token: the key naming its file, other keys, a value mentioning it.
        assert!(secret_values(r#"token_file = "t""#).is_empty());
        assert!(secret_values(r#"name = "token""#).is_empty());
        assert!(secret_values(r#"hosts = ["a"]"#).is_empty());
    }

    #[test]
    fn a_bad_value_names_the_site_and_is_quoted() {
        let text = format!("[[site]]\n{SITE}default_ttl = \"sixty\"\n");
        let message = Config::parse(&text, Path::new("k.toml"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            message.contains("site[0].default_ttl (site \"iwate\"): \"sixty\" is not a duration"),
            "{message}"
        );
        assert!(message.contains("write e.g. \"30s\""), "{message}");
    }

    #[test]
    fn a_single_bracket_site_table_says_to_write_two() {
        let message = error_of(&format!("[site]\n{SITE}"));
        assert!(message.contains("[[site]]"), "{message}");
        assert!(message.contains("line 1"), "{message}");
    }

    #[test]
    fn a_bare_number_for_a_duration_says_to_quote_it_with_a_unit() {
        let message = error_of(&format!("[[site]]\n{SITE}default_ttl = 60\n"));
        assert!(message.contains("default_ttl = \"60s\""), "{message}");
        assert!(message.contains("line 5"), "{message}");
        let message = error_of("[cache]\nmemory = 256\n");
        assert!(message.contains("memory = \"256MiB\""), "{message}");
        let message = error_of("[limits]\nmisses = 50\n");
        assert!(message.contains("misses = \"50/s\""), "{message}");
    }

    #[test]
    fn unknown_keys_get_the_nearest_valid_one() {
        let message = error_of(&format!("[[site]]\n{SITE}default_tll = \"60s\"\n"));
        assert!(message.contains("did you mean `default_ttl`?"), "{message}");
        let message = error_of("[server]\nlisten_on = [\"127.0.0.1:80\"]\n");
        assert!(message.contains("did you mean `listen`?"), "{message}");
        let message = error_of("[cache]\nmemroy = \"1GiB\"\n");
        assert!(message.contains("did you mean `memory`?"), "{message}");
        // Nothing close: the valid keys instead of a wild guess.
        let message = error_of("[log]\nzzzzzz = true\n");
        assert!(!message.contains("did you mean"), "{message}");
        assert!(message.contains("access"), "{message}");
    }
}
