//! Memory over disk: the `Storage` the proxy enables.
//!
//! - **Lookup**: a fill in progress (streamed while it is written), then the memory tier,
//!   then the disk tier. A disk hit small enough for the memory tier is offered to it,
//!   never copied: the very buffer the client was sent when the body was read in one
//!   piece, otherwise one read in the background once the hit is done (a HEAD, a Range,
//!   a body over 1 MiB). Larger ones never are (see `promote`).
//! - **Miss** (status 200, disk writable): one fill writes the temp file and, while the
//!   body fits the memory tier, keeps it in memory too; readers (the writer's own client
//!   and every client that waited on the cache lock) stream from memory or the file. On
//!   `finish` the file is renamed into place and the body (when kept) is offered to the
//!   memory tier, whose TinyLFU admission decides. A disk write that fails mid-body is
//!   counted and dropped: the fill goes on from memory, so no client sees the failure
//!   unless the rest of an object larger than the memory tier's limit would have to be
//!   held in RAM (then the fill fails like a dropped origin connection would).
//! - **Miss otherwise** (no disk, disk off after errors, a 404): the memory tier's own fill.
//! - **Purge**: every tier and fills in progress; [`TieredStorage::purge_hash`] goes by
//!   path, so it also reaches files the restart scan has not indexed yet.

mod fill;
mod promote;
#[cfg(test)]
mod tests;

use std::any::Any;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora_cache::key::{CacheHashKey, HashBinary};
use pingora_cache::storage::{HitHandler, MissHandler, PurgeOutcome, PurgeTarget, PurgeType};
use pingora_cache::trace::{Span, SpanHandle};
use pingora_cache::{CacheEntryKey, CacheKey, CacheMeta, Storage};
use pingora_error::{Error, ErrorType, Result};

use crate::cache::declared_len;
use crate::cache::disk::{DiskStats, DiskStorage, SendableHit};
use crate::cache::memory::{FreshObject, MemoryStats, MemoryStorage, StoredMeta};
use crate::cache::stream::StreamFill;
use crate::cache::{FillProgress, FillRegistry};
use crate::object::{Md5, ObjectRef, Silo};
use fill::TieredMissHandler;
use promote::TieredHit;

/// Our streaming-write tags are 9 bytes (`T` + id); the memory tier's are 8.
const TAG_PREFIX: u8 = b'T';
/// What the memory tier charges per object beyond body and meta (an upper bound).
const MEMORY_OVERHEAD: u64 = 256;

/// Numbers for Prometheus, per tier and for the composition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TieredStats {
    pub memory: MemoryStats,
    pub disk: Option<DiskStats>,
    /// Fills in progress that write to disk.
    pub fills: usize,
    /// Disk hits copied into the memory tier (offered; TinyLFU may still refuse).
    pub promotions: u64,
    /// Fills that went to memory only because the disk took no writes.
    pub memory_only_fills: u64,
    /// Fills whose disk write failed mid-body and went on from memory.
    pub disk_dropped_fills: u64,
    /// Fills that failed for their readers (writer gone, or disk failed on a huge body).
    pub aborted_fills: u64,
}

/// Where an object is held (see [`TieredStorage::holds`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Holding {
    pub memory: bool,
    pub disk: bool,
}

impl Holding {
    pub fn any(self) -> bool {
        self.memory || self.disk
    }
}

#[derive(Default)]
struct Counters {
    promotions: AtomicU64,
    memory_only_fills: AtomicU64,
    disk_dropped_fills: AtomicU64,
    aborted_fills: AtomicU64,
}

/// The memory tier over an optional disk tier.
pub struct TieredStorage {
    memory: &'static MemoryStorage,
    disk: Option<&'static DiskStorage>,
    fills: FillRegistry<StreamFill>,
    next_id: AtomicU64,
    /// Keys being promoted in the background, so each is read once.
    promoting: Mutex<HashSet<HashBinary>>,
    /// Purges so far: a promotion of a disk hit looked up before the latest one is
    /// dropped, so a purge never races a promotion into resurrecting the object.
    purges: AtomicU64,
    counters: Counters,
}

impl TieredStorage {
    pub fn new(memory: &'static MemoryStorage, disk: Option<&'static DiskStorage>) -> Self {
        Self {
            memory,
            disk,
            fills: FillRegistry::default(),
            next_id: AtomicU64::new(1),
            promoting: Mutex::new(HashSet::new()),
            purges: AtomicU64::new(0),
            counters: Counters::default(),
        }
    }

