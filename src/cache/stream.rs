//! A fill in progress that readers stream while it is written (pingora's
//! `support_streaming_partial_write`), for the disk tier and the tiered store.
//!
//! The body lives in up to two places:
//! - the temp file: bytes `[0, disk_len)`, read with `pread` on the writer's own file
//!   descriptor (so a rename or an unlink of the temp file does not matter to readers);
//! - memory chunks: `[mem.start, len)`. The tiered store buffers objects small enough
//!   for the memory tier from byte 0 (readers then never touch the disk, and a disk
//!   that fails mid-body changes nothing for them); when the disk fails under a larger
//!   object, the rest of the body is kept in memory up to a cap.
//!
//! A reader takes bytes from memory when it can, else from the file, else waits for the
//! writer. A writer that goes away before `finish()` marks the fill aborted and its
//! readers get an error once they have read what exists, never a clean end (pingora
//! issue #932).

use std::any::Any;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::key::HashBinary;
use pingora_cache::storage::{HandleHit, HitHandler};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheKey, CacheMeta, Storage};
use pingora_error::Result;
use tokio::sync::watch;

use super::meta::MetaBytes;
use crate::cache::{declared_len, CacheError, FillProgress};

/// Bytes read from a file per `read_body` call: big objects are never held whole.
pub(crate) const READ_CHUNK: usize = 64 << 10;

/// Reads `n` bytes at `off` on the blocking pool. A file shorter than that is an
/// `UnexpectedEof` error.
pub(crate) async fn read_chunk(file: Arc<File>, off: u64, n: usize) -> io::Result<Bytes> {
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; n];
        file.read_exact_at(&mut buf, off)?;
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(io::Error::other)?
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum Status {
    #[default]
    Writing,
    Complete,
    Aborted,
}

/// Body bytes `[start, end)` as the chunks the writer handed over (no copy).
#[derive(Default)]
struct Chunks {
    start: u64,
    chunks: Vec<Bytes>,
    /// `ends[i]`: the body offset just past `chunks[i]`.
    ends: Vec<u64>,
    bytes: usize,
}

impl Chunks {
    fn from(start: u64) -> Self {
        Self {
            start,
            ..Self::default()
        }
    }

    fn end(&self) -> u64 {
        self.ends.last().copied().unwrap_or(self.start)
    }

    fn push(&mut self, data: Bytes) {
        let end = self.end() + data.len() as u64;
        self.bytes += data.len();
        self.chunks.push(data);
        self.ends.push(end);
    }

    /// A zero-copy slice from `pos` within one chunk, ending at or before `limit`.
    fn slice(&self, pos: u64, limit: u64) -> Option<Bytes> {
        let limit = limit.min(self.end());
        if pos < self.start || pos >= limit {
            return None;
        }
        let idx = self.ends.partition_point(|&end| end <= pos);
        let chunk = self.chunks.get(idx)?;
        let chunk_start = idx.checked_sub(1).map_or(self.start, |i| self.ends[i]);
        let from = usize::try_from(pos - chunk_start).ok()?;
        let to = usize::try_from(limit - chunk_start).ok()?.min(chunk.len());
        Some(chunk.slice(from..to))
    }
}

#[derive(Default)]
struct FillState {
    len: u64,
    disk_len: u64,
    mem: Option<Chunks>,
    eof: bool,
    status: Status,
}

/// One object being written, shared by its writer, a registry and its readers.
pub(crate) struct StreamFill {
    pub(crate) key: HashBinary,
    pub(crate) id: u64,
    pub(crate) meta: Arc<MetaBytes>,
    /// Set by a purge: the fill is not stored and not offered to new readers.
    pub(crate) purged: AtomicBool,
    /// The temp file and the offset of the body in it.
    file: Option<(Arc<File>, u64)>,
    /// Most bytes kept in memory (from 0 while buffering, or as the tail after a disk
    /// failure).
    mem_cap: usize,
    state: watch::Sender<FillState>,
}

crate::cache::fills::registered!(StreamFill);

impl StreamFill {
    /// `buffer`: keep the body in memory from byte 0 while it stays within `mem_cap`.
    pub(crate) fn new(
        key: HashBinary,
        id: u64,
        meta: Arc<MetaBytes>,
        file: Option<(Arc<File>, u64)>,
        buffer: bool,
        mem_cap: usize,
    ) -> Self {
        let state = FillState {
            mem: buffer.then(|| Chunks::from(0)),
            ..FillState::default()
        };
        Self {
            key,
            id,
            meta,
            purged: AtomicBool::new(false),
            file,
            mem_cap,
            state: watch::Sender::new(state),
        }
    }

