//! The disk-hit fast path: a plain GET over plain HTTP/1.1 for an object on disk is
//! answered with `sendfile` from `request_filter` ([`super::direct`]).
//!
//! Why: in perf of `make bench` disk, two thirds of a disk hit's CPU was the kernel
//! copying the body twice (page cache -> our buffer -> socket buffer) plus the hit
//! machinery around it, while nginx sends the same file with `sendfile` and copies
//! nothing into user space. Only what the full path would answer with the very same
//! bytes comes here ([`super::memory_hit::eligible`], `cache/disk/sendable.rs`); TLS and HTTP/2
//! connections read the file as before.

use std::time::SystemTime;

use pingora::prelude::*;

use super::direct::{Sent, Socket};
use super::respond::hit_parts;
use crate::cache::disk::AnswerHead;
use crate::cache::tiered::TieredStorage;
use crate::config::Settings;
use crate::request::MediaRequest;

/// Answers an eligible request ([`super::memory_hit::eligible`]) with `sendfile` if it
/// can: `Some` when an answer (whole, or cut short by the client) was written, `None` to
/// take the other paths.
pub(super) async fn serve(
    session: &mut Session,
    storage: &TieredStorage,
    media: &MediaRequest,
    settings: &Settings,
) -> Option<Sent> {
    let socket = Socket::of(session, settings.send_timeout)?;
    let tag = settings.answer.generation;
    let now = SystemTime::now();
    let hit = storage.disk_sendable(media.object(), tag, now)?;
    let head = match hit.answer {
        AnswerHead::Kept(head) => head,
        AnswerHead::Make(stored) => hit
            .head
            .prepared
            .get_or_make(tag, || Socket::prepared_head(hit_parts(stored, settings))),
    };
    let age = now
        .duration_since(hit.head.updated)
        .map_or(0, |a| a.as_secs());
    let (off, len) = (hit.body_off, hit.body_len);
    Some(
        socket
            .send_file(session, &head, age, hit.file, off, len)
            .await,
    )
}
