//! The `kagami` command: run a config, check a config, or run the built-in demo.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use kagami::config::{Config, LogFormat, SiteConfig};

mod cli;

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use cli::allocator::{start_trimming, tune_allocator};
use cli::startup::{
    init_logging, raise_open_files_limit, report, shutdown_signal, Signal, Signals,
};

/// Where `run` and `check-config` look when no file is named.
const DEFAULT_CONFIG: &str = "kagami.toml";

const AFTER_HELP: &str = "\
Config file:
  run and check-config read the file named by --config FILE (or given as FILE), else
  ./kagami.toml. deploy/kagami.example.toml shows every key with its default.

Environment:
  RUST_LOG   log filter, default \"info\"; e.g. RUST_LOG=info,kagami::access=off silences the
             access log, RUST_LOG=debug shows every decision
  NO_COLOR   any non-empty value turns off coloured logs (colour is only used on a terminal)

Signals (run):
  SIGTERM, SIGINT (Ctrl-C)  stop accepting, let requests in flight finish (server.drain_timeout),
                            answer the rest 503 with Retry-After, exit 0
  SIGHUP                    re-read the config file and certificates: new requests use the
                            new config, requests in flight finish on the old one, the cache
                            is kept; a bad file is logged and the old config keeps serving";

#[derive(Parser)]
#[command(
    name = "kagami",
    version,
    about = "A caching reverse proxy that keeps municipal websites reachable during disasters",
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

/// The config file: `--config FILE` or a plain `FILE`, on `run` and `check-config` alike.
#[derive(clap::Args)]
struct ConfigArg {
    /// The config file [default: ./kagami.toml]
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The config file, as an alternative to --config
    #[arg(value_name = "FILE", conflicts_with = "config")]
    file: Option<PathBuf>,
}

