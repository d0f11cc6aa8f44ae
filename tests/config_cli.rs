//! `kagami check-config` and `kagami run` on real files: a good file passes, every bad one fails
//! with a message naming the file, the key and the reason.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const KAGAMI: &str = env!("CARGO_BIN_EXE_kagami");

const MINIMAL: &str = r#"[server]
listen = ["127.0.0.1:8080"]

[cache]
memory = "256MiB"

[[site]]
name = "iwate"
hosts = ["www.pref.iwate.example", "127.0.0.1:8080"]
origin = "http://127.0.0.1:8081"
"#;

fn write_config(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the binary with a deadline; kills it if it overstays.
fn run(args: &[&std::ffi::OsStr], limit: Duration) -> Output {
    let mut child = Command::new(KAGAMI)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kagami");
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "kagami {:?} still running after {limit:?}\nstdout: {}\nstderr: {}",
                args,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn check_config(path: &Path) -> Output {
    run(
        &["check-config".as_ref(), path.as_os_str()],
        Duration::from_secs(10),
    )
}

/// A port on 127.0.0.1 that nothing listens on (the OS picked it, and it was released again).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts a failed check that names the file and, on one line, the key and a reason.
fn assert_problem(output: &Output, path: &Path, key: &str, reason_words: &[&str]) {
    let text = stderr(output);
    assert!(
        !output.status.success(),
        "expected a failure for {key}; stderr: {text}"
    );
    let file = path.display().to_string();
    assert!(
        text.contains(&file),
        "stderr does not name the file {file}: {text}"
    );
    let line = text
        .lines()
        .find(|l| l.contains(key))
        .unwrap_or_else(|| panic!("stderr does not name the key {key}: {text}"));
    let reason = line[line.find(key).unwrap() + key.len()..].trim_start_matches([':', ' ', '`']);
    assert!(reason.len() > 5, "no reason after {key}: {line:?}");
    for word in reason_words {
        assert!(
            line.to_ascii_lowercase()
                .contains(&word.to_ascii_lowercase()),
            "the reason for {key} should mention {word:?}: {line:?}"
        );
    }
}

#[test]
fn minimal_file_passes() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, "kagami.toml", MINIMAL);
    let output = check_config(&path);
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("OK"), "{stdout}");
    assert!(stdout.contains("127.0.0.1:8080"), "{stdout}");
}

/// An unknown key: the file, the key, the line and that the key is unknown.
fn assert_unknown_key(output: &Output, path: &Path, key: &str, line: usize) {
    let text = stderr(output);
    assert!(
        !output.status.success(),
        "expected a failure for {key}; stderr: {text}"
    );
    assert!(
        text.contains(&path.display().to_string()),
        "stderr does not name the file: {text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains(key) && l.to_ascii_lowercase().contains("unknown")),
        "stderr does not say that {key} is unknown: {text}"
    );
    assert!(
        text.contains(&format!("line {line}")),
        "stderr does not name line {line}: {text}"
    );
}

#[test]
fn unknown_key_fails_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = MINIMAL.replace("origin = ", "orign = \"http://127.0.0.1:8081\"\norigin = ");
    let path = write_config(&dir, "unknown.toml", &text);
    assert_unknown_key(&check_config(&path), &path, "orign", 10);

    let text = MINIMAL.replace("memory = ", "memroy = \"1GiB\"\nmemory = ");
    let path = write_config(&dir, "unknown-cache.toml", &text);
    assert_unknown_key(&check_config(&path), &path, "memroy", 5);
}

#[test]
fn bad_duration_fails_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{MINIMAL}grace = \"forever\"\n");
    let path = write_config(&dir, "duration.toml", &text);
    assert_problem(&check_config(&path), &path, "site[0].grace", &[]);

    let text = MINIMAL.replace("[cache]", "header_read_timeout = \"10 parsecs\"\n\n[cache]");
    let path = write_config(&dir, "server-duration.toml", &text);
    assert_problem(
        &check_config(&path),
        &path,
        "server.header_read_timeout",
        &[],
    );
}

#[test]
fn bad_listen_address_fails_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = MINIMAL.replace(
        "[\"127.0.0.1:8080\"]\n\n[cache]",
        "[\"nowhere:80\"]\n\n[cache]",
    );
    assert!(text.contains("nowhere"));
    let path = write_config(&dir, "listen.toml", &text);
    assert_problem(
        &check_config(&path),
        &path,
        "server.listen[0]",
        &["nowhere"],
    );
}

#[test]
fn missing_origin_fails_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = MINIMAL.replace("origin = \"http://127.0.0.1:8081\"\n", "");
    let path = write_config(&dir, "origin.toml", &text);
    assert_problem(&check_config(&path), &path, "site[0].origin", &["missing"]);
}

