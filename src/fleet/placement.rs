//! One silo's placement: a parsed template and its algorithm, prebuilt so that a
//! lookup allocates nothing.

use super::flexihash::Ring;
use super::rendezvous::Rendezvous;
use super::{Algorithm, FleetError, Template};

/// Who owns an image, borrowed from the [`Placement`] (or `FleetView`) that computed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owners<'a> {
    /// The template has no `{...}`: Shimmie links every image to the same place, so
    /// every mirror is an owner and there is no primary.
    Unbalanced,
    /// Shimmie's primary (`n = 0`) and backup (`n = 1`, `None` with a single node).
    Nodes {
        /// The node Shimmie's links point to.
        primary: &'a str,
        /// The node Shimmie's backup links point to.
        secondary: Option<&'a str>,
    },
}

impl<'a> Owners<'a> {
    /// Whether `node_name` should serve the image itself: it is the primary or the
    /// secondary, or the template is unbalanced.
    pub fn is_owner(&self, node_name: &str) -> bool {
        match *self {
            Owners::Unbalanced => true,
            Owners::Nodes { primary, secondary } => {
                primary == node_name || secondary == Some(node_name)
            }
        }
    }

    /// The primary, `None` when unbalanced.
    pub fn primary(&self) -> Option<&'a str> {
        match *self {
            Owners::Unbalanced => None,
            Owners::Nodes { primary, .. } => Some(primary),
        }
    }

    /// The secondary, `None` when unbalanced or with a single node.
    pub fn secondary(&self) -> Option<&'a str> {
        match *self {
            Owners::Unbalanced => None,
            Owners::Nodes { secondary, .. } => secondary,
        }
    }
}

#[derive(Clone, Debug)]
enum Kind {
    Unbalanced,
    Rendezvous(Rendezvous),
    Flexihash(Ring),
}

/// A template with its algorithm, ready for lookups. Immutable.
#[derive(Clone, Debug)]
pub struct Placement {
    template: Template,
    algorithm: Algorithm,
    kind: Kind,
}

impl Placement {
    /// Prepares `template` for `algorithm`.
    ///
    /// Flexihash refuses what flexihash-php cannot place: a repeated name (it throws),
    /// no positive weight (empty ring: Shimmie <= 2.11 links to an empty node name),
    /// and rings past [`super::flexihash::MAX_POSITIONS`]. Rendezvous accepts every
    /// parsed template, as Shimmie does: with all weights 0 the greatest name wins.
    pub fn new(template: Template, algorithm: Algorithm) -> Result<Placement, FleetError> {
        let kind = if !template.is_balanced() {
            Kind::Unbalanced
        } else {
            match algorithm {
                Algorithm::Rendezvous => Kind::Rendezvous(Rendezvous::new(template.nodes())),
                Algorithm::Flexihash => {
                    if let Some(name) = template.repeated_name() {
                        return Err(FleetError::DuplicateNode {
                            name: name.to_owned(),
                        });
                    }
                    let ring = Ring::build(template.nodes())?;
                    if ring.is_empty() {
                        return Err(FleetError::NoPositiveWeight);
                    }
                    Kind::Flexihash(ring)
                }
            }
        };
        Ok(Placement {
            template,
            algorithm,
            kind,
        })
    }

