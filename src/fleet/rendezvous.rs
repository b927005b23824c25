//! Weighted rendezvous hashing as Shimmie >= 2.12 does it
//! (`LoadBalancer::choose_load_balancer_node`):
//!
//! ```text
//! u     = murmur3a("<name>: <key>")        // u32
//! f     = (u + 1) / 2^32                   // f64, exact
//! score = (1.0 / -ln(f)) * weight          // f64, libm ln like PHP's log()
//! rsort([score, name] pairs); result n = sorted[n % len]
//! ```
//!
//! PHP's `rsort` orders by score descending, then by name descending with PHP 8
//! comparison (`"10" > "9"` for integer-like names), and is stable, so fully equal
//! pairs keep config order. Lookups only need the top two, so they select instead of
//! sorting, with the same order.
//!
//! Speed: node prefixes `"<name>: "` are hashed at build time and grouped by how many
//! bytes they leave pending, so a lookup premixes the key's blocks once per group and
//! finishes [`LANES`] nodes side by side. Within a weight class the score is strictly
//! monotonic in `u`, so integer comparisons pick each class's top two; cheap bounds
//! on the score then skip the logarithm for every candidate that cannot reach the top
//! two (typically only two logarithms are taken). The result is always the exact
//! order: `top2_plain` computes every score and the tests compare the two.

use super::murmur::{KeyBlocks, Lanes, Murmur3, LANES, MAX_PREMIXED_KEY};
use super::php::{self, PhpName};
use super::Node;

/// 2^32, the divisor in Shimmie's `(u + 1) / (1 << 32)`.
const TWO_POW_32: f64 = 4_294_967_296.0;

/// Relative slack on the cheap score bounds, far above every rounding error in
/// them or in the exact score (a few ulps, ~1e-15).
const SLACK: f64 = 1e-9;

/// Most nodes the fast path handles (node indices and name ranks must fit 16 bits,
/// and its per-weight-class table lives on the stack); larger fleets take the plain
/// path.
const STACK_NODES: usize = 128;
/// Below this many distinct weights, `top2` picks candidates per weight class
/// (real fleets have a few weight tiers); above, it bounds every node.
const FEW_CLASSES: usize = 17;

/// One node, with everything that does not depend on the key precomputed.
#[derive(Clone, Debug)]
struct RNode {
    /// Murmur state after `"<name>: "`.
    prefix: Murmur3,
    weight: f64,
    /// `weight * 4 * 2^32 * (1 - SLACK)`: the lower bound's constant factor.
    low: f64,
    /// `weight * (1 + SLACK)`: the upper bound's constant factor.
    high: f64,
    /// PHP's order of the names (see [`php::ranks`]).
    rank: u32,
    /// `u32::MAX` for a negative weight (its score falls as `u` rises), else 0.
    flip: u32,
}

/// A score interval `[low / den, high / den]` with `den >= 1`, so intervals compare
/// by cross-multiplying instead of dividing.
#[derive(Clone, Copy, Debug)]
struct Bounds {
    low: f64,
    high: f64,
    den: f64,
}

impl RNode {
    fn hash(&self, key: &[u8]) -> u32 {
        let mut h = self.prefix;
        h.write(key);
        h.finish()
    }

    /// Bounds on `score(u, weight)` without a logarithm. For `0 < f < 1`,
    /// `2 (1 - f) / (1 + f) <= -ln f <= (1 - f^2) / (2 f)`; with `f = (u + 1) / 2^32`,
    /// `d = u32::MAX - u = 2^32 (1 - f)` and `s = 2^32 + u + 1 = 2^32 (1 + f)` (both
    /// exact), a positive weight's score lies in
    /// `[4 w (u + 1) 2^32 / (2 d s), w s^2 / (2 d s)]`.
    #[inline]
    fn bounds(&self, u: u32) -> Bounds {
        if u == u32::MAX || self.weight <= 0.0 {
            return self.odd_bounds(u);
        }
        let s = TWO_POW_32 + f64::from(u) + 1.0;
        Bounds {
            low: self.low * (f64::from(u) + 1.0),
            high: self.high * s * s,
            den: 2.0 * f64::from(u32::MAX - u) * s,
        }
    }
}

