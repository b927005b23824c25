//! Each node's expected share of a silo's images as primary: what `/status` and the
//! `shimmer_node_expected_share` gauge report, so an operator can check a weight change
//! did what they meant.
//!
//! It is measured on the real placement (a fixed sample of hash-like keys), not derived
//! from the weights: that way it includes everything the placement does (flexihash's
//! ring, PHP's loose name comparison, weight 0, repeated names) and cannot drift from
//! it. With 20,000 keys it is within about half a percentage point.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::Placement;

/// Keys sampled per silo.
pub(super) const SAMPLE: u32 = 20_000;

/// `(node name, share)` for every distinct node name of the placement's template, in
/// template order. Shares of a balanced template with any positive weight sum to 1.
pub(super) fn primary_shares(placement: &Placement) -> Vec<(String, f64)> {
    let mut wins: HashMap<&str, u32> = HashMap::new();
    let mut hash = String::with_capacity(32);
    for i in 0..SAMPLE {
        hash.clear();
        // Spread the sample over the key space like md5s do.
        let x = u128::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
        let _ = write!(hash, "{x:032x}");
        if let Some(primary) = placement.owners(&hash).primary() {
            *wins.entry(primary).or_default() += 1;
        }
    }
    let mut shares: Vec<(String, f64)> = Vec::new();
    for node in placement.template().nodes() {
        if shares.iter().any(|(name, _)| *name == node.name) {
            continue;
        }
        let won = wins.get(node.name.as_str()).copied().unwrap_or(0);
        shares.push((node.name.clone(), f64::from(won) / f64::from(SAMPLE)));
    }
    shares
}

#[cfg(test)]
mod tests {
    use crate::fleet::{Algorithm, FleetSpec, FleetView, Silo};

    fn view(ilink: &str, algorithm: Algorithm) -> FleetView {
        FleetView::build(&FleetSpec {
            image_ilink: Some(ilink.to_owned()),
            image_tlink: None,
            algorithm,
        })
        .expect("view")
    }

    const WEIGHTED: &str = "http://m-{a=5,b=5,c=10,z=0}.example.com/_images/$hash/x.jpg";

    #[test]
    fn shares_follow_the_weights_for_both_algorithms() {
        // Rendezvous gives each node w/sum(w) in expectation; flexihash's ring of crc32
        // positions is lumpier (a=5 really gets ~30% of keys here), hence its tolerance.
        for (algorithm, tolerance) in [(Algorithm::Rendezvous, 0.02), (Algorithm::Flexihash, 0.08)]
        {
            let v = view(WEIGHTED, algorithm);
            let share = |n| v.primary_share(Silo::Images, n);
            let total: f64 = ["a", "b", "c", "z"].into_iter().map(share).sum();
            assert!((total - 1.0).abs() < 1e-9, "{algorithm:?}: sum {total}");
            for (node, want) in [("a", 0.25), ("b", 0.25), ("c", 0.5)] {
                let got = share(node);
                assert!(
                    (got - want).abs() < tolerance,
                    "{algorithm:?} {node}: {got}"
                );
            }
            assert_eq!(share("z"), 0.0, "weight 0 is never primary");
        }
    }

    #[test]
    fn an_unbalanced_silo_is_wholly_every_nodes() {
        let v = view(WEIGHTED, Algorithm::Rendezvous);
        // No image_tlink: the default thumbs template has no braces.
        assert_eq!(v.primary_share(Silo::Thumbs, "a"), 1.0);
    }

    #[test]
    fn a_node_not_in_the_template_has_no_share() {
        let v = view(WEIGHTED, Algorithm::Rendezvous);
        assert_eq!(v.primary_share(Silo::Images, "nobody"), 0.0);
    }

    #[test]
    fn the_share_is_measured_once_per_view() {
        let v = view(WEIGHTED, Algorithm::Flexihash);
        let first = v.primary_share(Silo::Images, "c");
        assert_eq!(
            first.to_bits(),
            v.primary_share(Silo::Images, "c").to_bits()
        );
        assert!(v.shares[Silo::Images.index()].get().is_some());
    }
}
