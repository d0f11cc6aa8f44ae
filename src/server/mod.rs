//! Listeners and connections: HTTP/1.1 and HTTP/2 (prior knowledge) on one port, with the
//! header-read (slowloris) and idle timeouts, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, ServerConfig};
use crate::proxy::{BuildError, Client, Proxy};

mod idle;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// A running Kagami: its bound addresses and the means to stop it.
pub struct Running {
    pub addrs: Vec<SocketAddr>,
    pub proxy: Arc<Proxy>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets requests in progress finish (at most `grace`), then returns.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(grace + Duration::from_millis(100), task).await;
        }
    }

    /// The first bound address (convenient for tests and the demo).
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }
}

/// Binds every listen address and starts serving.
pub async fn start(config: &Config) -> Result<Running, ServerError> {
    let proxy = Arc::new(Proxy::new(config)?);
    let (stop, stopped) = watch::channel(false);
    let mut addrs = Vec::new();
    let mut tasks = Vec::new();
    for addr in &config.server.listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind {
                addr: *addr,
                source,
            })?;
        let local = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: *addr,
            source,
        })?;
        addrs.push(local);
        tracing::info!(%local, "listening");
        tasks.push(tokio::spawn(accept_loop(
            listener,
            proxy.clone(),
            config.server.clone(),
            stopped.clone(),
        )));
    }
    Ok(Running {
        addrs,
        proxy,
        stop,
        tasks,
    })
}

fn builder(server: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(server.header_read_timeout)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    builder
}

async fn accept_loop(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    server: ServerConfig,
    mut stopped: watch::Receiver<bool>,
) {
    let builder = Arc::new(builder(&server));
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        serve_connection(
            stream,
            peer,
            &builder,
            &graceful,
            proxy.clone(),
            &server,
        );
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(10)) => {}
    }
}

fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    builder: &Arc<auto::Builder<TokioExecutor>>,
    graceful: &GracefulShutdown,
    proxy: Arc<Proxy>,
    server: &ServerConfig,
) {
    let _ = stream.set_nodelay(true);
    let client = Client { peer, proto: "http" };
    let (io, activity) = idle::IdleIo::new(stream);
    let tracker = activity.clone();
    let service = service_fn(move |request| {
        let proxy = proxy.clone();
        let guard = tracker.request_started();
        async move {
            let response = proxy.handle(request, client).await;
            drop(guard);
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let builder = builder.clone();
    let connection = builder.serve_connection(TokioIo::new(io), service).into_owned();
    let connection = graceful.watch(connection);
    let (header_timeout, idle_timeout) = (server.header_read_timeout, server.idle_timeout);
    tokio::spawn(async move {
        tokio::select! {
            result = connection => {
                if let Err(err) = result {
                    tracing::debug!(%peer, error = %err, "connection ended with an error");
                }
            }
            verdict = activity.watch(header_timeout, idle_timeout) => {
                tracing::debug!(%peer, ?verdict, "closing connection");
            }
        }
    });
}
