//! The `kagami` command: run a config, check a config, or run the built-in demo.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kagami::config::{Config, SiteConfig};

#[derive(Parser)]
#[command(
    name = "kagami",
    version,
    about = "A caching reverse proxy that keeps municipal websites reachable during disasters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve every site in a config file.
    Run {
        #[arg(long, short, default_value = "kagami.toml")]
        config: PathBuf,
    },
    /// Check a config file, print every problem and exit non-zero if there is any.
    CheckConfig { file: PathBuf },
    /// Start a built-in demo origin on 127.0.0.1 with Kagami in front of it.
    Demo {
        /// Where Kagami listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where the demo origin listens.
        #[arg(long, default_value = "127.0.0.1:8081")]
        origin: SocketAddr,
    },
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .init();

    let cli = Cli::parse();
    let result = match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::Run { config } => load(&config).and_then(|c| runtime(&c)?.block_on(run(c))),
        Command::Demo { listen, origin } => {
            demo_config(listen).and_then(|c| runtime(&c)?.block_on(demo(c, origin)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kagami: {err:#}");
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
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

fn runtime(config: &Config) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = config.server.worker_threads {
        builder.worker_threads(n);
    }
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn run(config: Config) -> anyhow::Result<()> {
    let running = kagami::server::start(&config).await?;
    tracing::info!(sites = config.sites.len(), "kagami is serving");
    kagami::limit::log_budgets(&config);
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.shutdown(Duration::from_secs(10)).await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
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
    Ok(SiteConfig::new("demo", &hosts, origin)?)
}

fn demo_config(listen: SocketAddr) -> anyhow::Result<Config> {
    // The origin address is only known once bound; the site is rebuilt in `demo`.
    let site = demo_site(listen, "http://127.0.0.1:1")?;
    Ok(Config::new(vec![listen], vec![site]))
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
    println!();
    println!("  Kagami demo is running.");
    println!(
        "  Through Kagami:   http://{kagami}/   (also /status.html, /water.html, /notice.pdf)"
    );
    println!("  Demo origin:      http://{origin_addr}/");
    println!();
    println!("  Take the origin down:  curl -X POST -H 'X-Kagami-Demo: 1' http://{origin_addr}/_demo/outage   (or type o + Enter)");
    println!("  Bring it back:         curl -X POST -H 'X-Kagami-Demo: 1' http://{origin_addr}/_demo/recover  (or type o + Enter again)");
    println!("  Watch the headers:     curl -sI http://{kagami}/status.html | grep -iE 'cache-status|age'");
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
    running.shutdown(Duration::from_secs(2)).await;
    Ok(())
}