impl ConfigArg {
    /// The named file, or the default one when it exists.
    fn path(self) -> anyhow::Result<PathBuf> {
        if let Some(path) = self.config.or(self.file) {
            return Ok(path);
        }
        let default = PathBuf::from(DEFAULT_CONFIG);
        if default.exists() {
            return Ok(default);
        }
        anyhow::bail!(
            "no config file: none was named and there is no {DEFAULT_CONFIG} in the current \
             directory; pass one with --config FILE (or as FILE), e.g. \
             `kagami run --config /etc/kagami/kagami.toml` (deploy/kagami.example.toml is a \
             starting point)"
        )
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve every site in a config file until SIGTERM or Ctrl-C.
    #[command(after_help = AFTER_HELP)]
    Run {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Check a config file, print every problem and exit non-zero if there is any.
    #[command(after_help = AFTER_HELP)]
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Start a built-in demo origin on 127.0.0.1 with Kagami in front of it.
    Demo {
        /// Where Kagami listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where the demo origin listens.
        #[arg(long, default_value = "127.0.0.1:8081")]
        origin: SocketAddr,
    },
    /// Write a self-signed certificate (DIR/cert.pem) and key (DIR/key.pem, mode 0600) for
    /// trying HTTPS locally. Browsers will warn about it: use a real certificate in production.
    GenCert {
        /// A name the certificate covers; repeat for more ("*.city.example" for a wildcard).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Folder for the two files (created if missing; existing files are never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    tune_allocator();
    // `ALLOCATOR` above: its counts describe this process, so /metrics exports them.
    #[cfg(feature = "jemalloc")]
    kagami::metrics::allocator::jemalloc_is_global();
    let cli = Cli::parse();
    let Some(command) = cli.command else {
        // A bare `kagami` is someone finding their way: help, and no error status.
        let _ = Cli::command().print_help();
        println!();
        return ExitCode::SUCCESS;
    };
    // `run` starts logging once its config has said in which format (`log.format`).
    if !matches!(command, Command::Run { .. }) {
        init_logging(LogFormat::Text);
    }
    let result = match command {
        Command::CheckConfig { config } => config.path().and_then(|p| check_config(&p)),
        Command::Run { config } => config.path().and_then(|p| {
            let c = load(&p)?;
            init_logging(c.log.format);
            raise_open_files_limit(c.server.max_connections);
            start_trimming();
            runtime(&c)?.block_on(run(c, p))
        }),
        Command::GenCert { hosts, out } => gen_cert(&hosts, &out),
        Command::Demo { listen, origin } => {
            demo_config(listen).and_then(|c| runtime(&c)?.block_on(demo(c, origin)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kagami: {}", report(&err));
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

fn check_config(path: &Path) -> anyhow::Result<()> {
    let config = load(path)?;
    println!(
        "{}: OK ({} site(s), listening on {})",
        path.display(),
        config.sites.len(),
        config
            .server
            .listen
            .iter()
            .map(|a| a.to_string())
            .chain(
                config
                    .server
                    .listen_tls
                    .iter()
                    .map(|a| format!("https://{a}"))
            )
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

fn gen_cert(hosts: &[String], out: &Path) -> anyhow::Result<()> {
    let (cert, key) = kagami::tls::gen::write_self_signed(hosts, out)?;
    println!("wrote {} and {}", cert.display(), key.display());
    println!("use them in a [[site]] as tls_cert and tls_key (paths relative to the config file)");
    Ok(())
}

fn runtime(config: &Config) -> anyhow::Result<tokio::runtime::Runtime> {
    kagami::server::runtime::builder(config.server.worker_threads)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn run(config: Config, path: PathBuf) -> anyhow::Result<()> {
    let mut signals = Signals::install();
    let running = kagami::server::start_with_file(&config, Some(path)).await?;
    tracing::info!(sites = config.sites.len(), "kagami is serving");
    kagami::limit::log_budgets(&config);
    // A failed reload is logged by `reload_file` and changes nothing: keep serving.
    while let Signal::Reload = signals.next().await {
        tracing::info!("SIGHUP: reloading the config");
        let _ = running.reload_file().await;
    }
    let store = &running.proxy.store;
    let stats = running.proxy.stats.snapshot();
    tracing::info!(
        entries = store.entry_count(),
        weighted_bytes = store.weighted_size(),
        connections = stats.connections_total,
        connections_shrunk = stats.connections_shrunk,
        "shutting down"
    );
    running.shutdown(config.server.drain_timeout).await;
    Ok(())
}

/// The names the demo site answers to: the loopback names, on Kagami's own port when it is
/// fixed (so the demo does not answer for every port of those names).
fn demo_hosts(listen: SocketAddr) -> Vec<String> {
    ["127.0.0.1", "localhost", "[::1]"]
        .iter()
        .map(|name| match listen.port() {
            0 => name.to_string(),
            port => format!("{name}:{port}"),
        })
        .collect()
}

fn demo_site(listen: SocketAddr, origin: &str) -> anyhow::Result<SiteConfig> {
    let hosts = demo_hosts(listen);
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let mut site = SiteConfig::new("demo", &hosts, origin)?;
    cli::demo::tune(&mut site);
    Ok(site)
}

fn demo_config(listen: SocketAddr) -> anyhow::Result<Config> {
    // The origin address is only known once bound; the site is rebuilt in `demo`.
    let site = demo_site(listen, "http://127.0.0.1:1")?;
    let mut config = Config::new(vec![listen], vec![site]);
    // Ctrl-C in a demo should not wait long.
    config.server.drain_timeout = Duration::from_secs(2);
    Ok(config)
}

async fn demo(mut config: Config, origin: SocketAddr) -> anyhow::Result<()> {
    for (what, addr) in [
        ("Kagami", config.server.listen[0]),
        ("the demo origin", origin),
    ] {
        if !addr.ip().is_loopback() {
            tracing::warn!(
                %addr,
                "{what} listens beyond loopback: the demo is for one machine, and its outage \
                 switch and pages are then reachable from the network"
            );
        }
    }
    let (origin_addr, state) = kagami::demo::start_origin(origin)
        .await
        .with_context(|| format!("cannot start the demo origin on {origin}"))?;
    config.sites[0] = demo_site(config.server.listen[0], &format!("http://{origin_addr}"))?;
    let running = kagami::server::start(&config).await?;
    let kagami = running.addr();
    cli::demo::warm(kagami).await;
    println!();
    println!("  Kagami demo is running.");
    println!(
        "  Through Kagami:   http://{kagami}/   (also /status.html, /water.html, /notice.pdf)"
    );
    println!("  Demo origin:      http://{origin_addr}/");
    println!();
    println!("  Take the origin down:  curl -X POST -H 'X-Kagami-Demo: 1' http://{origin_addr}/_demo/outage   (or type o + Enter)");
    println!("  Bring it back:         curl -X POST -H 'X-Kagami-Demo: 1' http://{origin_addr}/_demo/recover  (or type o + Enter again)");
    println!("  Watch the headers:     curl -s -o /dev/null -D - http://{kagami}/status.html | grep -iE '^HTTP|cache-status'");
    println!("  Stop: Ctrl-C (or q + Enter)");
    println!();

    let (keys_tx, mut keys) = tokio::sync::mpsc::channel::<String>(4);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if keys_tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = &mut signal => break,
            line = keys.recv() => match line.as_deref().map(str::trim) {
                Some("o") => {
                    let down = !state.down.fetch_xor(true, Ordering::SeqCst);
                    println!("  origin is now {}", if down { "DOWN: Kagami serves its stored copies" } else { "UP" });
                }
                Some("q") => break,
                Some(_) => println!("  keys: o = toggle origin outage, q = quit"),
                // stdin closed (e.g. run in the background): keep serving until a signal.
                None => {
                    (&mut signal).await;
                    break;
                }
            },
        }
    }
    println!(
        "  origin served {} request(s); shutting down",
        state.requests.load(Ordering::Relaxed)
    );
    running.shutdown(config.server.drain_timeout).await;
    Ok(())
}
