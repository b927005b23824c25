//! Property tests for placement: weights are honoured, rendezvous moves only what it
//! must, owners are well formed, and no template text panics the parser.
//!
//! Case counts are kept small for the 100k-key properties so the file runs in a few
//! seconds in a debug build.

use pingora_load_balancing::selection::{BackendIter, BackendSelection};
use proptest::prelude::*;
use shimmer::fleet::selection::{NodeTag, SelectionConfig, ShimmieSelection};
use shimmer::fleet::{php_int_cast, Algorithm, Owners, Placement, Silo, Template};
use std::collections::BTreeSet;
use std::sync::Arc;

const KEYS: u64 = 100_000;

/// Counts this thread's heap allocations, to check that lookups make none.
struct CountingAlloc;

thread_local! {
    static ALLOCATIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

// SAFETY: forwards every call unchanged to the system allocator; the counter is a
// const-initialised thread-local `Cell`, which never allocates.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// FleetView::owners allocates nothing, for both algorithms and every top-2 path.
#[test]
fn lookups_do_not_allocate() {
    let layouts: [fn(usize) -> i64; 3] = [|_| 5, |i| 5 + 5 * (i % 2) as i64, |i| i as i64];
    for algorithm in [Algorithm::Rendezvous, Algorithm::Flexihash] {
        for weight in layouts {
            let opts: Vec<String> = (0..40).map(|i| format!("m{i}={}", weight(i) + 1)).collect();
            let spec = shimmer::fleet::FleetSpec {
                image_ilink: Some(format!(
                    "https://{{{}}}.x/_images/$hash/a.jpg",
                    opts.join(",")
                )),
                image_tlink: None,
                algorithm,
            };
            let view = shimmer::fleet::FleetView::build(&spec).unwrap();
            let hashes: Vec<String> = keys(7, 500).collect();
            // The counter sees allocations at all.
            let probe = ALLOCATIONS.with(|c| c.get());
            std::hint::black_box(view.node_url(Silo::Images, "m1", &hashes[0], "/a.jpg"));
            assert!(ALLOCATIONS.with(|c| c.get()) > probe);
            let before = ALLOCATIONS.with(|c| c.get());
            for hash in &hashes {
                for silo in Silo::ALL {
                    std::hint::black_box(view.owners(silo, hash));
                }
            }
            let after = ALLOCATIONS.with(|c| c.get());
            assert_eq!(after - before, 0, "{algorithm:?}");
        }
    }
}

/// Deterministic image-hash-like keys (32 lowercase hex) from a seed.
fn keys(seed: u64, count: u64) -> impl Iterator<Item = String> {
    fn splitmix(x: &mut u64) -> u64 {
        *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let mut state = seed;
    (0..count).map(move |_| format!("{:016x}{:016x}", splitmix(&mut state), splitmix(&mut state)))
}

fn template(nodes: &[(String, i64)]) -> String {
    let opts: Vec<String> = nodes.iter().map(|(n, w)| format!("{n}={w}")).collect();
    format!(
        "https://{{{}}}.example.com/_images/$hash/x.jpg",
        opts.join(",")
    )
}

fn placement(nodes: &[(String, i64)], algorithm: Algorithm) -> Placement {
    Placement::new(Template::parse(&template(nodes)).unwrap(), algorithm).unwrap()
}

/// Distinct node names, 1 to `max` of them.
fn names(max: usize) -> impl Strategy<Value = Vec<String>> {
    prop::collection::btree_set("[a-z][a-z0-9-]{0,7}", 1..=max)
        .prop_map(|s| s.into_iter().collect::<Vec<_>>())
        .prop_shuffle()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4, ..ProptestConfig::default() })]

    /// Rendezvous gives each node a share of primaries within 2 percentage points of
    /// weight / total weight (weight-0 nodes get none).
    #[test]
    fn primaries_are_proportional_to_weights(
        spec in names(6).prop_flat_map(|names| {
            let n = names.len();
            (Just(names), prop::collection::vec(0i64..=10, n))
        }).prop_filter("some positive weight", |(_, w)| w.iter().any(|&w| w > 0)),
        seed in any::<u64>(),
    ) {
        let (names, weights) = spec;
        let nodes: Vec<(String, i64)> = names.into_iter().zip(weights).collect();
        let p = placement(&nodes, Algorithm::Rendezvous);
        let mut counts = vec![0u64; nodes.len()];
        for key in keys(seed, KEYS) {
            let primary = p.owners(&key).primary().unwrap();
            let i = nodes.iter().position(|(n, _)| n == primary).unwrap();
            counts[i] += 1;
        }
        let total: i64 = nodes.iter().map(|(_, w)| w).sum();
        for ((name, weight), count) in nodes.iter().zip(&counts) {
            let want = *weight as f64 / total as f64;
            let got = *count as f64 / KEYS as f64;
            prop_assert!((got - want).abs() < 0.02, "{name}: got {got}, want {want}");
            if *weight == 0 {
                prop_assert_eq!(*count, 0);
            }
        }
    }

    /// Adding one node to n equal nodes moves 1/(n+1) of the keys (within 1 point),
    /// all of them to the new node.
    #[test]
    fn rendezvous_moves_only_the_new_nodes_share(
        names in names(10).prop_filter("two or more", |n| n.len() >= 2),
        weight in 1i64..=5,
        seed in any::<u64>(),
    ) {
        let (old, new) = names.split_at(names.len() - 1);
        let before: Vec<(String, i64)> = old.iter().map(|n| (n.clone(), weight)).collect();
        let mut after = before.clone();
        after.push((new[0].clone(), weight));
        let (pb, pa) = (placement(&before, Algorithm::Rendezvous), placement(&after, Algorithm::Rendezvous));
        let mut moved = 0u64;
        for key in keys(seed, KEYS) {
            let (b, a) = (pb.owners(&key).primary(), pa.owners(&key).primary());
            if a != b {
                moved += 1;
                prop_assert_eq!(a, Some(new[0].as_str()));
            }
        }
        let want = 1.0 / after.len() as f64;
        let got = moved as f64 / KEYS as f64;
        prop_assert!((got - want).abs() < 0.01, "moved {got}, want {want}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Owners are well formed for both algorithms, and the pingora BackendSelection
    /// yields the same order. Up to 24 nodes and 31 weights, so rendezvous takes both
    /// its per-weight-class and its bounds-only path.
    #[test]
    fn owners_are_well_formed_and_selection_agrees(
        spec in names(24).prop_flat_map(|names| {
            let n = names.len();
            (Just(names), prop::collection::vec(0i64..=30, n))
        }).prop_filter("some positive weight", |(_, w)| w.iter().any(|&w| w > 0)),
        seed in any::<u64>(),
    ) {
        let (names, weights) = spec;
        let nodes: Vec<(String, i64)> = names.into_iter().zip(weights).collect();
        let backends: BTreeSet<_> = nodes
            .iter()
            .enumerate()
            .map(|(i, (name, w))| {
                let b = pingora_load_balancing::Backend::new_with_weight(
                    &format!("10.0.{}.{}:80", i / 200, i % 200 + 1),
                    *w as usize,
                )
                .unwrap();
                NodeTag::tag(b, name, i)
            })
            .collect();
        for algorithm in [Algorithm::Rendezvous, Algorithm::Flexihash] {
            let p = placement(&nodes, algorithm);
            let sel = Arc::new(ShimmieSelection::build_with_config(
                &backends,
                &SelectionConfig { algorithm },
            ));
            let positive = nodes.iter().filter(|(_, w)| *w > 0).count();
            for key in keys(seed, 50) {
                let o = p.owners(&key);
                let Owners::Nodes { primary, secondary } = o else {
                    return Err(TestCaseError::fail("balanced template gave Unbalanced"));
                };
                let weight_of = |name: &str| nodes.iter().find(|(n, _)| n == name).map(|(_, w)| *w);
                prop_assert!(weight_of(primary).unwrap_or(0) > 0, "primary has weight");
                prop_assert_ne!(Some(primary), secondary);
                match algorithm {
                    // sorted[1 % len]: a secondary whenever there are two nodes.
                    Algorithm::Rendezvous => prop_assert_eq!(secondary.is_some(), nodes.len() > 1),
                    // lookupList only returns targets with positions.
                    Algorithm::Flexihash => prop_assert_eq!(secondary.is_some(), positive > 1),
                }
                let order = p.order(&key);
                prop_assert_eq!(order.len(), nodes.len());
                prop_assert_eq!(order[0], primary);
                let mut it = sel.iter(key.as_bytes());
                let mut via_selection = Vec::new();
                while let Some(b) = it.next() {
                    via_selection.push(b.ext.get::<NodeTag>().unwrap().name.clone());
                }
                prop_assert_eq!(&via_selection, &order);
            }
        }
    }
}

/// Template-like text: braces, separators, names, weights, variables, newlines.
fn template_like() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("{".to_owned()),
            Just("}".to_owned()),
            Just(",".to_owned()),
            Just("=".to_owned()),
            Just("\n".to_owned()),
            Just("$hash".to_owned()),
            Just("$hash_ab".to_owned()),
            Just("https://".to_owned()),
            Just("/".to_owned()),
            "[a-c]{1,3}",
            "-?[0-9]{1,3}",
            "[ \t.e+]",
            any::<char>().prop_map(String::from),
        ],
        0..24,
    )
    .prop_map(|parts| parts.concat())
}

