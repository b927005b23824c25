//! The disk tier: a persistent, byte-bounded, crash-safe pingora-cache [`Storage`].
//!
//! - **Files.** One per object at `<dir>/<silo>/<ab>/<cd>/<hash>` with a checked header
//!   (see [`format`]). A fill is written to `<dir>/.tmp/<pid>-<id>-<name>` and renamed
//!   into place only when its body is complete, so a crash leaves a temp file (deleted
//!   at the next start), never a short object. Nothing is fsynced unless `fsync` is set.
//! - **Reads.** A lookup opens the path directly (no index needed, so a restarted
//!   mirror serves at once), checks the header and the file length, and reads a body
//!   up to 1 MiB in one `pread` (longer ones in 64 KiB pieces); `seek` serves Range
//!   requests. What the kernel has cached is opened and read on the event loop, the
//!   rest on the blocking pool ([`nowait`]). A file that does not check
//!   is deleted and is a miss. A full read also checks the body CRC and fails the
//!   response (never a clean end) if it does not match.
//! - **Bound.** An in-memory LRU index ([`index`]) of every file charges each its size
//!   rounded up to 4 KiB. A fill with a Content-Length reserves its size before it
//!   starts and evicts least recently used objects to make room, so the directory stays
//!   within `disk_bytes` (fills without a length are charged when they finish).
//! - **Restart.** [`DiskStorage::start_background`] (called by the first lookup, after
//!   Pingora has forked, see below) scans the directory on a few threads, checks every
//!   header, deletes bad files and stale temp files, adopts shm-cached files and fills
//!   the index, oldest mtime least recently used. Lookups work meanwhile.
//! - **Adoption.** A file at a valid path without our header is an shm-cached body: it
//!   is served in place (Content-Type sniffed from its first bytes, Last-Modified from
//!   its mtime) if its format's end checks out ([`legacy`]), else deleted. Not rewritten:
//!   adoption costs no I/O beyond a header read, and the directory stays usable by
//!   shm-cached for a rollback.
//! - **Purges and races.** A purge marks every disk fill of the object in progress, then
//!   forgets and unlinks the file; a fill publishes (checks its mark, renames, indexes)
//!   in one critical section under the same per-key lock, so a purge always wins over a
//!   fill in progress when it came and never over one started after it. An eviction's
//!   unlink, a lookup's indexing or forgetting, and the removal of an invalid file take
//!   the same lock and re-check the path or the index first, so none of them undoes a
//!   publish that came meanwhile ([`publish`]).
//! - **Failures.** A directory that cannot be created or written, a full disk or an I/O
//!   error is counted, logged at most once a minute, and turns the tier off for writes
//!   for 30 s; the tiered store then fills memory only. Nothing is ever answered 5xx
//!   because the disk could not be written.
//!
//! Background threads are started lazily because Pingora forks when it daemonizes, and
//! threads started before `run_forever` would not survive the fork (nor must a lock
//! they hold at that moment).

pub mod format;
mod fs;
pub(crate) mod index;
mod io;
mod legacy;
mod nowait;
mod publish;
mod root;
mod scan;
mod sendable;
mod storage;
#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod tests_nowait;
#[cfg(test)]
mod tests_purge;
#[cfg(test)]
mod tests_races;
#[cfg(test)]
mod tests_scan;
#[cfg(test)]
mod tests_sendable;
mod upkeep;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use pingora_cache::key::HashBinary;
use pingora_cache::CacheMeta;

pub use format::{MetaBytes, ObjectRef, Silo};
pub use io::{DiskHit, DiskWriter};
pub use storage::seed_object;

use crate::cache::stream::StreamFill;
use crate::cache::CacheError;
use crate::cache::FillRegistry;
use crate::cache::{unix_now, LogEvery};
use format::Corrupt;
use index::{blocks_for, BLOCK};
use io::Found;
pub(crate) use nowait::page_cached;
pub use sendable::{AnswerHead, DiskHead, SendableHit};
use upkeep::Books;