    pub fn memory(&self) -> &'static MemoryStorage {
        self.memory
    }

    pub fn disk(&self) -> Option<&'static DiskStorage> {
        self.disk
    }

    /// Starts the disk tier's restart scan (it also starts on the first request).
    pub fn start_background(&self) {
        if let Some(d) = self.disk {
            d.start_background();
        }
    }

    /// The largest body worth caching: the disk tier's limit when there is a disk,
    /// else `memory_max` (the memory tier's, from the settings).
    pub fn max_file_size_bytes(&self, memory_max: u64) -> u64 {
        self.disk
            .map_or(memory_max, |d| d.max_object_bytes().max(memory_max))
    }

    pub fn stats(&self) -> TieredStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TieredStats {
            memory: self.memory.stats(),
            disk: self.disk.map(DiskStorage::stats),
            fills: self.fills.count_and_sum(|_| 0).0,
            promotions: get(&c.promotions),
            memory_only_fills: get(&c.memory_only_fills),
            disk_dropped_fills: get(&c.disk_dropped_fills),
            aborted_fills: get(&c.aborted_fills),
        }
    }

    /// Removes an image (both silos) from every tier and keeps fills in progress from
    /// storing it: for bans and the admin API. The disk file is unlinked by path, so
    /// this works while the restart scan runs. Returns whether any tier held it.
    /// The disk part is one `unlink` per silo on the calling thread (cheap; a ban storm
    /// is batched by the sync).
    pub fn purge_hash(&self, md5: Md5) -> bool {
        self.purges.fetch_add(1, Ordering::SeqCst);
        let mut found = false;
        for obj in Silo::ALL.map(|silo| ObjectRef::new(silo, md5)) {
            found |= self.purge_memory(&obj);
            if let Some(d) = self.disk {
                found |= d.remove_now(obj);
            }
        }
        found
    }

    /// Which tiers hold `obj` now, fresh (a fill in progress counts as memory): for
    /// the warm copier, which skips what is here already, and the admin `/lookup`.
    pub fn holds(&self, obj: ObjectRef) -> Holding {
        let key = obj.key_hash();
        Holding {
            memory: self.fills.contains(&key)
                || self.memory.fresh_object(&key, SystemTime::now()).is_some(),
            disk: self.disk.is_some_and(|d| d.indexed_object(&key).is_some()),
        }
    }

    /// How far the fill in progress a lookup of `key` would attach to has got (this
    /// store's, else the memory tier's), if there is one: for the Range pass-through.
    pub fn fill_progress(&self, key: &HashBinary) -> Option<FillProgress> {
        match self.fills.active(key) {
            Some(fill) => Some(fill.progress()),
            None => self.memory.fill_progress(key),
        }
    }

    /// Fills first, so that a fill finishing now cannot store the object afterwards.
    fn purge_memory(&self, obj: &ObjectRef) -> bool {
        let key = obj.key_hash();
        self.fills.mark_purged(&key) | self.memory.remove_hash(&key)
    }

    fn forget_fill(&self, fill: &StreamFill) {
        self.fills.forget(fill);
    }

    /// A fresh object held whole in the memory tier, unless a fill for it is in progress
    /// in either tier (that would be newer). The proxy answers plain GET hits from this
    /// without pingora-cache's lookup; everything else takes the full path.
    pub fn memory_fresh_object(&self, key: &HashBinary, now: SystemTime) -> Option<FreshObject> {
        if self.fills.contains(key) {
            return None;
        }
        self.memory.fresh_object(key, now)
    }

    /// A disk hit that can be sent from the page cache without a read (see
    /// `cache/disk/sendable.rs`), unless a fill for it is in progress (it would be newer).
    /// Asked after the memory tier had no fresh copy.
    /// `tag`: the config the caller's answer heads are made for; `now`: fresh when.
    pub fn disk_sendable(&self, obj: ObjectRef, tag: u64, now: SystemTime) -> Option<SendableHit> {
        let disk = self.disk?;
        if self.fill_progress(&obj.key_hash()).is_some() {
            return None;
        }
        disk.lookup_sendable(obj, tag, now)
    }

    /// Whether a body of `body_len` with a meta the memory tier charges `meta_len` for
    /// ([`StoredMeta::len`]) fits the memory tier.
    fn fits_memory(&self, body_len: u64, meta_len: usize) -> bool {
        body_len + meta_len as u64 + MEMORY_OVERHEAD <= self.memory.max_object_bytes() as u64
    }

    /// A memory-only fill, as without a disk.
    async fn memory_miss(&'static self, key: &CacheKey, meta: &CacheMeta) -> Result<MissHandler> {
        let meta_len = StoredMeta::estimated_len(meta);
        if let Some(len) = declared_len(meta).filter(|&l| !self.fits_memory(l, meta_len)) {
            // Holding it in RAM until the end just to refuse it then is not worth it.
            return Err(Error::explain(
                ErrorType::InternalError,
                format!(
                    "a {len}-byte body does not fit the memory tier and the disk takes no writes"
                ),
            ));
        }
        self.memory
            .get_miss_handler(key, meta, &Span::inactive().handle())
            .await
    }
}

