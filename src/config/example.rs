//! Tests that `deploy/kagami.example.toml` keeps its promise: it shows every key the config
//! accepts (set, or commented out as `# key = ...`), and the values it sets are the defaults.

use std::path::Path;

use serde::de::{self, Deserialize, Deserializer, Visitor};

use super::hints::{DURATION_KEYS, RATE_KEYS, SIZE_KEYS};
use super::raw::{RawAcme, RawAdmin, RawCache, RawConfig, RawLimits, RawLog, RawServer, RawSite};
use super::{Config, SiteConfig};

/// The field names serde's derive gives `deserialize_struct` (serde has no public way to list
/// them, so a deserializer that stops at that call captures them).
fn fields_of<T: Deserialize<'static>>() -> &'static [&'static str] {
    struct Capture<'a>(&'a mut &'static [&'static str]);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("stop")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<T: std::fmt::Display>(_: T) -> Self {
            Stop
        }
    }
    impl<'de> Deserializer<'de> for Capture<'_> {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            *self.0 = fields;
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Capture(&mut fields));
    fields
}

fn example() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kagami.example.toml");
    std::fs::read_to_string(path).expect("deploy/kagami.example.toml")
}

/// Whether `key` is set in `table` or shown commented out (`# key = ...`) in the file.
fn shown(text: &str, table: Option<&toml::Value>, key: &str) -> bool {
    table.is_some_and(|t| t.get(key).is_some())
        || text.lines().any(|line| {
            line.trim_start()
                .strip_prefix('#')
                .map(str::trim_start)
                .and_then(|rest| rest.strip_prefix(key))
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
}

#[test]
fn the_field_lists_are_read_from_the_structs() {
    assert!(fields_of::<RawSite>().contains(&"default_ttl"));
    assert_eq!(
        fields_of::<RawConfig>(),
        ["server", "cache", "log", "limits", "admin", "acme", "site"]
    );
}

#[test]
fn the_example_shows_every_key() {
    let text = example();
    let value: toml::Value = toml::from_str(&text).expect("the example parses");
    let sites = value.get("site").and_then(|s| s.as_array()).cloned();
    let mut missing = Vec::new();
    for (table, fields) in [
        ("server", fields_of::<RawServer>()),
        ("cache", fields_of::<RawCache>()),
        ("log", fields_of::<RawLog>()),
        ("limits", fields_of::<RawLimits>()),
        ("admin", fields_of::<RawAdmin>()),
        ("acme", fields_of::<RawAcme>()),
    ] {
        for key in fields {
            if !shown(&text, value.get(table), key) {
                missing.push(format!("{table}.{key}"));
            }
        }
    }
    for key in fields_of::<RawSite>() {
        let set = sites.iter().flatten().any(|site| site.get(key).is_some());
        if !set && !shown(&text, None, key) {
            missing.push(format!("site.{key}"));
        }
    }
    assert!(missing.is_empty(), "not in the example: {missing:?}");
}

#[test]
fn the_example_sets_the_defaults() {
    let path = Path::new("deploy/kagami.example.toml");
    let config = Config::parse(&example(), path).expect("the example is valid");
    let listen = vec!["127.0.0.1:8080".parse().expect("an address")];
    let defaults = Config::new(listen, Vec::new());
    // The models hold no secrets or pointers, so their Debug text is a faithful comparison.
    assert_eq!(
        format!("{:?}", config.server),
        format!("{:?}", defaults.server)
    );
    assert_eq!(
        format!("{:?}", config.cache),
        format!("{:?}", defaults.cache)
    );
    assert_eq!(format!("{:?}", config.log), format!("{:?}", defaults.log));
    assert_eq!(
        format!("{:?}", config.limits),
        format!("{:?}", defaults.limits)
    );
    let admin = config.admin.as_ref().expect("an admin listener");
    assert_eq!(admin.listen.to_string(), super::admin::DEFAULT_ADMIN_LISTEN);
    // The first site shows the site defaults; only its name, hosts and origin are its own.
    let first = &config.sites[0];
    let hosts: Vec<String> = first.hosts.iter().map(|h| h.to_string()).collect();
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let origin = "http://10.0.0.5:80";
    let expected = SiteConfig::new(&first.name, &hosts, origin).expect("a site");
    assert_eq!(format!("{first:?}"), format!("{expected:?}"));
}

#[test]
fn every_duration_size_and_rate_key_exists() {
    let all: Vec<&str> = [
        fields_of::<RawServer>(),
        fields_of::<RawCache>(),
        fields_of::<RawLimits>(),
        fields_of::<RawSite>(),
    ]
    .concat();
    for key in DURATION_KEYS.iter().chain(SIZE_KEYS).chain(RATE_KEYS) {
        assert!(all.contains(key), "{key} is not a config key");
    }
}
