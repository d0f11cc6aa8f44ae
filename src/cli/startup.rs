//! Process set-up around the server: log output, the open-files limit, signals and how errors
//! are printed. Kept out of `main.rs` so the command definitions stay readable.

use std::io::IsTerminal;

use kagami::config::LogFormat;

/// Colour only for a person watching a terminal: log files and pipes (journald, `| tee`) must
/// not fill with escape codes, and `NO_COLOR` (any non-empty value, see no-color.org) wins.
pub fn use_colour() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stdout().is_terminal()
}

/// Starts logging to stdout in `format` (`log.format`), filtered by `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    match format {
        LogFormat::Text => builder.with_ansi(use_colour()).init(),
        // One object per line with the event's fields at the top level, as log collectors
        // (Loki, Elasticsearch, journald's JSON export) index them; never colour codes.
        LogFormat::Json => builder
            .with_ansi(false)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

/// An error and its causes on one line, leaving out a cause whose text the line already holds
/// (`ConfigError::Io` and `ServerError::Bind` quote their `std::io::Error`, which anyhow would
/// otherwise print a second time).
pub fn report(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// File descriptors one client connection may cost: its socket and an origin connection.
const FDS_PER_CONNECTION: u64 = 2;

/// Raises the soft open-files limit to the hard limit, as nginx (`worker_rlimit_nofile`) and the
/// Go runtime do: distributions still start services with a soft limit of 1024, far below what
/// `max_connections` allows, and running out shows only as `accept failed` warnings under load.
/// Warns when the limit stays below what `max_connections` needs.
#[cfg(unix)]
// `rlim_t` is u64 on most targets but not all (32-bit Linux), hence the casts.
#[allow(clippy::unnecessary_cast)]
pub fn raise_open_files_limit(max_connections: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::debug!(
                from = limit.rlim_cur as u64,
                to = raised.rlim_cur as u64,
                "raised the open-files limit"
            );
            limit = raised;
        } else {
            // macOS refuses values above its kernel maximum (an "unlimited" hard limit).
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "cannot raise the open-files limit"
            );
        }
    }
    let soft = limit.rlim_cur as u64;
    let needed = (max_connections as u64).saturating_mul(FDS_PER_CONNECTION);
    if soft < needed {
        tracing::warn!(
            open_files = soft,
            max_connections,
            "the open-files limit ({soft}) is below what server.max_connections = \
             {max_connections} needs (about {needed}: a client and an origin connection each); \
             raise it (ulimit -n, systemd LimitNOFILE=) or lower server.max_connections, or \
             connections will fail with \"Too many open files\" under load"
        );
    }
}

#[cfg(not(unix))]
pub fn raise_open_files_limit(_max_connections: usize) {}

/// What an operator asked for with a signal.
pub enum Signal {
    /// SIGTERM or Ctrl-C: drain and exit.
    Stop,
    /// SIGHUP: re-read the config (as nginx does), which default handling would instead
    /// answer by killing the process without a word.
    Reload,
}

/// The process's signal handlers. They are installed when this is made, not when `next` is
/// first polled, so a signal arriving during start-up is not missed.
pub struct Signals {
    #[cfg(unix)]
    handlers: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    pub fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let handlers = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::hangup()),
            ) {
                (Ok(term), Ok(hangup)) => Some((term, hangup)),
                _ => None,
            };
            Signals { handlers }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// The next signal.
    pub async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        if let Some((term, hangup)) = &mut self.handlers {
            return tokio::select! {
                _ = tokio::signal::ctrl_c() => Signal::Stop,
                _ = term.recv() => Signal::Stop,
                _ = hangup.recv() => Signal::Reload,
            };
        }
        let _ = tokio::signal::ctrl_c().await;
        Signal::Stop
    }
}

/// Waits for SIGTERM or Ctrl-C, for a Kagami with no config file to reload (the demo): SIGHUP
/// is logged and otherwise ignored.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    let mut signals = Signals::install();
    async move {
        while let Signal::Reload = signals.next().await {
            tracing::warn!("SIGHUP received and ignored: there is no config file to reload");
        }
    }
}
