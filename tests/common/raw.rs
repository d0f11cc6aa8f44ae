//! Raw HTTP/1 over TCP, for what reqwest will not send or does not show: malformed or oversized
//! heads, exact header fields on the wire, slow and silent clients, connections held open.
//! Every wait is bounded, so a server that never answers fails the test instead of hanging it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long connecting, or a whole raw exchange, may take.
pub const WITHIN: Duration = Duration::from_secs(5);

/// Connects to `addr`, failing the test if that takes longer than [`WITHIN`].
pub async fn connect(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(WITHIN, TcpStream::connect(addr))
        .await
        .expect("connected in time")
        .expect("connected")
}

/// Connects, sends `request` and never reads; a small receive buffer keeps the kernel from
/// absorbing the body on the client's behalf (a slow or stalled reader).
pub async fn silent_reader(addr: SocketAddr, request: impl AsRef<[u8]>) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("a small receive buffer");
    let mut stream = tokio::time::timeout(WITHIN, socket.connect(addr))
        .await
        .expect("connected in time")
        .expect("connected");
    stream
        .write_all(request.as_ref())
        .await
        .expect("request written");
    stream
}

/// Reads until the server closes the connection (EOF or reset) and returns when that happened
/// (measured from `since`) and what was read. Panics if the connection is still open at `limit`
/// after `since`.
pub async fn wait_for_close(
    stream: &mut TcpStream,
    since: Instant,
    limit: Duration,
) -> (Duration, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(since.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => panic!(
                "the connection was still open after {:?}; read so far: {:?}",
                since.elapsed(),
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return (since.elapsed(), got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads until the server closes the connection (EOF or reset), at most `within` from now;
/// returns what was read.
pub async fn read_to_close(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    wait_for_close(stream, Instant::now(), within).await.1
}

/// Connects, writes `request` as is and returns, as text, everything the server sent until it
/// closed the connection (so the request should end the connection, e.g. `Connection: close`).
/// Connecting and the answer each have [`WITHIN`].
pub async fn exchange(addr: SocketAddr, request: impl AsRef<[u8]>) -> String {
    let mut stream = connect(addr).await;
    stream
        .write_all(request.as_ref())
        .await
        .expect("request written");
    String::from_utf8_lossy(&read_to_close(&mut stream, WITHIN).await).into_owned()
}

/// Reads one response with a Content-Length body off a keep-alive connection, all of it
/// within `within`; returns it as text.
pub async fn read_one_response(stream: &mut TcpStream, within: Duration) -> String {
    let (raw, _) = read_one_response_bytes(stream, within).await;
    String::from_utf8_lossy(&raw).into_owned()
}

/// Reads one response with a Content-Length body, all of it within `within`; returns every byte
/// read so far and where the body lies in it.
pub async fn read_one_response_bytes(
    stream: &mut TcpStream,
    within: Duration,
) -> (Vec<u8>, std::ops::Range<usize>) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + within;
    loop {
        if let Some(end) = header_end(&got) {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .expect("a content-length");
            if got.len() >= end + 4 + length {
                return (got, end + 4..end + 4 + length);
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, stream.read(&mut buf))
            .await
            .expect("response in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before a full response ({} bytes): {:?}",
            got.len(),
            String::from_utf8_lossy(&got[..got.len().min(400)])
        );
        got.extend_from_slice(&buf[..n]);
    }
}

/// Where the blank line that ends a response head starts.
fn header_end(raw: &[u8]) -> Option<usize> {
    raw.windows(4).position(|w| w == b"\r\n\r\n")
}

/// The status code of a raw response (the second word of its first line).
pub fn status_of(raw: &str) -> u16 {
    raw.lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"))
}

/// The head of a raw response: status line and header fields, without the blank line.
pub fn head_of(raw: &str) -> &str {
    raw.split_once("\r\n\r\n")
        .map(|(head, _)| head)
        .unwrap_or_else(|| panic!("no header end in {raw:?}"))
}

/// The body of a raw response: everything after the head (empty when there is no head end).
pub fn body_of(raw: &str) -> &str {
    raw.split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or("")
}

/// A response read off the wire, header names lowercased, values as sent.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// Parses a complete raw response; panics when it has no status line or no head end.
    pub fn parse(raw: &str) -> RawResponse {
        let head = head_of(raw);
        let headers = head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        RawResponse {
            status: status_of(head),
            headers,
            body: body_of(raw).as_bytes().to_vec(),
        }
    }

    /// Every value of the field `name` (lowercase), in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn has(&self, name: &str) -> bool {
        !self.all(name).is_empty()
    }
}
