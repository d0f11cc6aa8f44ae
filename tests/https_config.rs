//! Certificate files and HTTPS keys in the config: each kind of bad file is a config problem
//! naming the key, the file and the reason (in `Config::load` and in `kagami check-config`),
//! and `kagami gen-cert` writes a pair that a config accepts, its key readable by its owner only.

#[path = "tls_support/pki.rs"]
mod pki;

use std::path::{Path, PathBuf};
use std::process::Command;

use kagami::config::{Config, ConfigError, Problem};
use pki::Ca;

const KAGAMI: &str = env!("CARGO_BIN_EXE_kagami");

/// A config with one HTTPS site for www.a.test using `dir/a.pem` and `dir/a.key`.
fn config(dir: &Path, site_extra: &str) -> PathBuf {
    let text = format!(
        r#"
[server]
listen = ["127.0.0.1:8080"]
listen_tls = ["127.0.0.1:8443"]

[[site]]
name = "a"
hosts = ["www.a.test", "*.city.test", "127.0.0.1:8080"]
origin = "https://127.0.0.1:9443"
tls_cert = "a.pem"
tls_key = "a.key"
{site_extra}
"#
    );
    let path = dir.join("kagami.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn problems(path: &Path) -> Vec<Problem> {
    match Config::load(path) {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        other => panic!("expected problems, got {other:?}"),
    }
}

/// Exactly one problem, on `key`, whose reason contains every one of `words`.
fn assert_one(path: &Path, key: &str, words: &[&str]) {
    let found = problems(path);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].key, key, "{found:?}");
    for word in words {
        assert!(found[0].reason.contains(word), "{word:?} not in {found:?}");
    }
}

#[test]
fn a_good_pair_loads() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("CA");
    ca.leaf(&["www.a.test", "*.city.test"])
        .write(dir.path(), "a");
    let config = Config::load(&config(dir.path(), "")).unwrap();
    assert!(config.sites[0].tls.cert.is_some());
    assert_eq!(
        config.server.listen_tls,
        ["127.0.0.1:8443".parse().unwrap()]
    );
}

#[test]
fn each_kind_of_bad_certificate_file_is_named_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new("CA");
    let good = ca.leaf(&["www.a.test", "*.city.test"]);
    let path = config(d, "");
    let cert = d.join("a.pem").display().to_string();
    let key = d.join("a.key").display().to_string();

    // Unreadable (missing) files.
    assert_eq!(problems(&path).len(), 2);
    good.write(d, "a");

    std::fs::write(d.join("a.pem"), "just some text\n").unwrap();
    assert_one(&path, "site[0].tls_cert", &[&cert, "not a PEM certificate"]);
    // The two files swapped.
    std::fs::write(d.join("a.pem"), &good.key_pem).unwrap();
    std::fs::write(d.join("a.key"), &good.cert_pem).unwrap();
    let found = problems(&path);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found
        .iter()
        .all(|p| p.reason.contains("it holds what belongs in")));
    good.write(d, "a");

    std::fs::write(d.join("a.key"), "-----BEGIN PRIVATE KEY-----\n!!!\n").unwrap();
    assert_one(&path, "site[0].tls_key", &[&key, "PEM"]);

    let other = ca.leaf(&["www.a.test", "*.city.test"]);
    std::fs::write(d.join("a.key"), &other.key_pem).unwrap();
    assert_one(
        &path,
        "site[0].tls_key",
        &[&key, "does not match the certificate", &cert],
    );

    // The chain in the wrong order: the CA's certificate first.
    good.write(d, "a");
    std::fs::write(d.join("a.pem"), format!("{}{}", ca.pem, good.cert_pem)).unwrap();
    let found = problems(&path);
    let key_problem = found.iter().find(|p| p.key == "site[0].tls_key").unwrap();
    assert!(
        key_problem
            .reason
            .contains("put the site's own certificate first"),
        "{found:?}"
    );

    ca.leaf_valid(&["www.a.test", "*.city.test"], -30, -1)
        .write(d, "a");
    assert_one(&path, "site[0].tls_cert", &[&cert, "expired on"]);

    ca.leaf_valid(&["www.a.test", "*.city.test"], 2, 30)
        .write(d, "a");
    assert_one(&path, "site[0].tls_cert", &[&cert, "not yet valid"]);

    // A certificate for other names; IP hosts are not checked (no SNI for them).
    ca.leaf(&["www.b.test", "www.a.test"]).write(d, "a");
    assert_one(
        &path,
        "site[0].tls_cert",
        &[
            &cert,
            "does not cover *.city.test",
            "www.b.test, www.a.test",
        ],
    );
    // A certificate for one name under the wildcard does not cover the wildcard.
    ca.leaf(&["x.city.test", "www.a.test"]).write(d, "a");
    assert_one(&path, "site[0].tls_cert", &["does not cover *.city.test"]);
}

#[test]
fn https_keys_that_do_not_fit_together_are_problems() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = r#"
[server]
listen = ["127.0.0.1:8080"]
listen_tls = ["127.0.0.1:8443", "nowhere"]

[[site]]
name = "a"
hosts = ["www.a.test"]
origin = "http://127.0.0.1:9000"
tls_cert = "a.pem"
https_redirect = true
hsts = "forever"
origin_ca = "missing-ca.pem"
"#;
    let path = d.join("kagami.toml");
    std::fs::write(&path, text).unwrap();
    let keys: Vec<String> = problems(&path).into_iter().map(|p| p.key).collect();
    for key in [
        "server.listen_tls[1]",
        "site[0].tls_key",
        "site[0].hsts",
        "site[0].origin_ca",
    ] {
        assert!(keys.contains(&key.to_string()), "{key} missing in {keys:?}");
    }

    // A redirect or HSTS needs a certificate; a TLS listener needs a site with one.
    let text = r#"
[server]
listen_tls = ["127.0.0.1:8443"]
[[site]]
name = "a"
hosts = ["www.a.test"]
origin = "http://127.0.0.1:9000"
https_redirect = true
hsts = "1d"
"#;
    std::fs::write(&path, text).unwrap();
    let keys: Vec<String> = problems(&path).into_iter().map(|p| p.key).collect();
    assert_eq!(
        keys,
        [
            "site[0].https_redirect",
            "site[0].hsts",
            "server.listen_tls"
        ]
    );
}

#[test]
fn check_config_reports_certificate_problems_with_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("CA");
    ca.leaf_valid(&["www.a.test", "*.city.test"], -30, -1)
        .write(dir.path(), "a");
    let path = config(dir.path(), "");
    let output = Command::new(KAGAMI)
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = format!("{}: site[0].tls_cert (site \"a\"): ", path.display());
    assert!(stderr.contains(&line), "{stderr}");
    assert!(
        stderr.contains("a.pem: the certificate expired on"),
        "{stderr}"
    );
}

#[test]
fn gen_cert_writes_a_pair_that_a_config_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let gen = |hosts: &[&str]| {
        let mut command = Command::new(KAGAMI);
        command.arg("gen-cert").arg("--out").arg(&out);
        for host in hosts {
            command.arg("--host").arg(host);
        }
        command.output().unwrap()
    };
    let output = gen(&["www.a.test", "*.city.test"]);
    assert!(output.status.success(), "{output:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let path = config(dir.path(), "");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"a.pem\"", "\"certs/cert.pem\"")
        .replace("\"a.key\"", "\"certs/key.pem\"");
    std::fs::write(&path, text).unwrap();
    let check = Command::new(KAGAMI)
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    // Never overwrites a key.
    let again = gen(&["www.a.test"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}
