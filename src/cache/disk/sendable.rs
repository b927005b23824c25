//! Disk hits the proxy can send with `sendfile`: the kernel hands the page cache to
//! the socket, and the mirror neither reads nor copies the body.
//!
//! Only what a plain hit can promise without reading the body qualifies:
//! - a file of ours, already indexed, whose header, length and object check out (the
//!   same checks as every inline lookup, [`io::header_nowait`]);
//! - whose body CRC has been checked once against its bytes: at publish (the writer
//!   computed it from what it wrote) or by a whole read since the file was indexed
//!   ([`DiskStorage::mark_verified`]). A file found at restart is read, checked and
//!   promoted the first time, as before, and sent without a read after that;
//! - whose body the page cache holds in full ([`nowait::page_cached`]), so the send
//!   never waits for the disk on the event loop.
//!
//! Anything else is `None` and takes the full path, which reads (on the blocking pool
//! when it must), checks, counts and removes as it always did. A sent hit is not
//! promoted into the memory tier: the page cache already holds it.
//!
//! What a hit needs of a file's meta ([`DiskHead`]: freshness, offsets, the answer head
//! the proxy made) is kept in a bounded map ([`Heads`]) keyed by the object and checked
//! against the file's identity, inode, length and mtime ([`FileStamp`]), so a hit on a
//! file seen before skips the header read and the meta's decode (zstd), which were 14%
//! of a disk hit's CPU in `make bench` disk. About 600 bytes each.

use std::collections::HashMap;
use std::fs::File;
use std::hash::BuildHasherDefault;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use parking_lot::Mutex;
use pingora_cache::key::HashBinary;
use pingora_http::ResponseHeader;

use super::index::KeyHasher;
use super::io::{self, FileStamp};
use super::{nowait, DiskStorage};
use crate::cache::PreparedSlot;
use crate::object::ObjectRef;

/// How many decoded heads are kept (about 600 bytes each); past it the map starts
/// over, so it stays bounded whatever the traffic.
pub(super) const HEADS_KEPT: usize = 16_384;

/// A disk hit to be sent from its file: fresh, its body exactly the length its stored
/// header declares (a header without one is left to the full path, which frames it).
pub struct SendableHit {
    pub file: File,
    /// Where the body starts in the file, and its length.
    pub body_off: u64,
    pub body_len: u64,
    pub head: Arc<DiskHead>,
    pub answer: AnswerHead,
}

/// The answer head for a hit: the one kept for this file and the config asked about,
/// or the stored header, decoded for the caller to make it (and keep it in
/// [`DiskHead::prepared`]).
pub enum AnswerHead {
    Kept(Bytes),
    Make(ResponseHeader),
}

/// What a hit needs of a file's meta, decoded once per file. The header itself is not
/// kept (a decoded map is kilobytes), only the answer head made from it.
pub struct DiskHead {
    pub fresh_until: SystemTime,
    /// When the object was stored or revalidated (its `Age` counts from here).
    pub updated: SystemTime,
    /// Where the proxy keeps the answer head it made for this file.
    pub prepared: PreparedSlot,
    header_len: u64,
    body_len: u64,
}

#[cfg(test)]
impl DiskHead {
    pub(super) fn for_tests() -> Arc<DiskHead> {
        Arc::new(DiskHead {
            fresh_until: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
            prepared: PreparedSlot::default(),
            header_len: 0,
            body_len: 0,
        })
    }
}

/// Decoded heads by object, each for one version of its file.
#[derive(Default)]
pub(crate) struct Heads {
    map: Mutex<HeadMap>,
}

type HeadMap = HashMap<HashBinary, (FileStamp, Arc<DiskHead>), BuildHasherDefault<KeyHasher>>;

impl Heads {
    fn get(&self, key: &HashBinary, stamp: &FileStamp) -> Option<Arc<DiskHead>> {
        let map = self.map.lock();
        let (kept, head) = map.get(key)?;
        (kept == stamp).then(|| head.clone())
    }

