//! Step 3 of a request's way with peers: which node serves it, and how it gets there.
//! Pure decisions over the request, the fleet view and the peers' health; the proxy
//! acts on them.

use std::net::IpAddr;

use crate::config::Mode;
use crate::fleet::{acting_owner, Acting, FleetView};
use crate::object::ObjectRef;
use crate::peers::Peers;
use crate::request::{MediaRequest, HOP_PARAM};

/// Where a media request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Route {
    /// Served here, from the cache or the origin.
    Here,
    /// 307 to the acting owner's link.
    Redirect { location: String },
    /// Fetched from the acting owner and streamed (proxy mode).
    Proxy { node: String },
}

/// Whether the request's hop marker (`?shimmer_hop=` or the peer header) may be
/// believed (see [`Peers::hop_sender`]). A visitor's marker is not.
pub(super) fn hop_trusted(
    peers: &Peers,
    marker: Option<&str>,
    obj: ObjectRef,
    client: impl FnOnce() -> Option<IpAddr>,
) -> bool {
    // The client's address only when there is a marker to check it against: most
    // requests carry none, and looking the address up was 0.5% of a disk hit's CPU.
    marker.is_some_and(|m| peers.hop_sender(m, obj, client()).is_some())
}

/// What the request's way is, and whether it is a failover (for the metrics).
pub(super) fn decide(
    view: &FleetView,
    peers: &Peers,
    mode: Mode,
    media: &MediaRequest,
    hopped: bool,
) -> (Route, Option<&'static str>) {
    let hex = media.hash.hex();
    let owners = view.owners(media.silo, &hex);
    let me = peers.me();
    let secondary_serves = mode == Mode::Redirect;
    let up = |n: &str| match mode {
        Mode::Proxy => peers.is_up(n),
        Mode::Redirect => peers.is_up_for_redirect(n),
    };
    match acting_owner(owners, &me, hopped, secondary_serves, up) {
        Acting::Here => (Route::Here, None),
        Acting::Fallback => (Route::Here, Some("local")),
        Acting::Peer { node, failover } => {
            let failover = failover.then_some("secondary");
            let route = match mode {
                Mode::Proxy => Route::Proxy {
                    node: node.to_owned(),
                },
                Mode::Redirect => {
                    let url = view.node_url(media.silo, node, &hex, &media.rest);
                    let marker = peers.hop_marker(media.object());
                    Route::Redirect {
                        location: with_hop_marker(&url, &marker),
                    }
                }
            };
            (route, failover)
        }
    }
}

/// `url` with the hop marker appended to its query.
pub(super) fn with_hop_marker(url: &str, marker: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{HOP_PARAM}={marker}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_marker_is_appended_to_the_query() {
        assert_eq!(
            with_hop_marker("http://b/_images/x/y.jpg", "a"),
            "http://b/_images/x/y.jpg?shimmer_hop=a"
        );
        assert_eq!(
            with_hop_marker("http://b/y?z=1", "a"),
            "http://b/y?z=1&shimmer_hop=a"
        );
    }
}
