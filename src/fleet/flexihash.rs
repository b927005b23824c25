//! The flexihash ring of Shimmie <= 2.11 (flexihash-php v2.0.2, `Crc32Hasher`,
//! 64 replicas), bit-exact:
//!
//! - target `t` of weight `w` gets positions `crc32("<t><i>")` for `i` in
//!   `0..round(64 * w)`; targets are added in config order and a later target
//!   overwrites an equal position; a weight <= 0 target gets no positions but still
//!   counts as a target;
//! - `lookupList(key, n)`: no positions gives nothing; exactly one target gives it;
//!   otherwise walk positions ascending from the first one *strictly greater* than
//!   `crc32(key)`, collecting targets not yet collected (PHP `in_array`, so `"1"` and
//!   `"01"` count as the same) until `n` are found or every target is, wrapping once.
//!
//! The ring is sorted once at build time; a lookup is one binary search and a short walk.
//!
//! Legacy differences we do not reproduce, on purpose: some 2.x releases passed the
//! raw weight text to flexihash (so `a=0.5` got 32 positions where `(int)` gives 0;
//! integer weights agree), and they added a 3+-part entry as an empty-named target of
//! weight 0 instead of refusing it. Templates parse the same way for both algorithms.

use super::php::{self, PhpName};
use super::{FleetError, Node};
use std::collections::HashSet;
use std::fmt::Write as _;

/// Positions per unit of weight (flexihash-php's default `$replicas`).
pub const REPLICAS: i64 = 64;

/// Most positions a ring may hold (16 MiB of ring): weights summing to 65536.
pub const MAX_POSITIONS: u128 = 1 << 22;

/// A built flexihash ring.
#[derive(Clone, Debug)]
pub(crate) struct Ring {
    /// Sorted, distinct positions.
    points: Box<[u32]>,
    /// The target (node index) at each position.
    owners: Box<[u32]>,
    /// Targets added, including those without positions (`$targetCount`).
    target_count: usize,
    /// Targets that still own a position after overwrites.
    reachable: usize,
    /// `loose[i * n + j]`: names `i` and `j` are `==` in PHP; only built when two
    /// distinct names are (then the walk must be emulated in full).
    loose: Option<Box<[bool]>>,
}

impl Ring {
    /// Builds the ring for nodes in config order. A repeated name is an error
    /// (flexihash-php throws), so is a ring larger than [`MAX_POSITIONS`].
    pub fn build(nodes: &[Node]) -> Result<Ring, FleetError> {
        let mut seen = HashSet::new();
        for node in nodes {
            if !seen.insert(node.name.as_str()) {
                return Err(FleetError::DuplicateNode {
                    name: node.name.clone(),
                });
            }
        }
        // round(64 * w) for an integer w is 64 * w; i128 cannot overflow here.
        let replicas = |w: i64| (i128::from(w) * i128::from(REPLICAS)).max(0) as u128;
        let positions: u128 = nodes.iter().map(|n| replicas(n.weight)).sum();
        if positions > MAX_POSITIONS {
            return Err(FleetError::RingTooLarge {
                positions,
                limit: MAX_POSITIONS,
            });
        }

        let mut added: Vec<(u32, u32)> = Vec::with_capacity(positions as usize);
        let mut text = String::new();
        for (index, node) in nodes.iter().enumerate() {
            for i in 0..replicas(node.weight) {
                text.clear();
                text.push_str(&node.name);
                // Writing to a String cannot fail.
                let _ = write!(text, "{i}");
                added.push((crc32fast::hash(text.as_bytes()), index as u32));
            }
        }
        // Stable: among equal positions the last one added (the later target) wins.
        added.sort_by_key(|&(pos, _)| pos);
        let mut points = Vec::with_capacity(added.len());
        let mut owners: Vec<u32> = Vec::with_capacity(added.len());
        for (pos, owner) in added {
            if points.last() == Some(&pos) {
                if let Some(last) = owners.last_mut() {
                    *last = owner;
                }
            } else {
                points.push(pos);
                owners.push(owner);
            }
        }
        let reachable = owners.iter().collect::<HashSet<_>>().len();

        let names: Vec<PhpName> = nodes.iter().map(|n| PhpName::new(&n.name)).collect();
        let n = names.len();
        let mut loose = vec![false; n * n];
        let mut any = false;
        for i in 0..n {
            for j in 0..n {
                let eq = i == j || php::loose_eq(&names[i], &names[j]);
                loose[i * n + j] = eq;
                any |= eq && i != j;
            }
        }
        Ok(Ring {
            points: points.into(),
            owners: owners.into(),
            target_count: n,
            reachable,
            loose: any.then(|| loose.into()),
        })
    }

    /// Whether no target has a position (every lookup finds nothing).
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    #[inline]
    fn same(&self, a: u32, b: u32) -> bool {
        a == b
            || self
                .loose
                .as_ref()
                .is_some_and(|l| l[a as usize * self.target_count + b as usize])
    }

    /// The walk's start: the first position strictly greater than the key's.
    #[inline]
    fn start(&self, key: &[u8]) -> usize {
        let at = crc32fast::hash(key);
        self.points.partition_point(|&p| p <= at)
    }

    /// `lookupList(key, 2)`: primary and secondary node indices; `None` when the ring
    /// is empty.
    pub fn top2(&self, key: &[u8]) -> Option<(u32, Option<u32>)> {
        let first_owner = *self.owners.first()?;
        if self.target_count == 1 {
            return Some((first_owner, None));
        }
        // Without loose duplicates the walk can stop once every reachable target is
        // found: PHP would only keep walking without finding anything new.
        let wanted = if self.loose.is_none() {
            self.reachable.min(2)
        } else {
            2
        };
        let start = self.start(key);
        let len = self.points.len();
        let mut primary: Option<u32> = None;
        // PHP's second pass restarts at the beginning and covers the whole ring.
        for idx in (start..len).chain(0..len) {
            let t = self.owners[idx];
            match primary {
                None => {
                    primary = Some(t);
                    if wanted == 1 {
                        break;
                    }
                }
                Some(p) if !self.same(p, t) => return Some((p, Some(t))),
                Some(_) => {}
            }
        }
        primary.map(|p| (p, None))
    }

