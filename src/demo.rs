//! `kagami demo`: a small municipal-style origin on 127.0.0.1 with Kagami in front of it, and a
//! switch to take the origin down and up so that stale serving can be watched.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// The demo origin's switches and counters.
#[derive(Default)]
pub struct DemoOrigin {
    pub down: AtomicBool,
    pub requests: AtomicU64,
}

const PAGES: [(&str, &str, &str); 3] = [
    ("/water.html", "断水・給水情報 / Water supply", "給水所: 市役所前、中央公民館 (9:00-17:00). Water stations: City Hall, Central Community Hall."),
    ("/roads.html", "道路状況 / Road status", "国道45号: 通行止め (宮古-山田). Route 45 closed between Miyako and Yamada."),
    ("/shelters.html", "避難所一覧 / Shelters", "第一中学校 (収容 400名), 市民体育館 (収容 800名). First Junior High (400), City Gymnasium (800)."),
];

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"ja\"><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body><h1>{title}</h1><p>{body}</p><p><a href=\"/\">トップ / Home</a></p></body></html>\n"
    )
}

fn index() -> String {
    let mut links = String::new();
    for (path, title, _) in PAGES {
        links.push_str(&format!("<li><a href=\"{path}\">{title}</a></li>"));
    }
    links.push_str(
        "<li><a href=\"/status.html\">最新の状況 (数秒ごとに更新) / Live status</a></li>",
    );
    links.push_str("<li><a href=\"/notice.pdf\">お知らせ (PDF) / Notice (PDF)</a></li>");
    page(
        "鏡市 災害情報 / Kagami City disaster information",
        &format!("<ul>{links}</ul>"),
    )
}

/// A PDF-like asset of about 200 KiB.
fn notice_pdf() -> Bytes {
    let mut pdf = b"%PDF-1.4\n% Kagami demo notice\n".to_vec();
    while pdf.len() < 200 * 1024 {
        pdf.extend_from_slice(b"0000000000 65535 f \n");
    }
    pdf.extend_from_slice(b"%%EOF\n");
    Bytes::from(pdf)
}

const STARTED: &str = "Mon, 01 Jan 2024 00:00:00 GMT";

fn respond(
    status: StatusCode,
    headers: &[(header::HeaderName, String)],
    body: Bytes,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    for (name, value) in headers {
        if let Ok(v) = value.parse() {
            response.headers_mut().insert(name.clone(), v);
        }
    }
    response
}

/// The header the outage switch requires. A web page cannot send it cross-site without a CORS
/// preflight (which the demo never grants), so no page a visitor opens can flip the switch.
pub const SWITCH_HEADER: &str = "x-kagami-demo";

/// Why a switch request is refused, if it is: it must come straight to the origin's own port
/// (not through Kagami, which adds `Via`), carry [`SWITCH_HEADER`], and not come from a page of
/// another site (`Origin`).
fn switch_refused(request: &Request<Incoming>) -> Option<&'static str> {
    let headers = request.headers();
    if headers.contains_key(header::VIA) {
        return Some("the demo switch is only on the origin's own port, not through a proxy\n");
    }
    if !headers.contains_key(SWITCH_HEADER) {
        return Some("send the header X-Kagami-Demo: 1 to use the demo switch\n");
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    // A loopback name only: a page on a rebinding DNS name would otherwise pass the Origin check.
    let loopback = host
        .and_then(|h| crate::routing::Authority::parse(h).ok())
        .is_some_and(|a| matches!(a.host(), "127.0.0.1" | "localhost" | "::1"));
    if !loopback {
        return Some("the demo switch answers only to 127.0.0.1, localhost or [::1]\n");
    }
    let origin = headers.get(header::ORIGIN).map(|v| v.to_str().ok());
    match (origin, host) {
        (None, _) => None,
        (Some(Some(o)), Some(h)) if o.strip_prefix("http://") == Some(h) => None,
        _ => Some("cross-site requests may not use the demo switch\n"),
    }
}

impl DemoOrigin {
    fn answer(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        let html = (header::CONTENT_TYPE, "text/html; charset=utf-8".to_string());
        if let Some(down) = match path {
            "/_demo/outage" => Some(true),
            "/_demo/recover" => Some(false),
            _ => None,
        } {
            if request.method() != Method::POST {
                return respond(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &[],
                    Bytes::from("POST only\n"),
                );
            }
            if let Some(reason) = switch_refused(request) {
                return respond(StatusCode::FORBIDDEN, &[], Bytes::from(reason));
            }
            self.down.store(down, Ordering::SeqCst);
            let text = if down {
                "origin is now DOWN\n"
            } else {
                "origin is now UP\n"
            };
            return respond(StatusCode::OK, &[], Bytes::from(text));
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        if self.down.load(Ordering::SeqCst) {
            return respond(
                StatusCode::SERVICE_UNAVAILABLE,
                &[(header::RETRY_AFTER, "30".into())],
                Bytes::from("origin overloaded (demo outage)\n"),
            );
        }
        let cc = |v: &str| (header::CACHE_CONTROL, v.to_string());
        let lm = (header::LAST_MODIFIED, STARTED.to_string());
        match path {
            "/" => respond(
                StatusCode::OK,
                &[html, cc("max-age=30"), lm],
                Bytes::from(index()),
            ),
            "/status.html" => {
                let now = SystemTime::now();
                let tick = now
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs() / 5)
                    .unwrap_or(0);
                let text = format!(
                    "最終更新 / Last update: {} (version {tick})",
                    httpdate::fmt_http_date(now)
                );
                respond(
                    StatusCode::OK,
                    &[html, cc("max-age=5"), (header::ETAG, format!("\"{tick}\""))],
                    Bytes::from(page("最新の状況 / Live status", &text)),
                )
            }
            "/notice.pdf" => respond(
                StatusCode::OK,
                &[
                    (header::CONTENT_TYPE, "application/pdf".into()),
                    cc("max-age=3600"),
                    lm,
                ],
                notice_pdf(),
            ),
            _ => match PAGES.iter().find(|(p, _, _)| *p == path) {
                // Five minutes: the README's "miss, then hit" holds at reading speed.
                Some((_, title, body)) => respond(
                    StatusCode::OK,
                    &[html, cc("max-age=300"), lm],
                    Bytes::from(page(title, body)),
                ),
                None => respond(
                    StatusCode::NOT_FOUND,
                    &[html, cc("max-age=60")],
                    Bytes::from(page("404", "Not found")),
                ),
            },
        }
    }
}

/// Starts the demo origin on `addr`; returns its address and switches.
pub async fn start_origin(addr: SocketAddr) -> std::io::Result<(SocketAddr, Arc<DemoOrigin>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let origin = Arc::new(DemoOrigin::default());
    let state = origin.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let response = state.answer(&request);
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((local, origin))
}
