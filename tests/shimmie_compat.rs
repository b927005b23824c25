//! Compatibility with Shimmie's PHP, pinned the way pingora-ketama pins nginx's
//! output (`matches_nginx_sample`): every published vector from Shimmie's own tests
//! (`core/Util/LoadBalancerTest.php` for rendezvous, 2.11's `core/tests/UtilTest.php`
//! for flexihash) and from /work/shared/SHIMMIE.md, for both algorithms. The bulk
//! check is tests/placement_golden.rs: thousands of rows written by Shimmie's own PHP
//! (it replaces the 16-row sample that came from a Python model of that PHP).
//!
//! If one of these fails, shimmer and Shimmie disagree about which mirror owns an
//! image: every request for it would take an extra redirect, or be cached twice.

use shimmer::fleet::{
    murmur3_32, Algorithm, FleetSpec, FleetView, Owners, Placement, Silo, Template,
};

fn placement(template: &str, algorithm: Algorithm) -> Placement {
    let template = Template::parse(template).expect("template parses");
    Placement::new(template, algorithm).expect("placement builds")
}

fn pair<'a>(p: &'a Placement, key: &str) -> (&'a str, Option<&'a str>) {
    let o = p.owners(key);
    (o.primary().expect("balanced"), o.secondary())
}

// ---------------------------------------------------------------- murmur3a

#[test]
fn matches_php_murmur3a_values() {
    // PHP: hash("murmur3a", "foo") === "f6a5c420"
    assert_eq!(format!("{:08x}", murmur3_32(b"foo", 0)), "f6a5c420");
    assert_eq!(
        format!("{:08x}", murmur3_32(b"foo: 7ac19c10d6859415", 0)),
        "c5252d06"
    );
}

// ---------------------------------------------------------------- parsing

#[test]
fn matches_shimmie_weight_parsing() {
    let t = Template::parse("https://{foo=10,bar=5,baz=5,quux=0}.x/$hash").unwrap();
    let got: Vec<(&str, i64)> = t
        .nodes()
        .iter()
        .map(|n| (n.name.as_str(), n.weight))
        .collect();
    assert_eq!(got, [("foo", 10), ("bar", 5), ("baz", 5), ("quux", 0)]);
}

// ---------------------------------------------------------------- rendezvous (>= 2.12)

const FOO: &str = "https://{foo=10,bar=5,baz=5,quux=0}.mycdn.com/$hash.$ext";

#[test]
fn matches_shimmie_rendezvous_primary() {
    let p = placement(FOO, Algorithm::Rendezvous);
    assert_eq!(p.owners("7ac19c10d6859415").primary(), Some("foo"));
}

#[test]
fn matches_shimmie_rendezvous_full_order() {
    let p = placement(FOO, Algorithm::Rendezvous);
    assert_eq!(p.order("7ac19c10d6859415"), ["foo", "baz", "bar", "quux"]);
    assert_eq!(pair(&p, "7ac19c10d6859415"), ("foo", Some("baz")));
}

#[test]
fn matches_shimmie_rendezvous_distribution_exactly() {
    // "compatible implementations should give exactly these results"
    let p = placement(FOO, Algorithm::Rendezvous);
    let mut counts = [("foo", 0u32), ("bar", 0), ("baz", 0), ("quux", 0)];
    for key in 0..2000 {
        let primary = p.owners(&key.to_string()).primary().unwrap();
        let slot = counts.iter_mut().find(|(n, _)| *n == primary).unwrap();
        slot.1 += 1;
    }
    assert_eq!(
        counts,
        [("foo", 1001), ("bar", 502), ("baz", 497), ("quux", 0)]
    );
}

const ABC: &str = "https://m-{a=5,b=5,c=10}.example.com/_images/$hash/x.jpg";

#[test]
fn matches_shimmie_rendezvous_abc_sample() {
    let p = placement(ABC, Algorithm::Rendezvous);
    let sample = [
        ("ab25bc2", ("a", "c")),
        ("d41d8cd98f00b204e9800998ecf8427e", ("c", "b")),
        ("098f6bcd4621d373cade4e832627b4f6", ("c", "a")),
    ];
    for (key, (primary, secondary)) in sample {
        assert_eq!(pair(&p, key), (primary, Some(secondary)), "{key}");
    }
}

// ---------------------------------------------------------------- flexihash (<= 2.11)

#[test]
fn matches_shimmie_2_11_flexihash_link() {
    // UtilTest.php: this template and key give https://baz.mycdn.com/7ac19c10d6859415.jpg
    let p = placement(
        "https://{foo=10,bar=5,baz=5}.mycdn.com/$hash.$ext",
        Algorithm::Flexihash,
    );
    assert_eq!(pair(&p, "7ac19c10d6859415"), ("baz", Some("bar")));
    assert_eq!(
        p.template()
            .node_url(Silo::Images, "baz", "7ac19c10d6859415", ".jpg"),
        "https://baz.mycdn.com/7ac19c10d6859415.jpg"
    );
    assert_eq!(
        p.template().link(Some("baz"), "7ac19c10d6859415"),
        "https://baz.mycdn.com/7ac19c10d6859415.$ext"
    );
}

#[test]
fn matches_shimmie_flexihash_abc_sample() {
    let p = placement(ABC, Algorithm::Flexihash);
    let sample = [
        ("ab25bc2", ("b", "c")),
        ("d41d8cd98f00b204e9800998ecf8427e", ("b", "a")),
        ("098f6bcd4621d373cade4e832627b4f6", ("a", "b")),
    ];
    for (key, (primary, secondary)) in sample {
        assert_eq!(pair(&p, key), (primary, Some(secondary)), "{key}");
    }
}

#[test]
fn matches_php_flexihash_strictly_greater_start() {
    // crc32("a5") is one of a's own positions; flexihash-php starts strictly after
    // it (the Rust `flexihash` crate would start on it and say a).
    let p = placement("{a=1,b=1}", Algorithm::Flexihash);
    assert_eq!(pair(&p, "a5"), ("b", Some("a")));
}

// ---------------------------------------------------------------- through FleetView

#[test]
fn matches_shimmie_through_fleet_view() {
    for (algorithm, want) in [
        (Algorithm::Rendezvous, ("c", "b")),
        (Algorithm::Flexihash, ("b", "a")),
    ] {
        let view = FleetView::build(&FleetSpec {
            image_ilink: Some(ABC.to_owned()),
            image_tlink: Some(ABC.replace("_images", "_thumbs")),
            algorithm,
        })
        .unwrap();
        for silo in Silo::ALL {
            assert_eq!(
                view.owners(silo, "d41d8cd98f00b204e9800998ecf8427e"),
                Owners::Nodes {
                    primary: want.0,
                    secondary: Some(want.1)
                },
                "{algorithm:?} {silo}"
            );
        }
    }
}
