//! Disk hits promoted into the memory tier, without a copy and without ever holding a
//! body larger than the memory tier's object limit.
//!
//! The rule: **a promotion never copies a body.** A body up to 1 MiB (the disk tier's
//! `WHOLE_READ`) is read in one piece for its client,
//! and the memory tier is offered that very buffer: TinyLFU may refuse it (a working
//! set larger than memory refuses or evicts on most disk hits), and then the refusal
//! cost one `put` and nothing else. A longer body is streamed in pieces, never
//! collected; it is read again in the background, in one piece on the blocking pool,
//! once the hit is done (so is a body the client did not read whole: HEAD, Range, 304).
//! TinyUFO 0.9.1 has no way to ask its admission first (its frequency sketch is
//! private), so the offer is the question.

use std::any::Any;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::key::CacheHashKey;
use pingora_cache::storage::HandleHit;
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheKey, Storage};
use pingora_error::Result;

use super::TieredStorage;
use pingora_cache::key::HashBinary;

use crate::cache::disk::DiskHit;
use crate::cache::memory::StoredMeta;
use crate::object::ObjectRef;

/// A disk hit that offers its body to the memory tier when it is read in one piece, or
/// has it read again in the background otherwise.
pub(super) struct TieredHit {
    store: &'static TieredStorage,
    key: CacheKey,
    inner: DiskHit,
    /// The meta for the memory tier while promotion is still to be done.
    promote: Option<StoredMeta>,
    /// [`TieredStorage::purges`] at the lookup: a purge since cancels the promotion.
    epoch: u64,
}

impl TieredHit {
    pub(super) fn new(
        store: &'static TieredStorage,
        key: CacheKey,
        inner: DiskHit,
        promote: Option<StoredMeta>,
        epoch: u64,
    ) -> Self {
        Self {
            store,
            key,
            inner,
            promote,
            epoch,
        }
    }
}

impl TieredStorage {
    /// Offers a whole body to the memory tier as it is (no copy). Not if a purge came
    /// since `epoch` (when the disk was looked at): the body may be what it removed.
    /// A purge that comes during the insert is caught by the second look, and one after
    /// it removes the object itself. Returns whether the memory tier took it.
    pub(super) fn promote_now(
        &self,
        key: HashBinary,
        meta: StoredMeta,
        body: Bytes,
        epoch: u64,
    ) -> bool {
        if self.purges.load(Ordering::SeqCst) != epoch {
            return false;
        }
        self.counters.promotions.fetch_add(1, Ordering::Relaxed);
        let taken = self.memory.insert_whole(key, meta, body).is_some();
        if taken && self.purges.load(Ordering::SeqCst) != epoch {
            self.memory.remove_hash(&key);
            return false;
        }
        taken
    }

    /// Reads the object again in the background and promotes it (once per key at a time).
    fn promote_later(&'static self, key: CacheKey, epoch: u64) {
        let hash = key.combined_bin();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !self.promoting.lock().insert(hash) {
            return;
        }
        rt.spawn(async move {
            self.promote_from_disk(&key, epoch).await;
            self.promoting.lock().remove(&hash);
        });
    }

    async fn promote_from_disk(&'static self, key: &CacheKey, epoch: u64) {
        let (Some(disk), Some(obj)) = (self.disk, ObjectRef::from_key(key)) else {
            return;
        };
        let Some((meta, mut hit)) = disk.lookup_object(obj).await else {
            return;
        };
        let meta = StoredMeta::from_parts(hit.meta_bytes().internal.clone(), &meta);
        if !self.fits_memory(hit.body_len(), meta.len()) {
            return;
        }
        if let Ok(body) = hit.read_whole().await {
            self.promote_now(key.combined_bin(), meta, body, epoch);
        }
    }
}

#[async_trait]
impl HandleHit for TieredHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        let read = self.inner.read_body().await;
        match &read {
            // The whole body in one piece, its CRC checked by the disk tier.
            Ok(Some(b)) if b.len() as u64 == self.inner.body_len() => {
                if let Some(meta) = self.promote.take() {
                    let key = self.key.combined_bin();
                    self.store.promote_now(key, meta, b.clone(), self.epoch);
                }
            }
            Ok(_) => {}
            // A body that failed its checks is never promoted.
            Err(_) => self.promote = None,
        }
        read
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        if self.promote.is_some() {
            self.store.promote_later(self.key, self.epoch);
        }
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        self.inner.seek(start, end)
    }

    fn get_eviction_weight(&self) -> usize {
        self.inner.get_eviction_weight()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}
