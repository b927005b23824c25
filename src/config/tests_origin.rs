//! `origin: shimmie` and `shimmer.sync.reconcile` as the config renders them.

use super::*;

fn parse_str(text: &str) -> Result<Config, ConfigError> {
    parse(Path::new("test.yaml"), text)
}

fn yaml(source: &str, origin: &str, sync: &str) -> String {
    format!("shimmer:\n  node: a\n  source: \"{source}\"\n{sync}  origin: {origin}\n")
}

const LITE: &str = "sqlite:///nonexistent/shimmie.db";

fn error_of(text: &str) -> String {
    parse_str(text)
        .expect_err("config should be refused")
        .to_string()
}

#[test]
fn origin_shimmie_as_a_word_or_a_map() {
    let l = parse_str(&yaml(LITE, "shimmie", "")).unwrap();
    let s = &l.live.settings;
    let o = s.shimmie_origin.as_ref().expect("origin: shimmie");
    assert!(o.path_style && !o.anonymous && o.region.is_none());
    // No bucket until the database has been read; Shimmie's ext/s3 layout.
    assert!(s.origins.is_empty() && s.s3.is_none());
    let media = crate::request::parse(
        &http::Method::GET,
        "/_images/e28e3076236eff37065d36416001263e/1.jpg",
        None,
        2048,
    )
    .unwrap();
    assert_eq!(
        s.origin_paths.path_for(&media),
        "/e2/8e/e28e3076236eff37065d36416001263e"
    );
    let map = "\n    from: shimmie\n    region: eu-central-1\n    path_style: false\n    anonymous: true\n    read_timeout: 5s";
    let l = parse_str(&yaml(LITE, map, "")).unwrap();
    let s = &l.live.settings;
    let o = s.shimmie_origin.as_ref().expect("from: shimmie");
    assert_eq!(o.region.as_deref(), Some("eu-central-1"));
    assert!(!o.path_style && o.anonymous);
    assert_eq!(s.read_timeout, Duration::from_secs(5));
}

#[test]
fn origin_shimmie_needs_a_database_and_refuses_what_does_not_apply() {
    let e = error_of(&yaml("static", "shimmie", ""));
    assert!(
        e.contains("shimmer.origin: `shimmie` reads the bucket from Shimmie's config table"),
        "{e}"
    );
    let e = error_of(&yaml(LITE, "shimmy", ""));
    assert!(e.contains("give `shimmie`"), "{e}");
    let e = error_of(&yaml(LITE, "{from: gallery}", ""));
    assert!(e.contains("shimmer.origin.from"), "{e}");
    let e = error_of(&yaml(
        LITE,
        "{from: shimmie, servers: [\"http://127.0.0.1:1\"]}",
        "",
    ));
    assert!(e.contains("shimmer.origin.servers: does not apply"), "{e}");
    let e = error_of(&yaml(LITE, "{from: shimmie, region: \"eu west\"}", ""));
    assert!(e.contains("shimmer.origin.region"), "{e}");
    let e = error_of(&yaml(
        LITE,
        "{servers: [\"http://127.0.0.1:1\"], anonymous: true}",
        "",
    ));
    assert!(
        e.contains("shimmer.origin.anonymous: only applies with `from: shimmie`"),
        "{e}"
    );
    // A typo inside the map is still named.
    let e = error_of(&yaml(LITE, "{from: shimmie, regoin: x}", ""));
    assert!(e.contains("unknown field `regoin`"), "{e}");
}

#[test]
fn reconcile_options_have_defaults_and_bounds() {
    let l = parse_str(&yaml(LITE, "shimmie", "")).unwrap();
    assert_eq!(
        l.fixed.sync.reconcile,
        crate::sync::ReconcileOptions::default()
    );
    let sync = "  sync:\n    reconcile: {batch: 50, interval: 0s, every: 2s, enabled: false}\n";
    let l = parse_str(&yaml(LITE, "shimmie", sync)).unwrap();
    let r = &l.fixed.sync.reconcile;
    assert_eq!((r.batch, r.enabled), (50, false));
    assert_eq!(
        (r.interval, r.every),
        (Duration::ZERO, Duration::from_secs(2))
    );
    for (bad, key) in [
        ("{batch: 1}", "shimmer.sync.reconcile.batch"),
        ("{batch: 20000}", "shimmer.sync.reconcile.batch"),
        ("{every: 0s}", "shimmer.sync.reconcile.every"),
    ] {
        let sync = format!("  sync:\n    reconcile: {bad}\n");
        let e = error_of(&yaml(LITE, "shimmie", &sync));
        assert!(e.contains(key), "{bad}: {e}");
    }
}
