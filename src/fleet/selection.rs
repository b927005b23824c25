//! Shimmie's placement as a `pingora_load_balancing` [`BackendSelection`], so peer
//! selection with health checks can reuse pingora-load-balancing.
//!
//! pingora's own `KetamaHashing` keys its ring on socket addresses; Shimmie places
//! images on node *names*. Each [`Backend`] therefore carries a [`NodeTag`] in
//! `Backend.ext` (name and place in the template); backends without one are ignored.
//! The key is the image hash. `iter(key)` yields backends in Shimmie's owner order:
//! primary, secondary, then the rest (rendezvous: Shimmie's full order; flexihash: the
//! ring's order, then nodes without positions in template order).
//!
//! Several backends may carry the same name (say, a node's IPv4 and IPv6 address): they
//! are one node, placed with the weight of the first (lowest `order`), and are yielded
//! together in `BTreeSet` order.

use super::flexihash::Ring;
use super::rendezvous::Rendezvous;
use super::{Algorithm, Node};
use pingora_load_balancing::selection::{BackendIter, BackendSelection};
use pingora_load_balancing::Backend;
use std::collections::BTreeSet;
use std::sync::Arc;

/// The Shimmie node a backend serves; put it in `Backend.ext`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeTag {
    /// The node's name in the link template.
    pub name: String,
    /// The node's position in the template (flexihash is order-sensitive on rare
    /// position collisions, and full ties keep template order).
    pub order: usize,
}

impl NodeTag {
    /// Tags `backend` as node `name` at template position `order`.
    pub fn tag(mut backend: Backend, name: &str, order: usize) -> Backend {
        backend.ext.insert(NodeTag {
            name: name.to_owned(),
            order,
        });
        backend
    }
}

/// The selection's configuration: which algorithm places the nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SelectionConfig {
    /// Rendezvous (Shimmie >= 2.12, default) or flexihash (Shimmie <= 2.11).
    pub algorithm: Algorithm,
}

#[derive(Debug)]
enum Kind {
    Rendezvous(Rendezvous),
    Flexihash(Ring),
    /// Flexihash weights asking for more than `MAX_POSITIONS`: template order.
    TemplateOrder,
}

/// Shimmie's placement over a set of pingora backends.
#[derive(Debug)]
pub struct ShimmieSelection {
    nodes: Vec<Node>,
    /// The backends of each node, same index as `nodes`.
    members: Vec<Vec<Backend>>,
    kind: Kind,
}

impl ShimmieSelection {
    /// The node names in template order.
    pub fn node_names(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(|n| n.name.as_str())
    }

    fn order(&self, key: &[u8]) -> Vec<u32> {
        match &self.kind {
            Kind::Rendezvous(r) => r.order(key),
            Kind::Flexihash(f) => f.order(key),
            Kind::TemplateOrder => (0..self.nodes.len() as u32).collect(),
        }
    }
}

impl BackendSelection for ShimmieSelection {
    type Iter = ShimmieIter;
    type Config = SelectionConfig;

    fn build_with_config(backends: &BTreeSet<Backend>, config: &SelectionConfig) -> Self {
        let mut tagged: Vec<(&NodeTag, &Backend)> = backends
            .iter()
            .filter_map(|b| b.ext.get::<NodeTag>().map(|tag| (tag, b)))
            .collect();
        // Stable, so equal tags keep BTreeSet order.
        tagged.sort_by(|a, b| (a.0.order, &a.0.name).cmp(&(b.0.order, &b.0.name)));
        let mut nodes: Vec<Node> = Vec::new();
        let mut members: Vec<Vec<Backend>> = Vec::new();
        for (tag, backend) in tagged {
            match nodes.iter().position(|n| n.name == tag.name) {
                Some(i) => members[i].push(backend.clone()),
                None => {
                    nodes.push(Node {
                        name: tag.name.clone(),
                        weight: i64::try_from(backend.weight).unwrap_or(i64::MAX),
                    });
                    members.push(vec![backend.clone()]);
                }
            }
        }
        let kind = match config.algorithm {
            Algorithm::Rendezvous => Kind::Rendezvous(Rendezvous::new(&nodes)),
            // Names are unique here, so only an oversized ring can fail.
            Algorithm::Flexihash => Ring::build(&nodes)
                .map(Kind::Flexihash)
                .unwrap_or(Kind::TemplateOrder),
        };
        ShimmieSelection {
            nodes,
            members,
            kind,
        }
    }

    fn build(backends: &BTreeSet<Backend>) -> Self {
        Self::build_with_config(backends, &SelectionConfig::default())
    }

    fn iter(self: &Arc<Self>, key: &[u8]) -> ShimmieIter {
        ShimmieIter {
            order: self.order(key),
            selection: self.clone(),
            node: 0,
            member: 0,
        }
    }
}

/// Backends in Shimmie's owner order for one key.
pub struct ShimmieIter {
    selection: Arc<ShimmieSelection>,
    order: Vec<u32>,
    node: usize,
    member: usize,
}

