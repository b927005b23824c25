//! Hits served on the event loop: what the kernel has cached is opened and read
//! inline, in one piece up to 1 MiB; what it has not is read on the blocking pool.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use pingora_cache::Storage;

use super::io::{read_at, WHOLE_READ};
use super::tests::{body, get, key, open, put, span};

#[tokio::test]
async fn a_cached_hit_is_opened_on_the_event_loop_and_read_in_one_piece() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    let b = body(300_000, 1);
    put(s, &key(1), &b).await;
    let before = s.lookup_paths();
    let (_, mut hit) = s.lookup(&key(1), &span()).await.unwrap().unwrap();
    let (inline, blocking) = s.lookup_paths();
    assert_eq!(
        (inline - before.0, blocking - before.1),
        (1, 0),
        "a file just written (dentry, inode and pages cached) and indexed"
    );
    let chunk = hit.read_body().await.unwrap().unwrap();
    assert_eq!(&chunk[..], &b[..], "the whole body in one piece");
    assert!(hit.read_body().await.unwrap().is_none());
}

#[tokio::test]
async fn a_missing_file_with_no_index_entry_is_a_miss_on_the_event_loop() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    assert!(get(s, &key(2)).await.is_none()); // caches the negative dentries
    let before = s.lookup_paths();
    assert!(get(s, &key(2)).await.is_none());
    assert_eq!(s.lookup_paths().0, before.0 + 1);
}

#[tokio::test]
async fn a_file_not_yet_indexed_takes_the_blocking_path_which_indexes_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    let b = body(5_000, 3);
    put(s, &key(3), &b).await;
    let s2 = open(dir.path(), 1 << 30); // a restart, before its scan: nothing indexed
    let before = s2.lookup_paths();
    assert_eq!(get(s2, &key(3)).await.unwrap(), b);
    assert_eq!(
        s2.lookup_paths().1,
        before.1 + 1,
        "indexed under the key's lock"
    );
    assert!(s2
        .indexed_object(&super::tests::obj(3).key_hash())
        .is_some());
    assert_eq!(get(s2, &key(3)).await.unwrap(), b);
    assert_eq!(s2.lookup_paths().0, before.0 + 1, "then inline");
}

/// Drops the file's clean pages from the page cache, as after a reboot (ext4 does; a
/// filesystem that ignores the hint just leaves the test on the inline path).
pub(super) fn evict_pages(file: &File) {
    file.sync_all().unwrap();
    // SAFETY: a plain advisory call on an open descriptor.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0);
}

#[tokio::test]
async fn a_read_the_page_cache_cannot_serve_goes_to_the_blocking_pool_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cold");
    let b = body(WHOLE_READ as usize, 4);
    std::fs::write(&path, &b).unwrap();
    let file = Arc::new(File::open(&path).unwrap());
    evict_pages(&file);
    let got = read_at(file.clone(), 1000, b.len() - 1000).await.unwrap();
    assert_eq!(&got[..], &b[1000..]);
    // Cached now: the same read again, inline.
    let got = read_at(file.clone(), 0, b.len()).await.unwrap();
    assert_eq!(&got[..], &b[..]);
    let short = read_at(file, 10, b.len()).await.unwrap_err();
    assert_eq!(short.kind(), std::io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn a_cold_cache_file_is_still_served_whole_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    let b = body(200_000, 5);
    put(s, &key(5), &b).await;
    evict_pages(&File::open(super::tests::obj(5).path(dir.path())).unwrap());
    assert_eq!(get(s, &key(5)).await.unwrap(), b);
}
