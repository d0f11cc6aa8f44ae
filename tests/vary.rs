//! Vary: each combination of the listed request headers is its own variant; Vary: * never matches.
mod common;

use common::{Kagami, Origin, Route};

#[tokio::test]
async fn variants_are_stored_side_by_side() {
    let origin = Origin::start().await;
    origin.route(
        "/lang",
        Route::ok("same body")
            .header("cache-control", "max-age=60")
            .header("vary", "Accept-Language"),
    );
    let kagami = Kagami::start(&origin.url()).await;
    let get = |lang: &'static str| {
        kagami.send(
            kagami
                .client
                .get(kagami.url("/lang"))
                .header("accept-language", lang),
        )
    };

    get("ja").await;
    get("en").await;
    assert_eq!(origin.hits("/lang"), 2, "two variants, two fetches");
    let again = get("ja").await;
    assert!(
        again.cache_status().contains("hit"),
        "{}",
        again.cache_status()
    );
    // Normalised: white space around list members does not make a new variant.
    kagami
        .send(
            kagami
                .client
                .get(kagami.url("/lang"))
                .header("accept-language", "en "),
        )
        .await;
    assert_eq!(origin.hits("/lang"), 2);
    let third = get("fr").await;
    assert!(
        third.cache_status().contains("fwd=vary-miss"),
        "{}",
        third.cache_status()
    );
    assert_eq!(origin.hits("/lang"), 3);
}

#[tokio::test]
async fn vary_star_never_matches() {
    let origin = Origin::start().await;
    origin.route(
        "/star",
        Route::ok("x")
            .header("cache-control", "max-age=60")
            .header("vary", "*"),
    );
    let kagami = Kagami::start(&origin.url()).await;
    kagami.get("/star").await;
    let second = kagami.get("/star").await;
    assert_eq!(origin.hits("/star"), 2);
    assert!(!second.cache_status().contains("hit"));
}

#[tokio::test]
async fn junk_variants_evict_the_least_recently_used_not_the_popular_one() {
    let origin = Origin::start().await;
    origin.route(
        "/ua",
        Route::ok("page")
            .header("cache-control", "max-age=60")
            .header("vary", "User-Agent"),
    );
    let kagami = Kagami::start(&origin.url()).await;
    let get = |ua: String| {
        kagami.send(
            kagami
                .client
                .get(kagami.url("/ua"))
                .header("user-agent", ua),
        )
    };
    let popular = || get("Mozilla/5.0 popular".to_string());
    popular().await;
    // 16 junk User-Agents, the popular one asked for all along (the cap is 16 variants).
    for i in 0..16 {
        let hit = popular().await;
        assert!(
            hit.cache_status().contains("hit"),
            "{i}: {}",
            hit.cache_status()
        );
        get(format!("junk-{i}")).await;
    }
    let last = popular().await;
    assert!(
        last.cache_status().contains("hit"),
        "the popular variant survives: {}",
        last.cache_status()
    );
    assert_eq!(origin.hits("/ua"), 17);
}