#[test]
fn every_problem_is_listed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let text = MINIMAL
        .replace(
            "[\"127.0.0.1:8080\"]\n\n[cache]",
            "[\"nowhere:80\"]\n\n[cache]",
        )
        .replace(
            "origin = \"http://127.0.0.1:8081\"\n",
            "grace = \"forever\"\n",
        );
    let path = write_config(&dir, "many.toml", &text);
    let output = check_config(&path);
    for key in ["server.listen[0]", "site[0].origin", "site[0].grace"] {
        assert_problem(&output, &path, key, &[]);
    }
}

#[test]
fn broken_toml_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    // Line 5 has an unterminated string.
    let text = MINIMAL.replace("memory = \"256MiB\"", "memory = \"256MiB");
    assert_eq!(text.lines().nth(4), Some("memory = \"256MiB"));
    let path = write_config(&dir, "broken.toml", &text);
    let output = check_config(&path);
    let text = stderr(&output);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains(&path.display().to_string()),
        "names the file: {text}"
    );
    assert!(text.contains("line 5"), "names the line: {text}");
}

#[test]
fn missing_file_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let output = check_config(&path);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains(&path.display().to_string()),
        "{}",
        stderr(&output)
    );
}

#[test]
fn run_with_a_bad_config_exits_with_the_same_message_and_does_not_listen() {
    let dir = tempfile::tempdir().unwrap();
    // A free port on 127.0.0.1 for the bad config to name.
    let port = free_port();
    let text = MINIMAL
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
        .replace("origin = \"http://127.0.0.1:8081\"\n", "");
    let path = write_config(&dir, "bad.toml", &text);

    let checked = check_config(&path);
    assert!(!checked.status.success());
    let expected = stderr(&checked);

    let ran = run(
        &["run".as_ref(), "--config".as_ref(), path.as_os_str()],
        Duration::from_secs(10),
    );
    assert!(!ran.status.success(), "run must fail");
    let got = stderr(&ran);
    assert!(
        got.contains(expected.trim()),
        "run said:\n{got}\ncheck-config said:\n{expected}"
    );
    assert_problem(&ran, &path, "site[0].origin", &["missing"]);
    let stdout = String::from_utf8_lossy(&ran.stdout);
    assert!(
        !stdout.contains("listening") && !got.contains("listening"),
        "no listener may be started: {stdout}{got}"
    );
    // Nothing is left behind on the port.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn run_serves_with_a_good_config_until_stopped() {
    // The counterpart of the test above: the same binary does listen with a valid file.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let text = MINIMAL.replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"));
    let path = write_config(&dir, "good.toml", &text);
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child_guard = Kill(
        Command::new(KAGAMI)
            .args(["run".as_ref(), "--config".as_ref(), path.as_os_str()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    let mut connected = false;
    while start.elapsed() < Duration::from_secs(10) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            connected = true;
            break;
        }
        if let Some(status) = child_guard.0.try_wait().unwrap() {
            let mut err = String::new();
            let _ = child_guard
                .0
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err);
            panic!("kagami run exited with {status}: {err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(connected, "kagami run listens on 127.0.0.1:{port}");
}

#[test]
fn shipped_example_config_passes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kagami.example.toml");
    if !path.exists() {
        println!(
            "note: {} does not exist yet; skipping this check",
            path.display()
        );
        return;
    }
    let output = check_config(&path);
    assert!(output.status.success(), "{}", stderr(&output));
}

/// The token the secret-hiding tests write.
const SECRET: &str = "s3cret-Token-value";

/// Writes `text` as `name`, checks it, and returns the refusal's text, having asserted that it
/// is a refusal, names the file and shows none of `hidden`.
fn refusal_hiding(dir: &tempfile::TempDir, name: &str, text: &str, hidden: &[&str]) -> String {
    let path = write_config(dir, name, text);
    let output = check_config(&path);
    let shown = stderr(&output);
    assert!(!output.status.success(), "{name}: {shown}");
    assert!(shown.contains(&path.display().to_string()), "{shown}");
    for secret in hidden {
        assert!(
            !shown.contains(secret),
            "{name}: {secret} is shown: {shown}"
        );
    }
    shown
}

/// A TOML error quotes the line it is on, and some messages quote the value: on the `token`
/// line that printed the admin token to the terminal, to CI logs and into a reload's 422
/// answer. The message still names the file, the line, the key and the reason.
#[test]
fn config_errors_never_show_the_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        // Unterminated string: toml quotes the whole line.
        format!("token = \"{SECRET}"),
        // Garbage after the value.
        format!("token = \"{SECRET}\" x"),
        // A bare number: the type error quotes it, and the hint says what to write.
        "token = 987654321".to_string(),
    ];
    for (i, line) in cases.iter().enumerate() {
        let text = format!("{MINIMAL}\n[admin]\n{line}\n");
        let number = 1 + text.lines().position(|l| l == line).unwrap();
        let where_ = format!("line {number}");
        let name = format!("secret{i}.toml");
        let text = refusal_hiding(&dir, &name, &text, &[SECRET, "987654321"]);
        assert!(text.contains(&where_) && text.contains("token"), "{text}");
    }
}

