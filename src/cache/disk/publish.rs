//! Everything that changes which file an object path holds, or whether the index has an
//! entry for it, happens under the object's key lock (one of [`STRIPES`] mutexes, picked
//! by the key hash). So a purge always wins over a disk fill that was in progress when it
//! came, and never over one started after it; and an eviction, a lookup or the removal of
//! an invalid file never undoes a publish that came while it ran.
//!
//! Every disk fill has a slot under its key from the moment it starts
//! ([`DiskStorage::begin_write`], before its temp file exists) until it publishes or is
//! dropped. Under the key's lock:
//!
//! - a **purge** of the key marks every slot of the key, forgets the index entry and
//!   unlinks the file, all in one critical section ([`DiskStorage::purge_locked`]);
//! - a fill **publishes** in one critical section too: it takes its slot out and, only if
//!   no purge marked it, renames its temp file into place and indexes it
//!   ([`DiskStorage::publish`]). A marked fill returns
//!   [`CacheError::Purged`](super::CacheError::Purged) and its temp file is removed when
//!   the writer is dropped;
//! - an **eviction** pops entries from the index under the books lock alone (it runs
//!   under other keys' locks), then unlinks each victim's file under the victim's key
//!   lock, only if the key is still not indexed ([`DiskStorage::unlink_evicted`]);
//! - a **lookup** that opened a file indexes it only if the path still names that file
//!   (same device and inode), and one that found no file forgets the index entry only if
//!   the path is still empty ([`DiskStorage::index_hit`], [`DiskStorage::drop_file`]);
//! - an **invalid file** (bad header, short, bad body CRC) is forgotten and unlinked only
//!   if the path still names the file that was found invalid ([`DiskStorage::drop_file`]).
//!
//! Two critical sections of one key never overlap, so for a purge P and a fill F that
//! started before P (its slot registered before P's critical section):
//! - F published before P: P's unlink comes after F's rename and removes the file;
//! - F publishes after P: P marked F's slot, so F never renames.
//!
//! A fill registered after P's critical section has a slot P never saw: it publishes
//! normally. And nothing is ever unlinked after a rename on behalf of a purged fill (no
//! "rename, then check, then remove"), so a purged fill cannot delete the file of a fill
//! that started after the purge. There is no check outside the lock that a purge could
//! slip behind: the flag a caller passes to `finish` (the tiered store's fill) is only an
//! early exit, every purge path of the tiers also goes through [`DiskStorage::purge_locked`].
//!
//! The other steps rest on one invariant, true whenever a key's lock is held: if the
//! index has an entry for the key, the file at its path is the one that entry stands for
//! (a publish renames and indexes in one critical section; a hit indexes only the file
//! the path still names). So an evicted key found indexed again under its lock was
//! republished or re-indexed by a hit, and its file is kept; found not indexed, the file
//! at the path is the victim itself (or one that was evicted or purged too), and it is
//! unlinked. A lookup miss or an invalid file re-checks the path itself under the lock:
//! a publish either came before (the path is not empty, or names another file: nothing
//! is removed) or comes after (its entry is made after the stale one is forgotten).
//!
//! Only the restart scan adds index entries without a key lock ([`super::scan`]); it
//! skips every key removed while it ran, and adds nothing a key already has.
//!
//! Lock order: a key's stripe, then the books (index). Nothing takes them the other way,
//! and no code holds two stripes: eviction victims are unlinked after the lock of the key
//! whose fill evicted them is released (a victim may share its stripe).

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;

use parking_lot::{Mutex, MutexGuard};
use pingora_cache::key::HashBinary;

use super::format::ObjectRef;
use super::fs::{self as disk_io, FileId};
use super::index::{blocks_for, KeyHasher, Rec};
use super::DiskStorage;

/// Mutexes the keys are spread over: purges and publications of different keys rarely
/// wait on each other, and each critical section is one `rename` or one `unlink`.
pub(super) const STRIPES: usize = 64;

/// A disk fill in progress.
struct Slot {
    id: u64,
    obj: ObjectRef,
    /// Set by a purge that came while the fill was in progress: it must not publish.
    purged: bool,
}

