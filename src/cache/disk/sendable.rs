//! Disk hits the proxy can send with `sendfile`: the kernel hands the page cache to
//! the socket, and the mirror neither reads nor copies the body.
//!
//! Only what a plain hit can promise without reading the body qualifies:
//! - a file of ours, already indexed, whose header, length and object check out (the
//!   same checks as every inline lookup, [`io::open_checked_nowait`]);
//! - whose body CRC has been checked once against its bytes: at publish (the writer
//!   computed it from what it wrote) or by a whole read since the file was indexed
//!   ([`DiskStorage::mark_verified`]). A file found at restart is read, checked and
//!   promoted the first time, as before, and sent without a read after that;
//! - whose body the page cache holds in full ([`nowait::page_cached`]), so the send
//!   never waits for the disk on the event loop.
//!
//! Anything else is `None` and takes the full path, which reads (on the blocking pool
//! when it must), checks, counts and removes as it always did. A sent hit is not
//! promoted into the memory tier: the page cache already holds it, and sending from
//! there costs less than a memory hit's copy.

use std::fs::File;
use std::sync::atomic::Ordering;

use pingora_cache::CacheMeta;

use super::io::{self, Found, Inspected};
use super::{nowait, DiskStorage};
use crate::object::ObjectRef;

/// A disk hit to be sent from its file.
pub struct SendableHit {
    pub file: File,
    /// Where the body starts in the file, and its length.
    pub body_off: u64,
    pub body_len: u64,
    pub meta: CacheMeta,
}

impl DiskStorage {
    /// `obj` as a [`SendableHit`], if it qualifies (see the module doc); never waits.
    pub fn lookup_sendable(&'static self, obj: ObjectRef) -> Option<SendableHit> {
        #[cfg(test)]
        if self.hook.lock().is_some() {
            return None; // the race tests' hooks run on the blocking path
        }
        self.start_background();
        let Found::Valid(opened) = io::open_checked_nowait(&obj.path(self.dir()), &obj)? else {
            return None; // a missing or bad file is the full path's to count and remove
        };
        let Inspected::Ours(header) = opened.kind else {
            return None; // adopted files carry no CRC
        };
        // Touched here, as every hit is; an entry the path no longer matches (purged
        // since the open) is not indexed and not sent.
        let verified = self.books.lock().index.touch_verified(&obj.key_hash())?;
        if !verified {
            return None;
        }
        if !nowait::page_cached(&opened.file, header.header_len, header.body_len) {
            return None;
        }
        let meta = header.meta.to_meta().ok()?;
        self.counters.sendable_hits.fetch_add(1, Ordering::Relaxed);
        Some(SendableHit {
            file: opened.file,
            body_off: header.header_len,
            body_len: header.body_len,
            meta,
        })
    }

    /// Records that `obj`'s indexed file had its whole body checked against its CRC.
    /// A purge that raced the read removed the entry, so nothing is marked; the only
    /// file a later entry can name is a newer publish, already verified.
    pub(crate) fn mark_verified(&self, obj: ObjectRef) {
        self.books.lock().index.set_verified(&obj.key_hash());
    }
}
