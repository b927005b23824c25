//! A tiered fill: the temp file on disk plus, while the body fits the memory tier, a
//! copy in memory; readers stream from either (see `crate::cache::stream`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::storage::{HandleMiss, MissFinishType};
use pingora_cache::{CacheKey, CacheMeta};
use pingora_error::Result;

use super::{TieredStorage, TAG_PREFIX};
use crate::cache::declared_len;
use crate::cache::disk::{DiskStorage, DiskWriter, MetaBytes, ObjectRef};
use crate::cache::memory::StoredMeta;
use crate::cache::stream::StreamFill;
use crate::cache::CacheError;

pub(super) fn parse_tag(tag: &[u8]) -> Option<u64> {
    let (&first, id) = tag.split_first()?;
    let id: [u8; 8] = id.try_into().ok()?;
    (first == TAG_PREFIX).then(|| u64::from_le_bytes(id))
}

pub(super) struct TieredMissHandler {
    store: &'static TieredStorage,
    key: CacheKey,
    disk: Option<DiskWriter>,
    fill: Arc<StreamFill>,
    /// The meta the memory tier takes at `finish`, made from the disk's serialization
    /// (so the meta is encoded once per fill); `None` when the body cannot fit memory.
    memory_meta: Option<StoredMeta>,
    expected: Option<u64>,
    tag: [u8; 9],
    finished: bool,
}

impl TieredMissHandler {
    /// A fill that writes to disk, or `None` when the disk takes no writes (or this
    /// object) right now and the caller should fill memory only.
    pub(super) async fn start(
        store: &'static TieredStorage,
        disk: &'static DiskStorage,
        obj: ObjectRef,
        key: &CacheKey,
        meta: &CacheMeta,
    ) -> Result<Option<Self>> {
        let expected = declared_len(meta);
        if !disk.is_accepting_writes() || expected.is_some_and(|l| l > disk.max_object_bytes()) {
            return Ok(None);
        }
        let meta_bytes = Arc::new(MetaBytes::from_meta(meta)?);
        let writer = match disk.begin_write(obj, meta_bytes.clone(), expected).await {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!("disk tier skipped for {}: {e}", obj.hex());
                return Ok(None);
            }
        };
        let memory_meta = StoredMeta::from_parts(meta_bytes.internal.clone(), meta);
        let buffer = expected.is_none_or(|l| store.fits_memory(l, memory_meta.len()));
        let id = store.next_id.fetch_add(1, Ordering::Relaxed);
        let fill = Arc::new(StreamFill::new(
            obj.key_hash(),
            id,
            meta_bytes,
            Some(writer.reader_file()),
            buffer,
            store.memory.max_object_bytes(),
        ));
        store.fills.insert(fill.clone());
        let mut tag = [TAG_PREFIX; 9];
        tag[1..].copy_from_slice(&id.to_le_bytes());
        Ok(Some(Self {
            store,
            key: key.clone(),
            disk: Some(writer),
            fill,
            memory_meta: buffer.then_some(memory_meta),
            expected,
            tag,
            finished: false,
        }))
    }

    fn abort(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        self.disk = None; // removes the temp file; readers keep the open descriptor
        self.fill.body.abort();
        self.store.forget_fill(&self.fill);
        let c = &self.store.counters;
        c.aborted_fills.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl HandleMiss for TieredMissHandler {
    async fn write_body(&mut self, data: Bytes, eof: bool) -> Result<()> {
        if !self.fill.body.is_writing() {
            return Err(CacheError::WriteAfterEnd.into_pingora());
        }
        let mut on_disk = false;
        if let Some(writer) = self.disk.as_mut() {
            match writer.write(&data).await {
                Ok(()) => on_disk = true,
                Err(e) => {
                    // Counted and logged by the disk tier; the fill goes on from memory.
                    tracing::debug!(
                        "disk write dropped for {}: {e}",
                        self.key.primary_key_str().unwrap_or("?")
                    );
                    self.disk = None;
                    let c = &self.store.counters;
                    c.disk_dropped_fills.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if let Err(e) = self.fill.body.record(data, eof, on_disk) {
            self.abort();
            return Err(e.into_pingora());
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        let len = self.fill.body.len();
        if let Some(expected) = self.expected.filter(|&e| e != len) {
            self.abort();
            let err = CacheError::LengthMismatch {
                written: len,
                expected,
            };
            return Err(err.into_pingora());
        }
        let mut charged = 0;
        if let Some(writer) = self.disk.take() {
            match writer.finish(&self.fill.purged).await {
                Ok(n) => charged += n,
                Err(CacheError::Purged) => {}
                // Counted and logged by the disk tier; readers still have every byte.
                Err(e) => tracing::debug!(
                    "disk commit dropped for {}: {e}",
                    self.key.primary_key_str().unwrap_or("?")
                ),
            }
        }
        let memory_body = self.fill.body.memory_body();
        let purged = || self.fill.purged.load(Ordering::Acquire);
        let memory_meta = self.memory_meta.take();
        let mut whole = None;
        if let (Some(chunks), Some(meta), false) = (memory_body, memory_meta, purged()) {
            let body_len: usize = chunks.iter().map(Bytes::len).sum();
            if self.store.fits_memory(body_len as u64, meta.len()) {
                // One exact-size copy (upstream chunks may pin larger read buffers): the
                // memory tier keeps it, and readers still behind take the rest from it.
                let mut body = Vec::with_capacity(body_len);
                for chunk in &chunks {
                    body.extend_from_slice(chunk);
                }
                let body = Bytes::from(body);
                if let Some(n) = self
                    .store
                    .memory
                    .insert_whole(self.fill.key, meta, body.clone())
                {
                    charged += n as u64;
                    if purged() {
                        self.store.memory.remove(&self.key);
                    }
                }
                whole = Some(body);
            }
        }
        self.fill.body.complete(whole);
        self.finished = true;
        self.store.forget_fill(&self.fill);
        Ok(MissFinishType::Created(
            usize::try_from(charged).unwrap_or(usize::MAX),
        ))
    }

    fn streaming_write_tag(&self) -> Option<&[u8]> {
        Some(&self.tag)
    }
}

impl Drop for TieredMissHandler {
    fn drop(&mut self) {
        if !self.finished {
            self.abort();
        }
    }
}
