//! Owner-first fill and handoff (step 6 of a miss): before the origin, a miss asks the
//! object's other owner, and after a view change the previous owners, "only if cached"
//! (`fleet::fill_sources` decides whom). A peer that has it answers 200 and the fill
//! goes on as if from the origin; a 504 (not cached), an error or a timeout moves on to
//! the next one, then the origin. The ask is bounded by `shimmer.fleet.fill_timeout`.

use std::time::Instant;

use pingora::prelude::*;
use pingora_cache::CachePhase;
use pingora_error::{Error, ErrorType};
use pingora_http::ResponseHeader;

use super::route::Route;
use super::upstream::origin_error_result;
use super::RequestCtx;
use crate::fleet::{fill_sources, FillReason};
use crate::metrics;
use crate::state::Shared;

/// The next peer to ask for this miss, or `None` to go to the origin.
pub(super) fn ask_peer(
    shared: &Shared,
    session: &Session,
    ctx: &mut RequestCtx,
) -> Option<Box<HttpPeer>> {
    if !ctx.fill_planned {
        ctx.fill_planned = true;
        ctx.fill_asks = plan(shared, session, ctx);
    }
    while !ctx.fill_asks.is_empty() {
        let (node, reason) = ctx.fill_asks.remove(0);
        let peers = &shared.peers;
        let timeout = peers.settings().fleet.fill_timeout;
        let Some(peer) = peers.http_peer(&node, timeout, ctx.settings.idle_timeout) else {
            continue;
        };
        ctx.peer = Some(node);
        ctx.fill_ask = Some(reason);
        ctx.peer_started = Some(Instant::now());
        return Some(Box::new(peer));
    }
    None
}

/// Whom this miss asks: only a cache miss this request fills here (not a pass, not a
/// request that is itself only-if-cached), the current owners' other owner, then,
/// during the handoff, the previous owners.
fn plan(shared: &Shared, session: &Session, ctx: &RequestCtx) -> Vec<(String, FillReason)> {
    let Some(media) = ctx.media.as_ref() else {
        return Vec::new();
    };
    if ctx.route != Route::Here || ctx.only_if_cached || session.cache.phase() != CachePhase::Miss {
        return Vec::new();
    }
    let peers = &shared.peers;
    let me = peers.me();
    let hex = media.hash.hex();
    let view = shared.fleet.load();
    let previous = shared.handoff_view(peers.settings().fleet.handoff);
    let before = previous.as_ref().map(|v| v.owners(media.silo, &hex));
    fill_sources(view.owners(media.silo, &hex), before, &me, |n| {
        peers.is_up(n)
    })
    .into_iter()
    .map(|(n, r)| (n.to_owned(), r))
    .collect()
}

/// The asked peer answered. A 200 is the object: it is stored as from the origin, less
/// the peer's own decorations. Anything else is "not there": on to the next source.
pub(super) fn answered(ctx: &mut RequestCtx, resp: &mut ResponseHeader) -> Result<()> {
    let reason = ctx.fill_ask.take().map_or("owner", FillReason::as_str);
    let hit = resp.status.as_u16() == 200;
    metrics::FILL_ASKS
        .with_label_values(&[reason, if hit { "hit" } else { "miss" }])
        .inc();
    if hit {
        for h in crate::peers::MIRROR_HEADERS {
            resp.remove_header(h);
        }
        // Still known as the peer's copy for the log and the response header.
        ctx.filled_from = ctx.peer.take();
        return Ok(());
    }
    ctx.peer = None;
    let mut e = Error::explain(
        ErrorType::HTTPStatus(resp.status.as_u16()),
        "peer does not hold it",
    );
    e.set_retry(true);
    Err(e)
}

/// The ask failed before an answer (refused, timed out): the peer is out until its next
/// good probe, like any peer that fails a request, and the miss moves on.
pub(super) fn failed(shared: &Shared, ctx: &mut RequestCtx, e: &Error, stale_pooled: bool) {
    let reason = ctx.fill_ask.take().unwrap_or(FillReason::Owner);
    let Some(node) = ctx.peer.take() else {
        return;
    };
    if stale_pooled {
        // A pooled connection the peer had closed: ask again on a fresh one.
        ctx.fill_asks.insert(0, (node, reason));
        return;
    }
    metrics::FILL_ASKS
        .with_label_values(&[reason.as_str(), origin_error_result(e)])
        .inc();
    tracing::warn!("peer {node} failed an only-if-cached ask: {e}");
    shared.peers.mark_failed(&node);
}
