//! Who serves a request when owners may be down: Shimmie's order, never a re-hash.
//!
//! The owners are computed as always ([`Owners`]); health only picks among them. A node
//! that owns the image serves it. Otherwise the primary acts if it is up, else the
//! secondary, else the node that got the request serves it itself: a request never fails
//! because peers are down. A request that already hopped is served where it landed, so a
//! request hops at most once whatever two mirrors think.

use super::Owners;

/// Where a request is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acting<'a> {
    /// This node owns the image (or the template is unbalanced, or the request hopped).
    Here,
    /// Another node acts as owner: redirect or proxy there.
    Peer {
        node: &'a str,
        /// The primary is down and this is the secondary standing in.
        failover: bool,
    },
    /// Every owner is down: this node serves it from its own cache or the origin.
    Fallback,
}

/// The acting owner of an image for a request that reached `me`. `up` says whether a
/// peer is up (it is never asked about `me`); `hopped` is a verified hop marker.
pub fn acting_owner<'a>(
    owners: Owners<'a>,
    me: &str,
    hopped: bool,
    up: impl Fn(&str) -> bool,
) -> Acting<'a> {
    if hopped || owners.is_owner(me) {
        return Acting::Here;
    }
    let (Some(primary), secondary) = (owners.primary(), owners.secondary()) else {
        return Acting::Here;
    };
    if up(primary) {
        return Acting::Peer {
            node: primary,
            failover: false,
        };
    }
    match secondary {
        Some(node) if up(node) => Acting::Peer {
            node,
            failover: true,
        },
        _ => Acting::Fallback,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes<'a>(primary: &'a str, secondary: Option<&'a str>) -> Owners<'a> {
        Owners::Nodes { primary, secondary }
    }

    fn all_up(_: &str) -> bool {
        true
    }

    #[test]
    fn an_owner_serves_its_own_images_whoever_is_up() {
        for me in ["a", "b"] {
            assert_eq!(
                acting_owner(nodes("a", Some("b")), me, false, |_| false),
                Acting::Here
            );
            assert_eq!(
                acting_owner(nodes("a", Some("b")), me, false, all_up),
                Acting::Here
            );
        }
        assert_eq!(
            acting_owner(Owners::Unbalanced, "z", false, all_up),
            Acting::Here
        );
    }

    #[test]
    fn the_primary_acts_while_it_is_up() {
        let got = acting_owner(nodes("a", Some("b")), "c", false, all_up);
        assert_eq!(
            got,
            Acting::Peer {
                node: "a",
                failover: false
            }
        );
    }

    #[test]
    fn a_down_primary_hands_over_to_the_secondary_not_a_rehash() {
        let got = acting_owner(nodes("a", Some("b")), "c", false, |n| n != "a");
        assert_eq!(
            got,
            Acting::Peer {
                node: "b",
                failover: true
            }
        );
    }

    #[test]
    fn both_owners_down_means_serving_here() {
        assert_eq!(
            acting_owner(nodes("a", Some("b")), "c", false, |n| n == "c"),
            Acting::Fallback
        );
        assert_eq!(
            acting_owner(nodes("a", None), "c", false, |_| false),
            Acting::Fallback
        );
    }

    #[test]
    fn a_hopped_request_is_served_where_it_landed() {
        assert_eq!(
            acting_owner(nodes("a", Some("b")), "c", true, all_up),
            Acting::Here
        );
    }

    #[test]
    fn up_is_never_asked_about_this_node() {
        let asked = std::cell::RefCell::new(Vec::new());
        acting_owner(nodes("a", Some("b")), "c", false, |n| {
            asked.borrow_mut().push(n.to_owned());
            false
        });
        assert_eq!(*asked.borrow(), ["a", "b"]);
    }
}
