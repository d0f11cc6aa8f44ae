//! Listeners and connections: HTTP/1.1 and HTTP/2 (prior knowledge) on one port, with the
//! header-read (slowloris) and idle timeouts (both kept by the watchdog in `idle`), the
//! connection caps (overall and per client address), and graceful shutdown (one connection's
//! HTTP is `conn`'s). HTTPS listeners (`tls`) add a TLS handshake in front of the same
//! connection handling.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{self, Either};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::atomic::Ordering;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{AbortHandle, JoinHandle};
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, ServerConfig};
use crate::limit::TrustedProxies;
use crate::proxy::{BuildError, Client, Proxy};

mod conn;
mod idle;
mod live;
mod per_client;
pub mod runtime;
mod tls;

pub use live::{Live, ReloadError, ReloadReport};

use per_client::{ClientConnection, PerClient};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// A running Kagami: its bound addresses and the means to stop it.
pub struct Running {
    pub addrs: Vec<SocketAddr>,
    /// The bound HTTPS addresses (also in `addrs`, after the plain ones).
    pub tls_addrs: Vec<SocketAddr>,
    /// Where HTTPS listeners get certificates; its table can be replaced while serving.
    pub certificates: Option<Arc<crate::tls::SniResolver>>,
    /// The proxy as started. Its store and statistics are those of every proxy a reload
    /// builds; for the sites now served, see `current`.
    pub proxy: Arc<Proxy>,
    /// The proxy now serving, and reloading.
    pub live: Arc<Live>,
    /// The admin API's bound address, when it runs (`Config::admin`).
    pub admin_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    admin: Option<JoinHandle<()>>,
    /// Obtains and renews the ACME sites' certificates (`tls::acme`).
    acme: Option<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets requests in progress finish (at most `grace`, which should be
    /// the config's `server.drain_timeout`: the listeners use that), answers the rest 503,
    /// then returns.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(true);
        // No new orders while draining; one under way is simply abandoned (ordered again at
        // the next start, as nothing was stored).
        if let Some(acme) = self.acme {
            acme.abort();
        }
        let limit = grace + OVERDUE_ANSWER_TIME + Duration::from_millis(100);
        for task in self.tasks {
            let _ = tokio::time::timeout(limit, task).await;
        }
        // The admin API answers (`/readyz`: 503) until the drain is over.
        if let Some(admin) = self.admin {
            admin.abort();
        }
    }

    /// The proxy new requests go to (the latest reload's).
    pub fn current(&self) -> Arc<Proxy> {
        self.live.proxy()
    }

    /// Applies `config` to new requests (see `Live`); an error leaves the old config serving.
    pub async fn reload(&self, config: &Config) -> Result<ReloadReport, ReloadError> {
        self.live.reload(config).await
    }

    /// Re-reads the config file Kagami was started with (`start_with_file`) and applies it.
    pub async fn reload_file(&self) -> Result<ReloadReport, ReloadError> {
        self.live.reload_file().await
    }

    /// The first bound address (convenient for tests and the demo).
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }
}

/// Binds every listen address and starts serving; `Running::reload` can apply a new config,
/// but there is no file for `reload_file` to re-read.
pub async fn start(config: &Config) -> Result<Running, ServerError> {
    start_with_file(config, None).await
}

/// Like `start`, for a config read from `path`: reloads re-read that file.
pub async fn start_with_file(
    config: &Config,
    path: Option<std::path::PathBuf>,
) -> Result<Running, ServerError> {
    let proxy = Arc::new(Proxy::new(config)?);
    let (stop, stopped) = watch::channel(false);
    let mut addrs = Vec::new();
    let mut tasks = Vec::new();
    let connections = Arc::new(Semaphore::new(config.server.max_connections));
    let per_client = Arc::new(PerClient::new(
        config.server.max_connections_per_client,
        TrustedProxies::new(config.limits.trusted_proxies.clone()),
    ));
    let (acceptor, certificates) = match config.server.listen_tls.is_empty() {
        true => (None, None),
        false => {
            let (acceptor, resolver) = crate::tls::acceptor(config)?;
            (Some(acceptor), Some(resolver))
        }
    };
    // Each reload tells the ACME manager its sites (`tls::acme`).
    let (acme_sites, acme_reloads) = watch::channel(crate::tls::acme::acme_sites(config));
    let live = Arc::new(Live::new(
        proxy.clone(),
        certificates.clone(),
        config.clone(),
        path,
        acme_sites,
    ));
    let mut tls_addrs = Vec::new();
    let plain = config.server.listen.iter().map(|addr| (addr, None));
    let secure = (config.server.listen_tls.iter()).map(|addr| (addr, acceptor.clone()));
    for (addr, tls) in plain.chain(secure) {
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
        if tls.is_some() {
            tls_addrs.push(local);
        }
        tracing::info!(%local, https = tls.is_some(), "listening");
        tasks.push(tokio::spawn(accept_loop(
            listener,
            live.clone(),
            config.server.clone(),
            connections.clone(),
            per_client.clone(),
            stopped.clone(),
            tls,
        )));
    }
    let (admin, admin_addr) = match start_admin(config, &live, &addrs, &stopped).await {
        Ok(Some((task, addr))) => (Some(task), Some(addr)),
        Ok(None) => (None, None),
        Err(err) => {
            let _ = stop.send(true);
            return Err(err);
        }
    };
    // After the listeners are bound, so that the CA's first validation request finds them.
    let acme = certificates.as_ref().and_then(|resolver| {
        crate::tls::acme::start(config, resolver.clone(), proxy.acme.clone(), acme_reloads)
    });
    Ok(Running {
        addrs,
        tls_addrs,
        certificates,
        acme,
        proxy,
        live,
        admin_addr,
        stop,
        tasks,
        admin,
    })
}