/// How the disk tier is set up (from `shimmer.cache`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    pub dir: PathBuf,
    /// Bytes the files may take (each charged its size rounded up to 4 KiB).
    pub budget_bytes: u64,
    /// Largest body written to disk.
    pub max_object_bytes: u64,
    /// fsync each file and its directory before it becomes visible.
    pub fsync: bool,
}

/// Numbers for Prometheus. Counters (`*_total` in spirit) are cumulative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskStats {
    pub budget: u64,
    /// Bytes charged for indexed files (4 KiB granularity).
    pub bytes: u64,
    pub objects: u64,
    /// Bytes reserved by fills in progress.
    pub reserved: u64,
    pub evictions: u64,
    pub evicted_bytes: u64,
    /// Failed writes (create, write, rename): each one skipped the disk for a fill.
    pub write_errors: u64,
    pub read_errors: u64,
    /// Files deleted because their header, length or checksum did not check.
    pub corrupt_removed: u64,
    /// Objects removed by purges and bans.
    pub purged: u64,
    /// shm-cached files adopted by the restart scan.
    pub adopted: u64,
    /// Files the restart scan has looked at so far.
    pub rebuild_scanned: u64,
    pub rebuild_done: bool,
    pub rebuild_millis: u64,
    /// Hits sent from the page cache without a read ([`SendableHit`]).
    pub sendable_hits: u64,
    /// Whether the tier takes new fills right now.
    pub writable: bool,
}

#[derive(Default)]
struct Counters {
    /// Lookups answered on the event loop ([`DiskStorage::lookup_nowait`]) and on the
    /// blocking pool.
    inline_lookups: AtomicU64,
    blocking_lookups: AtomicU64,
    sendable_hits: AtomicU64,
    head_decodes: AtomicU64,
    evictions: AtomicU64,
    evicted_bytes: AtomicU64,
    write_errors: AtomicU64,
    read_errors: AtomicU64,
    corrupt_removed: AtomicU64,
    purged: AtomicU64,
    adopted: AtomicU64,
    scanned: AtomicU64,
    rebuild_millis: AtomicU64,
    rebuild_done: AtomicBool,
}

/// The disk tier. Build it once with [`DiskStorage::open`] and leak it.
pub struct DiskStorage {
    cfg: DiskConfig,
    /// The directory, held open for the event loop's opens.
    root: root::RootDir,
    tmp: PathBuf,
    books: Mutex<Books>,
    /// Fills of this store used directly as a `Storage` (the tiered store has its own).
    fills: FillRegistry<StreamFill>,
    /// Every disk fill in progress (this store's and the tiered store's), by key, and the
    /// per-key locks that order a fill's rename against a purge's unlink ([`publish`]).
    writing: publish::Writing,
    next_id: AtomicU64,
    /// One bit per `<silo>/<ab>/<cd>` directory known to exist.
    dirs_made: Box<[AtomicU64]>,
    /// Unix second until which no new fill is started (0: writable).
    pub(crate) degraded_until: AtomicU64,
    started: AtomicBool,
    counters: Counters,
    /// Decoded heads of files sent with `sendfile` ([`SendableHit`]).
    heads: sendable::Heads,
    write_log: LogEvery,
    read_log: LogEvery,
    corrupt_log: LogEvery,
    /// Tests: body writes past this many bytes fail with ENOSPC.
    #[cfg(test)]
    pub(crate) fail_writes_after: AtomicU64,
    /// Tests: called at the points where a purge or a publish may come (see [`TestHook`]).
    #[cfg(test)]
    pub(crate) hook: TestHookSlot,
}

