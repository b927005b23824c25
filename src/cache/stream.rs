//! A body being written that readers stream while it grows (pingora's
//! `support_streaming_partial_write`): the one partial-read logic of every tier.
//!
//! [`StreamBody`] is the body so far and [`StreamReader`] a hit handler over it. The
//! memory tier's fills keep their body in memory only; the disk tier's and the tiered
//! store's ([`StreamFill`]) also write a temp file. A body lives in up to three places:
//! - the whole body as one buffer, once the writer has made it (the memory tier's final
//!   copy): a reader still behind takes all the rest in one piece, so a stampede whose
//!   clients are slower than the origin is answered in a few large writes rather than
//!   one per upstream read;
//! - memory chunks, as the writer handed them over (no copy): `[mem.start, len)`. Fills
//!   of objects small enough for the memory tier buffer from byte 0 (readers then never
//!   touch the disk, and a disk that fails mid-body changes nothing for them); when the
//!   disk fails under a larger object, the rest is kept in memory up to a cap;
//! - the temp file: bytes `[0, disk_len)`, read with `pread` on the writer's own file
//!   descriptor (so a rename or an unlink of the temp file does not matter to readers).
//!
//! A reader takes bytes from memory when it can, else from the file, else waits: readers
//! wake on every write through a `watch` channel instead of polling. A writer that goes
//! away before completing marks the body aborted, and its readers get an error once they
//! have read what exists, never a clean end (pingora issue #932).

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
struct BodyState {
    len: u64,
    disk_len: u64,
    mem: Option<Chunks>,
    /// The whole body in one buffer, set on completion by a writer that made one.
    whole: Option<Bytes>,
    eof: bool,
    status: Status,
}

/// The body of one fill: written by its miss handler, read by any number of readers.
pub(crate) struct StreamBody {
    /// Most bytes kept in memory (from 0 while buffering, or as the tail after a disk
    /// failure).
    mem_cap: usize,
    state: watch::Sender<BodyState>,
}

impl StreamBody {
    /// `buffer`: keep the body in memory from byte 0 while it stays within `mem_cap`.
    pub(crate) fn new(buffer: bool, mem_cap: usize) -> Self {
        let state = BodyState {
            mem: buffer.then(|| Chunks::from(0)),
            ..BodyState::default()
        };
        Self {
            mem_cap,
            state: watch::Sender::new(state),
        }
    }

    /// A body held in memory only (the memory tier's fills).
    pub(crate) fn in_memory() -> Self {
        Self::new(true, usize::MAX)
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
        if let Some(whole) = st.whole.as_ref() {
            return Some(vec![whole.clone()]);
        }
        let mem = st
            .mem
            .as_ref()
            .filter(|m| m.start == 0 && m.end() == st.len)?;
        Some(mem.chunks.clone())
    }

    pub(crate) fn len(&self) -> u64 {
        self.state.borrow().len
    }

    /// Marks the body complete. `whole`: the same bytes in one buffer, which readers
    /// then take the rest from (the chunks are let go).
    pub(crate) fn complete(&self, whole: Option<Bytes>) {
        self.state.send_modify(|st| {
            if let Some(whole) = whole.filter(|w| w.len() as u64 == st.len) {
                st.whole = Some(whole);
                st.mem = None;
            }
            st.status = Status::Complete;
        });
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

    pub(crate) fn is_aborted(&self) -> bool {
        self.state.borrow().status == Status::Aborted
    }

    /// A reader from the start of the body. `file`: the temp file and the offset of the
    /// body in it; `owner`: what the reader keeps alive (its fill) while it reads.
    pub(crate) fn reader(
        &self,
        file: Option<(Arc<File>, u64)>,
        owner: Arc<dyn Any + Send + Sync>,
    ) -> StreamReader {
        StreamReader {
            rx: self.state.subscribe(),
            file,
            _owner: owner,
            pos: 0,
            end: None,
            sought: false,
        }
    }
}

/// One object being written to disk, shared by its writer, a registry and its readers.
pub(crate) struct StreamFill {
    pub(crate) key: HashBinary,
    pub(crate) id: u64,
    pub(crate) meta: Arc<MetaBytes>,
    /// Set by a purge: the fill is not stored and not offered to new readers.
    pub(crate) purged: AtomicBool,
    /// The temp file and the offset of the body in it.
    file: Option<(Arc<File>, u64)>,
    pub(crate) body: StreamBody,
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
        Self {
            key,
            id,
            meta,
            purged: AtomicBool::new(false),
            file,
            body: StreamBody::new(buffer, mem_cap),
        }
    }

    /// Bytes written so far and the declared length (decodes the meta: for the rare
    /// Range request that meets a fill in progress, not for every read).
    pub(crate) fn progress(&self) -> FillProgress {
        let total = self.meta.to_meta().ok().as_ref().and_then(declared_len);
        FillProgress {
            written: self.body.len(),
            total,
        }
    }

    /// Whether a plain lookup may hand this fill to a new reader.
    pub(crate) fn is_attachable(&self) -> bool {
        !self.purged.load(Ordering::Acquire) && !self.body.is_aborted()
    }

    /// A reader from the start of the body.
    pub(crate) fn hit(self: &Arc<Self>) -> Result<(CacheMeta, HitHandler)> {
        let meta = self.meta.to_meta()?;
        let reader = self.body.reader(self.file.clone(), self.clone());
        Ok((meta, Box::new(reader)))
    }
}

