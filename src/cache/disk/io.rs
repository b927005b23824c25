//! Reading and writing cache files: checking a file before it is served, the hit
//! reader (a small body in one `pread`, a large one in chunks; seekable; body CRC
//! checked on full reads) and the writer (temp file, `pwrite`, header last, rename when
//! complete). Hits read inline what the kernel has cached ([`super::nowait`]) and only
//! the rest on the blocking pool.

use std::any::Any;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::storage::HandleHit;
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheKey, Storage};
use pingora_error::Result;

use super::format::{self, Corrupt, Header, MetaBytes, ObjectRef};
use super::fs::FileId;
pub(crate) use super::fs::{is_absent, remove_quietly};
use super::nowait;
use super::publish::{Published, Ticket};
use super::root::RootDir;
use super::{legacy, CacheError, DiskStorage};
use crate::cache::stream::READ_CHUNK;
use crate::media_type::{self, SNIFF_LEN};

/// A hit's file mtime is refreshed at most this often: it orders the LRU after a
/// restart, and a write per hit would cost more than it tells.
const TOUCH_EVERY: Duration = Duration::from_secs(3600);

/// What a file at an object's path turned out to be.
pub(crate) enum Inspected {
    /// A checked file of ours.
    Ours(Header),
    /// An shm-cached file that passed the checks: served as is from byte 0.
    Legacy { content_type: &'static str },
}

/// Bytes read first: our header is a few hundred bytes.
const FIRST_READ: usize = 1024;

/// A body range up to this long is read in one piece: one `pread` per hit for images,
/// one buffer that the memory tier can keep as is. Longer ones go in [`READ_CHUNK`]s
/// until the rest is this long, so a video of hundreds of MB is never held whole. It also bounds what one poll of
/// the event loop copies inline from the page cache (about 100 us at worst).
pub(crate) const WHOLE_READ: u64 = 1 << 20;

/// Reads `n` bytes at `off`: inline what the page cache holds, the rest (a cold file)
/// on the blocking pool. A file shorter than that is an `UnexpectedEof` error. `n` is
/// at most [`WHOLE_READ`] for callers on the event loop.
pub(crate) async fn read_at(file: Arc<File>, off: u64, n: usize) -> io::Result<Bytes> {
    let mut buf = Vec::with_capacity(n);
    while buf.len() < n {
        match nowait::pread_nowait(&file, &mut buf, n, off)? {
            Some(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Some(_) => {}
            None => {
                let buf = tokio::task::spawn_blocking(move || {
                    nowait::pread_fill(&file, &mut buf, n, off).map(|()| buf)
                })
                .await
                .map_err(io::Error::other)??;
                return Ok(Bytes::from(buf));
            }
        }
    }
    Ok(Bytes::from(buf))
}

/// The event loop's try at [`open_checked`] for a hit (never waits for the disk): a
/// file of ours whose path, header and size the kernel has cached and that checks out,
/// or no file at all. `None` whenever that cannot be told without waiting, or the file
/// wants more than a header check (an shm-cached file, an invalid one, an mtime due a
/// touch): [`open_checked`] on the blocking pool then does it all.
pub(crate) fn open_checked_nowait(root: &RootDir, obj: &ObjectRef) -> Option<Found> {
    let (file, stamp) = match open_fresh_nowait(root, obj, SystemTime::now()) {
        Ok(Some(opened)) => opened,
        Ok(None) => return None,
        Err(e) if is_absent(&e) => return Some(Found::Missing),
        Err(_) => return None, // the blocking path counts and logs it
    };
    let header = header_nowait(&file, obj, stamp.len)?;
    Some(Found::Valid(Opened {
        file,
        id: stamp.id,
        len: stamp.len,
        mtime: stamp.mtime,
        kind: Inspected::Ours(header),
    }))
}

/// What tells one version of a file from another: a republished object is a new inode,
/// and a file touched or rewritten in place has a new mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    pub id: FileId,
    pub len: u64,
    pub mtime: SystemTime,
}

/// The first half of [`open_checked_nowait`]: `obj`'s file, opened if the kernel can
/// resolve it without I/O, a regular file whose mtime is not due a touch at `now` (the
/// caller's one clock reading for the request).
/// `Ok(None)`: that cannot be had without waiting (or the touch is due); `Err`: a real
/// answer such as `NotFound`.
pub(crate) fn open_fresh_nowait(
    root: &RootDir,
    obj: &ObjectRef,
    now: SystemTime,
) -> io::Result<Option<(File, FileStamp)>> {
    let Some(file) = root.open_cached(obj, now)? else {
        return Ok(None);
    };
    // fstat on an open descriptor needs no I/O: the inode is in memory.
    let Some(md) = file.metadata().ok().filter(|md| md.is_file()) else {
        return Ok(None);
    };
    let Ok(mtime) = md.modified() else {
        return Ok(None);
    };
    let fresh = now
        .duration_since(mtime)
        .map_or(true, |age| age <= TOUCH_EVERY);
    let stamp = FileStamp {
        id: FileId::of(&md),
        len: md.len(),
        mtime,
    };
    Ok(fresh.then_some((file, stamp)))
}

/// The second half: our header read from the page cache and checked (magic, checksum,
/// object, length against the file's `len`); `None` if it cannot be read without waiting
/// or does not check (the blocking path then looks again, and removes a bad file).
pub(crate) fn header_nowait(file: &File, obj: &ObjectRef, len: u64) -> Option<format::Header> {
    let first = usize::try_from(len).ok()?.min(FIRST_READ);
    let mut head = Vec::with_capacity(first);
    while head.len() < first {
        match nowait::pread_nowait(file, &mut head, first, 0) {
            Ok(Some(n)) if n > 0 => {}
            _ => return None,
        }
    }
    if !format::looks_ours(&head) {
        return None;
    }
    let header_len = format::claimed_header_len(&head).ok()?;
    if header_len > head.len() {
        return None; // a meta larger than the first read: rare, left to the full check
    }
    let header = format::decode(&head[..header_len], obj).ok()?;
    if header.header_len.saturating_add(header.body_len) != len {
        return None;
    }
    Some(header)
}

/// Checks the file at `obj`'s path, already open: our header (magic, checksum, object,
/// length), or an adoptable legacy file (known media type, not cut short).
pub(crate) fn inspect(
    file: &File,
    obj: &ObjectRef,
    len: u64,
) -> io::Result<Result<Inspected, Corrupt>> {
    let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
    let first = len_usize.min(FIRST_READ);
    let mut head = vec![0u8; first];
    file.read_exact_at(&mut head, 0)?;
    if format::looks_ours(&head) {
        let header_len = match format::claimed_header_len(&head) {
            Ok(n) if n as u64 <= len => n,
            Ok(_) => return Ok(Err(Corrupt::Lengths)),
            Err(c) => return Ok(Err(c)),
        };
        if header_len > head.len() {
            head.resize(header_len, 0);
            file.read_exact_at(&mut head[first..], first as u64)?;
        }
        let header = match format::decode(&head, obj) {
            Ok(h) => h,
            Err(c) => return Ok(Err(c)),
        };
        let expected = header.header_len.saturating_add(header.body_len);
        if expected != len {
            return Ok(Err(Corrupt::Length {
                actual: len,
                expected,
            }));
        }
        return Ok(Ok(Inspected::Ours(header)));
    }
    let sniff_len = len_usize.min(SNIFF_LEN);
    if sniff_len > head.len() {
        head.resize(sniff_len, 0);
        file.read_exact_at(&mut head[first..], first as u64)?;
    }
    let content_type = media_type::sniff(&head);
    if content_type == media_type::OCTET_STREAM {
        return Ok(Err(Corrupt::UnknownLegacy));
    }
    if !legacy::looks_complete(file, len, content_type, &head)? {
        return Ok(Err(Corrupt::TruncatedLegacy));
    }
    Ok(Ok(Inspected::Legacy { content_type }))
}

/// A file opened for a hit, checked.
pub(crate) struct Opened {
    pub file: File,
    pub id: FileId,
    pub len: u64,
    pub mtime: SystemTime,
    pub kind: Inspected,
}

/// What looking at an object's path found.
pub(crate) enum Found {
    Missing,
    Valid(Opened),
    /// Invalid: the caller removes it, if the path still names it
    /// ([`DiskStorage::drop_file`]).
    Invalid(Corrupt, FileId),
}

/// Opens and checks the file for `obj` (blocking). Removes nothing: an invalid file is
/// reported with its identity, for the caller to remove under the key's lock.
/// `touch`: refresh an old mtime of ours (a hit; not the restart scan).
pub(crate) fn open_checked(path: &Path, obj: &ObjectRef, touch: bool) -> io::Result<Found> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if is_absent(&e) => return Ok(Found::Missing),
        Err(e) => return Err(e),
    };
    let md = file.metadata()?;
    if !md.is_file() {
        return Ok(Found::Missing);
    }
    let (id, len) = (FileId::of(&md), md.len());
    let mtime = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let kind = match inspect(&file, obj, len) {
        Ok(Ok(kind)) => kind,
        Ok(Err(corrupt)) => return Ok(Found::Invalid(corrupt, id)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            // Shrank while we looked: whatever it is, it is not whole.
            let corrupt = Corrupt::Length {
                actual: len,
                expected: len + 1,
            };
            return Ok(Found::Invalid(corrupt, id));
        }
        Err(e) => return Err(e),
    };
    if touch && matches!(kind, Inspected::Ours(_)) {
        let stale = SystemTime::now()
            .duration_since(mtime)
            .is_ok_and(|age| age > TOUCH_EVERY);
        if stale {
            // Best effort: only the LRU order after a restart depends on it.
            let _ = file.set_modified(SystemTime::now());
        }
    }
    Ok(Found::Valid(Opened {
        file,
        id,
        len,
        mtime,
        kind,
    }))
}