/// Binds and starts the admin API when the config has one.
async fn start_admin(
    config: &Config,
    live: &Arc<Live>,
    addrs: &[SocketAddr],
    stopped: &watch::Receiver<bool>,
) -> Result<Option<(JoinHandle<()>, SocketAddr)>, ServerError> {
    let Some(admin) = &config.admin else {
        return Ok(None);
    };
    let bound = crate::admin::bind(admin)
        .await
        .map_err(|source| ServerError::Bind {
            addr: admin.listen,
            source,
        })?;
    let Some((listener, local)) = bound else {
        return Ok(None);
    };
    let state = Arc::new(crate::admin::Admin {
        live: live.clone(),
        token: admin.token.clone(),
        listener_ports: addrs.iter().map(SocketAddr::port).collect(),
        draining: stopped.clone(),
        refused: Default::default(),
        refused_logged: Default::default(),
        usage: Default::default(),
    });
    Ok(Some((
        tokio::spawn(crate::admin::serve(listener, state)),
        local,
    )))
}

/// After the drain time, how long overdue requests get to receive their 503.
const OVERDUE_ANSWER_TIME: Duration = Duration::from_secs(1);

/// hyper's HTTP/1 header count limit when none is set.
const HYPER_MAX_HEADERS: usize = 100;

fn builder(server: &ServerConfig) -> conn::Http {
    let header_size = server.max_header_size as usize;
    let mut h1 = hyper::server::conn::http1::Builder::new();
    h1.timer(TokioTimer::new())
        // Off: the connection watchdog (`idle`) enforces the header-read timeout without a
        // timer armed and cancelled per request, and leaves the keep-alive wait to the idle
        // timeout.
        .header_read_timeout(None)
        // A head larger than the read buffer is refused with 431.
        .max_buf_size(header_size);
    // hyper's own limit is 100 headers, kept in an uninitialised array; naming any limit,
    // even 100, makes it fill a vector of that size for every request instead.
    if server.max_headers != HYPER_MAX_HEADERS {
        h1.max_headers(server.max_headers);
    }
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(server.h2_max_concurrent_streams)
        .max_header_list_size(header_size as u32)
        // Rapid-reset (CVE-2023-44487) and error-reset floods: hyper closes the connection.
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(256));
    // No HTTP/2 keep-alive pings: hyper would ping idle connections too, and the ping traffic
    // would keep them from ever counting as idle. Dead peers are closed by the idle timeout.
    conn::Http { h1, h2 }
}

async fn accept_loop(
    listener: TcpListener,
    live: Arc<Live>,
    server: ServerConfig,
    connections: Arc<Semaphore>,
    per_client: Arc<PerClient>,
    mut stopped: watch::Receiver<bool>,
    tls: Option<TlsAcceptor>,
) {
    let builder = Arc::new(builder(&server));
    let graceful = conn::Drain::new();
    // Set once the drain time is over: requests still in flight then answer 503.
    let (overdue_tx, overdue) = watch::channel(false);
    loop {
        // At the connection cap, stop accepting: new clients wait in the kernel's backlog
        // instead of costing memory and file descriptors here.
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = stopped.changed() => break,
        };
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
        // Over its own cap the address is refused at once (the connection is closed), so its
        // excess neither waits in the backlog ahead of other clients nor holds a place.
        let Some(counted) = per_client.admit(peer.ip()) else {
            tracing::debug!(%peer, "connection refused: per-client connection cap");
            drop(stream);
            continue;
        };
        serve_connection(
            stream,
            peer,
            &builder,
            &graceful,
            live.clone(),
            &server,
            (permit, counted),
            tls.clone(),
            overdue.clone(),
        );
    }
    drop(listener);
    let drained = graceful.shutdown();
    tokio::pin!(drained);
    tokio::select! {
        _ = &mut drained => return,
        _ = tokio::time::sleep(server.drain_timeout) => {}
    }
    tracing::info!(
        drain_timeout = ?server.drain_timeout,
        "drain time over: answering the requests still in flight 503"
    );
    let _ = overdue_tx.send(true);
    let _ = tokio::time::timeout(OVERDUE_ANSWER_TIME, drained).await;
}

