//! The request side of warm secondary (`crate::warm` is the copier): an origin fill
//! here notices the object's other owner, and a notice from another owner is checked
//! and queued for the copier.

use pingora::prelude::*;

use crate::metrics;
use crate::object::ObjectRef;
use crate::peers::warm::{parse_notice, MAX_NOTICE_BYTES};
use crate::request::{MediaRequest, Reject};
use crate::state::Shared;

/// This node filled `media` from the origin: the other owner should hold a copy.
pub(super) fn filled_from_origin(shared: &Shared, media: &MediaRequest) {
    let settings = shared.peers.settings();
    let warm = settings.fleet.warm;
    if !warm.enabled {
        return;
    }
    let me = shared.peers.me();
    let view = shared.fleet.load();
    let hex = media.hash.hex();
    let owners = view.owners(media.silo, &hex);
    let other = match (owners.primary(), owners.secondary()) {
        (Some(p), Some(s)) if p == me.as_str() => s,
        (Some(p), Some(s)) if s == me.as_str() => p,
        // Not an owner (a fallback or a hopped request): the owners fill themselves.
        _ => return,
    };
    shared
        .warm
        .filled(other, media.object(), warm.queue, warm.batch);
}

/// A POST of a notice: every line must carry a marker trusted for its object, all from
/// the same peer. Answers 202 when the notice was taken (its objects queued as far as
/// the queue has room; the rest are dropped and counted).
pub(super) async fn receive(session: &mut Session, shared: &Shared) -> Reject {
    let refuse = |status, reason| Reject { status, reason };
    if session.req_header().method != http::Method::POST {
        return refuse(405, "POST a notice");
    }
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_NOTICE_BYTES {
                    session.set_keepalive(None);
                    return refuse(413, "notice too large");
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(_) => return refuse(400, "notice body unreadable"),
        }
    }
    let lines = match parse_notice(&body) {
        Ok(lines) => lines,
        Err(e) => {
            tracing::warn!("warm notice refused: {e}");
            return refuse(400, "bad notice");
        }
    };
    let client = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let peers = &shared.peers;
    let mut from: Option<String> = None;
    let mut objs: Vec<ObjectRef> = Vec::with_capacity(lines.len());
    for (obj, marker) in lines {
        let Some(sender) = peers.hop_sender(marker, obj, client) else {
            return refuse(403, "notice not signed by a peer");
        };
        match &from {
            Some(f) if f != sender => return refuse(403, "notice from two peers"),
            Some(_) => {}
            None => from = Some(sender.to_owned()),
        }
        objs.push(obj);
    }
    let warm = peers.settings().fleet.warm;
    if let (Some(from), true) = (from, warm.enabled) {
        shared.warm.noticed(&from, &objs, warm.queue);
    } else if !objs.is_empty() {
        metrics::WARM_DROPS
            .with_label_values(&["disabled"])
            .inc_by(objs.len() as u64);
    }
    refuse(202, "queued")
}
