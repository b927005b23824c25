//! Step 6: the upstream of a request: a peer mirror (proxy mode) or an origin, what
//! happens when one fails before its first byte, and the numbers for both.

use std::time::Instant;

use pingora::prelude::*;
use pingora_error::{Error, ErrorType};

use super::route::{self, Route};
use super::RequestCtx;
use crate::metrics;
use crate::state::Shared;

/// The peer to try for a proxied request, or `None` when it is to go to an origin
/// (not proxied, or every acting owner has failed it).
pub(super) fn peer_for(shared: &Shared, ctx: &mut RequestCtx) -> Option<Box<HttpPeer>> {
    loop {
        let Route::Proxy { node } = &ctx.route else {
            ctx.peer = None;
            return None;
        };
        let node = node.clone();
        let peers = &shared.peers;
        let timeout = peers.settings().timeout;
        let Some(peer) = peers.http_peer(&node, timeout, ctx.settings.idle_timeout) else {
            // Not resolved (yet): as good as down for this request.
            peers.mark_failed(&node);
            next_route(shared, ctx, node);
            continue;
        };
        ctx.peers_tried.push(node.clone());
        ctx.peer = Some(node);
        ctx.peer_started = Some(Instant::now());
        return Some(Box::new(peer));
    }
}

/// A peer failed before its first byte: it is out at once (passive check), and the
/// request moves on to the next acting owner, or here.
pub(super) fn peer_failed(shared: &Shared, ctx: &mut RequestCtx, e: &Error) {
    observe_peer(ctx, origin_error_result(e));
    let Some(node) = ctx.peer.take() else {
        return;
    };
    tracing::warn!("peer {node} failed for a proxied request: {e}");
    shared.peers.mark_failed(&node);
    next_route(shared, ctx, node);
}

/// Recomputes the acting owner now that `failed` is down; never a peer tried already.
fn next_route(shared: &Shared, ctx: &mut RequestCtx, failed: String) {
    if !ctx.peers_tried.contains(&failed) {
        ctx.peers_tried.push(failed);
    }
    let Some(media) = ctx.media.as_ref() else {
        ctx.route = Route::Here;
        return;
    };
    let view = shared.fleet.load();
    let (way, _) = route::decide(&view, &shared.peers, ctx.settings.mode, media, false);
    ctx.route = match way {
        Route::Proxy { node } if !ctx.peers_tried.contains(&node) => {
            metrics::FAILOVERS.with_label_values(&["secondary"]).inc();
            Route::Proxy { node }
        }
        _ => {
            // Every owner is down for this request: serve it here, never an error.
            metrics::FAILOVERS.with_label_values(&["local"]).inc();
            Route::Here
        }
    };
}

pub(super) fn observe_peer(ctx: &mut RequestCtx, result: &'static str) {
    if let (Some(node), Some(t)) = (&ctx.peer, ctx.peer_started.take()) {
        metrics::PEER_REQUESTS
            .with_label_values(&[node.as_str(), result])
            .inc();
        metrics::PEER_SECONDS
            .with_label_values(&[result])
            .observe(t.elapsed().as_secs_f64());
    }
}

pub(super) fn origin_error_result(e: &Error) -> &'static str {
    match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            "timeout"
        }
        ErrorType::ConnectRefused | ErrorType::ConnectError | ErrorType::ConnectNoRoute => {
            "connect_error"
        }
        _ => "error",
    }
}

pub(super) fn observe_origin(ctx: &mut RequestCtx, result: &'static str) {
    metrics::ORIGIN_REQUESTS.with_label_values(&[result]).inc();
    if let Some(t) = ctx.origin_started.take() {
        metrics::ORIGIN_SECONDS
            .with_label_values(&[result])
            .observe(t.elapsed().as_secs_f64());
    }
}