impl RNode {
    /// Weight 0 or `u == u32::MAX` (exact: the score is 0 or infinite), and
    /// negative weights (the score is below 0).
    #[cold]
    fn odd_bounds(&self, u: u32) -> Bounds {
        if self.weight == 0.0 || u == u32::MAX {
            let s = score(u, self.weight);
            return Bounds {
                low: s,
                high: s,
                den: 1.0,
            };
        }
        Bounds {
            low: f64::NEG_INFINITY,
            high: 0.0,
            den: 1.0,
        }
    }
}

/// Up to [`LANES`] nodes whose prefixes share an alignment, with what turns each
/// lane's hash into an order key within its weight class.
#[derive(Clone, Debug)]
struct Chunk {
    lanes: Lanes,
    /// Node index per lane; only the first `count` lanes are real.
    node: [usize; LANES],
    count: usize,
    /// Weight class per lane; padding lanes use the spare class `classes`.
    class: [usize; LANES],
    /// `u` becomes `(u ^ flip) & mask`: `u` for a positive weight, `!u` for a
    /// negative one, 0 for weight 0 (its score does not depend on `u`).
    flip: [u32; LANES],
    mask: [u32; LANES],
    /// `rank << 16 | (0xFFFF - index)`: ties go to the greater name, then to the
    /// earlier node.
    tie: [u32; LANES],
}

/// Rendezvous placement over a fixed node list.
#[derive(Clone, Debug)]
pub(crate) struct Rendezvous {
    nodes: Box<[RNode]>,
    /// The nodes grouped for [`Lanes`], ordered by alignment.
    chunks: Box<[Chunk]>,
    /// Distinct weights.
    classes: usize,
}

/// A node's place in the sorted list: higher sorts first. Scores are never NaN and
/// never -0.0, so `total_cmp` agrees with PHP's `<=>` on them.
#[derive(Clone, Copy, Debug)]
struct Ranked {
    score: f64,
    rank: u32,
    index: u32,
}

impl Ranked {
    /// Whether `self` sorts before `other` in PHP's `rsort` (stable: earlier wins ties).
    #[inline]
    fn before(&self, other: &Ranked) -> bool {
        match self.score.total_cmp(&other.score) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal => (self.rank, other.index) > (other.rank, self.index),
        }
    }
}

/// Keeps the best two.
#[derive(Default)]
struct Top2 {
    first: Option<Ranked>,
    second: Option<Ranked>,
}

impl Top2 {
    #[inline]
    fn offer(&mut self, r: Ranked) {
        match self.first {
            Some(f) if !r.before(&f) => {
                if self.second.as_ref().is_none_or(|s| r.before(s)) {
                    self.second = Some(r);
                }
            }
            _ => {
                self.second = self.first;
                self.first = Some(r);
            }
        }
    }

    fn result(&self) -> Option<(u32, Option<u32>)> {
        self.first.map(|f| (f.index, self.second.map(|s| s.index)))
    }
}

/// Shimmie's score for hash `u` and `weight`, made total: weight 0 scores 0 whatever
/// `u` is, and `u == u32::MAX` (where `ln(1) = 0` and PHP throws a division by zero,
/// 1 key in 2^32) scores +infinity for a positive weight, -infinity for a negative one.
#[inline]
pub(crate) fn score(u: u32, weight: f64) -> f64 {
    if weight == 0.0 {
        return 0.0;
    }
    if u == u32::MAX {
        return f64::INFINITY.copysign(weight);
    }
    let f = (f64::from(u) + 1.0) / TWO_POW_32;
    (1.0 / -f.ln()) * weight
}