/// Reads a completed object's body from its file: a range up to [`WHOLE_READ`] in one
/// piece, a longer one [`READ_CHUNK`] at a time until the rest fits one.
pub struct DiskHit {
    pub(crate) store: &'static DiskStorage,
    pub(crate) obj: ObjectRef,
    pub(crate) file: Arc<File>,
    /// The file's identity: a body found bad removes this file, not a newer one.
    pub(crate) id: FileId,
    pub(crate) meta: Arc<MetaBytes>,
    pub(crate) body_off: u64,
    pub(crate) body_len: u64,
    pub(crate) pos: u64,
    pub(crate) end: u64,
    /// Running CRC and the expected value, while reading the whole body in order.
    pub(crate) crc: Option<(crc32fast::Hasher, u32)>,
}

impl DiskHit {
    pub fn body_len(&self) -> u64 {
        self.body_len
    }

    /// The serialized meta this hit was served with (for promotion into memory).
    pub(crate) fn meta_bytes(&self) -> Arc<MetaBytes> {
        self.meta.clone()
    }

    /// The whole body in one buffer, its CRC checked: for a promotion in the background.
    /// Up to [`WHOLE_READ`] like a hit reads it (inline when cached), a longer one on
    /// the blocking pool, never inline. Rewinds the hit.
    pub(crate) async fn read_whole(&mut self) -> Result<Bytes> {
        self.pos = 0;
        self.end = self.body_len;
        if self.body_len <= WHOLE_READ {
            return self.read_body().await?.ok_or_else(|| {
                CacheError::Corrupt {
                    path: self.obj.path(self.store.dir()),
                    reason: Corrupt::Lengths,
                }
                .into_pingora()
            });
        }
        let (file, off) = (self.file.clone(), self.body_off);
        let n = usize::try_from(self.body_len).map_err(|_| CacheError::Aborted.into_pingora())?;
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = Vec::with_capacity(n);
            nowait::pread_fill(&file, &mut buf, n, off).map(|()| buf)
        })
        .await
        .map_err(io::Error::other)
        .and_then(|r| r);
        let buf = match read {
            Ok(buf) => buf,
            Err(e) => return Err(self.read_failed(e, self.body_off).await),
        };
        self.pos = self.body_len;
        if let Some((_, want)) = self.crc.take() {
            if crc32fast::hash(&buf) != want {
                return Err(self.fail(Corrupt::BodyCrc).await);
            }
            self.store.mark_verified(self.obj);
        }
        Ok(Bytes::from(buf))
    }

    /// A body read at file offset `at` that failed: a file that ends early is corrupt
    /// (dropped, like any corrupt file); any other error is an I/O error, counted.
    async fn read_failed(&self, e: io::Error, at: u64) -> Box<pingora_error::Error> {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            let corrupt = Corrupt::Length {
                actual: at,
                expected: self.body_off + self.body_len,
            };
            return self.fail(corrupt).await;
        }
        self.store.note_read_error(&self.obj, &e);
        CacheError::io("read", self.obj.path(self.store.dir()), e).into_pingora()
    }

    async fn fail(&self, corrupt: Corrupt) -> Box<pingora_error::Error> {
        self.store.drop_corrupt(self.obj, self.id, corrupt).await;
        CacheError::Corrupt {
            path: self.obj.path(self.store.dir()),
            reason: corrupt,
        }
        .into_pingora()
    }
}