/// Tests: where a fill, an eviction or a lookup is when [`DiskStorage::hook`] is called
/// (on a blocking thread, holding no lock).
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TestHook {
    /// Registered, creating the temp file.
    CreatingTemp,
    /// Body and header written, about to take the key's lock to rename.
    Publishing,
    /// An evicted object (popped from the index), about to take its key's lock to unlink.
    Evicting,
    /// A lookup opened a valid file, about to take the key's lock to index it.
    LookupFound,
    /// A lookup found no file, about to take the key's lock to forget the entry.
    LookupMissing,
    /// A lookup found an invalid file, about to take the key's lock to remove it.
    LookupInvalid,
}

#[cfg(test)]
pub(crate) type TestHookSlot = Mutex<Option<Arc<dyn Fn(TestHook, ObjectRef) + Send + Sync>>>;

impl DiskStorage {
    /// Prepares the directory (creates it, removes temp files of dead processes, checks
    /// that it can be written). Never fails: a directory that cannot be used is logged
    /// and counted, and the tier stays off for writes until a retry succeeds.
    pub fn open(cfg: DiskConfig) -> DiskStorage {
        let store = DiskStorage {
            tmp: cfg.dir.join(".tmp"),
            root: root::RootDir::new(&cfg.dir),
            cfg,
            books: Mutex::new(Books::default()),
            fills: FillRegistry::default(),
            writing: publish::Writing::new(),
            next_id: AtomicU64::new(1),
            dirs_made: (0..2 * 65536 / 64).map(|_| AtomicU64::new(0)).collect(),
            degraded_until: AtomicU64::new(0),
            started: AtomicBool::new(false),
            counters: Counters::default(),
            heads: sendable::Heads::default(),
            write_log: LogEvery::new(60),
            read_log: LogEvery::new(60),
            corrupt_log: LogEvery::new(60),
            #[cfg(test)]
            fail_writes_after: AtomicU64::new(u64::MAX),
            #[cfg(test)]
            hook: Mutex::new(None),
        };
        match store.prepare() {
            Ok(temps) => tracing::info!(
                "disk cache {}: budget {} bytes, objects up to {} bytes, fsync {}, \
                 {temps} stale temp files removed",
                store.cfg.dir.display(),
                store.cfg.budget_bytes,
                store.cfg.max_object_bytes,
                store.cfg.fsync,
            ),
            Err(e) => store.note_write_error("prepare", &store.cfg.dir, &e),
        }
        store.root.refresh(); // made by `prepare`, if it was missing
        store
    }

