//! The Vary key describes the request the origin really received: a header the client lists in
//! `Connection` is removed before the origin sees it, so it cannot pick the variant either.
mod common;

use bytes::Bytes;
use common::raw::{exchange, RawResponse};
use common::{spawn_origin, Kagami};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

async fn get(kagami: &Kagami, extra: &str) -> RawResponse {
    RawResponse::parse(
        &exchange(
            kagami.addr,
            format!("GET /notice HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n"),
        )
        .await,
    )
}

#[tokio::test]
async fn a_header_listed_in_connection_does_not_choose_the_variant() {
    // Japanese unless the request asks for another language.
    let origin = spawn_origin(|request: Request<Incoming>| async move {
        let lang = request
            .headers()
            .get("accept-language")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_else(|| "ja".into());
        let mut response = Response::new(Full::new(Bytes::from(format!("notice in {lang}"))));
        let headers = response.headers_mut();
        headers.insert("cache-control", "max-age=300".parse().unwrap());
        headers.insert("vary", "Accept-Language".parse().unwrap());
        response
    })
    .await;
    let kagami = Kagami::start(&format!("http://{origin}")).await;

    // The origin never sees this Accept-Language, and answers in Japanese.
    let trick = get(
        &kagami,
        "Accept-Language: en\r\nConnection: Accept-Language\r\n",
    )
    .await;
    assert_eq!(trick.body, b"notice in ja");

    let english = get(&kagami, "Accept-Language: en\r\n").await;
    assert_eq!(
        String::from_utf8_lossy(&english.body),
        "notice in en",
        "{:?}",
        english.all("cache-status")
    );
    // The copy fetched without the header is the one for visitors who send none.
    let plain = get(&kagami, "").await;
    assert_eq!(plain.body, b"notice in ja");
    assert!(
        plain.all("cache-status")[0].contains("hit"),
        "{:?}",
        plain.headers
    );
}