    /// Every target in the ring's order for `key` (what `lookupList(key, all)` returns),
    /// then the targets it never returns (no positions, or `==` another) in config order.
    pub fn order(&self, key: &[u8]) -> Vec<u32> {
        let mut out: Vec<u32> = Vec::with_capacity(self.target_count);
        if let Some((p, s)) = self.top2(key) {
            out.push(p);
            out.extend(s);
            if out.len() == 2 && out.len() < self.reachable {
                let start = self.start(key);
                let len = self.points.len();
                for idx in (start..len).chain(0..start) {
                    let t = self.owners[idx];
                    if !out.iter().any(|&o| self.same(o, t)) {
                        out.push(t);
                    }
                }
            }
        }
        for t in 0..self.target_count as u32 {
            if !out.contains(&t) {
                out.push(t);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(spec: &[(&str, i64)]) -> Result<Ring, FleetError> {
        let nodes: Vec<Node> = spec
            .iter()
            .map(|&(name, weight)| Node {
                name: name.to_owned(),
                weight,
            })
            .collect();
        Ring::build(&nodes)
    }

    fn top2_names<'a>(spec: &[(&'a str, i64)], key: &str) -> Option<(&'a str, Option<&'a str>)> {
        let ring = build(spec).ok()?;
        let (p, s) = ring.top2(key.as_bytes())?;
        Some((spec[p as usize].0, s.map(|s| spec[s as usize].0)))
    }

    #[test]
    fn published_vector() {
        let spec = &[("foo", 10), ("bar", 5), ("baz", 5)];
        assert_eq!(
            top2_names(spec, "7ac19c10d6859415"),
            Some(("baz", Some("bar")))
        );
    }

    #[test]
    fn key_on_a_position_starts_after_it() {
        // crc32("a5") is a's own position 5: PHP starts strictly after it, at b.
        let spec = &[("a", 1), ("b", 1)];
        let ring = build(spec).unwrap();
        assert!(ring.points.contains(&crc32fast::hash(b"a5")));
        assert_eq!(top2_names(spec, "a5"), Some(("b", Some("a"))));
    }

    #[test]
    fn positions_are_64_per_weight() {
        assert_eq!(build(&[("a", 1), ("b", 3)]).unwrap().points.len(), 256);
    }

    #[test]
    fn single_target_is_returned_without_secondary() {
        assert_eq!(top2_names(&[("a", 2)], "anything"), Some(("a", None)));
    }

    #[test]
    fn zero_weight_target_is_never_returned() {
        let spec = &[("a", 1), ("z", 0)];
        for key in ["k1", "k2", "k3"] {
            assert_eq!(top2_names(spec, key), Some(("a", None)));
        }
        assert_eq!(build(spec).unwrap().order(b"k1"), vec![0, 1]);
    }

    #[test]
    fn all_zero_weights_make_an_empty_ring() {
        let ring = build(&[("a", 0), ("b", 0)]).unwrap();
        assert!(ring.is_empty());
        assert_eq!(ring.top2(b"k"), None);
        assert_eq!(ring.order(b"k"), vec![0, 1]);
    }

    #[test]
    fn single_zero_weight_target_finds_nothing() {
        assert_eq!(build(&[("a", 0)]).unwrap().top2(b"k"), None);
    }

    #[test]
    fn negative_weight_gets_no_positions() {
        assert_eq!(build(&[("a", -3), ("b", 1)]).unwrap().points.len(), 64);
    }

    #[test]
    fn repeated_name_is_refused() {
        assert_eq!(
            build(&[("a", 1), ("a", 2)]).unwrap_err(),
            FleetError::DuplicateNode { name: "a".into() }
        );
    }

    #[test]
    fn huge_weight_is_refused() {
        assert!(matches!(
            build(&[("a", i64::MAX)]),
            Err(FleetError::RingTooLarge { .. })
        ));
    }

    #[test]
    fn later_target_overwrites_equal_position() {
        // The same name text at the same i collides: "a1" + "1" and "a" + "11" both
        // hash "a11". Targets "a1" (i = 1) and "a" (i = 11) share a position.
        let spec = &[("a", 1), ("a1", 1)];
        let ring = build(spec).unwrap();
        let pos = crc32fast::hash(b"a11");
        let idx = ring.points.binary_search(&pos).unwrap();
        assert_eq!(ring.owners[idx], 1, "a1 was added later");
        assert_eq!(ring.points.len(), 128 - 10, "a10..a19 are shared");
    }

    #[test]
    fn loosely_equal_names_are_collected_once() {
        // "1" == "01" in PHP, so in_array skips the second one.
        let spec = &[("1", 1), ("01", 1)];
        for i in 0..50 {
            let key = format!("{i}");
            assert_eq!(top2_names(spec, &key).and_then(|t| t.1), None, "{key}");
        }
    }

    #[test]
    fn order_lists_every_target_once() {
        let spec = &[("a", 1), ("b", 2), ("c", 0), ("d", 1)];
        let ring = build(spec).unwrap();
        let mut order = ring.order(b"xyz");
        assert_eq!(order.len(), 4);
        assert_eq!(order[3], 2, "the weight-0 target comes last");
        order.sort_unstable();
        assert_eq!(order, vec![0, 1, 2, 3]);
    }
}
