//! Cache keys: site, authority, and the canonical request target (the primary key of RFC 9111
//! §4). The target is made canonical once, by `routing::target`, and that same string is what
//! the origin receives, so the key never describes anything but what was fetched.

/// The primary key of a request (RFC 9111 §2: the target URI): the site, the authority the
/// origin is asked for (`host`, normalised by `routing::Authority`; empty when the site sends
/// the origin a fixed Host), and the canonical path and query (`routing::target::canonical`).
pub fn primary_key(site: &str, host: &str, target: &str) -> String {
    let mut key = String::new();
    primary_key_into(&mut key, site, host, target, "");
    key
}

/// [`primary_key`] followed by `suffix`, written over `key` (a buffer reused for lookups, so a
/// hit builds its key without an allocation).
pub fn primary_key_into(key: &mut String, site: &str, host: &str, target: &str, suffix: &str) {
    key.clear();
    key.reserve(site.len() + host.len() + 3 + target.len() + suffix.len());
    key.push_str(site);
    key.push('\u{0}');
    key.push_str(host);
    key.push('\u{0}');
    if !target.starts_with('/') {
        key.push('/');
    }
    key.push_str(target);
    key.push_str(suffix);
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
    fn query_is_part_of_the_key() {
        assert_ne!(
            primary_key("s", "", "/p?a=1"),
            primary_key("s", "", "/p?a=2")
        );
        assert_eq!(primary_key("s", "h", ""), "s\u{0}h\u{0}/");
    }

    #[test]
    fn a_reused_buffer_holds_only_the_new_key() {
        let mut key = String::from("a much longer key left over from an earlier lookup");
        primary_key_into(&mut key, "s", "h", "/p", "\u{0}https");
        assert_eq!(key, "s\u{0}h\u{0}/p\u{0}https");
        primary_key_into(&mut key, "s", "h", "/p", "");
        assert_eq!(key, primary_key("s", "h", "/p"));
    }
}
