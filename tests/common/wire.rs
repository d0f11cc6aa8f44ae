//! Adversarial origins that show what really crosses the wire between Kagami and its origin:
//! [`WireOrigin`] records every byte it receives, per connection, and parses it the way a real
//! HTTP/1.1 origin does (nginx discards an unread request body *after* answering, so a stray
//! `Content-Length` swallows the start of the next request on a pooled connection);
//! [`RawOrigin`] writes responses byte for byte, for framing that hyper refuses to produce.
//! Both listen on 127.0.0.1 only and stop with the test's runtime.
#![allow(dead_code)]

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

type Log = Arc<Mutex<Vec<u8>>>;

/// A TCP stream that copies every byte read from it into a log.
struct Recorded {
    stream: TcpStream,
    log: Log,
}

impl AsyncRead for Recorded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let new = buf.filled()[before..].to_vec();
            self.log.lock().unwrap().extend_from_slice(&new);
        }
        polled
    }
}

impl AsyncWrite for Recorded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// An HTTP/1.1 origin (hyper) that records the exact bytes of every connection. Each request is
/// answered at once with `200`, `Cache-Control: max-age=60` and a body naming the method and
/// path it parsed (`GET /x`); a request body is read *after* answering, as nginx discards one.
pub struct WireOrigin {
    pub addr: SocketAddr,
    connections: Arc<Mutex<Vec<Log>>>,
}

impl WireOrigin {
    pub async fn start() -> WireOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections: Arc<Mutex<Vec<Log>>> = Arc::default();
        let all = connections.clone();
        tokio::spawn(async move {
            // Bounded: no test opens more connections than this.
            for _ in 0..256 {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let log: Log = Arc::default();
                all.lock().unwrap().push(log.clone());
                tokio::spawn(async move {
                    let io = TokioIo::new(Recorded { stream, log });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service_fn(answer))
                        .await;
                });
            }
        });
        WireOrigin { addr, connections }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bytes received on each connection so far, in the order the connections were opened.
    pub fn connections(&self) -> Vec<Vec<u8>> {
        self.connections
            .lock()
            .unwrap()
            .iter()
            .map(|log| log.lock().unwrap().clone())
            .collect()
    }

    /// Every request received so far, parsed as an origin parses a keep-alive stream.
    pub fn requests(&self) -> Vec<WireRequest> {
        self.connections().iter().flat_map(|c| parse(c)).collect()
    }
}

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let text = format!("{} {}", request.method(), request.uri());
    // Answer first, read (discard) the body afterwards: what nginx does with a body it does not
    // need, and what lets a stray Content-Length eat the next request on the connection.
    let body = request.into_body();
    tokio::spawn(async move {
        let _ = body.collect().await;
    });
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response
        .headers_mut()
        .insert("cache-control", "max-age=60".parse().unwrap());
    Ok(response)
}

/// One request as an HTTP/1.1 origin framed it: its head (as text) and the body that its
/// `Content-Length` or chunked coding claimed.
#[derive(Debug, Clone)]
pub struct WireRequest {
    pub head: String,
    pub body: Vec<u8>,
}

impl WireRequest {
    /// The request line.
    pub fn line(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }

    pub fn has(&self, name: &str) -> bool {
        !self.all(name).is_empty()
    }
}

/// Splits a connection's bytes into requests the way RFC 9112 §6 frames them. A trailing
/// incomplete request is returned with what arrived of it.
pub fn parse(mut raw: &[u8]) -> Vec<WireRequest> {
    let mut requests = Vec::new();
    while !raw.is_empty() {
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            requests.push(WireRequest {
                head: String::from_utf8_lossy(raw).into_owned(),
                body: Vec::new(),
            });
            break;
        };
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        raw = &raw[end + 4..];
        let mut request = WireRequest {
            head,
            body: Vec::new(),
        };
        let chunked = request
            .all("transfer-encoding")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            loop {
                let Some(line_end) = raw.windows(2).position(|w| w == b"\r\n") else {
                    raw = &[];
                    break;
                };
                let size = String::from_utf8_lossy(&raw[..line_end]);
                let size =
                    usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap_or(0);
                raw = &raw[line_end + 2..];
                if size == 0 {
                    // No trailers are sent by Kagami: just the final CRLF.
                    raw = raw.get(2..).unwrap_or(&[]);
                    break;
                }
                let take = size.min(raw.len());
                request.body.extend_from_slice(&raw[..take]);
                raw = raw.get(take + 2..).unwrap_or(&[]);
            }
        } else if let Some(length) = request.all("content-length").first() {
            let length: usize = length.parse().unwrap_or(0);
            let take = length.min(raw.len());
            request.body.extend_from_slice(&raw[..take]);
            raw = &raw[take..];
        }
        requests.push(request);
    }
    requests
}

/// An origin that answers each connection's first request with the bytes `script` returns for
/// its request head, then closes the connection: for framing hyper would never send (both
/// Content-Length and Transfer-Encoding, a 101 to a plain GET, ...).
pub struct RawOrigin {
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl RawOrigin {
    pub async fn start(script: fn(&str) -> Vec<u8>) -> RawOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = heads.clone();
        tokio::spawn(async move {
            for _ in 0..256 {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    let read_head = async {
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return false,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            }
                        }
                        true
                    };
                    let within = std::time::Duration::from_secs(5);
                    if !matches!(tokio::time::timeout(within, read_head).await, Ok(true)) {
                        return;
                    }
                    let head = String::from_utf8_lossy(&got).into_owned();
                    let answer = script(&head);
                    log.lock().unwrap().push(head);
                    let _ = stream.write_all(&answer).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        RawOrigin { addr, heads }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The request heads received so far.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}
