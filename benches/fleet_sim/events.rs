//! Issue 12's events, played through the fleet with and without its features: a node
//! dies, or a weight changes, after a warm-up. Only the requests after the event are
//! counted.
//!
//! Model: a request lands on a live node (round-robin, as a load balancer would), which
//! passes it to the acting owner that `shimmer::fleet::acting_owner` picks (proxy mode:
//! the primary if up, else the secondary). The acting owner answers from its LRU, else
//! from a peer (the features below, each peer looked up only-if-cached), else from the
//! origin. A fleet-level hit is a request served without an origin request.

use crate::{ByteLru, Corpus};
use shimmer::fleet::{acting_owner, Acting, Placement};

/// Where a warm copy enters the secondary's LRU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CopyAt {
    /// As the least recently used entry: evicted first, so it only uses room the
    /// secondary's own images leave (issue 12: "else memory at low priority").
    #[default]
    LowPriority,
    /// As the most recently used entry, like a fill of the secondary's own.
    MostRecent,
}

/// What the fleet does beyond routing to the acting owner.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// A primary's fill from the origin also puts a copy into the secondary's LRU,
    /// pulled from the primary (a peer copy, never an origin request).
    pub warm_secondary: bool,
    /// Where those copies enter the secondary's LRU.
    pub copy_at: CopyAt,
    /// A miss at an owner asks the other owner, if up, before the origin.
    pub owner_first: bool,
    /// After a view change, a miss at a node that was not an owner under the previous
    /// view asks the previous owners (primary, then secondary) before the origin.
    pub handoff: bool,
}

impl Features {
    /// Routing to the acting owner and nothing else.
    pub const PLAIN: Features = Features {
        warm_secondary: false,
        copy_at: CopyAt::LowPriority,
        owner_first: false,
        handoff: false,
    };
    /// Issue 12 items 2 and 3: owner-first fill and warm secondary.
    pub const WARM: Features = Features {
        warm_secondary: true,
        ..Features::OWNER_FIRST
    };
    /// [`Features::WARM`] with copies competing as equals with the secondary's own.
    pub const WARM_MOST_RECENT: Features = Features {
        copy_at: CopyAt::MostRecent,
        ..Features::WARM
    };
    /// [`Features::WARM`] and item 4, handoff.
    pub const WARM_HANDOFF: Features = Features {
        handoff: true,
        ..Features::WARM
    };
    /// Owner-first fill alone.
    pub const OWNER_FIRST: Features = Features {
        owner_first: true,
        ..Features::PLAIN
    };
}

/// Every key's owners under one view, as node indices, beside the placement that
/// `acting_owner` reads.
pub struct View<'p> {
    placement: &'p Placement,
    owners: Vec<(usize, Option<usize>)>,
}

impl<'p> View<'p> {
    /// `names` are the fleet's nodes in the order their caches are kept.
    pub fn new(placement: &'p Placement, keys: &[String], names: &[String]) -> View<'p> {
        let owners = keys
            .iter()
            .map(|key| {
                let owners = placement.owners(key);
                let primary = owners
                    .primary()
                    .expect("the bench's templates are balanced");
                (
                    node_index(names, primary),
                    owners.secondary().map(|s| node_index(names, s)),
                )
            })
            .collect();
        View { placement, owners }
    }

    pub fn primary(&self, key: usize) -> usize {
        self.owners[key].0
    }

    fn is_owner(&self, key: usize, node: usize) -> bool {
        let (primary, secondary) = self.owners[key];
        primary == node || secondary == Some(node)
    }

    /// The owner other than `node`, when `node` is one of two owners.
    fn other_owner(&self, key: usize, node: usize) -> Option<usize> {
        match self.owners[key] {
            (primary, Some(secondary)) if primary == node => Some(secondary),
            (primary, Some(secondary)) if secondary == node => Some(primary),
            _ => None,
        }
    }
}

fn node_index(names: &[String], name: &str) -> usize {
    names
        .iter()
        .position(|n| n == name)
        .expect("owners are nodes of the bench's templates")
}

/// What the fleet did with the requests after the event.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub requests: usize,
    pub origin_requests: usize,
    /// Misses answered by a peer's cache: owner-first and handoff hits.
    pub peer_fills: usize,
    /// Only-if-cached lookups at peers, answered or not.
    pub peer_asks: usize,
    /// Copies a primary's origin fill put into its secondary.
    pub warm_copies: usize,
    pub warm_copy_bytes: u64,
    /// Requests for the keys the event is about (the dead node's, or the moved ones).
    pub tracked_requests: usize,
    pub tracked_origin_requests: usize,
}

impl Tally {
    pub fn hit_ratio(&self) -> f64 {
        1.0 - self.origin_requests as f64 / self.requests.max(1) as f64
    }

    pub fn tracked_hit_ratio(&self) -> f64 {
        1.0 - self.tracked_origin_requests as f64 / self.tracked_requests.max(1) as f64
    }
}