    pub(super) fn keep(&self, key: HashBinary, stamp: FileStamp, head: Arc<DiskHead>) {
        let mut map = self.map.lock();
        if map.len() >= HEADS_KEPT && !map.contains_key(&key) {
            map.clear();
        }
        map.insert(key, (stamp, head));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.lock().len()
    }
}

impl DiskStorage {
    /// `obj` as a [`SendableHit`], if it qualifies (see the module doc) and is fresh at
    /// `now`; never waits. `tag`: the config the caller's answer heads are made for.
    pub fn lookup_sendable(
        &'static self,
        obj: ObjectRef,
        tag: u64,
        now: SystemTime,
    ) -> Option<SendableHit> {
        #[cfg(test)]
        if self.hook.lock().is_some() {
            return None; // the race tests' hooks run on the blocking path
        }
        self.start_background();
        // A missing or bad file is the full path's to count and remove.
        let (file, stamp) = io::open_fresh_nowait(&self.root, &obj, now).ok()??;
        let key = obj.key_hash();
        let kept = self.heads.get(&key, &stamp);
        let (head, answer) = match kept.as_ref().and_then(|h| h.prepared.get(tag)) {
            Some(bytes) => (kept?, AnswerHead::Kept(bytes)),
            None => {
                let (head, stored) = self.decode_head(&file, obj, stamp, kept)?;
                (head, AnswerHead::Make(stored))
            }
        };
        if head.fresh_until < now {
            return None;
        }
        // Touched here, as every hit is; an entry the path no longer matches (purged
        // since the open) is not indexed and not sent.
        let verified = self.books.lock().index.touch_verified(&key)?;
        if !verified || !nowait::page_cached(&file, head.header_len, head.body_len) {
            return None;
        }
        self.counters.sendable_hits.fetch_add(1, Ordering::Relaxed);
        Some(SendableHit {
            file,
            body_off: head.header_len,
            body_len: head.body_len,
            head,
            answer,
        })
    }

    /// Reads and decodes the file's header (the kept head, if any, is still right for
    /// this file: only its answer head is missing for the config asked about). `None`
    /// for a header that cannot be read without waiting, does not check, or declares no
    /// length matching the body.
    fn decode_head(
        &self,
        file: &File,
        obj: ObjectRef,
        stamp: FileStamp,
        kept: Option<Arc<DiskHead>>,
    ) -> Option<(Arc<DiskHead>, ResponseHeader)> {
        let header = io::header_nowait(file, &obj, stamp.len)?;
        let meta = header.meta.to_meta().ok()?;
        self.counters.head_decodes.fetch_add(1, Ordering::Relaxed);
        if crate::cache::declared_len(&meta) != Some(header.body_len) {
            return None;
        }
        let head = kept.unwrap_or_else(|| {
            let head = Arc::new(DiskHead {
                fresh_until: meta.fresh_until(),
                updated: meta.updated(),
                prepared: PreparedSlot::default(),
                header_len: header.header_len,
                body_len: header.body_len,
            });
            self.heads.keep(obj.key_hash(), stamp, head.clone());
            head
        });
        Some((head, meta.response_header_copy()))
    }

    /// Records that `obj`'s indexed file had its whole body checked against its CRC.
    /// A purge that raced the read removed the entry, so nothing is marked; the only
    /// file a later entry can name is a newer publish, already verified.
    pub(crate) fn mark_verified(&self, obj: ObjectRef) {
        self.books.lock().index.set_verified(&obj.key_hash());
    }

    /// How many heads [`Self::lookup_sendable`] decoded, and how many it keeps.
    #[cfg(test)]
    pub(crate) fn head_decodes(&self) -> (u64, usize) {
        let decodes = self.counters.head_decodes.load(Ordering::Relaxed);
        (decodes, self.heads.len())
    }
}
