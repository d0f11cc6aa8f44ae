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