/// One run: warm up under `before`, then the event, then count.
pub struct Scenario<'a> {
    pub corpus: &'a Corpus,
    pub requests: &'a [usize],
    /// How many requests come before the event.
    pub warm_up: usize,
    pub capacity: u64,
    pub names: &'a [String],
    pub before: &'a View<'a>,
    /// The view after the event; `None` keeps `before` (no view change).
    pub after: Option<&'a View<'a>>,
    /// The node that dies at the event, if any.
    pub dies: Option<usize>,
    pub features: Features,
    /// The keys whose requests after the event are counted apart.
    pub tracked: &'a [bool],
}

struct Fleet<'a> {
    corpus: &'a Corpus,
    names: &'a [String],
    caches: Vec<ByteLru>,
    up: Vec<bool>,
    features: Features,
}

/// Where a request was served from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Cache,
    Peer,
    Origin,
}

impl Fleet<'_> {
    fn is_up(&self, name: &str) -> bool {
        self.up[node_index(self.names, name)]
    }

    /// The node that serves request `i` for `key`: it lands on a live node and goes
    /// to the acting owner, as a mirror in proxy mode passes it.
    fn route(&self, i: usize, key: usize, view: &View) -> usize {
        let live: Vec<usize> = (0..self.up.len()).filter(|&n| self.up[n]).collect();
        let landed = live[i % live.len()];
        let owners = view.placement.owners(&self.corpus.keys[key]);
        match acting_owner(owners, &self.names[landed], false, false, |n| self.is_up(n)) {
            Acting::Here | Acting::Fallback => landed,
            Acting::Peer { node, .. } => node_index(self.names, node),
        }
    }

    /// Serves `key` at `node` under `view`; `previous` is the view before a change,
    /// for handoff.
    fn serve(
        &mut self,
        key: usize,
        node: usize,
        view: &View,
        previous: Option<&View>,
        tally: &mut Tally,
    ) -> Source {
        if self.caches[node].get(key) {
            return Source::Cache;
        }
        let size = self.corpus.sizes[key];
        let mut asks: Vec<usize> = Vec::with_capacity(3);
        if self.features.owner_first {
            asks.extend(view.other_owner(key, node));
        }
        if let (true, Some(previous)) = (self.features.handoff, previous) {
            if !previous.is_owner(key, node) {
                let (primary, secondary) = previous.owners[key];
                asks.push(primary);
                asks.extend(secondary);
            }
        }
        let mut asked: Vec<usize> = Vec::with_capacity(3);
        for peer in asks {
            if peer == node || !self.up[peer] || asked.contains(&peer) {
                continue;
            }
            asked.push(peer);
            tally.peer_asks += 1;
            if self.caches[peer].get(key) {
                tally.peer_fills += 1;
                self.caches[node].insert(key, size);
                return Source::Peer;
            }
        }
        self.caches[node].insert(key, size);
        if self.features.warm_secondary && view.primary(key) == node {
            if let Some(secondary) = view.owners[key].1 {
                // A copy the secondary already holds is not pulled again.
                if self.up[secondary] && !self.caches[secondary].contains(key) {
                    match self.features.copy_at {
                        CopyAt::LowPriority => self.caches[secondary].insert_last(key, size),
                        CopyAt::MostRecent => self.caches[secondary].insert(key, size),
                    }
                    tally.warm_copies += 1;
                    tally.warm_copy_bytes += size;
                }
            }
        }
        Source::Origin
    }
}

impl Scenario<'_> {
    pub fn run(&self) -> Tally {
        let nodes = self.names.len();
        let mut fleet = Fleet {
            corpus: self.corpus,
            names: self.names,
            caches: (0..nodes).map(|_| ByteLru::new(self.capacity)).collect(),
            up: vec![true; nodes],
            features: self.features,
        };
        let mut warm_up_tally = Tally::default();
        for (i, &key) in self.requests[..self.warm_up].iter().enumerate() {
            let node = fleet.route(i, key, self.before);
            fleet.serve(key, node, self.before, None, &mut warm_up_tally);
        }
        if let Some(dead) = self.dies {
            fleet.up[dead] = false;
            fleet.caches[dead] = ByteLru::new(self.capacity);
        }
        let (view, previous) = match self.after {
            Some(after) => (after, Some(self.before)),
            None => (self.before, None),
        };
        let mut tally = Tally::default();
        for (i, &key) in self.requests.iter().enumerate().skip(self.warm_up) {
            let node = fleet.route(i, key, view);
            let source = fleet.serve(key, node, view, previous, &mut tally);
            let origin = source == Source::Origin;
            tally.requests += 1;
            tally.origin_requests += usize::from(origin);
            if self.tracked[key] {
                tally.tracked_requests += 1;
                tally.tracked_origin_requests += usize::from(origin);
            }
        }
        tally
    }
}