// Each argument is one concern of the listener or the connection; a struct would only rename
// them.
#[allow(clippy::too_many_arguments)]
fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    builder: &Arc<conn::Http>,
    graceful: &conn::Drain,
    live: Arc<Live>,
    server: &ServerConfig,
    permit: (OwnedSemaphorePermit, ClientConnection),
    tls: Option<TlsAcceptor>,
    overdue: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    // Every proxy a reload builds shares these statistics.
    let stats = live.proxy().stats.clone();
    let conn_stats = stats.clone();
    stats.add(&stats.connections_total);
    stats.connections_open.fetch_add(1, Ordering::Relaxed);
    let local_port = stream.local_addr().map_or(0, |a| a.port());
    let mut client = Client {
        peer,
        proto: if tls.is_some() { "https" } else { "http" },
        sni: None,
        local_port,
    };
    let activity = idle::Activity::new();
    let tracker = activity.clone();
    let reads = activity.clone();
    let builder = builder.clone();
    // Taken now, so that a shutdown that starts during a TLS handshake still waits for it.
    let watcher = graceful.watcher();
    let (header_timeout, idle_timeout) = (server.header_read_timeout, server.idle_timeout);
    let serve = async move {
        let io = match tls {
            None => tls::Io::Plain(stream),
            Some(acceptor) => {
                let (io, sni) = tls::handshake(&acceptor, stream, header_timeout).await?;
                client.sni = sni;
                io
            }
        };
        let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            // Per request, not per connection: a keep-alive connection opened before a reload
            // gets the new config for its next request. This one keeps its proxy to the end.
            let proxy = live.proxy_now();
            tracker.request_started();
            let (method, version) = (request.method().clone(), request.version());
            if version == hyper::Version::HTTP_2 {
                tracker.set_multiplexed();
            }
            // Called here, not in the future: a hit is answered within this call, so the
            // request is dropped before hyper reads again and hyper can reuse its read buffer
            // (see `Proxy::handle`).
            let pending = match proxy.handle(request, &client) {
                // Answered already: nothing to race against the drain, nothing to box.
                Either::Left(ready) => {
                    let response = ready.into_inner().map(|body| tracker.track(body));
                    return Either::Left(future::ready(Ok(response)));
                }
                Either::Right(pending) => pending,
            };
            let guard = tracker.still_running();
            let (tracker, mut overdue) = (tracker.clone(), overdue.clone());
            // Boxed: hyper keeps the slot for a request's future (`in_flight`) allocated for
            // the connection's whole life, at that future's size, so every idle keep-alive
            // connection held it (the memory bench: 24.5 -> 22.1 KiB per connection after one
            // request). A hit (above) never gets here, so only requests that wait pay the
            // allocation, and the slot is the size of a ready answer or a pointer.
            Either::Right(Box::pin(async move {
                let response = tokio::select! {
                    // The request first: an answer ready at its first poll never registers with
                    // (and unregisters from) the drain channel's notifier.
                    biased;
                    response = pending => response,
                    // Only a sent `true` counts: a closed channel means the listener is gone.
                    Ok(_) = overdue.wait_for(|over| *over) => {
                        crate::proxy::shutting_down(&method, version)
                    }
                };
                drop(guard);
                Ok::<_, std::convert::Infallible>(response.map(|body| tracker.track(body)))
            }))
        });
        let io = reads.watched(io);
        conn::serve(&builder, io, service, &reads, &conn_stats, watcher).await
    };
    // The watchdog is a task of its own rather than a branch beside the connection: a branch
    // would be polled (its sleep re-registered) every time the connection wakes, once per
    // request. It wakes once per period and ends the connection by aborting its task.
    let (connection_tx, connection_rx) = oneshot::channel::<AbortHandle>();
    let watchdog = tokio::spawn(async move {
        let verdict = activity.watch(header_timeout, idle_timeout).await;
        tracing::debug!(%peer, ?verdict, "closing connection");
        if let Ok(connection) = connection_rx.await {
            connection.abort();
        }
    });
    let open = OpenConnection {
        stats,
        _permit: permit,
        watchdog: watchdog.abort_handle(),
    };
    let connection = tokio::spawn(async move {
        // Dropped when the connection ends, or with the task when the watchdog aborts it.
        let _open = open;
        if let Err(err) = serve.await {
            tracing::debug!(%peer, error = %err, "connection ended with an error");
        }
    });
    let _ = connection_tx.send(connection.abort_handle());
}

/// A connection's place: counted open, its caps' permits held, and its watchdog running, until
/// this is dropped (the connection ended, or its task was aborted).
struct OpenConnection {
    stats: Arc<crate::metrics::Stats>,
    _permit: (OwnedSemaphorePermit, ClientConnection),
    watchdog: AbortHandle,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.stats.connections_open.fetch_sub(1, Ordering::Relaxed);
        self.watchdog.abort();
    }
}