/// An origin URL with credentials is refused; the refusal must not print the password.
#[test]
fn an_origin_password_is_not_shown_in_its_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let text = MINIMAL.replace(
        "http://127.0.0.1:8081",
        "http://kagami:hunter2-pass@127.0.0.1:8081",
    );
    let path = write_config(&dir, "credentials.toml", &text);
    let output = check_config(&path);
    assert_problem(&output, &path, "site[0].origin", &["credentials"]);
    let text = stderr(&output);
    assert!(
        !text.contains("hunter2-pass"),
        "the password is shown: {text}"
    );
}

/// The token written as TOML also allows: a dotted key, an inline table, a quoted key. toml
/// quotes the erring line whole, so each spelling must be hidden like `token = ...` is.
#[test]
fn config_errors_hide_the_token_however_the_key_is_spelt() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        format!("[admin]\nadmin.token = \"{SECRET}\" x"),
        format!("admin = {{ listen = \"127.0.0.1:9901\", token = \"{SECRET}\" }} x"),
        format!("admin = {{ token = \"{SECRET}\", listen = 9901 }}"),
        format!("[admin]\n'token' = \"{SECRET}\" x"),
        format!("[admin]\n\"token\"=\"{SECRET}\"x"),
    ];
    for (i, lines) in cases.iter().enumerate() {
        let text = format!("{MINIMAL}\n{lines}\n");
        let shown = refusal_hiding(&dir, &format!("spelt{i}.toml"), &text, &[SECRET]);
        assert!(shown.contains("line "), "case {i}: {shown}");
    }
}

/// A line may hold several origin URLs; toml quotes the whole line, and every password on it
/// must be hidden, not only the first.
#[test]
fn config_errors_hide_every_origin_password_on_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = MINIMAL.replace(
        "origin = \"http://127.0.0.1:8081\"",
        "origins = [\"http://a:first-pass@127.0.0.1:8081\", \"http://b:second-pass@127.0.0.1:8082\"] x",
    );
    let hidden = ["first-pass", "second-pass"];
    let shown = refusal_hiding(&dir, "two-urls.toml", &text, &hidden);
    assert!(shown.contains("line 10"), "{shown}");
}

/// A URL's user part alone often is the secret (`https://<token>@host`, as Git hosts and
/// error trackers hand them out); the refusal must not print it either.
#[test]
fn an_origin_user_token_is_not_shown_in_its_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let text = MINIMAL.replace(
        "http://127.0.0.1:8081",
        "http://ghp-user-token-42@127.0.0.1:8081",
    );
    let path = write_config(&dir, "user-token.toml", &text);
    let output = check_config(&path);
    assert_problem(&output, &path, "site[0].origin", &["credentials"]);
    let shown = stderr(&output);
    assert!(!shown.contains("ghp-user-token-42"), "shown: {shown}");
}

/// A token written as a multi-line string sits on the lines after `token = """`, and toml
/// quotes whichever of them holds the error (or the last one, when the string never ends).
#[test]
fn config_errors_hide_a_multi_line_token() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        format!("[admin]\ntoken = \"\"\"\n{SECRET}\\q\n\"\"\""),
        format!("[admin]\ntoken = '''\n{SECRET}\n"),
        format!("[admin]\ntoken = \"\"\"\n{SECRET}"),
    ];
    for (i, lines) in cases.iter().enumerate() {
        let text = format!("{MINIMAL}\n{lines}");
        let shown = refusal_hiding(&dir, &format!("multi{i}.toml"), &text, &[SECRET]);
        assert!(shown.contains("line "), "case {i}: {shown}");
    }
}

/// A misspelt `token` key is refused as unknown, and toml quotes its line: the value there is
/// the token all the same.
#[test]
fn config_errors_hide_the_value_of_a_misspelt_token_key() {
    let dir = tempfile::tempdir().unwrap();
    for (i, key) in ["tokne", "Token", "admin_token", "toke"].iter().enumerate() {
        let text = format!("{MINIMAL}\n[admin]\n{key} = \"{SECRET}\"\n");
        let shown = refusal_hiding(&dir, &format!("misspelt{i}.toml"), &text, &[SECRET]);
        assert!(shown.contains(key) && shown.contains("line 13"), "{shown}");
    }
}