#[async_trait]
impl Storage for TieredStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        self.start_background();
        if let Some(fill) = self.fills.active(&key.combined_bin()) {
            return fill.hit().map(Some);
        }
        if let Some(hit) = self.memory.lookup(key, trace).await? {
            return Ok(Some(hit));
        }
        let (Some(disk), Some(obj)) = (self.disk, ObjectRef::from_key(key)) else {
            return Ok(None);
        };
        let epoch = self.purges.load(Ordering::SeqCst);
        let Some((meta, hit)) = disk.lookup_object(obj).await else {
            // Pingora takes the cache lock right after a miss, and a writer releases it as
            // soon as its fill is registered (streaming partial writes). A fill that
            // started while the disk was being looked at must be found now, or this
            // request would become a second writer: look again before saying "miss".
            if let Some(fill) = self.fills.active(&key.combined_bin()) {
                return fill.hit().map(Some);
            }
            return self.memory.lookup(key, trace).await;
        };
        let promote = self
            .fits_memory(hit.body_len(), StoredMeta::estimated_len(&meta))
            .then(|| StoredMeta::from_parts(hit.meta_bytes().internal.clone(), &meta));
        let hit = TieredHit::new(self, key.clone(), hit, promote, epoch);
        Ok(Some((meta, Box::new(hit))))
    }

    async fn lookup_streaming_write(
        &'static self,
        key: &CacheKey,
        streaming_write_tag: Option<&[u8]>,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(tag) = streaming_write_tag else {
            return self.lookup(key, trace).await;
        };
        let Some(id) = fill::parse_tag(tag) else {
            return self
                .memory
                .lookup_streaming_write(key, Some(tag), trace)
                .await;
        };
        let fill = self.fills.by_id(&key.combined_bin(), id);
        fill.map(|f| f.hit()).transpose()
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        trace: &SpanHandle,
    ) -> Result<MissHandler> {
        self.start_background();
        let Some(disk) = self.disk else {
            return self.memory.get_miss_handler(key, meta, trace).await;
        };
        let obj = ObjectRef::from_key(key).filter(|_| meta.response_header().status == 200);
        let Some(obj) = obj else {
            // Negative answers and odd keys are short-lived: memory only.
            return self.memory_miss(key, meta).await;
        };
        match TieredMissHandler::start(self, disk, obj, key, meta).await? {
            Some(handler) => Ok(Box::new(handler)),
            None => {
                self.counters
                    .memory_only_fills
                    .fetch_add(1, Ordering::Relaxed);
                self.memory_miss(key, meta).await
            }
        }
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        purge_type: PurgeType,
        trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        if matches!(target, PurgeTarget::Exact(CacheEntryKey::Identified { .. })) {
            return Ok(PurgeOutcome::NotFound);
        }
        self.purges.fetch_add(1, Ordering::SeqCst);
        let key = target.key().combined_bin();
        let mut found = self.fills.mark_purged(&key);
        found |= !matches!(
            self.memory.purge(target, purge_type, trace).await?,
            PurgeOutcome::NotFound
        );
        if let Some(d) = self.disk {
            found |= d.purge_key(&key).await;
        }
        Ok(if found {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        trace: &SpanHandle,
    ) -> Result<bool> {
        let mut updated = self.memory.update_meta(key, meta, trace).await?;
        if let Some(d) = self.disk {
            updated |= d.update_meta(key, meta, trace).await?;
        }
        Ok(updated)
    }

    fn support_streaming_partial_write(&self) -> bool {
        true
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}
