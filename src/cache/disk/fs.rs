//! File identity and quiet unlinks: the filesystem facts that both the readers
//! (`io.rs`) and the publisher (`publish.rs`) act on. A leaf, so neither of those two
//! imports the other for them.

use std::fs::Metadata;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Which file an object's path named when it was opened (device and inode). A step that
/// acts on "the file at the path" later checks, under the key's lock, that the path still
/// names it and not a file published since (`disk/publish.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    /// A made-up identity, for tests of what is keyed by it.
    #[cfg(test)]
    pub(crate) fn for_tests(ino: u64) -> FileId {
        FileId { dev: 0, ino }
    }

    pub(crate) fn of(md: &Metadata) -> FileId {
        FileId {
            dev: md.dev(),
            ino: md.ino(),
        }
    }

    /// The regular file at `path` now (blocking): `Ok(None)` if there is none.
    pub(crate) fn at(path: &Path) -> io::Result<Option<FileId>> {
        match std::fs::metadata(path) {
            Ok(md) if md.is_file() => Ok(Some(FileId::of(&md))),
            Ok(_) => Ok(None),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

pub(crate) fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// Unlinks `path`; whether a file was there.
pub(crate) fn remove_quietly(path: &Path) -> bool {
    match std::fs::remove_file(path) {
        Ok(()) => true,
        Err(e) if is_absent(&e) => false,
        Err(e) => {
            tracing::warn!("cannot remove cache file {}: {e}", path.display());
            false
        }
    }
}
