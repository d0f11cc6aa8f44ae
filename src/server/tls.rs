//! HTTPS connections: the TLS handshake (under the header-read timeout, so a client that never
//! finishes it cannot hold a connection slot), then the very same HTTP handling as plain
//! connections, over an IO type that is either the plain socket or the TLS stream on it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::tls::SniName;
use tokio::net::TcpStream;

/// A client connection, plain or TLS. A stalled handshake is a connection with no request:
/// the watchdog closes it at the header-read timeout, as the handshake's own limit does.
pub enum Io {
    Plain(TcpStream),
    /// Boxed: a TLS session is large, and plain connections should not pay for its size.
    Tls(Box<TlsStream<TcpStream>>),
}

/// Completes the TLS handshake within `limit`; returns the stream and its SNI name.
pub async fn handshake(
    acceptor: &TlsAcceptor,
    io: TcpStream,
    limit: Duration,
) -> io::Result<(Io, Option<SniName>)> {
    let stream = tokio::time::timeout(limit, acceptor.accept(io))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    // The resolver refuses a handshake without SNI, so a name is always there; it is the
    // normalised name the certificate was chosen for.
    let sni = stream.get_ref().1.server_name().and_then(SniName::new);
    Ok((Io::Tls(Box::new(stream)), sni))
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_write(cx, data),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(io) => io.is_write_vectored(),
            Io::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_flush(cx),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}
