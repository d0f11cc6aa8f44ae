//! The first hour with the `kagami` command: help, where the config comes from, how errors and
//! logs look, signals and the open-files limit. Each test spawns the built binary.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const KAGAMI: &str = env!("CARGO_BIN_EXE_kagami");

/// Runs the binary to completion (killed after 10 s) in `dir`.
fn run_in(dir: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(KAGAMI)
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kagami");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("kagami {args:?} still running after 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config_on(dir: &Path, port: u16, extra_server: &str) -> PathBuf {
    let path = dir.join("site.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\n{extra_server}\n\n[[site]]\nname = \"a\"\n\
             hosts = [\"a.example\"]\norigin = \"http://127.0.0.1:9\"\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn bare_kagami_prints_help_and_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_in(dir.path(), &[]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let out = text(&output.stdout);
    assert!(
        out.contains("Usage: kagami") && out.contains("check-config"),
        "{out}"
    );
}

#[test]
fn help_describes_config_path_environment_and_signals() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["check-config", "--help"],
    ] {
        let output = run_in(dir.path(), args);
        assert!(output.status.success());
        let out = text(&output.stdout);
        for word in ["kagami.toml", "RUST_LOG", "NO_COLOR", "SIGTERM", "SIGHUP"] {
            assert!(
                out.contains(word),
                "kagami {args:?} does not mention {word}: {out}"
            );
        }
        if args.len() == 2 {
            assert!(
                out.contains("--config <FILE>") && out.contains("[FILE]"),
                "{out}"
            );
        }
    }
    let out = text(&run_in(dir.path(), &["demo", "--help"]).stdout);
    assert!(
        out.contains("--listen") && out.contains("--origin"),
        "{out}"
    );
}

#[test]
fn run_without_a_config_says_where_it_looked_and_how_to_name_one() {
    let dir = tempfile::tempdir().unwrap();
    for command in ["run", "check-config"] {
        let output = run_in(dir.path(), &[command]);
        assert!(!output.status.success());
        let err = text(&output.stderr);
        assert!(
            err.contains("kagami.toml") && err.contains("--config FILE"),
            "{command}: {err}"
        );
    }
}

#[test]
fn both_commands_take_the_file_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_on(dir.path(), 8080, "");
    let path = path.to_str().unwrap();
    for args in [
        ["check-config", "--config", path],
        ["check-config", "-c", path],
    ] {
        let output = run_in(dir.path(), &args);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            text(&output.stderr)
        );
    }
    // `run FILE` reads FILE: a broken one is refused with its name.
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[server\n").unwrap();
    let output = run_in(dir.path(), &["run", broken.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("broken.toml"));
    // Both forms at once are ambiguous.
    let output = run_in(dir.path(), &["check-config", "--config", path, path]);
    assert!(!output.status.success());
}

#[test]
fn os_errors_are_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_in(dir.path(), &["check-config", "missing.toml"]);
    let err = text(&output.stderr);
    assert_eq!(err.matches("os error").count(), 1, "{err}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let path = config_on(dir.path(), port, "");
    let output = run_in(dir.path(), &["run", path.to_str().unwrap()]);
    assert!(!output.status.success());
    let err = text(&output.stderr);
    assert!(err.contains("cannot listen"), "{err}");
    assert_eq!(err.matches("os error").count(), 1, "{err}");
}

/// A `kagami run` whose stdout lines arrive on a channel; killed when dropped.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(config: &Path, configure: impl FnOnce(&mut Command)) -> Running {
        let mut command = Command::new(KAGAMI);
        command
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        configure(&mut command);
        let mut child = command.spawn().expect("start kagami run");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (at most 10 s) for a line containing `needle`.
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with {needle:?}; got {:#?}", self.seen),
            }
        }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn logs_to_a_pipe_have_no_colour_codes_and_sighup_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_on(dir.path(), free_port(), "");
    let mut kagami = Running::start(&path, |_| {});
    kagami.wait_for("kagami is serving");
    kagami.signal(libc::SIGHUP);
    kagami.wait_for("SIGHUP");
    kagami.wait_for("config reloaded");
    assert!(
        kagami.child.try_wait().unwrap().is_none(),
        "SIGHUP killed kagami"
    );
    for line in &kagami.seen {
        assert!(!line.contains('\u{1b}'), "colour codes in a pipe: {line:?}");
    }
    // SIGTERM still stops it, cleanly.
    kagami.signal(libc::SIGTERM);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = kagami.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "SIGTERM did not stop kagami"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

/// Starts `kagami run` with the open-files limit set to `soft`/`hard` before exec.
fn start_with_nofile(config: &Path, soft: u64, hard: u64) -> Running {
    use std::os::unix::process::CommandExt;
    Running::start(config, |command| {
        // SAFETY: only setrlimit (async-signal-safe) runs between fork and exec.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: soft as libc::rlim_t,
                    rlim_max: hard as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    })
}

fn soft_nofile_of(pid: u32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    line.split_whitespace().nth(3).unwrap().to_string()
}

#[test]
fn a_low_open_files_limit_is_warned_about_at_start() {
    let dir = tempfile::tempdir().unwrap();
    // The default max_connections (10000) needs far more than 256 descriptors.
    let path = config_on(dir.path(), free_port(), "");
    let mut kagami = start_with_nofile(&path, 256, 256);
    let warning = kagami.wait_for("open-files limit");
    assert!(warning.contains("max_connections"), "{warning}");
    kagami.wait_for("kagami is serving");
}

#[test]
fn the_soft_open_files_limit_is_raised_to_the_hard_limit() {
    if !Path::new("/proc/self/limits").exists() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = config_on(dir.path(), free_port(), "max_connections = 100");
    let mut kagami = start_with_nofile(&path, 256, 4096);
    kagami.wait_for("kagami is serving");
    assert_eq!(soft_nofile_of(kagami.child.id()), "4096");
    assert!(
        !kagami.seen.iter().any(|l| l.contains("open-files limit")),
        "{:#?}",
        kagami.seen
    );
}

#[test]
fn common_config_mistakes_say_what_to_write() {
    let dir = tempfile::tempdir().unwrap();
    let site = "name = \"iwate\"\nhosts = [\"a.example\"]\norigin = \"http://127.0.0.1:9\"\n";
    for (file, contents, expected) in [
        ("single.toml", format!("[site]\n{site}"), "[[site]]"),
        (
            "number.toml",
            format!("[[site]]\n{site}default_ttl = 60\n"),
            "default_ttl = \"60s\"",
        ),
        (
            "typo.toml",
            format!("[[site]]\n{site}default_tll = \"60s\"\n"),
            "did you mean `default_ttl`?",
        ),
        (
            "bad.toml",
            format!("[[site]]\n{site}default_ttl = \"sixty\"\n"),
            "site[0].default_ttl (site \"iwate\"): \"sixty\" is not a duration",
        ),
    ] {
        let path = dir.path().join(file);
        std::fs::write(&path, contents).unwrap();
        let output = run_in(dir.path(), &["check-config", path.to_str().unwrap()]);
        assert!(!output.status.success());
        let err = text(&output.stderr);
        assert!(err.contains(expected), "{file}: {err}");
        assert!(err.contains(file), "{file}: {err}");
    }
}
