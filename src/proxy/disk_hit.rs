//! The disk-hit fast path: a plain GET over plain HTTP/1.1 for an object on disk is
//! answered with `sendfile` from `request_filter` ([`super::direct`]).
//!
//! Why: in perf of `make bench` disk, two thirds of a disk hit's CPU was the kernel
//! copying the body twice (page cache -> our buffer -> socket buffer) plus the hit
//! machinery around it, while nginx sends the same file with `sendfile` and copies
//! nothing into user space. Only what the full path would answer with the very same
//! bytes comes here ([`memory_hit::eligible`], `cache/disk/sendable.rs`); TLS and HTTP/2
//! connections read the file as before.

use std::time::SystemTime;

use http::response::Parts as RespParts;
use http::{header, Version};
use pingora::prelude::*;

use super::direct::{Sent, Socket};
use super::memory_hit;
use crate::cache::tiered::TieredStorage;
use crate::config::Settings;
use crate::request::MediaRequest;

/// Answers the request with `sendfile` if it can: `Some` when an answer (whole, or cut
/// short by the client) was written, `None` to take the other paths.
pub(super) async fn serve(
    session: &mut Session,
    storage: &TieredStorage,
    media: &MediaRequest,
    settings: &Settings,
) -> Option<Sent> {
    if !memory_hit::eligible(session.req_header()) {
        return None;
    }
    let socket = Socket::of(session)?;
    let tag = settings.answer.generation;
    let hit = storage.disk_sendable(media.object(), tag)?;
    let head = &hit.head;
    let now = SystemTime::now();
    if head.fresh_until < now {
        return None;
    }
    let prepared = match (hit.prepared, hit.header) {
        (Some(prepared), _) => prepared,
        (None, Some(header)) => {
            // A stored header without a Content-Length matching the body is left to
            // the full path, which frames it (and nothing is kept for it).
            let declared = header
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared != Some(hit.body_len) {
                return None;
            }
            // What the full path writes for this hit: the stored header, HTTP/1.1, the
            // mirror's answer headers (and, sent with it, an Age).
            let mut parts = RespParts::from(header);
            parts.version = Version::HTTP_11;
            for (name, value) in super::respond::answer_headers(parts.status, settings, "HIT") {
                parts.headers.insert(name, value);
            }
            let bytes = Socket::prepared_head(parts);
            head.prepared.keep(tag, bytes.clone());
            bytes
        }
        (None, None) => return None,
    };
    let age = now.duration_since(head.updated).map_or(0, |a| a.as_secs());
    let (off, len) = (hit.body_off, hit.body_len);
    Some(
        socket
            .send_file(session, &prepared, age, hit.file, off, len)
            .await,
    )
}