type Slots = HashMap<HashBinary, Vec<Slot>, BuildHasherDefault<KeyHasher>>;

/// The disk fills in progress, by key, behind the per-key (striped) locks.
pub(super) struct Writing {
    stripes: Box<[Mutex<Slots>]>,
}

impl Writing {
    pub(super) fn new() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| Mutex::new(Slots::default())).collect(),
        }
    }

    fn lock(&self, key: &HashBinary) -> MutexGuard<'_, Slots> {
        // Keys are hash output: any byte spreads them evenly.
        self.stripes[usize::from(key[0]) % STRIPES].lock()
    }

    /// Fills of `key` in progress (tests).
    #[cfg(test)]
    pub(super) fn in_progress(&self, key: &HashBinary) -> usize {
        self.lock(key).get(key).map_or(0, Vec::len)
    }
}

/// Takes slot `id` of `key` out; `None` if it is not there.
fn take_slot(slots: &mut Slots, key: &HashBinary, id: u64) -> Option<Slot> {
    let list = slots.get_mut(key)?;
    let at = list.iter().position(|s| s.id == id)?;
    let slot = list.swap_remove(at);
    if list.is_empty() {
        slots.remove(key);
    }
    Some(slot)
}

/// A disk fill's registration: made when the fill starts, taken out when it publishes,
/// or when this is dropped (the fill was abandoned).
pub(crate) struct Ticket {
    store: &'static DiskStorage,
    pub(super) key: HashBinary,
    pub(super) id: u64,
    /// Still registered (`publish` took the slot out otherwise).
    live: bool,
}

impl Ticket {
    /// The slot is gone: `publish` took it.
    pub(super) fn published(&mut self) {
        self.live = false;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.live {
            take_slot(&mut self.store.writing.lock(&self.key), &self.key, self.id);
        }
    }
}

/// What [`DiskStorage::publish`] did.
pub(crate) enum Published {
    /// Renamed into place and indexed: the bytes charged, and what was evicted for it
    /// (to unlink outside the lock).
    Done { charged: u64, victims: Vec<Rec> },
    /// A purge came while the fill was in progress: not renamed.
    Purged,
}

impl DiskStorage {
    /// Registers a fill of `obj` that starts now (see the module docs). `id` is unique.
    pub(super) fn register_writer(&'static self, obj: ObjectRef, id: u64) -> Ticket {
        let key = obj.key_hash();
        self.writing.lock(&key).entry(key).or_default().push(Slot {
            id,
            obj,
            purged: false,
        });
        Ticket {
            store: self,
            key,
            id,
            live: true,
        }
    }

    /// Publishes fill `id` of `obj` (`key`: its key hash) (blocking): unless a purge
    /// marked it, renames `temp` into place and indexes the `len`-byte file, moving
    /// `reserved` bytes from the reservations to the index. The slot is taken out
    /// whatever happens; a `rename` that fails leaves the reservation and the temp file
    /// to the writer.
    pub(super) fn publish(
        &self,
        (obj, key, id): (ObjectRef, HashBinary, u64),
        temp: &Path,
        len: u64,
        reserved: u64,
    ) -> io::Result<Published> {
        let dest = obj.path(&self.cfg.dir);
        let mut slots = self.writing.lock(&key);
        // No slot would mean it was never registered: never publish what a purge cannot see.
        let purged = take_slot(&mut slots, &key, id).is_none_or(|s| s.purged);
        if purged {
            return Ok(Published::Purged);
        }
        std::fs::rename(temp, &dest)?;
        let rec = Rec {
            obj,
            blocks: blocks_for(len),
        };
        let victims = {
            let mut books = self.books.lock();
            books.reserved = books.reserved.saturating_sub(reserved);
            books.index.insert_hot(key, rec);
            // Its CRC was computed from the very bytes written.
            books.index.set_verified(&key);
            self.evict_locked(&mut books)
        };
        drop(slots);
        Ok(Published::Done {
            charged: rec.bytes(),
            victims,
        })
    }

