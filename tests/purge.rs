//! `POST /purge` by prefix, site and tag, soft (marked stale: revalidated first, still served
//! while the origin is down) and hard (removed), keyed as requests are so that no other site's
//! pages are touched; tag fields stored but never sent to visitors; nothing done without the
//! token.
mod common;

use std::time::Duration;

use common::admin::{purge, purged, start, TOKEN};
use common::{Kagami, Origin, Reply, Route};
use kagami::config::SiteConfig;

/// Two sites on one origin: "iwate" (iwate.test) and "miyagi" (miyagi.test).
async fn two_sites(origin: &Origin) -> (Kagami, String) {
    let sites = ["iwate", "miyagi"]
        .map(|name| SiteConfig::new(name, &[&format!("{name}.test")], &origin.url()).unwrap());
    start(sites.to_vec(), Some(TOKEN)).await
}

async fn get(kagami: &Kagami, host: &str, path: &str) -> Reply {
    kagami
        .send(kagami.client.get(kagami.url(path)).header("host", host))
        .await
}

/// Every path answers "`version` `path`", fresh for ten minutes, with `tags(path)` as its
/// (Surrogate-Key, Cache-Tag) fields.
fn publish(
    origin: &Origin,
    version: &str,
    paths: &[&str],
    tags: impl Fn(&str) -> (&'static str, &'static str),
) {
    for path in paths {
        let (surrogate, cache_tag) = tags(path);
        let mut route =
            Route::ok(format!("{version} {path}")).header("cache-control", "max-age=600");
        if !surrogate.is_empty() {
            route = route.header("surrogate-key", surrogate);
        }
        if !cache_tag.is_empty() {
            route = route.header("cache-tag", cache_tag);
        }
        origin.route(path, route);
    }
}

/// Both sites with every `NEWS` page stored at "v1", then the origin updated to "v2": what a
/// purge should make visitors see next.
async fn stored_then_updated(
    origin: &Origin,
    tags: impl Fn(&str) -> (&'static str, &'static str) + Copy,
) -> (Kagami, String) {
    publish(origin, "v1", &NEWS, tags);
    let (kagami, base) = two_sites(origin).await;
    for host in ["iwate.test", "miyagi.test"] {
        for path in NEWS {
            get(&kagami, host, path).await;
        }
    }
    publish(origin, "v2", &NEWS, tags);
    (kagami, base)
}

fn no_tags(_: &str) -> (&'static str, &'static str) {
    ("", "")
}

/// What each (host, path) answers now, in order.
async fn texts(kagami: &Kagami, pages: &[(&str, &str)]) -> Vec<String> {
    let mut out = Vec::new();
    for (host, path) in pages {
        out.push(get(kagami, host, path).await.text());
    }
    out
}

const NEWS: [&str; 4] = ["/news/a", "/news/b", "/newsletter", "/other"];