    /// Records `data` as the next body bytes. `on_disk`: it has been written to the file
    /// at its offset. Fails when the fill cannot go on (written after the end, or the
    /// disk failed and memory cannot take the rest); the caller then aborts.
    pub(crate) fn record(&self, data: Bytes, eof: bool, on_disk: bool) -> Result<(), CacheError> {
        let mut outcome = Ok(());
        let cap = self.mem_cap;
        self.state.send_if_modified(|st| {
            if st.status != Status::Writing || (st.eof && !data.is_empty()) {
                outcome = Err(CacheError::WriteAfterEnd);
                return false;
            }
            st.eof |= eof;
            if data.is_empty() {
                return false;
            }
            let n = data.len() as u64;
            if on_disk {
                st.disk_len += n;
            }
            match st.mem.as_mut() {
                Some(mem) => mem.push(data),
                None if !on_disk => {
                    let mut tail = Chunks::from(st.len);
                    tail.push(data);
                    st.mem = Some(tail);
                }
                None => {}
            }
            st.len += n;
            if st.mem.as_ref().is_some_and(|m| m.bytes > cap) {
                if st.disk_len == st.len {
                    st.mem = None; // too big for memory: readers go to the file
                } else {
                    outcome = Err(CacheError::OverMemoryFallback { cap });
                }
            }
            true
        });
        outcome
    }

    /// The whole body as chunks, when it is held in memory from byte 0.
    pub(crate) fn memory_body(&self) -> Option<Vec<Bytes>> {
        let st = self.state.borrow();
        let mem = st
            .mem
            .as_ref()
            .filter(|m| m.start == 0 && m.end() == st.len)?;
        Some(mem.chunks.clone())
    }

    pub(crate) fn len(&self) -> u64 {
        self.state.borrow().len
    }

    /// Bytes written so far and the declared length (decodes the meta: for the rare
    /// Range request that meets a fill in progress, not for every read).
    pub(crate) fn progress(&self) -> FillProgress {
        let total = self.meta.to_meta().ok().as_ref().and_then(declared_len);
        FillProgress {
            written: self.len(),
            total,
        }
    }

    pub(crate) fn complete(&self) {
        self.state.send_modify(|st| st.status = Status::Complete);
    }

    pub(crate) fn abort(&self) {
        self.state.send_modify(|st| {
            if st.status == Status::Writing {
                st.status = Status::Aborted;
            }
        });
    }

    pub(crate) fn is_writing(&self) -> bool {
        self.state.borrow().status == Status::Writing
    }

    /// Whether a plain lookup may hand this fill to a new reader.
    pub(crate) fn is_attachable(&self) -> bool {
        !self.purged.load(Ordering::Acquire) && self.state.borrow().status != Status::Aborted
    }

    /// A reader from the start of the body.
    pub(crate) fn hit(self: &Arc<Self>) -> Result<(CacheMeta, HitHandler)> {
        let meta = self.meta.to_meta()?;
        let hit = StreamHit {
            rx: self.state.subscribe(),
            fill: self.clone(),
            pos: 0,
            end: None,
            sought: false,
        };
        Ok((meta, Box::new(hit)))
    }
}

enum Next {
    Bytes(Bytes),
    File(Arc<File>, u64, usize),
    Wait,
    End,
    Fail(CacheError),
}

/// A reader of a fill in progress; waits for bytes not yet written, also after a seek.
pub(crate) struct StreamHit {
    fill: Arc<StreamFill>,
    rx: watch::Receiver<FillState>,
    pos: u64,
    end: Option<u64>,
    /// A seek happened and nothing was read since: its start must exist in the body.
    sought: bool,
}

impl StreamHit {
    fn next(&mut self) -> Next {
        let st = self.rx.borrow_and_update();
        let limit = self.end.unwrap_or(u64::MAX);
        if self.pos >= limit {
            return Next::End;
        }
        if let Some(b) = st.mem.as_ref().and_then(|m| m.slice(self.pos, limit)) {
            return Next::Bytes(b);
        }
        if self.pos < st.disk_len {
            if let Some((file, body_off)) = &self.fill.file {
                let n = (st.disk_len.min(limit) - self.pos).min(READ_CHUNK as u64) as usize;
                return Next::File(file.clone(), body_off + self.pos, n);
            }
        }
        match st.status {
            Status::Writing => Next::Wait,
            Status::Aborted => Next::Fail(CacheError::Aborted),
            Status::Complete if self.sought => Next::Fail(CacheError::SeekPastEnd {
                start: self.pos,
                len: st.len,
            }),
            Status::Complete => Next::End,
        }
    }
}

#[async_trait]
impl HandleHit for StreamHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        loop {
            let bytes = match self.next() {
                Next::Bytes(b) => b,
                Next::File(file, off, n) => read_chunk(file, off, n)
                    .await
                    .map_err(|e| CacheError::ReadFill(e).into_pingora())?,
                Next::End => return Ok(None),
                Next::Fail(e) => return Err(e.into_pingora()),
                Next::Wait => {
                    // The sender lives in `self.fill`: this only fails if it is torn down.
                    if self.rx.changed().await.is_err() {
                        return Err(CacheError::Aborted.into_pingora());
                    }
                    continue;
                }
            };
            self.pos += bytes.len() as u64;
            self.sought = false;
            return Ok(Some(bytes));
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
        let (start, end) = (start as u64, end.map(|e| e as u64));
        if let Some(end) = end.filter(|&end| end < start) {
            return Err(CacheError::BadRange { start, end }.into_pingora());
        }
        let st = self.fill.state.borrow();
        if st.status == Status::Complete && start >= st.len {
            let err = CacheError::SeekPastEnd { start, len: st.len };
            return Err(err.into_pingora());
        }
        self.pos = start;
        self.end = end;
        self.sought = true;
        Ok(())
    }

    fn should_count_access(&self) -> bool {
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
