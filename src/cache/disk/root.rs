//! The cache directory, held open: a hit's file is opened relative to it, which walks
//! the four components of `<silo>/<ab>/<cd>/<hash>` instead of the whole path's (eleven
//! under `make bench`'s `target/bench/run/disk/...`). In perf of the disk scenario the
//! path walk was 6% of a hit's CPU; interleaved `bench.py --servers shimmer --scenarios
//! disk,https-disk` runs: disk 26,600-27,100 -> 27,200-28,100 hits/s, over TLS
//! 7,950-8,070 -> 8,520-8,810.
//!
//! A descriptor follows the directory it opened, not its name. Were the directory
//! replaced (moved away and made again), opens through the old one would still find the
//! old files while fills, purges and evictions go by name. So the name is looked up
//! again at most once a second and the descriptor replaced when it names another
//! directory, or dropped when it names none (opens then take the whole path).

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;

use super::format::ObjectRef;
use super::fs::FileId;
use super::nowait;
use crate::cache::unix_secs;

pub(crate) struct RootDir {
    path: PathBuf,
    held: ArcSwapOption<Held>,
    /// Unix second of the last look at the name.
    checked: AtomicU64,
}

struct Held {
    dir: File,
    id: FileId,
}

impl Held {
    fn open(path: &Path) -> Option<Held> {
        let dir = File::open(path).ok()?;
        // The opened directory's identity, not the name's: it may have moved between.
        let md = dir.metadata().ok().filter(|md| md.is_dir())?;
        Some(Held {
            id: FileId::of(&md),
            dir,
        })
    }
}

impl RootDir {
    /// Holds nothing yet: [`Self::refresh`] once the directory is made, then at most
    /// once a second as opens come.
    pub(crate) fn new(path: &Path) -> RootDir {
        RootDir {
            path: path.to_owned(),
            held: ArcSwapOption::empty(),
            checked: AtomicU64::new(0),
        }
    }

    /// [`nowait::open_cached`] of `obj`'s file; `now`: the caller's clock reading for
    /// this request (the once-a-second look at the name goes by it).
    pub(crate) fn open_cached(&self, obj: &ObjectRef, now: SystemTime) -> io::Result<Option<File>> {
        self.recheck_at(unix_secs(now));
        match &*self.held.load() {
            Some(held) => match obj.rel_path_c().as_c_str() {
                Some(rel) => nowait::open_cached_at(Some(held.dir.as_fd()), rel),
                None => Ok(None), // cannot try inline: the blocking path looks
            },
            None => nowait::open_cached(&obj.path(&self.path)),
        }
    }

