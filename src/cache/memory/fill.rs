//! Objects being written to the memory tier: the miss handler. Readers stream the body
//! as it grows through the one partial-body reader (`crate::cache::stream`).
//!
//! The body is kept as the chunks pingora hands us (no copy). On `finish()` it is copied
//! once into one exact-size buffer and stored in TinyUFO (so the charged bytes are the
//! bytes held, whatever buffers upstream reads came in); readers still behind take the
//! rest from that buffer. A miss handler dropped before `finish()` aborts the fill and its
//! readers get an error, never a clean end (pingora #932).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::key::HashBinary;
use pingora_cache::storage::streaming_write::U64WriteId;
use pingora_cache::storage::{HandleMiss, HitHandler, MissFinishType};
use pingora_cache::CacheMeta;
use pingora_error::Result;

use super::{CacheError, MemoryStorage, StoredMeta};
use crate::cache::stream::StreamBody;
use crate::cache::{declared_body_len, FillProgress};

/// One in-progress write, shared by the miss handler, the in-progress map and readers.
pub(super) struct Fill {
    pub(super) key: HashBinary,
    pub(super) id: u64,
    pub(super) meta: Arc<StoredMeta>,
    /// Set by a purge: the fill is neither stored nor offered to new readers.
    pub(super) purged: AtomicBool,
    body: StreamBody,
    storage: &'static MemoryStorage,
}

crate::cache::fills::registered!(Fill);

impl Fill {
    pub(super) fn new(
        storage: &'static MemoryStorage,
        key: HashBinary,
        id: u64,
        meta: Arc<StoredMeta>,
    ) -> Self {
        Self {
            key,
            id,
            meta,
            purged: AtomicBool::new(false),
            body: StreamBody::in_memory(),
            storage,
        }
    }

    /// Whether a plain `lookup` may hand this fill to a new reader.
    pub(super) fn is_attachable(&self) -> bool {
        !self.purged.load(Ordering::Acquire) && !self.body.is_aborted()
    }

    /// A reader from the start of the body.
    pub(super) fn hit(self: Arc<Self>) -> Result<(CacheMeta, HitHandler)> {
        let meta = self.meta.to_meta()?;
        let reader = self.body.reader(None, self.clone());
        Ok((meta, Box::new(reader)))
    }

    /// Bytes written so far and the declared length.
    pub(super) fn progress(&self) -> FillProgress {
        FillProgress {
            written: self.body.len(),
            total: declared_body_len(&self.meta.decoded_header),
        }
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        let len = usize::try_from(self.body.len()).unwrap_or(usize::MAX);
        self.storage.fill_bytes.fetch_sub(len, Ordering::Relaxed);
    }
}

/// Writes one fill. Dropping it without `finish()` aborts the fill.
pub(super) struct MemoryMissHandler {
    fill: Arc<Fill>,
    tag: U64WriteId,
    expected_len: Option<usize>,
    finished: bool,
}

impl MemoryMissHandler {
    pub(super) fn new(fill: Arc<Fill>, expected_len: Option<u64>) -> Self {
        Self {
            tag: fill.id.into(),
            expected_len: expected_len.map(|l| usize::try_from(l).unwrap_or(usize::MAX)),
            fill,
            finished: false,
        }
    }
}

#[async_trait]
impl HandleMiss for MemoryMissHandler {
    async fn write_body(&mut self, data: Bytes, eof: bool) -> Result<()> {
        let added = data.len();
        self.fill
            .body
            .record(data, eof, false)
            .map_err(CacheError::into_pingora)?;
        let storage = self.fill.storage;
        storage.fill_bytes.fetch_add(added, Ordering::Relaxed);
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        let body = &self.fill.body;
        if !body.is_writing() {
            return Err(CacheError::WriteAfterEnd.into_pingora());
        }
        let len = usize::try_from(body.len()).unwrap_or(usize::MAX);
        if let Some(expected) = self.expected_len.filter(|&e| e != len) {
            // Dropping `self` on return aborts the fill: a short body must never look whole.
            let err = CacheError::LengthMismatch {
                written: len as u64,
                expected: expected as u64,
            };
            return Err(err.into_pingora());
        }
        // `StreamBody::in_memory` always holds the body from byte 0; were it not whole,
        // failing (the fill aborts) beats storing a short body.
        let chunks = body
            .memory_body()
            .ok_or_else(|| CacheError::Aborted.into_pingora())?;
        // One exact-size copy: upstream chunks may pin much larger read buffers.
        let mut whole = Vec::with_capacity(len);
        for chunk in &chunks {
            whole.extend_from_slice(chunk);
        }
        let whole = Bytes::from(whole);
        let storage = self.fill.storage;
        let charged = storage.commit(&self.fill, whole.clone());
        body.complete(Some(whole));
        self.finished = true;
        storage.forget_fill(&self.fill);
        Ok(MissFinishType::Created(charged.unwrap_or(0)))
    }

    fn streaming_write_tag(&self) -> Option<&[u8]> {
        Some(self.tag.as_bytes())
    }
}

impl Drop for MemoryMissHandler {
    fn drop(&mut self) {
        if !self.finished {
            self.fill.body.abort();
            self.fill.storage.forget_fill(&self.fill);
        }
    }
}