impl Rendezvous {
    /// Builds from nodes in config order (names already unique).
    pub fn new(nodes_in: &[Node]) -> Rendezvous {
        let names: Vec<PhpName> = nodes_in.iter().map(|n| PhpName::new(&n.name)).collect();
        let ranks = php::ranks(&names);
        let nodes: Box<[RNode]> = nodes_in
            .iter()
            .zip(ranks)
            .map(|(node, rank)| {
                let mut prefix = Murmur3::new(0);
                prefix.write(node.name.as_bytes());
                prefix.write(b": ");
                // PHP multiplies a float by the int weight: the same conversion.
                let weight = node.weight as f64;
                RNode {
                    prefix,
                    weight,
                    low: weight * 4.0 * TWO_POW_32 * (1.0 - SLACK),
                    high: weight * (1.0 + SLACK),
                    rank,
                    flip: if node.weight < 0 { u32::MAX } else { 0 },
                }
            })
            .collect();
        let mut weights: Vec<i64> = Vec::new();
        let class: Vec<usize> = nodes_in
            .iter()
            .map(|n| match weights.iter().position(|&w| w == n.weight) {
                Some(c) => c,
                None => {
                    weights.push(n.weight);
                    weights.len() - 1
                }
            })
            .collect();
        let classes = weights.len();
        let mut chunks = Vec::new();
        for align in 0..4 {
            let group: Vec<usize> = (0..nodes.len())
                .filter(|&i| nodes[i].prefix.alignment() == align)
                .collect();
            for part in group.chunks(LANES) {
                let prefixes: Vec<Murmur3> = part.iter().map(|&i| nodes[i].prefix).collect();
                let Some(lanes) = Lanes::new(&prefixes) else {
                    continue;
                };
                let mut chunk = Chunk {
                    lanes,
                    node: [0; LANES],
                    count: part.len(),
                    class: [classes; LANES],
                    flip: [0; LANES],
                    mask: [0; LANES],
                    tie: [0; LANES],
                };
                for (lane, &i) in part.iter().enumerate() {
                    let node = &nodes[i];
                    chunk.node[lane] = i;
                    chunk.class[lane] = class[i];
                    chunk.flip[lane] = node.flip;
                    chunk.mask[lane] = if node.weight == 0.0 { 0 } else { u32::MAX };
                    // Both fit 16 bits on the fast path (at most STACK_NODES nodes).
                    chunk.tie[lane] = (node.rank << 16) | (0xFFFF - (i as u32 & 0xFFFF));
                }
                chunks.push(chunk);
            }
        }
        Rendezvous {
            nodes,
            chunks: chunks.into(),
            classes,
        }
    }

    fn ranked(&self, index: usize, u: u32) -> Ranked {
        let node = &self.nodes[index];
        Ranked {
            // `+ 0.0` keeps -0.0 out, so `total_cmp` matches `==`.
            score: score(u, node.weight) + 0.0,
            rank: node.rank,
            index: index as u32,
        }
    }

    /// Indices of `sorted[0]` and `sorted[1]` (`None` with a single node); `None`
    /// only when there are no nodes.
    ///
    /// Among nodes of equal weight the score only grows with `u` (it falls for a
    /// negative weight; weight 0 is constant), and consecutive `u` move `-ln f` by far
    /// more than rounding, so only the top two of each weight class by `u` (ties by
    /// name, then config order) can make the top two. Those few candidates get cheap
    /// bounds; a candidate whose upper bound is below the second-best lower bound has
    /// two nodes certainly above it; only the rest get a logarithm.
    pub fn top2(&self, key: &[u8]) -> Option<(u32, Option<u32>)> {
        if key.len() < 3 || key.len() > MAX_PREMIXED_KEY || self.nodes.len() > STACK_NODES {
            self.top2_plain(key)
        } else if self.classes < FEW_CLASSES {
            self.top2_by_class::<FEW_CLASSES>(key)
        } else {
            self.top2_by_bounds::<STACK_NODES>(key)
        }
    }

    /// [`Self::top2`] for many weight classes: every node's bounds are checked, and
    /// nodes already below the running second-best lower bound are dropped early.
    #[inline]
    fn top2_by_bounds<const N: usize>(&self, key: &[u8]) -> Option<(u32, Option<u32>)> {
        // Nodes that might reach the top two: (index, u).
        let mut candidates = [(0usize, 0u32); N];
        let mut count = 0;
        // The best and second-best lower bounds, as fractions.
        let (mut n1, mut d1, mut n2, mut d2) = (f64::NEG_INFINITY, 1.0, f64::NEG_INFINITY, 1.0);
        let mut blocks: Option<KeyBlocks> = None;
        for chunk in self.chunks.iter() {
            let align = chunk.lanes.alignment();
            if blocks.as_ref().map(KeyBlocks::alignment) != Some(align) {
                blocks = KeyBlocks::new(key, align);
            }
            let Some(us) = blocks.as_ref().and_then(|b| chunk.lanes.finish(b)) else {
                return self.top2_plain(key);
            };
            for (&i, &u) in chunk.node[..chunk.count].iter().zip(&us) {
                let Some(node) = self.nodes.get(i) else {
                    continue;
                };
                let b = node.bounds(u);
                if b.low * d1 > n1 * b.den {
                    (n2, d2) = (n1, d1);
                    (n1, d1) = (b.low, b.den);
                } else if b.low * d2 > n2 * b.den {
                    (n2, d2) = (b.low, b.den);
                }
                // The second-best lower bound only grows, so a node already below
                // it has two nodes certainly above it.
                if b.high * d2 >= n2 * b.den {
                    if let Some(slot) = candidates.get_mut(count) {
                        *slot = (i, u);
                        count += 1;
                    }
                }
            }
        }
        let mut top = Top2::default();
        for &(i, u) in &candidates[..count] {
            let b = self.nodes[i].bounds(u);
            if b.high * d2 >= n2 * b.den {
                top.offer(self.ranked(i, u));
            }
        }
        top.result()
    }