    /// Looks at the name again if `now` is a later second than the last look.
    fn recheck_at(&self, now: u64) {
        let last = self.checked.load(Ordering::Relaxed);
        if now <= last {
            return;
        }
        // One caller a second does it; the others go on with what is held.
        if self
            .checked
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.refresh();
        }
    }

    /// Holds the directory the name now names (none if none). On the event loop, once a
    /// second: the lookup waits for no disk, as every dentry of the path is pinned by the
    /// open descriptor (or was just made, if the name is new).
    pub(crate) fn refresh(&self) {
        let named = std::fs::metadata(&self.path)
            .ok()
            .filter(|md| md.is_dir())
            .map(|md| FileId::of(&md));
        if named == self.held.load().as_ref().map(|h| h.id) {
            return;
        }
        let held = named.and_then(|_| Held::open(&self.path));
        self.held.store(held.map(Arc::new));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::object::{Md5, Silo};

    fn object(silo: Silo) -> ObjectRef {
        let md5 = Md5::parse("e28e3076236eff37065d36416001263e").expect("an md5");
        ObjectRef::new(silo, md5)
    }

    fn put(dir: &Path, obj: &ObjectRef, bytes: &[u8]) {
        let path = obj.path(dir);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("dirs");
        std::fs::write(path, bytes).expect("written");
    }

    /// What `root` opens for `obj`: `None` when it cannot be opened without waiting.
    fn read(root: &RootDir, obj: &ObjectRef) -> io::Result<Option<Vec<u8>>> {
        let Some(mut file) = root.open_cached(obj, SystemTime::now())? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(Some(bytes))
    }

    fn held_id(root: &RootDir) -> Option<FileId> {
        root.held.load().as_ref().map(|h| h.id)
    }

    fn id_of(path: &Path) -> FileId {
        FileId::of(&std::fs::metadata(path).expect("exists"))
    }

    /// A store's root as [`DiskStorage::open`](super::DiskStorage::open) makes it.
    fn held_at(path: &Path) -> RootDir {
        let root = RootDir::new(path);
        root.refresh();
        root.checked
            .store(crate::cache::unix_now(), Ordering::Relaxed);
        root
    }

    #[test]
    fn the_relative_path_is_the_whole_paths_tail() {
        for silo in Silo::ALL {
            let obj = object(silo);
            let rel = obj.rel_path_c();
            let rel = rel.as_c_str().expect("a C string");
            let rel = Path::new(rel.to_str().expect("ascii"));
            assert_eq!(Path::new("/c").join(rel), obj.path(Path::new("/c")));
        }
    }

    #[test]
    fn a_cache_path_that_is_no_directory_is_held_as_nothing() {
        let parent = tempfile::tempdir().expect("tempdir");
        let file = parent.path().join("cache");
        std::fs::write(&file, b"not a directory").expect("a file");
        let root = held_at(&file);
        assert_eq!(held_id(&root), None);
        let opened = read(&root, &object(Silo::Images));
        assert!(!matches!(opened, Ok(Some(_))), "nothing opens: {opened:?}");
    }

    #[test]
    fn a_file_is_opened_through_the_held_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let obj = object(Silo::Thumbs);
        put(dir.path(), &obj, b"one");
        let root = held_at(dir.path());
        assert_eq!(held_id(&root), Some(id_of(dir.path())));
        root.checked.store(u64::MAX, Ordering::Relaxed); // no look at the name again
        let moved = dir.path().with_extension("moved");
        std::fs::rename(dir.path(), &moved).expect("moved away");
        // Only the held descriptor can find it now.
        assert_eq!(read(&root, &obj).expect("opens"), Some(b"one".to_vec()));
        // A lookup by name caches the negative dentry, as a miss's blocking path does.
        let missing = object(Silo::Images);
        assert!(std::fs::metadata(missing.path(&moved)).is_err());
        let e = read(&root, &missing).expect_err("no such file");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        std::fs::rename(&moved, dir.path()).expect("back, for the tempdir's removal");
    }

    #[test]
    fn a_replaced_directory_is_followed_at_the_next_second_not_before() {
        let parent = tempfile::tempdir().expect("tempdir");
        let (dir, old) = (parent.path().join("cache"), parent.path().join("old"));
        let obj = object(Silo::Images);
        put(&dir, &obj, b"before");
        let root = held_at(&dir);
        let t = root.checked.load(Ordering::Relaxed);
        std::fs::rename(&dir, &old).expect("moved away");
        put(&dir, &obj, b"after");
        root.recheck_at(t);
        assert_eq!(
            held_id(&root),
            Some(id_of(&old)),
            "within the second: the old one"
        );
        root.recheck_at(t + 1);
        assert_eq!(held_id(&root), Some(id_of(&dir)), "then the name's");
        assert_eq!(read(&root, &obj).expect("opens"), Some(b"after".to_vec()));
    }

    #[test]
    fn a_directory_gone_falls_back_to_the_whole_path_and_one_made_again_is_held() {
        let parent = tempfile::tempdir().expect("tempdir");
        let dir = parent.path().join("cache");
        let obj = object(Silo::Images);
        let root = held_at(&dir);
        assert_eq!(held_id(&root), None, "nothing to hold yet");
        let t = root.checked.load(Ordering::Relaxed);
        put(&dir, &obj, b"made");
        assert_eq!(
            read(&root, &obj).expect("opens"),
            Some(b"made".to_vec()),
            "the whole path finds the file before any recheck"
        );
        // Seconds well ahead, so that no look of `read`'s above comes after them.
        root.recheck_at(t + 100);
        assert_eq!(held_id(&root), Some(id_of(&dir)), "made: held");
        std::fs::remove_dir_all(&dir).expect("removed");
        root.recheck_at(t + 200);
        assert_eq!(held_id(&root), None, "gone: dropped");
    }
}
