//! Objects being written: the miss handler, and readers that stream the body as it grows.
//!
//! Each fill keeps the body as the chunks pingora hands us (no copy) in a `watch` channel,
//! so readers wake on every write instead of polling. On `finish()` the body is copied once
//! into one exact-size buffer and stored in TinyUFO (so the charged bytes are the bytes held,
//! whatever buffers upstream reads came in). A miss handler dropped before `finish()` marks
//! the fill aborted and its readers get an error, never a clean end (pingora #932).

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::key::HashBinary;
use pingora_cache::storage::streaming_write::U64WriteId;
use pingora_cache::storage::{HandleHit, HandleMiss, HitHandler, MissFinishType};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheKey, CacheMeta, Storage};
use pingora_error::Result;
use tokio::sync::watch;

use super::{CacheError, MemoryStorage, StoredMeta};
use crate::cache::{declared_body_len, FillProgress};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum Status {
    #[default]
    Writing,
    Complete,
    Aborted,
}

/// The body so far. `ends[i]` is the body offset just past `chunks[i]`.
#[derive(Default)]
pub(super) struct FillState {
    chunks: Vec<Bytes>,
    ends: Vec<usize>,
    len: usize,
    eof: bool,
    status: Status,
}

impl FillState {
    /// A zero-copy slice from `pos`, within one chunk, ending at or before `limit`.
    fn slice(&self, pos: usize, limit: usize) -> Option<Bytes> {
        let limit = limit.min(self.len);
        if pos >= limit {
            return None;
        }
        let idx = self.ends.partition_point(|&end| end <= pos);
        let chunk = self.chunks.get(idx)?;
        let start = idx.checked_sub(1).map_or(0, |i| self.ends[i]);
        Some(chunk.slice(pos - start..(limit - start).min(chunk.len())))
    }
}

/// One in-progress write, shared by the miss handler, the in-progress map and readers.
pub(super) struct Fill {
    pub(super) key: HashBinary,
    pub(super) id: u64,
    pub(super) meta: Arc<StoredMeta>,
    /// Set by a purge: the fill is neither stored nor offered to new readers.
    pub(super) purged: AtomicBool,
    state: watch::Sender<FillState>,
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
            state: watch::Sender::new(FillState::default()),
            storage,
        }
    }

    /// Whether a plain `lookup` may hand this fill to a new reader.
    pub(super) fn is_attachable(&self) -> bool {
        !self.purged.load(Ordering::Acquire) && self.state.borrow().status != Status::Aborted
    }

    /// A reader from the start of the body.
    pub(super) fn hit(self: Arc<Self>) -> Result<(CacheMeta, HitHandler)> {
        let meta = self.meta.to_meta()?;
        let hit = PartialHit {
            rx: self.state.subscribe(),
            fill: self,
            pos: 0,
            end: None,
            sought: false,
        };
        Ok((meta, Box::new(hit)))
    }

    /// Bytes written so far and the declared length.
    pub(super) fn progress(&self) -> FillProgress {
        FillProgress {
            written: self.state.borrow().len as u64,
            total: declared_body_len(&self.meta.decoded_header),
        }
    }

    fn set_status(&self, status: Status) {
        self.state.send_modify(|st| st.status = status);
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        let len = self.state.borrow().len;
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
        let mut outcome = Ok(());
        let added = data.len();
        self.fill.state.send_if_modified(|st| {
            if st.status != Status::Writing || (st.eof && !data.is_empty()) {
                outcome = Err(CacheError::WriteAfterEnd);
                return false;
            }
            st.eof |= eof;
            if data.is_empty() {
                return false;
            }
            st.len += data.len();
            st.chunks.push(data);
            st.ends.push(st.len);
            true
        });
        if outcome.is_ok() {
            let storage = self.fill.storage;
            storage.fill_bytes.fetch_add(added, Ordering::Relaxed);
        }
        outcome.map_err(CacheError::into_pingora)
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        let (chunks, len) = {
            let st = self.fill.state.borrow();
            if st.status != Status::Writing {
                return Err(CacheError::WriteAfterEnd.into_pingora());
            }
            (st.chunks.clone(), st.len)
        };
        if let Some(expected) = self.expected_len.filter(|&e| e != len) {
            // Dropping `self` on return aborts the fill: a short body must never look whole.
            let err = CacheError::LengthMismatch {
                written: len as u64,
                expected: expected as u64,
            };
            return Err(err.into_pingora());
        }
        // One exact-size copy: upstream chunks may pin much larger read buffers.
        let mut body = Vec::with_capacity(len);
        for chunk in &chunks {
            body.extend_from_slice(chunk);
        }
        let storage = self.fill.storage;
        let charged = storage.commit(&self.fill, Bytes::from(body));
        self.fill.set_status(Status::Complete);
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
            self.fill.set_status(Status::Aborted);
            self.fill.storage.forget_fill(&self.fill);
        }
    }
}

/// A reader of a fill in progress; waits for bytes not yet written, including after a seek.
pub(super) struct PartialHit {
    fill: Arc<Fill>,
    rx: watch::Receiver<FillState>,
    pos: usize,
    end: Option<usize>,
    /// A seek happened and no byte has been read since: its start must exist in the body.
    sought: bool,
}

#[async_trait]
impl HandleHit for PartialHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        let limit = self.end.unwrap_or(usize::MAX);
        loop {
            {
                let st = self.rx.borrow_and_update();
                if self.pos >= limit {
                    return Ok(None);
                }
                if let Some(bytes) = st.slice(self.pos, limit) {
                    self.pos += bytes.len();
                    self.sought = false;
                    return Ok(Some(bytes));
                }
                match st.status {
                    Status::Writing => {}
                    Status::Aborted => return Err(CacheError::Aborted.into_pingora()),
                    Status::Complete if self.sought => {
                        let err = CacheError::SeekPastEnd {
                            start: self.pos as u64,
                            len: st.len as u64,
                        };
                        return Err(err.into_pingora());
                    }
                    Status::Complete => return Ok(None),
                }
            }
            // The sender lives in `self.fill`, so this only fails if the fill is torn down.
            if self.rx.changed().await.is_err() {
                return Err(CacheError::Aborted.into_pingora());
            }
        }
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if let Some(end) = end.filter(|&end| end < start) {
            return Err(CacheError::BadRange {
                start: start as u64,
                end: end as u64,
            }
            .into_pingora());
        }
        let st = self.fill.state.borrow();
        if st.status == Status::Complete && start >= st.len {
            let err = CacheError::SeekPastEnd {
                start: start as u64,
                len: st.len as u64,
            };
            return Err(err.into_pingora());
        }
        self.pos = start;
        self.end = end;
        self.sought = true;
        Ok(())
    }

    fn should_count_access(&self) -> bool {
        // There is no eviction manager to tell, and the size is not known yet.
        false
    }

    fn get_eviction_weight(&self) -> usize {
        0
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}