#[tokio::test]
async fn a_prefix_purge_stays_under_its_prefix_host_and_site() {
    let origin = Origin::start().await;
    publish(&origin, "v1", &NEWS, no_tags);
    let (kagami, base) = two_sites(&origin).await;
    let iwate: Vec<(&str, &str)> = NEWS.iter().map(|p| ("iwate.test", *p)).collect();
    texts(&kagami, &iwate).await;
    get(&kagami, "miyagi.test", "/news/a").await;
    publish(&origin, "v2", &NEWS, no_tags);

    // Soft: the two pages under /news/ must be revalidated, nothing else.
    let body = r#"{"prefix": "http://iwate.test/news/"}"#;
    assert_eq!(purged(&kagami, &base, body).await, 2);
    let reply = get(&kagami, "iwate.test", "/news/a").await;
    assert_eq!(reply.text(), "v2 /news/a");
    assert!(reply.cache_status().contains("fwd=stale"), "{reply:?}");
    assert_eq!(
        texts(&kagami, &iwate[2..]).await,
        ["v1 /newsletter", "v1 /other"]
    );
    assert_eq!(
        get(&kagami, "miyagi.test", "/news/a").await.text(),
        "v1 /news/a"
    );

    // Hard, as a plain string prefix: /news also covers /newsletter; the copies are gone.
    let body = r#"{"prefix": "https://iwate.test/news", "soft": false}"#;
    assert_eq!(purged(&kagami, &base, body).await, 3);
    let reply = get(&kagami, "iwate.test", "/newsletter").await;
    assert_eq!(reply.text(), "v2 /newsletter");
    assert!(reply.cache_status().contains("fwd=uri-miss"), "{reply:?}");
    assert_eq!(
        get(&kagami, "iwate.test", "/other").await.text(),
        "v1 /other"
    );
    assert_eq!(
        get(&kagami, "miyagi.test", "/news/a").await.text(),
        "v1 /news/a"
    );

    // Named with the listener's port, as a browser sends the Host, it is the same page.
    let port = kagami.addr.port();
    let body = format!(r#"{{"prefix": "http://iwate.test:{port}/oth", "soft": false}}"#);
    assert_eq!(purged(&kagami, &base, &body).await, 1);

    // A prefix on a host no site serves is refused.
    let (status, _) = purge(
        &kagami,
        &base,
        r#"{"prefix": "http://nowhere.test/"}"#,
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_site_purge_takes_only_that_site() {
    let origin = Origin::start().await;
    let (kagami, base) = stored_then_updated(&origin, no_tags).await;

    assert_eq!(purged(&kagami, &base, r#"{"site": "iwate"}"#).await, 4);
    let reply = get(&kagami, "iwate.test", "/other").await;
    assert_eq!(reply.text(), "v2 /other");
    assert!(reply.cache_status().contains("fwd=stale"), "{reply:?}");
    assert_eq!(
        get(&kagami, "miyagi.test", "/other").await.text(),
        "v1 /other"
    );

    let body = r#"{"site": "miyagi", "soft": false}"#;
    assert_eq!(purged(&kagami, &base, body).await, 4);
    let reply = get(&kagami, "miyagi.test", "/other").await;
    assert_eq!(reply.text(), "v2 /other");
    assert!(reply.cache_status().contains("fwd=uri-miss"), "{reply:?}");
    // iwate's refreshed copy is untouched.
    assert!(get(&kagami, "iwate.test", "/other")
        .await
        .cache_status()
        .contains("hit"));

    let (status, answer) = purge(&kagami, &base, r#"{"site": "fukushima"}"#, Some(TOKEN)).await;
    assert_eq!(status, 400, "{answer}");
}

fn tagged(path: &str) -> (&'static str, &'static str) {
    match path {
        "/news/a" => ("evacuation news", ""),
        "/news/b" => ("", "evacuation,map"),
        "/newsletter" => ("", " map "),
        _ => ("other", "other-tag"),
    }
}

#[tokio::test]
async fn a_tag_purge_finds_both_fields_on_every_site_and_visitors_never_see_tags() {
    let origin = Origin::start().await;
    publish(&origin, "v1", &NEWS, tagged);
    let (kagami, base) = two_sites(&origin).await;
    for host in ["iwate.test", "miyagi.test"] {
        for path in NEWS {
            let fill = get(&kagami, host, path).await;
            let hit = get(&kagami, host, path).await;
            for reply in [fill, hit] {
                assert!(reply.header("surrogate-key").is_none(), "{reply:?}");
                assert!(reply.header("cache-tag").is_none(), "{reply:?}");
            }
        }
    }
    publish(&origin, "v2", &NEWS, tagged);

    // Soft: /news/a (Surrogate-Key) and /news/b (Cache-Tag) on both sites.
    assert_eq!(purged(&kagami, &base, r#"{"tag": "evacuation"}"#).await, 4);
    let reply = get(&kagami, "miyagi.test", "/news/b").await;
    assert_eq!(reply.text(), "v2 /news/b");
    assert!(reply.cache_status().contains("fwd=stale"), "{reply:?}");
    assert_eq!(
        get(&kagami, "iwate.test", "/newsletter").await.text(),
        "v1 /newsletter"
    );

    // Hard: /news/b and /newsletter, on both sites (miyagi's /news/b was just refreshed and is
    // still tagged).
    assert_eq!(
        purged(&kagami, &base, r#"{"tag": "map", "soft": false}"#).await,
        4
    );
    let reply = get(&kagami, "iwate.test", "/newsletter").await;
    assert_eq!(reply.text(), "v2 /newsletter");
    assert!(reply.cache_status().contains("fwd=uri-miss"), "{reply:?}");
    assert_eq!(
        get(&kagami, "iwate.test", "/other").await.text(),
        "v1 /other"
    );
    assert_eq!(
        purged(&kagami, &base, r#"{"tag": "nothing-has-this"}"#).await,
        0
    );
    let (status, _) = purge(&kagami, &base, r#"{"tag": "two words"}"#, Some(TOKEN)).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn soft_purged_pages_are_served_while_the_origin_is_down_and_refreshed_after() {
    let origin = Origin::start().await;
    let paths = ["/pre/notice", "/tagged", "/site-wide", "/hard"];
    let tags = |path: &str| match path {
        "/tagged" => ("shelter", ""),
        _ => ("", ""),
    };
    publish(&origin, "v1", &paths, tags);
    let (kagami, base) = two_sites(&origin).await;
    let pages = [
        ("iwate.test", "/pre/notice"),
        ("iwate.test", "/tagged"),
        ("miyagi.test", "/site-wide"),
        ("iwate.test", "/hard"),
    ];
    texts(&kagami, &pages).await;

    // One soft purge of each kind, and a hard one.
    assert_eq!(
        purged(&kagami, &base, r#"{"prefix": "http://iwate.test/pre/"}"#).await,
        1
    );
    assert_eq!(purged(&kagami, &base, r#"{"tag": "shelter"}"#).await, 1);
    assert_eq!(purged(&kagami, &base, r#"{"site": "miyagi"}"#).await, 1);
    let body = r#"{"url": "http://iwate.test/hard", "soft": false}"#;
    assert_eq!(purged(&kagami, &base, body).await, 1);

    // Origin down: the soft-purged copies stand in (grace); the hard-purged one is gone.
    origin.kill();
    for (host, path) in &pages[..3] {
        let reply = get(&kagami, host, path).await;
        assert_eq!(reply.status, 200, "{host}{path}: {reply:?}");
        assert_eq!(reply.text(), format!("v1 {path}"));
        assert!(reply.cache_status().contains("grace"), "{reply:?}");
    }
    let gone = get(&kagami, "iwate.test", "/hard").await;
    assert!(gone.status >= 500, "{gone:?}");

    // Back with corrected pages: every purged copy is replaced (within the circuit's probe).
    origin.restart().await;
    publish(&origin, "v2", &paths, tags);
    let want: Vec<String> = pages.iter().map(|(_, p)| format!("v2 {p}")).collect();
    let mut seen = Vec::new();
    for _ in 0..50 {
        seen = texts(&kagami, &pages).await;
        if seen == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, want);
}

#[tokio::test]
async fn without_the_right_token_no_kind_of_purge_does_anything() {
    let origin = Origin::start().await;
    publish(&origin, "v1", &NEWS, tagged);
    let (kagami, base) = two_sites(&origin).await;
    for path in NEWS {
        get(&kagami, "iwate.test", path).await;
    }
    for body in [
        r#"{"prefix": "http://iwate.test/", "soft": false}"#,
        r#"{"site": "iwate", "soft": false}"#,
        r#"{"tag": "evacuation", "soft": false}"#,
        r#"{"tag": "map"}"#,
    ] {
        assert_eq!(purge(&kagami, &base, body, None).await.0, 401, "{body}");
        assert_eq!(
            purge(&kagami, &base, body, Some("wrong")).await.0,
            401,
            "{body}"
        );
    }
    publish(&origin, "v2", &NEWS, tagged);
    for path in NEWS {
        let reply = get(&kagami, "iwate.test", path).await;
        assert_eq!(reply.text(), format!("v1 {path}"));
        assert!(reply.cache_status().contains("hit"), "{reply:?}");
    }
    assert_eq!(origin.hits("/news/a"), 1);
}

/// Tags are the origins' own words: two municipalities on one Kagami may both tag their pages
/// `evacuation`, and one's purge used to mark the other's pages stale too (each then went back
/// to its origin at once, in the middle of an emergency). With `site`, a tag purge covers that
/// site only; an unknown site purges nothing (not everything).
#[tokio::test]
async fn a_tag_purge_with_a_site_stays_on_that_site() {
    let origin = Origin::start().await;
    let (kagami, base) = stored_then_updated(&origin, tagged).await;
    let (status, answer) = purge(
        &kagami,
        &base,
        r#"{"tag": "evacuation", "site": "iwate"}"#,
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).expect("a JSON answer");
    assert_eq!(answer["purged"], 2, "{answer}");
    assert_eq!(answer["site"], "iwate", "{answer}");
    for path in ["/news/a", "/news/b"] {
        assert_eq!(
            get(&kagami, "iwate.test", path).await.text(),
            format!("v2 {path}")
        );
        let untouched = get(&kagami, "miyagi.test", path).await;
        assert_eq!(untouched.text(), format!("v1 {path}"), "{untouched:?}");
        assert!(untouched.cache_status().contains("hit"), "{untouched:?}");
    }
    let (status, answer) = purge(
        &kagami,
        &base,
        r#"{"tag": "evacuation", "site": "fukushima"}"#,
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(
        get(&kagami, "miyagi.test", "/news/a").await.text(),
        "v1 /news/a"
    );
}