    /// The owners of the image with this hash (the key Shimmie hashes: 32 lowercase
    /// hex, validated by the caller; any bytes work). Allocates nothing.
    #[inline]
    pub fn owners(&self, hash: &str) -> Owners<'_> {
        let key = hash.as_bytes();
        let pick = match &self.kind {
            Kind::Unbalanced => return Owners::Unbalanced,
            Kind::Rendezvous(r) => r.top2(key),
            Kind::Flexihash(f) => f.top2(key),
        };
        let nodes = self.template.nodes();
        let name = |i: u32| nodes.get(i as usize).map(|n| n.name.as_str());
        match pick.and_then(|(p, s)| Some((name(p)?, s.and_then(name)))) {
            Some((primary, secondary)) => Owners::Nodes { primary, secondary },
            // Unreachable: balanced templates have a node and empty rings are
            // refused. Serving locally is the harmless answer.
            None => Owners::Unbalanced,
        }
    }

    /// Every node in Shimmie's order for this hash (`n = 0, 1, 2, ...`); for flexihash,
    /// the nodes `lookupList` never returns (no positions) follow in config order.
    /// Empty when unbalanced.
    pub fn order(&self, hash: &str) -> Vec<&str> {
        let key = hash.as_bytes();
        let order = match &self.kind {
            Kind::Unbalanced => return Vec::new(),
            Kind::Rendezvous(r) => r.order(key),
            Kind::Flexihash(f) => f.order(key),
        };
        let nodes = self.template.nodes();
        order
            .into_iter()
            .filter_map(|i| nodes.get(i as usize).map(|n| n.name.as_str()))
            .collect()
    }

    /// The template.
    pub fn template(&self) -> &Template {
        &self.template
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(t: &str, a: Algorithm) -> Result<Placement, FleetError> {
        Placement::new(Template::parse(t)?, a)
    }

    #[test]
    fn unbalanced_has_no_primary_and_everyone_owns() {
        let p = placement("_thumbs/$hash/thumb.$ext", Algorithm::Rendezvous).unwrap();
        let o = p.owners("d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(o, Owners::Unbalanced);
        assert!(o.is_owner("anyone"));
        assert_eq!(o.primary(), None);
        assert!(p.order("x").is_empty());
    }

    #[test]
    fn owners_names_primary_and_secondary() {
        for (a, want) in [
            (Algorithm::Rendezvous, ("c", "b")),
            (Algorithm::Flexihash, ("b", "a")),
        ] {
            let p = placement("https://{a=5,b=5,c=10}.x/$hash", a).unwrap();
            let o = p.owners("d41d8cd98f00b204e9800998ecf8427e");
            assert_eq!(o.primary(), Some(want.0), "{a:?}");
            assert_eq!(o.secondary(), Some(want.1), "{a:?}");
            assert!(o.is_owner(want.0) && o.is_owner(want.1));
        }
    }

    #[test]
    fn non_owner_is_not_owner() {
        let p = placement("{a=5,b=5,c=10}", Algorithm::Rendezvous).unwrap();
        assert!(!p.owners("d41d8cd98f00b204e9800998ecf8427e").is_owner("a"));
    }

    #[test]
    fn single_node_has_no_secondary() {
        for a in [Algorithm::Rendezvous, Algorithm::Flexihash] {
            let p = placement("{only=3}", a).unwrap();
            let o = p.owners("d41d8cd98f00b204e9800998ecf8427e");
            assert_eq!(
                o,
                Owners::Nodes {
                    primary: "only",
                    secondary: None
                }
            );
        }
    }

    #[test]
    fn flexihash_refuses_repeated_name() {
        assert_eq!(
            placement("{a=1,b,a=2}", Algorithm::Flexihash).unwrap_err(),
            FleetError::DuplicateNode { name: "a".into() }
        );
    }

    #[test]
    fn rendezvous_accepts_repeated_name_with_later_weight() {
        let p = placement("{a=0,b=1,a=5}", Algorithm::Rendezvous).unwrap();
        assert_eq!(p.template().nodes()[0].weight, 5);
    }

    #[test]
    fn flexihash_refuses_all_zero_weights() {
        assert_eq!(
            placement("{a=0,b=0}", Algorithm::Flexihash).unwrap_err(),
            FleetError::NoPositiveWeight
        );
    }

    #[test]
    fn rendezvous_all_zero_weights_picks_greatest_name() {
        let p = placement("{a=0,c=0,b=0}", Algorithm::Rendezvous).unwrap();
        let o = p.owners("d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(o.primary(), Some("c"));
        assert_eq!(o.secondary(), Some("b"));
    }

    #[test]
    fn empty_braces_own_everything_under_empty_name() {
        for a in [Algorithm::Rendezvous, Algorithm::Flexihash] {
            let p = placement("https://{}.x/$hash", a).unwrap();
            assert_eq!(
                p.owners("d41d8cd98f00b204e9800998ecf8427e"),
                Owners::Nodes {
                    primary: "",
                    secondary: None
                }
            );
        }
    }

    #[test]
    fn order_lists_all_nodes() {
        let p = placement("{foo=10,bar=5,baz=5,quux=0}", Algorithm::Rendezvous).unwrap();
        assert_eq!(p.order("7ac19c10d6859415"), ["foo", "baz", "bar", "quux"]);
    }
}