enum Next {
    Bytes(Bytes),
    File(Arc<File>, u64, usize),
    Wait,
    End,
    Fail(CacheError),
}

/// A reader of a body being written; waits for bytes not yet written, also after a seek.
pub(crate) struct StreamReader {
    rx: watch::Receiver<BodyState>,
    file: Option<(Arc<File>, u64)>,
    _owner: Arc<dyn Any + Send + Sync>,
    pos: u64,
    end: Option<u64>,
    /// A seek happened and nothing was read since: its start must exist in the body.
    sought: bool,
}

impl StreamReader {
    fn next(&mut self) -> Next {
        let st = self.rx.borrow_and_update();
        let limit = self.end.unwrap_or(u64::MAX);
        if self.pos >= limit {
            return Next::End;
        }
        if let Some(whole) = st.whole.as_ref() {
            let to = limit.min(whole.len() as u64);
            if self.pos < to {
                // Both bounds are within `whole`, whose length is a usize.
                return Next::Bytes(whole.slice(self.pos as usize..to as usize));
            }
        }
        if let Some(b) = st.mem.as_ref().and_then(|m| m.slice(self.pos, limit)) {
            return Next::Bytes(b);
        }
        if self.pos < st.disk_len {
            if let Some((file, body_off)) = &self.file {
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
impl HandleHit for StreamReader {
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
                    // The sender lives in the owner this reader keeps alive: this only
                    // fails if it is torn down.
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
        let st = self.rx.borrow();
        if st.status == Status::Complete && start >= st.len {
            let err = CacheError::SeekPastEnd { start, len: st.len };
            return Err(err.into_pingora());
        }
        drop(st);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(chunks: &[&'static [u8]]) -> StreamBody {
        let body = StreamBody::in_memory();
        for chunk in chunks {
            body.record(Bytes::from_static(chunk), false, false)
                .expect("recorded");
        }
        body
    }

    fn owner() -> Arc<dyn Any + Send + Sync> {
        Arc::new(())
    }

    async fn read(reader: &mut StreamReader) -> Option<Bytes> {
        reader.read_body().await.expect("read")
    }

    #[tokio::test]
    async fn reader_behind_a_completed_body_takes_the_rest_in_one_piece() {
        let body = body_of(&[b"ab", b"cd", b"ef"]);
        let mut reader = body.reader(None, owner());
        assert_eq!(read(&mut reader).await.as_deref(), Some(&b"ab"[..]));
        body.complete(Some(Bytes::from_static(b"abcdef")));
        assert_eq!(read(&mut reader).await.as_deref(), Some(&b"cdef"[..]));
        assert_eq!(read(&mut reader).await, None);
    }

    #[tokio::test]
    async fn reader_without_a_whole_buffer_reads_chunk_by_chunk() {
        let body = body_of(&[b"ab", b"cd"]);
        body.complete(None);
        let mut reader = body.reader(None, owner());
        assert_eq!(read(&mut reader).await.as_deref(), Some(&b"ab"[..]));
        assert_eq!(read(&mut reader).await.as_deref(), Some(&b"cd"[..]));
        assert_eq!(read(&mut reader).await, None);
    }

    #[tokio::test]
    async fn whole_buffer_of_the_wrong_length_is_not_used() {
        let body = body_of(&[b"ab", b"cd"]);
        body.complete(Some(Bytes::from_static(b"abc")));
        let mut reader = body.reader(None, owner());
        assert_eq!(read(&mut reader).await.as_deref(), Some(&b"ab"[..]));
        assert_eq!(read(&mut reader).await.as_deref(), Some(&b"cd"[..]));
        assert_eq!(read(&mut reader).await, None);
    }

    #[tokio::test]
    async fn range_of_a_whole_body_is_one_exact_slice() {
        let body = body_of(&[b"ab", b"cd", b"ef"]);
        body.complete(Some(Bytes::from_static(b"abcdef")));
        let mut reader = body.reader(None, owner());
        reader.seek(1, Some(4)).expect("seek");
        assert_eq!(read(&mut reader).await.as_deref(), Some(&b"bcd"[..]));
        assert_eq!(read(&mut reader).await, None);
    }

    #[tokio::test]
    async fn waiting_reader_wakes_on_completion_and_takes_the_whole_rest() {
        let body = Arc::new(body_of(&[b"ab"]));
        let mut reader = body.reader(None, owner());
        assert_eq!(read(&mut reader).await.as_deref(), Some(&b"ab"[..]));
        let waiting = tokio::spawn(async move { read(&mut reader).await });
        for _ in 0..5 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished(), "nothing new to read yet");
        body.record(Bytes::from_static(b"cd"), true, false)
            .expect("recorded");
        body.complete(Some(Bytes::from_static(b"abcd")));
        let got = waiting.await.expect("reader task");
        assert_eq!(got.as_deref(), Some(&b"cd"[..]));
    }

    #[tokio::test]
    async fn aborted_body_fails_its_reader_after_what_exists() {
        let body = body_of(&[b"ab"]);
        let mut reader = body.reader(None, owner());
        body.abort();
        assert_eq!(read(&mut reader).await.as_deref(), Some(&b"ab"[..]));
        assert!(
            reader.read_body().await.is_err(),
            "an abort is never a clean end"
        );
    }
}