impl BackendIter for ShimmieIter {
    fn next(&mut self) -> Option<&Backend> {
        loop {
            let node = *self.order.get(self.node)? as usize;
            let members = self.selection.members.get(node)?;
            if self.member < members.len() {
                self.member += 1;
                return members.get(self.member - 1);
            }
            self.node += 1;
            self.member = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{Placement, Template};

    fn backend(addr: &str, name: &str, order: usize, weight: usize) -> Backend {
        let b = Backend::new_with_weight(addr, weight).unwrap();
        NodeTag::tag(b, name, order)
    }

    fn names(sel: &Arc<ShimmieSelection>, key: &str) -> Vec<String> {
        let mut it = sel.iter(key.as_bytes());
        let mut out = Vec::new();
        while let Some(b) = it.next() {
            out.push(b.ext.get::<NodeTag>().unwrap().name.clone());
        }
        out
    }

    fn abc() -> BTreeSet<Backend> {
        // Addresses sort opposite to template order on purpose.
        BTreeSet::from([
            backend("10.0.0.3:80", "a", 0, 5),
            backend("10.0.0.2:80", "b", 1, 5),
            backend("10.0.0.1:80", "c", 2, 10),
        ])
    }

    #[test]
    fn rendezvous_iter_starts_with_shimmie_owners() {
        let sel = Arc::new(ShimmieSelection::build(&abc()));
        assert_eq!(
            names(&sel, "d41d8cd98f00b204e9800998ecf8427e"),
            ["c", "b", "a"]
        );
        assert_eq!(names(&sel, "ab25bc2")[..2], ["a", "c"]);
    }

    #[test]
    fn flexihash_iter_starts_with_shimmie_owners() {
        let config = SelectionConfig {
            algorithm: Algorithm::Flexihash,
        };
        let sel = Arc::new(ShimmieSelection::build_with_config(&abc(), &config));
        assert_eq!(
            names(&sel, "d41d8cd98f00b204e9800998ecf8427e")[..2],
            ["b", "a"]
        );
        assert_eq!(
            names(&sel, "098f6bcd4621d373cade4e832627b4f6")[..2],
            ["a", "b"]
        );
    }

    #[test]
    fn agrees_with_placement_on_many_keys() {
        let template = Template::parse("{a=5,b=5,c=10}").unwrap();
        for algorithm in [Algorithm::Rendezvous, Algorithm::Flexihash] {
            let placement = Placement::new(template.clone(), algorithm).unwrap();
            let sel = Arc::new(ShimmieSelection::build_with_config(
                &abc(),
                &SelectionConfig { algorithm },
            ));
            for i in 0..300 {
                let key = format!("{i:032x}");
                let o = placement.owners(&key);
                let got = names(&sel, &key);
                assert_eq!(Some(got[0].as_str()), o.primary(), "{algorithm:?} {key}");
                assert_eq!(Some(got[1].as_str()), o.secondary(), "{algorithm:?} {key}");
            }
        }
    }

    #[test]
    fn untagged_backends_are_ignored() {
        let mut set = abc();
        set.insert(Backend::new("10.0.0.9:80").unwrap());
        let sel = Arc::new(ShimmieSelection::build(&set));
        assert_eq!(sel.node_names().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(names(&sel, "k").len(), 3);
    }

    #[test]
    fn same_name_backends_are_one_node_yielded_together() {
        let set = BTreeSet::from([
            backend("10.0.0.1:80", "a", 0, 1),
            backend("[::1]:80", "a", 0, 1),
            backend("10.0.0.2:80", "b", 1, 1),
        ]);
        let sel = Arc::new(ShimmieSelection::build(&set));
        let got = names(&sel, "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(got.len(), 3);
        assert!(got == ["a", "a", "b"] || got == ["b", "a", "a"], "{got:?}");
    }

    #[test]
    fn empty_set_yields_nothing() {
        for algorithm in [Algorithm::Rendezvous, Algorithm::Flexihash] {
            let sel = Arc::new(ShimmieSelection::build_with_config(
                &BTreeSet::new(),
                &SelectionConfig { algorithm },
            ));
            assert!(sel.iter(b"k").next().is_none());
        }
    }

    #[test]
    fn flexihash_all_zero_weights_yield_template_order() {
        let set = BTreeSet::from([
            backend("10.0.0.2:80", "a", 0, 0),
            backend("10.0.0.1:80", "b", 1, 0),
        ]);
        let config = SelectionConfig {
            algorithm: Algorithm::Flexihash,
        };
        let sel = Arc::new(ShimmieSelection::build_with_config(&set, &config));
        assert_eq!(names(&sel, "k"), ["a", "b"]);
    }

    #[test]
    fn works_inside_pingora_load_balancer() {
        use pingora_load_balancing::LoadBalancer;
        let lb = LoadBalancer::<ShimmieSelection>::from_backends_with_config(
            pingora_load_balancing::Backends::new(pingora_load_balancing::discovery::Static::new(
                abc(),
            )),
            Some(SelectionConfig::default()),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(lb.update()).unwrap();
        let b = lb.select(b"d41d8cd98f00b204e9800998ecf8427e", 8).unwrap();
        assert_eq!(b.ext.get::<NodeTag>().unwrap().name, "c");
    }
}