/// Exercises everything a parsed template offers.
fn exercise(text: &str) {
    let Ok(t) = Template::parse(text) else {
        return;
    };
    let hash = "d41d8cd98f00b204e9800998ecf8427e";
    let _ = t.link(t.nodes().first().map(|n| n.name.as_str()), hash);
    let _ = t.node_url(Silo::Images, "n", hash, "/x.jpg");
    let _ = t.node_url(Silo::Thumbs, "n", "", "");
    // Keep flexihash rings small so the debug build stays fast.
    let weight: i64 = t.nodes().iter().map(|n| n.weight.clamp(0, 1 << 20)).sum();
    for algorithm in [Algorithm::Rendezvous, Algorithm::Flexihash] {
        if algorithm == Algorithm::Flexihash && weight > 200 {
            continue;
        }
        if let Ok(p) = Placement::new(t.clone(), algorithm) {
            let o = p.owners(hash);
            let _ = (o.primary(), o.secondary(), o.is_owner("a"));
            let _ = p.owners("");
            let _ = p.order(hash);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn no_string_panics_the_template_parser(text in any::<String>()) {
        exercise(&text);
    }

    #[test]
    fn no_template_like_string_panics(text in template_like()) {
        exercise(&text);
    }

    #[test]
    fn no_string_panics_the_int_cast(text in any::<String>()) {
        let _ = php_int_cast(&text);
    }

    #[test]
    fn int_cast_agrees_with_plain_integers(n in any::<i64>(), pad in "[ \t\n]{0,2}", tail in "[a-z ]{0,3}") {
        prop_assert_eq!(php_int_cast(&format!("{pad}{n}{tail}")), n);
    }
}