#[async_trait]
impl HandleHit for DiskHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let left = self.end - self.pos;
        let n = if left <= WHOLE_READ {
            left
        } else {
            READ_CHUNK as u64
        };
        let n = usize::try_from(n).unwrap_or(READ_CHUNK);
        let at = self.body_off + self.pos;
        let bytes = match read_at(self.file.clone(), at, n).await {
            Ok(b) => b,
            Err(e) => return Err(self.read_failed(e, at).await),
        };
        self.pos += bytes.len() as u64;
        if let Some((hasher, _)) = self.crc.as_mut() {
            hasher.update(&bytes);
        }
        if self.pos == self.body_len {
            if let Some((hasher, want)) = self.crc.take() {
                if hasher.finalize() != want {
                    // Never a clean end: the client sees the response fail.
                    return Err(self.fail(Corrupt::BodyCrc).await);
                }
                self.store.mark_verified(self.obj);
            }
        }
        Ok(Some(bytes))
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

    /// `end` is exclusive and cut to the body; each seek rewinds (multipart ranges).
    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let (start, len) = (start as u64, self.body_len);
        if start >= len {
            return Err(crate::cache::CacheError::SeekPastEnd { start, len }.into_pingora());
        }
        let end = end.map_or(len, |e| (e as u64).min(len));
        if end < start {
            return Err(crate::cache::CacheError::BadRange { start, end }.into_pingora());
        }
        self.pos = start;
        self.end = end;
        self.crc = None;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        usize::try_from(self.body_len).unwrap_or(usize::MAX)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// Writes one object to a temp file; [`DiskWriter::finish`] renames it into place.
