//! Who serves a request when owners may be down: Shimmie's order, never a re-hash.
//!
//! The owners are computed as always ([`Owners`]); health only picks among them. The
//! primary acts if it is up, else the secondary, else the node that got the request
//! serves it itself: a request never fails because peers are down. A secondary with a
//! live primary serves its own requests in redirect mode (a client that reached it
//! stays), and passes them to the primary in proxy mode, so the origin sees one request
//! per object for the whole fleet. A request that already hopped is served where it landed, so a
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
/// `secondary_serves`: whether the secondary serves its own requests while the primary
/// is up (redirect mode) rather than passing them on (proxy mode).
pub fn acting_owner<'a>(
    owners: Owners<'a>,
    me: &str,
    hopped: bool,
    secondary_serves: bool,
    up: impl Fn(&str) -> bool,
) -> Acting<'a> {
    let (Some(primary), secondary) = (owners.primary(), owners.secondary()) else {
        return Acting::Here;
    };
    if hopped || primary == me || (secondary_serves && secondary == Some(me)) {
        return Acting::Here;
    }
    if up(primary) {
        return Acting::Peer {
            node: primary,
            failover: false,
        };
    }
    match secondary {
        Some(node) if node == me => Acting::Here,
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
                acting_owner(nodes("a", Some("b")), me, false, true, |_| false),
                Acting::Here
            );
            assert_eq!(
                acting_owner(nodes("a", Some("b")), me, false, true, all_up),
                Acting::Here
            );
        }
        assert_eq!(
            acting_owner(Owners::Unbalanced, "z", false, false, all_up),
            Acting::Here
        );
    }

    #[test]
    fn the_primary_acts_while_it_is_up() {
        let got = acting_owner(nodes("a", Some("b")), "c", false, false, all_up);
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
        let got = acting_owner(nodes("a", Some("b")), "c", false, false, |n| n != "a");
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
            acting_owner(nodes("a", Some("b")), "c", false, false, |n| n == "c"),
            Acting::Fallback
        );
        assert_eq!(
            acting_owner(nodes("a", None), "c", false, false, |_| false),
            Acting::Fallback
        );
    }

    #[test]
    fn in_proxy_mode_the_secondary_passes_to_a_live_primary_and_stands_in_for_a_dead_one() {
        assert_eq!(
            acting_owner(nodes("a", Some("b")), "b", false, false, all_up),
            Acting::Peer {
                node: "a",
                failover: false
            }
        );
        assert_eq!(
            acting_owner(nodes("a", Some("b")), "b", false, false, |n| n != "a"),
            Acting::Here
        );
    }

    #[test]
    fn a_hopped_request_is_served_where_it_landed() {
        assert_eq!(
            acting_owner(nodes("a", Some("b")), "c", true, false, all_up),
            Acting::Here
        );
    }

    #[test]
    fn up_is_never_asked_about_this_node() {
        let asked = std::cell::RefCell::new(Vec::new());
        acting_owner(nodes("a", Some("b")), "c", false, false, |n| {
            asked.borrow_mut().push(n.to_owned());
            false
        });
        assert_eq!(*asked.borrow(), ["a", "b"]);
    }
}