    /// For `shimmer -t`: whether `dir` could be used, without creating it. Writes and
    /// removes one probe file in `dir`, or in its nearest existing ancestor.
    pub fn probe_dir(dir: &Path) -> std::io::Result<()> {
        let mut at = dir;
        while !at.exists() {
            at = at.parent().ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "no existing ancestor")
            })?;
        }
        if !at.is_dir() {
            let msg = format!("{} is not a directory", at.display());
            return Err(std::io::Error::new(std::io::ErrorKind::NotADirectory, msg));
        }
        let probe = at.join(format!(".shimmer-probe-{}", std::process::id()));
        let written = std::fs::write(&probe, b"probe");
        io::remove_quietly(&probe);
        written
    }

    fn prepare(&self) -> std::io::Result<usize> {
        std::fs::create_dir_all(&self.cfg.dir)?;
        std::fs::create_dir_all(&self.tmp)?;
        let removed = scan::clean_temps(&self.tmp)?;
        let probe = self.tmp.join(format!("{}-probe", std::process::id()));
        let written = std::fs::write(&probe, b"probe");
        io::remove_quietly(&probe);
        written.map(|()| removed)
    }

    /// Starts the restart scan (once). Called by the first lookup or fill; call it from a
    /// service's start to scan before the first request. Never before Pingora forks.
    pub fn start_background(&'static self) {
        // A plain load first: this runs on every lookup.
        if self.started.load(Ordering::Acquire) || self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        self.books.lock().removed_while_scanning = Some(HashSet::new());
        let spawned = std::thread::Builder::new()
            .name("shimmer-disk-scan".into())
            .spawn(move || scan::rebuild(self));
        if let Err(e) = spawned {
            tracing::error!(
                "cannot start the disk index rebuild: {e}; the index fills as objects are used"
            );
            self.books.lock().removed_while_scanning = None;
            self.counters.rebuild_done.store(true, Ordering::Release);
        }
    }

    pub fn config(&self) -> &DiskConfig {
        &self.cfg
    }

    pub fn dir(&self) -> &Path {
        &self.cfg.dir
    }

    pub fn max_object_bytes(&self) -> u64 {
        self.cfg.max_object_bytes
    }

    /// Whether new fills are written to disk right now.
    pub fn is_accepting_writes(&self) -> bool {
        self.degraded_until.load(Ordering::Relaxed) <= unix_now()
    }

    pub fn stats(&self) -> DiskStats {
        let (bytes, objects, reserved) = {
            let b = self.books.lock();
            (b.index.bytes(), b.index.len() as u64, b.reserved)
        };
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DiskStats {
            budget: self.cfg.budget_bytes,
            bytes,
            objects,
            reserved,
            evictions: get(&c.evictions),
            evicted_bytes: get(&c.evicted_bytes),
            write_errors: get(&c.write_errors),
            read_errors: get(&c.read_errors),
            corrupt_removed: get(&c.corrupt_removed),
            purged: get(&c.purged),
            adopted: get(&c.adopted),
            rebuild_scanned: get(&c.scanned),
            rebuild_done: c.rebuild_done.load(Ordering::Acquire),
            rebuild_millis: get(&c.rebuild_millis),
            sendable_hits: get(&c.sendable_hits),
            writable: self.is_accepting_writes(),
        }
    }

    /// Looks the object up at its path. Missing, invalid (deleted here) or unreadable
    /// files are a miss; read errors are counted and logged.
    pub async fn lookup_object(&'static self, obj: ObjectRef) -> Option<(CacheMeta, DiskHit)> {
        self.start_background();
        let found = match self.lookup_nowait(obj) {
            Some(found) => Ok(found),
            None => {
                self.counters
                    .blocking_lookups
                    .fetch_add(1, Ordering::Relaxed);
                tokio::task::spawn_blocking(move || self.open_for_lookup(obj))
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|r| r)
            }
        };
        let opened = match found {
            Ok(Found::Valid(opened)) => opened,
            Ok(Found::Missing) => return None,
            Ok(Found::Invalid(corrupt, _)) => {
                self.note_corrupt(&obj, corrupt);
                return None;
            }
            Err(e) => {
                self.note_read_error(&obj, &e);
                return None;
            }
        };
        let (meta, hit_meta, body_off, body_len, crc) = match opened.kind {
            io::Inspected::Ours(h) => match h.meta.to_meta() {
                Ok(meta) => (meta, h.meta, h.header_len, h.body_len, h.body_crc),
                Err(_) => {
                    // Checks out but pingora cannot read the meta (a format change).
                    self.drop_corrupt(obj, opened.id, Corrupt::Version(format::VERSION))
                        .await;
                    return None;
                }
            },
            io::Inspected::Legacy { content_type } => {
                let meta = format::adopted_meta(&obj, content_type, opened.len, opened.mtime);
                let bytes = meta
                    .as_ref()
                    .ok()
                    .and_then(|m| MetaBytes::from_meta(m).ok());
                let (Ok(meta), Some(bytes)) = (meta, bytes) else {
                    return None;
                };
                (meta, bytes, 0, opened.len, None)
            }
        };
        let hit = DiskHit {
            store: self,
            obj,
            file: Arc::new(opened.file),
            id: opened.id,
            meta: Arc::new(hit_meta),
            body_off,
            body_len,
            pos: 0,
            end: body_len,
            crc: crc.map(|want| (crc32fast::Hasher::new(), want)),
        };
        Some((meta, hit))
    }

    /// [`Self::open_for_lookup`] on the event loop, when nothing in it can wait for the
    /// disk ([`io::open_checked_nowait`]) and the index needs no change beyond a touch:
    /// a valid file already indexed, or no file and no entry. `None`: take the blocking
    /// path, which settles the index under the key's lock. A purge or publish racing
    /// this is seen as by that path: a purge that forgot the entry before the touch
    /// sends the lookup there, one after it finds the file already open (served, as
    /// there); an entry published after the missing file was seen makes it look again.
    fn lookup_nowait(&self, obj: ObjectRef) -> Option<Found> {
        #[cfg(test)]
        if self.hook.lock().is_some() {
            return None; // the race tests' hooks run on the blocking path
        }
        let found = io::open_checked_nowait(&self.root, &obj)?;
        let key = obj.key_hash();
        let settled = match &found {
            Found::Valid(_) => self.books.lock().index.touch(&key),
            Found::Missing => self.books.lock().index.get(&key).is_none(),
            Found::Invalid(..) => false,
        };
        settled.then(|| {
            self.counters.inline_lookups.fetch_add(1, Ordering::Relaxed);
            found
        })
    }

    /// How many lookups were answered on the event loop and how many on the blocking
    /// pool.
    #[cfg(test)]
    pub(crate) fn lookup_paths(&self) -> (u64, u64) {
        let c = &self.counters;
        (
            c.inline_lookups.load(Ordering::Relaxed),
            c.blocking_lookups.load(Ordering::Relaxed),
        )
    }

    /// Opens and checks `obj`'s file for a lookup (blocking), then settles the index
    /// under the key's lock ([`publish`]): a file found is indexed (or marked as just
    /// used) if the path still names it; an invalid file is removed if the path still
    /// names it; no file at all forgets a stale entry if the path is still empty.
    fn open_for_lookup(&self, obj: ObjectRef) -> std::io::Result<Found> {
        let found = io::open_checked(&obj.path(&self.cfg.dir), &obj, true)?;
        match &found {
            Found::Valid(opened) => {
                #[cfg(test)]
                self.run_hook(TestHook::LookupFound, obj);
                self.index_hit(obj, opened.id, opened.len);
            }
            Found::Missing => {
                #[cfg(test)]
                self.run_hook(TestHook::LookupMissing, obj);
                self.drop_file(obj, None);
            }
            Found::Invalid(_, id) => {
                #[cfg(test)]
                self.run_hook(TestHook::LookupInvalid, obj);
                self.drop_file(obj, Some(*id));
            }
        }
        Ok(found)
    }

    /// Starts writing `obj`: registers the fill (from here on a purge of `obj` keeps it
    /// from publishing, see [`publish`]), reserves its declared size (evicting to make
    /// room), creates the temp file. Fails at once while the tier is off for writes.
    pub async fn begin_write(
        &'static self,
        obj: ObjectRef,
        meta: Arc<MetaBytes>,
        declared: Option<u64>,
    ) -> Result<DiskWriter, CacheError> {
        self.start_background();
        if !self.is_accepting_writes() {
            return Err(CacheError::DiskUnavailable);
        }
        if let Some(len) = declared.filter(|&l| l > self.cfg.max_object_bytes) {
            return Err(CacheError::TooLarge(len));
        }
        let header_len = format::header_len_for(meta.len());
        if header_len > format::MAX_HEADER_LEN {
            return Err(CacheError::MetaTooLarge(meta.len()));
        }
        let header_len = header_len as u64;
        let reserve = declared.map_or(0, |l| u64::from(blocks_for(header_len + l)) * BLOCK);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Before the first await: the fill has started for a purge from here on.
        let ticket = self.register_writer(obj, id);
        let silo = match obj.silo {
            Silo::Images => 'i',
            Silo::Thumbs => 't',
        };
        let temp = self
            .tmp
            .join(format!("{}-{id}-{silo}{}", std::process::id(), obj.hex()));
        let victims = {
            let mut books = self.books.lock();
            books.reserved += reserve;
            self.evict_locked(&mut books)
        };
        let need_dir = !self.dir_known(&obj);
        let (temp2, tmp_dir, leaf) = (temp.clone(), self.tmp.clone(), obj.path(&self.cfg.dir));
        let created = tokio::task::spawn_blocking(move || {
            #[cfg(test)]
            self.run_hook(TestHook::CreatingTemp, obj);
            if need_dir {
                if let Some(parent) = leaf.parent() {
                    std::fs::create_dir_all(parent)?;
                }
            }
            match io::create_temp(&temp2) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir_all(&tmp_dir)?;
                    io::create_temp(&temp2)
                }
                other => other,
            }
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        self.unlink(victims).await;
        let file = match created {
            Ok(f) => f,
            Err(e) => {
                self.release(reserve);
                return Err(self.write_failed("create", &temp, e));
            }
        };
        if need_dir {
            self.mark_dir(&obj);
        }
        Ok(DiskWriter {
            store: self,
            obj,
            temp,
            file: Arc::new(file),
            meta,
            header_len,
            written: 0,
            expected: declared,
            crc: crc32fast::Hasher::new(),
            reserved: reserve,
            done: false,
            ticket,
        })
    }

    /// Purges `obj`: keeps every disk fill of it in progress from publishing, removes
    /// its index entry and unlinks its file by path (so also a file the restart scan has
    /// not indexed yet). Race-free against fills finishing meanwhile ([`publish`]); a
    /// fill started after this returned publishes normally. Whether anything was there.
    pub async fn remove(&'static self, obj: ObjectRef) -> bool {
        self.purge_entry(obj.key_hash(), Some(obj)).await
    }

    /// [`Self::remove`] on the calling thread (one `unlink`), for synchronous callers.
    pub fn remove_now(&self, obj: ObjectRef) -> bool {
        let key = obj.key_hash();
        let readers = self.fills.mark_purged(&key);
        let found = self.purge_locked(key, Some(obj));
        self.count_purge(readers | found)
    }

    /// [`Self::remove`] by key, with the object when known.
    pub(crate) async fn purge_entry(
        &'static self,
        key: HashBinary,
        obj: Option<ObjectRef>,
    ) -> bool {
        let readers = self.fills.mark_purged(&key);
        let found = match tokio::task::spawn_blocking(move || self.purge_locked(key, obj)).await {
            Ok(found) => found,
            // The blocking pool is going away (shutdown): a purge is never dropped.
            Err(_) => self.purge_locked(key, obj),
        };
        self.count_purge(readers | found)
    }

    #[cfg(test)]
    pub(crate) fn run_hook(&self, at: TestHook, obj: ObjectRef) {
        let hook = self.hook.lock().clone();
        if let Some(hook) = hook {
            hook(at, obj);
        }
    }

    /// Drops `obj` from the index (its file is gone or going). Whether it was indexed.
    fn forget(&self, obj: ObjectRef) -> bool {
        let key = obj.key_hash();
        let mut books = self.books.lock();
        books.note_removed(key);
        books.index.remove(&key).is_some()
    }

    /// One page of the indexed objects ([`index::Index::page`]): for the reconcile of
    /// deleted posts, which walks the index a page per lock hold.
    pub fn indexed_page(&self, from: usize, limit: usize) -> (Vec<ObjectRef>, Option<usize>) {
        self.books.lock().index.page(from, limit)
    }

    /// The object an index key names, if indexed (purges by hash need the path).
    pub(crate) fn indexed_object(&self, key: &HashBinary) -> Option<ObjectRef> {
        self.books.lock().index.get(key).map(|r| r.obj)
    }
}
