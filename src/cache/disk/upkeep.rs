//! The disk tier's upkeep: the books (index + reservations), eviction, and what happens
//! when the disk fails or a file does not check.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::Ordering;

use pingora_cache::key::HashBinary;

use super::format::{Corrupt, ObjectRef};
use super::fs::FileId;
use super::index::{Index, Rec};
use super::{CacheError, DiskStorage};
use crate::cache::unix_now;

/// After a write error, the tier takes no new fills for this long.
const DEGRADED_SECS: u64 = 30;
/// On ENOSPC, at least this much is evicted at once.
const SHED_BYTES: u64 = 64 << 20;

/// The index and the reservations of fills in progress, under one lock.
#[derive(Default)]
pub(super) struct Books {
    pub(super) index: Index,
    pub(super) reserved: u64,
    /// Keys removed while the restart scan runs, so that it does not bring them back.
    pub(super) removed_while_scanning: Option<HashSet<HashBinary>>,
}

impl Books {
    pub(super) fn note_removed(&mut self, key: HashBinary) {
        if let Some(set) = self.removed_while_scanning.as_mut() {
            set.insert(key);
        }
    }
}

impl DiskStorage {
    /// Gives back a fill's reservation.
    pub(crate) fn release(&self, reserved: u64) {
        if reserved > 0 {
            let mut books = self.books.lock();
            books.reserved = books.reserved.saturating_sub(reserved);
        }
    }

    /// Pops least recently used objects until the books fit the budget.
    pub(super) fn evict_locked(&self, books: &mut Books) -> Vec<Rec> {
        let mut victims = Vec::new();
        while books.index.bytes() + books.reserved > self.cfg.budget_bytes {
            let Some((key, rec)) = books.index.pop_lru() else {
                break;
            };
            books.note_removed(key);
            victims.push(rec);
        }
        self.count_evictions(&victims);
        victims
    }

    fn count_evictions(&self, victims: &[Rec]) {
        if !victims.is_empty() {
            let bytes: u64 = victims.iter().map(Rec::bytes).sum();
            let c = &self.counters;
            c.evictions
                .fetch_add(victims.len() as u64, Ordering::Relaxed);
            c.evicted_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Unlinks evicted objects' files on the blocking pool, each only if its key was not
    /// indexed again meanwhile ([`DiskStorage::unlink_evicted`]). Never holding a key lock.
    pub(super) async fn unlink(&'static self, victims: Vec<Rec>) {
        if victims.is_empty() {
            return;
        }
        let _ = tokio::task::spawn_blocking(move || self.unlink_evicted(&victims)).await;
    }

    /// Evicts at least `bytes` more than the budget demands (the disk is fuller than the
    /// budget assumed); the files are removed in the background.
    fn shed(&'static self, bytes: u64) {
        let victims = {
            let mut books = self.books.lock();
            let mut freed = 0;
            let mut victims = Vec::new();
            while freed < bytes {
                let Some((key, rec)) = books.index.pop_lru() else {
                    break;
                };
                books.note_removed(key);
                freed += rec.bytes();
                victims.push(rec);
            }
            victims
        };
        self.count_evictions(&victims);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { self.unlink(victims).await });
        }
    }

    pub(super) fn dir_known(&self, obj: &ObjectRef) -> bool {
        let slot = obj.dir_slot();
        self.dirs_made[slot / 64].load(Ordering::Relaxed) & (1 << (slot % 64)) != 0
    }

    pub(super) fn mark_dir(&self, obj: &ObjectRef) {
        let slot = obj.dir_slot();
        self.dirs_made[slot / 64].fetch_or(1 << (slot % 64), Ordering::Relaxed);
    }

    /// Counts and logs a failed write, and stops new fills for a while.
    pub(super) fn note_write_error(&self, op: &'static str, path: &Path, e: &std::io::Error) {
        let n = self.counters.write_errors.fetch_add(1, Ordering::Relaxed) + 1;
        self.degraded_until
            .store(unix_now() + DEGRADED_SECS, Ordering::Relaxed);
        if self.write_log.ready() {
            tracing::warn!(
                "disk cache write failed ({n} so far): {op} {}: {e}; serving from memory \
                 and origin, retrying the disk in {DEGRADED_SECS} s",
                path.display()
            );
        }
    }

    /// [`Self::note_write_error`] plus, when the disk is full, evicting some objects (the
    /// filesystem is fuller than the budget assumed). Returns the error to pass on.
    pub(crate) fn write_failed(
        &'static self,
        op: &'static str,
        path: &Path,
        e: std::io::Error,
    ) -> CacheError {
        self.note_write_error(op, path, &e);
        if e.raw_os_error() == Some(28) {
            self.shed(SHED_BYTES.max(self.cfg.budget_bytes / 100));
        }
        CacheError::io(op, path.to_owned(), e)
    }

    pub(crate) fn note_read_error(&self, obj: &ObjectRef, e: &std::io::Error) {
        let n = self.counters.read_errors.fetch_add(1, Ordering::Relaxed) + 1;
        if self.read_log.ready() {
            let path = obj.path(&self.cfg.dir);
            tracing::warn!(
                "disk cache read failed ({n} so far): {}: {e}",
                path.display()
            );
        }
    }

    pub(super) fn note_corrupt(&self, obj: &ObjectRef, corrupt: Corrupt) {
        let n = self
            .counters
            .corrupt_removed
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if self.corrupt_log.ready() {
            let path = obj.path(&self.cfg.dir);
            tracing::warn!(
                "removed invalid cache file ({n} so far): {}: {corrupt}",
                path.display()
            );
        }
    }

    /// Deletes the file `id`, found invalid while it was being served, unless the path
    /// names a newer file by now ([`DiskStorage::drop_file`]).
    pub(crate) async fn drop_corrupt(&'static self, obj: ObjectRef, id: FileId, corrupt: Corrupt) {
        let _ = tokio::task::spawn_blocking(move || self.drop_file(obj, Some(id))).await;
        self.note_corrupt(&obj, corrupt);
    }
}