/// Dropped before that, it removes the temp file and gives back its reservation.
/// Registered as a fill in progress from start to end, so a purge can stop it.
pub struct DiskWriter {
    pub(crate) store: &'static DiskStorage,
    pub(crate) obj: ObjectRef,
    pub(crate) temp: PathBuf,
    pub(crate) file: Arc<File>,
    pub(crate) meta: Arc<MetaBytes>,
    pub(crate) header_len: u64,
    pub(crate) written: u64,
    pub(crate) expected: Option<u64>,
    pub(crate) crc: crc32fast::Hasher,
    /// Bytes reserved against the budget while the file is written.
    pub(crate) reserved: u64,
    pub(crate) done: bool,
    /// The fill's registration, which a purge marks (see `disk/publish.rs`).
    pub(crate) ticket: Ticket,
}

/// Creates a temp file for writing and reading (readers of the fill share the fd).
pub(crate) fn create_temp(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
}

impl DiskWriter {
    /// The temp file and the body's offset in it, for readers of the fill.
    pub(crate) fn reader_file(&self) -> (Arc<File>, u64) {
        (self.file.clone(), self.header_len)
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends body bytes.
    pub async fn write(&mut self, data: &Bytes) -> Result<(), CacheError> {
        if data.is_empty() {
            return Ok(());
        }
        let (file, data2, off) = (
            self.file.clone(),
            data.clone(),
            self.header_len + self.written,
        );
        #[cfg(test)]
        let limit = self.store.fail_writes_after.load(Ordering::Relaxed);
        #[cfg(test)]
        let fail = self.written + data.len() as u64 > limit;
        #[cfg(not(test))]
        let fail = false;
        let res = if fail {
            Err(io::Error::from_raw_os_error(28))
        } else {
            tokio::task::spawn_blocking(move || file.write_all_at(&data2, off))
                .await
                .map_err(io::Error::other)
                .and_then(|r| r)
        };
        if let Err(e) = res {
            return Err(self.store.write_failed("write", &self.temp, e));
        }
        self.crc.update(data);
        self.written += data.len() as u64;
        Ok(())
    }

    /// Writes the header, renames the file into place and indexes it, unless a purge of
    /// the object came since the fill started: then nothing is published, the temp file
    /// is removed and the result is [`CacheError::Purged`]. The check and the rename are
    /// one critical section under the key's lock, which every purge takes too (see
    /// `disk/publish.rs`), so no purge can fall between them. `purged` (the caller's own
    /// flag for the fill, set by purges before they reach the disk) only saves the work.
    /// Returns the bytes the object is charged.
    pub async fn finish(mut self, purged: &AtomicBool) -> Result<u64, CacheError> {
        if let Some(expected) = self.expected.filter(|&e| e != self.written) {
            return Err(CacheError::LengthMismatch {
                written: self.written,
                expected,
            });
        }
        if purged.load(Ordering::Acquire) {
            return Err(CacheError::Purged);
        }
        let crc = std::mem::take(&mut self.crc).finalize();
        let header_len = usize::try_from(self.header_len).unwrap_or(usize::MAX);
        let header = format::encode(&self.obj, &self.meta, header_len, self.written, Some(crc))
            .ok_or(CacheError::MetaTooLarge(self.meta.len()))?;
        let (store, obj) = (self.store, self.obj);
        let fill = (obj, self.ticket.key, self.ticket.id);
        let (file, temp) = (self.file.clone(), self.temp.clone());
        let (len, reserved) = (self.header_len + self.written, self.reserved);
        let fsync = store.config().fsync;
        let res = tokio::task::spawn_blocking(move || -> io::Result<Published> {
            file.write_all_at(&header, 0)?;
            if fsync {
                file.sync_data()?;
            }
            #[cfg(test)]
            store.run_hook(super::TestHook::Publishing, obj);
            let published = store.publish(fill, &temp, len, reserved)?;
            if fsync && matches!(published, Published::Done { .. }) {
                let dest = obj.path(store.dir());
                if let Some(parent) = dest.parent() {
                    // Published and indexed already: a failure here costs durability only.
                    if let Err(e) = File::open(parent).and_then(|d| d.sync_all()) {
                        store.note_write_error("fsync", parent, &e);
                    }
                }
            }
            Ok(published)
        })
        .await
        .map_err(io::Error::other)
        .and_then(|r| r);
        match res {
            Err(e) => Err(self.store.write_failed("commit", &self.temp, e)),
            Ok(Published::Purged) => {
                self.ticket.published();
                Err(CacheError::Purged) // dropping `self` removes the temp file
            }
            Ok(Published::Done { charged, victims }) => {
                self.ticket.published();
                self.done = true;
                self.reserved = 0; // moved to the index by `publish`
                self.store.unlink(victims).await;
                Ok(charged)
            }
        }
    }
}

impl Drop for DiskWriter {
    fn drop(&mut self) {
        self.store.release(self.reserved);
        if self.done {
            return;
        }
        let temp = std::mem::take(&mut self.temp);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(move || remove_quietly(&temp));
            }
            Err(_) => {
                remove_quietly(&temp);
            }
        }
    }
}
