//! Whom a miss asks before the origin: the object's other owner (owner-first fill), and
//! for a while after a view change, the owners under the previous view (handoff). Every
//! ask is "only if cached": a peer never goes to the origin for it, so the origin still
//! sees one request per object for the whole fleet.

use super::Owners;

/// Why a peer is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FillReason {
    /// The other owner under the current view (primary <-> secondary).
    Owner,
    /// An owner under the previous view, during the handoff window.
    Handoff,
}

impl FillReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FillReason::Owner => "owner",
            FillReason::Handoff => "handoff",
        }
    }
}

/// The peers a miss at `me` asks, in order, before the origin. `previous` is the owners
/// under the previous view while its handoff lasts; `up` says whether a peer is up
/// (never asked about `me`). Nobody is asked twice. A node that was an owner before
/// asks the other previous owner too: a miss means it does not hold the object (a
/// secondary holds only what it was asked for when warm copies are off, or evicted).
pub fn fill_sources<'a>(
    now: Owners<'a>,
    previous: Option<Owners<'a>>,
    me: &str,
    up: impl Fn(&str) -> bool,
) -> Vec<(&'a str, FillReason)> {
    let mut asks: Vec<(&'a str, FillReason)> = Vec::with_capacity(3);
    if now.is_owner(me) {
        for node in [now.primary(), now.secondary()].into_iter().flatten() {
            if node != me && up(node) {
                asks.push((node, FillReason::Owner));
            }
        }
    }
    if let Some(before) = previous {
        for node in [before.primary(), before.secondary()].into_iter().flatten() {
            if node != me && !asks.iter().any(|(n, _)| *n == node) && up(node) {
                asks.push((node, FillReason::Handoff));
            }
        }
    }
    asks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o<'a>(primary: &'a str, secondary: Option<&'a str>) -> Owners<'a> {
        Owners::Nodes { primary, secondary }
    }

    fn up(_: &str) -> bool {
        true
    }

    #[test]
    fn an_owner_asks_the_other_owner() {
        assert_eq!(
            fill_sources(o("a", Some("b")), None, "a", up),
            [("b", FillReason::Owner)]
        );
        assert_eq!(
            fill_sources(o("a", Some("b")), None, "b", up),
            [("a", FillReason::Owner)]
        );
    }

    #[test]
    fn a_down_owner_is_not_asked() {
        assert!(fill_sources(o("a", Some("b")), None, "a", |n| n != "b").is_empty());
    }

    #[test]
    fn a_non_owner_asks_no_current_owner() {
        // It serves here only when both owners are down or the request hopped: asking
        // an owner is then either pointless or a second hop.
        assert!(fill_sources(o("a", Some("b")), None, "c", up).is_empty());
    }

    #[test]
    fn unbalanced_and_single_node_templates_ask_nobody() {
        assert!(fill_sources(Owners::Unbalanced, None, "a", up).is_empty());
        assert!(fill_sources(o("a", None), None, "a", up).is_empty());
        assert!(fill_sources(Owners::Unbalanced, Some(Owners::Unbalanced), "a", up).is_empty());
    }

    #[test]
    fn a_new_owner_asks_the_previous_owners_after_the_current_one() {
        // c became primary; b stays secondary; a was primary before.
        assert_eq!(
            fill_sources(o("c", Some("b")), Some(o("a", Some("b"))), "c", up),
            [("b", FillReason::Owner), ("a", FillReason::Handoff)],
            "b is asked once, as the current owner"
        );
        assert_eq!(
            fill_sources(o("c", Some("d")), Some(o("a", Some("b"))), "c", up),
            [
                ("d", FillReason::Owner),
                ("a", FillReason::Handoff),
                ("b", FillReason::Handoff)
            ]
        );
    }

    #[test]
    fn a_former_secondary_that_misses_asks_the_former_primary() {
        // b was secondary and is primary now, and does not hold it (a miss).
        assert_eq!(
            fill_sources(o("b", Some("c")), Some(o("a", Some("b"))), "b", up),
            [("c", FillReason::Owner), ("a", FillReason::Handoff)]
        );
    }

    #[test]
    fn previous_owners_that_are_down_are_skipped() {
        assert_eq!(
            fill_sources(o("c", Some("d")), Some(o("a", Some("b"))), "c", |n| n
                != "a"),
            [("d", FillReason::Owner), ("b", FillReason::Handoff)]
        );
    }

    #[test]
    fn me_is_never_asked() {
        for me in ["a", "b", "c", "d"] {
            for now in [o("a", Some("b")), o("c", Some("a")), o("d", None)] {
                for before in [None, Some(o("a", Some("c"))), Some(o("b", Some("d")))] {
                    let asks = fill_sources(now, before, me, up);
                    assert!(
                        asks.iter().all(|(n, _)| *n != me),
                        "{me} {now:?} {before:?}"
                    );
                    let mut names: Vec<_> = asks.iter().map(|(n, _)| *n).collect();
                    names.dedup();
                    assert_eq!(names.len(), asks.len(), "nobody twice");
                }
            }
        }
    }
}