    /// Purges `key` (blocking): marks its fills in progress so that none of them
    /// publishes, forgets its index entry and unlinks its file, under the key's lock.
    /// `obj`: the object, when the caller knows it (by path: also a file the index does
    /// not know yet); otherwise it is found from a fill in progress or the index.
    /// Returns whether a fill or a file was found.
    pub(super) fn purge_locked(&self, key: HashBinary, obj: Option<ObjectRef>) -> bool {
        let mut slots = self.writing.lock(&key);
        let mut found = false;
        let mut obj = obj;
        if let Some(list) = slots.get_mut(&key) {
            for slot in list.iter_mut() {
                found |= !std::mem::replace(&mut slot.purged, true);
                obj = obj.or(Some(slot.obj));
            }
        }
        let Some(obj) = obj.or_else(|| self.indexed_object(&key)) else {
            return found;
        };
        found |= self.forget(obj);
        found |= disk_io::remove_quietly(&obj.path(&self.cfg.dir));
        drop(slots);
        found
    }

    /// Unlinks the files of evicted index entries (blocking), each under its key's lock and
    /// only if the key has not been indexed again since it was evicted (a newer publish,
    /// or a hit that re-indexed the file before it was unlinked). Never call it holding a
    /// key's lock.
    pub(super) fn unlink_evicted(&self, victims: &[Rec]) {
        for v in victims {
            #[cfg(test)]
            self.run_hook(super::TestHook::Evicting, v.obj);
            let key = v.obj.key_hash();
            let _slots = self.writing.lock(&key);
            if self.books.lock().index.get(&key).is_none() {
                disk_io::remove_quietly(&v.obj.path(&self.cfg.dir));
            }
        }
    }

    /// Indexes (or marks as just used) the file `id` (`len` bytes) that a lookup found
    /// at `obj`'s path (blocking). An object not indexed is indexed under its key's lock,
    /// only if the path still names that file: a purge or an eviction may have unlinked it
    /// since it was opened (an entry would outlive the file), or a publish replaced it
    /// (that publish indexed its own file).
    pub(super) fn index_hit(&self, obj: ObjectRef, id: FileId, len: u64) {
        let key = obj.key_hash();
        if self.books.lock().index.touch(&key) {
            return;
        }
        let _slots = self.writing.lock(&key);
        if matches!(FileId::at(&obj.path(&self.cfg.dir)), Ok(Some(now)) if now == id) {
            let mut books = self.books.lock();
            if !books.index.touch(&key) {
                let rec = Rec {
                    obj,
                    blocks: blocks_for(len),
                };
                books.index.insert_hot(key, rec);
            }
        }
    }

    /// Removes what a lookup or a read found wrong at `obj`'s path (blocking), under the
    /// key's lock: `seen` is the file found invalid, `None` if there was no file. The
    /// file is forgotten and unlinked only if the path still names it, and an index entry
    /// is forgotten when the path now names nothing; a file published meanwhile is left
    /// alone, with its entry. Whether a file was unlinked.
    pub(super) fn drop_file(&self, obj: ObjectRef, seen: Option<FileId>) -> bool {
        let key = obj.key_hash();
        // Nothing indexed and no file to remove: nothing to do. An entry made after this
        // check is a newer publish's, which must stay.
        if seen.is_none() && self.books.lock().index.get(&key).is_none() {
            return false;
        }
        let path = obj.path(&self.cfg.dir);
        let _slots = self.writing.lock(&key);
        match FileId::at(&path) {
            Ok(None) => {
                // A stale entry (the file went behind our back).
                let mut books = self.books.lock();
                if books.index.remove(&key).is_some() {
                    books.note_removed(key);
                }
                false
            }
            Ok(Some(now)) if Some(now) == seen => {
                self.forget(obj);
                disk_io::remove_quietly(&path)
            }
            // Another file now (a publish came meanwhile, and indexed it), or the path
            // cannot be checked: leave both alone.
            Ok(Some(_)) | Err(_) => false,
        }
    }

    /// Counts a purge that found something.
    pub(super) fn count_purge(&self, found: bool) -> bool {
        if found {
            self.counters.purged.fetch_add(1, Ordering::Relaxed);
        }
        found
    }
}