    /// [`Self::top2`] for fewer than `N` weight classes: only each class's top two
    /// by `u` are candidates.
    #[inline]
    fn top2_by_class<const N: usize>(&self, key: &[u8]) -> Option<(u32, Option<u32>)> {
        // Per weight class, the best two order keys `g(u) << 32 | tie` (0: none;
        // a real key is never 0 since its tie part is at least 0xFFFF - 127).
        let mut best = [[0u64; 2]; N];
        let mut blocks: Option<KeyBlocks> = None;
        for chunk in self.chunks.iter() {
            let align = chunk.lanes.alignment();
            if blocks.as_ref().map(KeyBlocks::alignment) != Some(align) {
                blocks = KeyBlocks::new(key, align);
            }
            let Some(us) = blocks.as_ref().and_then(|b| chunk.lanes.finish(b)) else {
                return self.top2_plain(key);
            };
            for (lane, &u) in us.iter().enumerate() {
                let g = (u ^ chunk.flip[lane]) & chunk.mask[lane];
                let order = u64::from(g) << 32 | u64::from(chunk.tie[lane]);
                if let Some(slot) = best.get_mut(chunk.class[lane]) {
                    // Branch-free: which node wins is unpredictable by design.
                    let [first, second] = *slot;
                    *slot = [first.max(order), second.max(first.min(order))];
                }
            }
        }
        let classes = &best[..self.classes.min(N)];
        // Back from an order key to (node index, u).
        let candidate = |order: u64| -> Option<(usize, u32)> {
            if order == 0 {
                return None;
            }
            let index = 0xFFFF - (order & 0xFFFF) as usize;
            let node = self.nodes.get(index)?;
            Some((index, (order >> 32) as u32 ^ node.flip))
        };
        // The best and second-best lower bounds, as fractions.
        let (mut n1, mut d1, mut n2, mut d2) = (f64::NEG_INFINITY, 1.0, f64::NEG_INFINITY, 1.0);
        for (i, u) in classes.iter().flatten().filter_map(|&o| candidate(o)) {
            let b = self.nodes[i].bounds(u);
            if b.low * d1 > n1 * b.den {
                (n2, d2) = (n1, d1);
                (n1, d1) = (b.low, b.den);
            } else if b.low * d2 > n2 * b.den {
                (n2, d2) = (b.low, b.den);
            }
        }
        let mut top = Top2::default();
        for (i, u) in classes.iter().flatten().filter_map(|&o| candidate(o)) {
            let b = self.nodes[i].bounds(u);
            // high / den < n2 / d2: two nodes are certainly above this one.
            if b.high * d2 >= n2 * b.den {
                top.offer(self.ranked(i, u));
            }
        }
        top.result()
    }

    /// The same selection, one node at a time and every score exact.
    fn top2_plain(&self, key: &[u8]) -> Option<(u32, Option<u32>)> {
        let mut top = Top2::default();
        for (i, node) in self.nodes.iter().enumerate() {
            top.offer(self.ranked(i, node.hash(key)));
        }
        top.result()
    }

