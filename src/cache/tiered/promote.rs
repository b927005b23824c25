//! Disk hits promoted into the memory tier, without ever holding a body larger than
//! the memory tier's object limit.

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

/// A disk hit that copies the body into memory when the client reads all of it, or
/// has it read again in the background otherwise (HEAD, Range, an early stop).
pub(super) struct TieredHit {
    store: &'static TieredStorage,
    key: CacheKey,
    inner: DiskHit,
    /// Chunks so far, while the whole body is being read in order.
    collect: Option<Vec<Bytes>>,
    /// The meta for the memory tier while promotion is still to be done.
    promote: Option<StoredMeta>,
}

impl TieredHit {
    pub(super) fn new(
        store: &'static TieredStorage,
        key: CacheKey,
        inner: DiskHit,
        promote: Option<StoredMeta>,
    ) -> Self {
        Self {
            store,
            key,
            inner,
            collect: promote.is_some().then(Vec::new),
            promote,
        }
    }
}

impl TieredStorage {
    async fn promote_now(&self, key: HashBinary, meta: StoredMeta, chunks: Vec<Bytes>) {
        self.counters.promotions.fetch_add(1, Ordering::Relaxed);
        self.insert_memory(key, meta, chunks).await;
    }

    /// Reads the object again in the background and promotes it (once per key at a time).
    fn promote_later(&'static self, key: CacheKey) {
        let hash = key.combined_bin();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !self.promoting.lock().insert(hash) {
            return;
        }
        rt.spawn(async move {
            self.promote_from_disk(&key).await;
            self.promoting.lock().remove(&hash);
        });
    }

    async fn promote_from_disk(&'static self, key: &CacheKey) {
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
        let mut chunks = Vec::new();
        loop {
            match hit.read_body().await {
                Ok(Some(b)) => chunks.push(b),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        self.promote_now(key.combined_bin(), meta, chunks).await;
    }
}

#[async_trait]
impl HandleHit for TieredHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        match self.inner.read_body().await {
            Ok(Some(b)) => {
                if let Some(chunks) = self.collect.as_mut() {
                    chunks.push(b.clone());
                }
                Ok(Some(b))
            }
            Ok(None) => {
                if let Some(chunks) = self.collect.take() {
                    let got: usize = chunks.iter().map(Bytes::len).sum();
                    if got as u64 == self.inner.body_len() {
                        if let Some(meta) = self.promote.take() {
                            self.store
                                .promote_now(self.key.combined_bin(), meta, chunks)
                                .await;
                        }
                    }
                }
                Ok(None)
            }
            Err(e) => {
                // A body that failed its checks is never promoted.
                self.collect = None;
                self.promote = None;
                Err(e)
            }
        }
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        if self.promote.is_some() {
            self.store.promote_later(self.key);
        }
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        self.collect = None;
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
