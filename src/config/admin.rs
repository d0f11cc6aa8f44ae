//! `[admin]`: the admin API's own listener and its bearer token.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use super::raw::RawAdmin;
use super::Problems;

/// The default admin address: loopback only, so that it is safe without a token.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";

/// The environment variable that may carry the admin token.
pub const TOKEN_ENV: &str = "KAGAMI_ADMIN_TOKEN";

#[derive(Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// The bearer token; `None` serves only `/healthz`, `/readyz` and `/metrics` (loopback only).
    pub token: Option<String>,
    /// Whether `listen` was set in the file: a default listener whose port is taken is skipped
    /// with a warning (several Kagamis on one machine), a configured one is a startup error.
    pub configured: bool,
}

impl AdminConfig {
    /// An admin listener on `listen` with `token`.
    pub fn new(listen: SocketAddr, token: Option<&str>) -> AdminConfig {
        AdminConfig {
            listen,
            token: token.map(str::to_string),
            configured: true,
        }
    }
}

// The token never appears in logs or `check-config` output.
impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("configured", &self.configured)
            .finish()
    }
}

/// `base`: the config file's folder, against which a relative `token_file` is read.
pub(super) fn validate(raw: Option<RawAdmin>, base: &Path, problems: &mut Problems) -> AdminConfig {
    let raw = raw.unwrap_or_default();
    let configured = raw.listen.is_some();
    let text = raw.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN);
    let listen = text.parse::<SocketAddr>().unwrap_or_else(|_| {
        problems.add(
            "admin.listen",
            format!("{text:?} is not an address such as \"127.0.0.1:9901\""),
        );
        DEFAULT_ADMIN_LISTEN.parse().expect("the default parses")
    });
    let token = match (raw.token, raw.token_file) {
        (Some(_), Some(_)) => {
            problems.add("admin.token", "set token or token_file, not both");
            None
        }
        (Some(token), None) => Some(token),
        (None, Some(file)) => match std::fs::read_to_string(base.join(&file)) {
            Ok(text) => Some(text.trim().to_string()),
            Err(err) => {
                problems.add("admin.token_file", format!("cannot read {file:?}: {err}"));
                None
            }
        },
        (None, None) => std::env::var(TOKEN_ENV).ok(),
    };
    let token = token.filter(|t| !t.trim().is_empty());
    if token.is_none() && !listen.ip().is_loopback() {
        problems.add(
            "admin.listen",
            format!(
                "{listen} is not a loopback address: set admin.token, admin.token_file or \
                 {TOKEN_ENV} first (anyone who reaches it could purge the cache)"
            ),
        );
    }
    AdminConfig {
        listen,
        token,
        configured,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError};

    const SITE: &str =
        "[[site]]\nname = \"a\"\nhosts = [\"a.jp\"]\norigin = \"http://127.0.0.1:1\"\n";

    fn parse(admin: &str) -> Result<Config, ConfigError> {
        Config::parse(&format!("{admin}\n{SITE}"), Path::new("k.toml"))
    }

    #[test]
    fn defaults_to_loopback() {
        let config = parse("").expect("valid");
        let admin = config.admin.expect("admin");
        assert_eq!(admin.listen.to_string(), "127.0.0.1:9901");
        assert!(!admin.configured);
    }

    #[test]
    fn a_public_listener_needs_a_token() {
        let err = parse("[admin]\nlisten = \"0.0.0.0:9901\"").expect_err("refused");
        assert!(err.to_string().contains("admin.listen"), "{err}");
        let config = parse("[admin]\nlisten = \"0.0.0.0:9901\"\ntoken = \"s3cret\"").expect("ok");
        let admin = config.admin.expect("admin");
        assert_eq!(admin.token.as_deref(), Some("s3cret"));
        assert!(!format!("{admin:?}").contains("s3cret"));
    }

    #[test]
    fn bad_keys_are_named() {
        let err = parse("[admin]\nlisten = \"nowhere\"\ntoken = \"a\"\ntoken_file = \"/x\"")
            .expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains("admin.listen") && text.contains("admin.token"),
            "{text}"
        );
        let err = parse("[admin]\ntoken_file = \"/nonexistent/kagami-token\"").expect_err("bad");
        assert!(err.to_string().contains("admin.token_file"), "{err}");
    }

    #[test]
    fn token_file_is_read_next_to_the_config() {
        let dir = std::env::temp_dir().join(format!("kagami-admin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        std::fs::write(dir.join("admin-token"), "from-file\n").expect("written");
        let text = format!("[admin]\ntoken_file = \"admin-token\"\n{}", SITE);
        let config = Config::parse(&text, &dir.join("kagami.toml")).expect("valid");
        assert_eq!(
            config.admin.expect("admin").token.as_deref(),
            Some("from-file")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