    /// Every node index in Shimmie's order for `key`; starts with [`Self::top2`].
    pub fn order(&self, key: &[u8]) -> Vec<u32> {
        let mut all: Vec<Ranked> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, node)| self.ranked(i, node.hash(key)))
            .collect();
        // A strict total order (index breaks every tie), so sorting cannot panic.
        all.sort_unstable_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then(b.rank.cmp(&a.rank))
                .then(a.index.cmp(&b.index))
        });
        all.into_iter().map(|r| r.index).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(spec: &[(&str, i64)]) -> Rendezvous {
        let nodes: Vec<Node> = spec
            .iter()
            .map(|&(name, weight)| Node {
                name: name.to_owned(),
                weight,
            })
            .collect();
        Rendezvous::new(&nodes)
    }

    fn names<'a>(spec: &[(&'a str, i64)], order: &[u32]) -> Vec<&'a str> {
        order.iter().map(|&i| spec[i as usize].0).collect()
    }

    const FOO: &[(&str, i64)] = &[("foo", 10), ("bar", 5), ("baz", 5), ("quux", 0)];

    #[test]
    fn published_full_order() {
        let r = build(FOO);
        assert_eq!(
            names(FOO, &r.order(b"7ac19c10d6859415")),
            ["foo", "baz", "bar", "quux"]
        );
        assert_eq!(r.top2(b"7ac19c10d6859415"), Some((0, Some(2))));
    }

    #[test]
    fn score_of_max_hash_is_infinite_not_nan() {
        assert_eq!(score(u32::MAX, 3.0), f64::INFINITY);
        assert_eq!(score(u32::MAX, -3.0), f64::NEG_INFINITY);
        assert_eq!(score(u32::MAX, 0.0), 0.0);
    }

    #[test]
    fn score_of_weight_zero_is_zero() {
        assert_eq!(score(0, 0.0), 0.0);
        assert_eq!(score(12345, 0.0), 0.0);
    }

    #[test]
    fn score_matches_formula() {
        let u = 0xc525_2d06u32;
        let f = (f64::from(u) + 1.0) / 4_294_967_296.0;
        assert_eq!(score(u, 10.0), (1.0 / -f.ln()) * 10.0);
        assert!(score(0, 1.0) > 0.0);
    }

    #[test]
    fn zero_weight_ties_break_by_name_descending() {
        let spec = &[("a", 1), ("b", 0), ("c", 0)];
        let r = build(spec);
        for key in ["x", "y", "z"] {
            assert_eq!(
                names(spec, &r.order(key.as_bytes())),
                ["a", "c", "b"],
                "{key}"
            );
        }
    }

    #[test]
    fn integer_names_tie_break_numerically() {
        // PHP array keys "9" and "10" are ints, so 10 > 9 (bytes would say "9" > "10").
        let spec = &[("9", 0), ("10", 0)];
        assert_eq!(names(spec, &build(spec).order(b"k")), ["10", "9"]);
    }

    #[test]
    fn php_equal_names_keep_config_order() {
        // "01" (string key) == 1 (int key) numerically: stable sort keeps config order.
        let spec = &[("01", 0), ("1", 0)];
        assert_eq!(names(spec, &build(spec).order(b"k")), ["01", "1"]);
        let spec = &[("1", 0), ("01", 0)];
        assert_eq!(names(spec, &build(spec).order(b"k")), ["1", "01"]);
    }

    #[test]
    fn all_weights_zero_picks_greatest_name() {
        let spec = &[("b", 0), ("c", 0), ("a", 0)];
        assert_eq!(build(spec).top2(b"k"), Some((1, Some(0))));
    }

    #[test]
    fn single_node_has_no_secondary() {
        assert_eq!(build(&[("a", 3)]).top2(b"k"), Some((0, None)));
    }

    #[test]
    fn no_nodes_gives_none() {
        assert_eq!(build(&[]).top2(b"k"), None);
        assert!(build(&[]).order(b"k").is_empty());
    }

    #[test]
    fn negative_weights_rank_below_zero() {
        let spec = &[("a", -5), ("b", 0)];
        assert_eq!(build(spec).top2(b"k"), Some((1, Some(0))));
    }

    #[test]
    fn top2_is_prefix_of_order() {
        let spec = &[("a", 3), ("b", 1), ("c", 0), ("d", 7), ("e", 1), ("f", 0)];
        let r = build(spec);
        for i in 0..500 {
            let key = format!("{i:032x}");
            let order = r.order(key.as_bytes());
            assert_eq!(
                r.top2(key.as_bytes()),
                Some((order[0], Some(order[1]))),
                "{key}"
            );
        }
    }

    #[test]
    fn bounds_enclose_exact_score() {
        let r = build(&[("n", 7), ("z", 0), ("m", -2)]);
        let edges = [
            0,
            1,
            2,
            1 << 20,
            u32::MAX / 2,
            u32::MAX - 2,
            u32::MAX - 1,
            u32::MAX,
        ];
        let spread = (0..u32::MAX).step_by(40_009);
        for u in edges.into_iter().chain(spread) {
            for node in r.nodes.iter() {
                let b = node.bounds(u);
                let s = score(u, node.weight);
                assert!(b.den >= 1.0, "{u}");
                assert!(
                    b.low <= s * b.den && s * b.den <= b.high,
                    "{u}: {b:?} vs {s}"
                );
            }
        }
    }

    #[test]
    fn top2_plain_agrees_with_top2() {
        let spec = &[
            ("a", 3),
            ("bb", 1),
            ("ccc", 2),
            ("dddd", 1),
            ("e", 0),
            ("f", 9),
        ];
        let r = build(spec);
        for i in 0..2000 {
            let key = format!("{i:032x}");
            assert_eq!(
                r.top2(key.as_bytes()),
                r.top2_plain(key.as_bytes()),
                "{key}"
            );
        }
    }

    #[test]
    fn many_nodes_beyond_stack_buffer_agree_with_order() {
        let names: Vec<String> = (0..STACK_NODES + 40).map(|i| format!("n{i}")).collect();
        let spec: Vec<(&str, i64)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), (i % 5) as i64))
            .collect();
        let r = build(&spec);
        for i in 0..50 {
            let key = format!("{i:032x}");
            let order = r.order(key.as_bytes());
            assert_eq!(r.top2(key.as_bytes()), Some((order[0], Some(order[1]))));
        }
    }

    #[test]
    fn short_and_long_keys_use_streaming_path() {
        let spec = &[("a", 3), ("bb", 1), ("ccc", 2), ("dddd", 1)];
        let r = build(spec);
        let long = "x".repeat(200);
        for key in ["", "k", "ab", long.as_str()] {
            let order = r.order(key.as_bytes());
            assert_eq!(
                r.top2(key.as_bytes()),
                Some((order[0], Some(order[1]))),
                "{key}"
            );
        }
    }

    fn hex_keys(count: usize) -> impl Iterator<Item = String> {
        (0..count as u64).map(|i| format!("{:032x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
    }

    #[test]
    fn class_path_agrees_with_plain_path() {
        // Few weights, with zero, negative and integer-like names: the class path.
        let spec = &[
            ("10", 2),
            ("9", 2),
            ("a", 5),
            ("b", 0),
            ("c", 0),
            ("d", -1),
            ("e", 5),
            ("f", 2),
        ];
        let r = build(spec);
        assert!(r.classes < FEW_CLASSES);
        for key in hex_keys(3000) {
            assert_eq!(
                r.top2(key.as_bytes()),
                r.top2_plain(key.as_bytes()),
                "{key}"
            );
        }
    }

    #[test]
    fn bounds_path_agrees_with_plain_path() {
        // More distinct weights than FEW_CLASSES: the bounds path.
        let names: Vec<String> = (0..30).map(|i| format!("node-{i}")).collect();
        let spec: Vec<(&str, i64)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i as i64 - 3))
            .collect();
        let r = build(&spec);
        assert!(r.classes >= FEW_CLASSES);
        for key in hex_keys(3000) {
            assert_eq!(
                r.top2(key.as_bytes()),
                r.top2_plain(key.as_bytes()),
                "{key}"
            );
        }
    }

    #[test]
    fn fast_path_zero_weight_ties_follow_php_names() {
        // After the only positive node, zero-weight nodes tie at 0: PHP 8 puts the
        // greatest name next ("c" > "b" > 10 > 9 as strings vs ints vs mixed).
        let spec = &[("9", 0), ("b", 0), ("a", 1), ("10", 0), ("c", 0)];
        let r = build(spec);
        for key in hex_keys(50) {
            assert_eq!(r.top2(key.as_bytes()), Some((2, Some(4))), "{key}");
            assert_eq!(
                names(spec, &r.order(key.as_bytes())),
                ["a", "c", "b", "10", "9"]
            );
        }
    }

    #[test]
    fn score_strictly_grows_with_u_within_a_weight() {
        // What the per-class shortcut relies on: consecutive hashes never round to the
        // same score (the relative gap is at least e / 2^32, far above rounding).
        for weight in [1.0, 7.0, 1e6, 9.2e18] {
            let mut u = 0u32;
            loop {
                assert!(score(u, weight) < score(u + 1, weight), "{weight} at {u}");
                assert!(
                    score(u, -weight) > score(u + 1, -weight),
                    "-{weight} at {u}"
                );
                match u.checked_add(9_973) {
                    Some(next) if next < u32::MAX => u = next,
                    _ => break,
                }
            }
            for u in [0, 1, u32::MAX / 2, u32::MAX - 2, u32::MAX - 1] {
                assert!(score(u, weight) < score(u + 1, weight), "{weight} at {u}");
            }
        }
    }
}
