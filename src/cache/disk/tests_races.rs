//! Evictions, lookups and invalid files racing publishes of the same key
//! (`disk/publish.rs`): none of them removes a file published meanwhile, forgets its index
//! entry, or leaves an entry whose file is gone. One race per test, forced with a hook at
//! the point just before the step takes the key's lock.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::index::BLOCK;
use super::tests::{body, get, key, obj, open, put};
use super::{DiskStorage, ObjectRef, TestHook};

fn set_hook(s: &'static DiskStorage, f: impl Fn(TestHook, ObjectRef) + Send + Sync + 'static) {
    *s.hook.lock() = Some(Arc::new(f));
}

/// Runs `f` the first time the hook is called at `at` for object `n`.
fn once_at(
    s: &'static DiskStorage,
    at: TestHook,
    n: u32,
    f: impl Fn(&'static DiskStorage, ObjectRef) + Send + Sync + 'static,
) {
    let done = AtomicBool::new(false);
    set_hook(s, move |when, o| {
        if when == at && o == obj(n) && !done.swap(true, Ordering::SeqCst) {
            f(s, o);
        }
    });
}

/// The objects with a file under `dir` and the objects indexed agree, and the byte count
/// is the index's.
fn assert_index_matches_dir(s: &'static DiskStorage, dir: &Path, ctx: &str) {
    let mut files = BTreeSet::new();
    let images = dir.join("_images");
    for ab in std::fs::read_dir(&images).into_iter().flatten().flatten() {
        for cd in std::fs::read_dir(ab.path()).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(cd.path()).into_iter().flatten().flatten() {
                files.insert(f.file_name().into_string().unwrap());
            }
        }
    }
    let books = s.books.lock();
    let indexed: BTreeSet<_> = books
        .index
        .iter_mru()
        .map(|r| r.obj.hex().to_string())
        .collect();
    assert_eq!(files, indexed, "{ctx}: files on disk vs index entries");
    let charged: u64 = books.index.iter_mru().map(|r| r.bytes()).sum();
    assert_eq!(books.index.bytes(), charged, "{ctx}: byte count");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_never_unlinks_a_newer_publish_of_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 8 * BLOCK); // two objects of 4 blocks
    let (old, new) = (body(3 * BLOCK as usize, 1), body(3 * BLOCK as usize, 2));
    put(s, &key(80), &old).await;
    put(s, &key(81), &old).await;
    // Filling 82 evicts 80 (least recently used). Between the eviction and its unlink, a
    // new fill of 80 publishes (evicting 81 to make room): the unlink must spare it.
    let rt = tokio::runtime::Handle::current();
    let new2 = new.clone();
    once_at(s, TestHook::Evicting, 80, move |s, o| {
        rt.block_on(put(s, &key(80), &new2));
        assert!(o.path(s.dir()).is_file(), "80 republished");
    });
    put(s, &key(82), &old).await;
    assert!(
        obj(80).path(dir.path()).is_file(),
        "the eviction unlinked the newer publish"
    );
    assert_eq!(get(s, &key(80)).await.unwrap(), new);
    assert!(!obj(81).path(dir.path()).exists(), "81 was evicted");
    let st = s.stats();
    assert_eq!((st.objects, st.bytes, st.evictions), (2, 8 * BLOCK, 2));
    assert_index_matches_dir(s, dir.path(), "after the race");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_miss_never_forgets_a_file_published_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    let b = body(20_000, 3);
    // The lookup finds no file; before it drops the (stale) entry, a fill publishes.
    let rt = tokio::runtime::Handle::current();
    let b2 = b.clone();
    once_at(s, TestHook::LookupMissing, 83, move |s, _| {
        rt.block_on(put(s, &key(83), &b2));
    });
    assert!(get(s, &key(83)).await.is_none(), "the lookup itself missed");
    assert_eq!(
        s.indexed_object(&obj(83).key_hash()),
        Some(obj(83)),
        "the publish's index entry was forgotten"
    );
    assert_eq!(s.stats().objects, 1);
    assert_index_matches_dir(s, dir.path(), "after the race");
    assert_eq!(get(s, &key(83)).await.unwrap(), b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_miss_still_forgets_a_stale_entry() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    put(s, &key(84), &body(5000, 4)).await;
    std::fs::remove_file(obj(84).path(dir.path())).unwrap(); // behind the store's back
    assert!(get(s, &key(84)).await.is_none());
    let st = s.stats();
    assert_eq!((st.objects, st.bytes), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hit_never_indexes_a_file_unlinked_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let b = body(3 * BLOCK as usize, 5);
    // Purge: a restarted store (not scanned) has the file unindexed; the lookup opens it,
    // a purge unlinks it, then the lookup would index it.
    put(open(dir.path(), 1 << 30), &key(85), &b).await;
    let s = open(dir.path(), 8 * BLOCK);
    once_at(
        s,
        TestHook::LookupFound,
        85,
        |s, o| assert!(s.remove_now(o)),
    );
    assert_eq!(
        get(s, &key(85)).await.unwrap(),
        b,
        "served from the open file"
    );
    assert!(!obj(85).path(dir.path()).exists());
    assert_eq!(
        s.indexed_object(&obj(85).key_hash()),
        None,
        "purged: indexed"
    );
    // Eviction: 86 is indexed and the lookup opens it, then a fill evicts and unlinks it.
    put(s, &key(86), &b).await;
    put(s, &key(87), &b).await;
    let rt = tokio::runtime::Handle::current();
    let b2 = b.clone();
    once_at(s, TestHook::LookupFound, 86, move |s, _| {
        rt.block_on(put(s, &key(88), &b2));
    });
    assert_eq!(
        get(s, &key(86)).await.unwrap(),
        b,
        "served from the open file"
    );
    assert!(!obj(86).path(dir.path()).exists());
    assert_eq!(
        s.indexed_object(&obj(86).key_hash()),
        None,
        "evicted: indexed"
    );
    let st = s.stats();
    assert_eq!((st.objects, st.bytes), (2, 8 * BLOCK));
    assert_index_matches_dir(s, dir.path(), "after the races");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_file_removal_never_unlinks_a_file_published_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    let (old, new) = (body(10_000, 6), body(10_000, 7));
    put(s, &key(89), &old).await;
    let path = obj(89).path(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[40] ^= 1; // the md5 in the header
    std::fs::write(&path, bytes).unwrap();
    // The lookup finds the file invalid; before it removes it, a fill publishes.
    let rt = tokio::runtime::Handle::current();
    let new2 = new.clone();
    once_at(s, TestHook::LookupInvalid, 89, move |s, _| {
        rt.block_on(put(s, &key(89), &new2));
    });
    assert!(
        get(s, &key(89)).await.is_none(),
        "the invalid file is a miss"
    );
    assert!(path.is_file(), "the newer publish was unlinked");
    assert_eq!(get(s, &key(89)).await.unwrap(), new);
    assert_eq!(s.stats().corrupt_removed, 1);
    assert_index_matches_dir(s, dir.path(), "after the race");
}

#[tokio::test]
async fn bad_body_never_removes_a_file_published_after_the_hit_opened() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    let (old, new) = (body(100_000, 8), body(100_000, 9));
    put(s, &key(90), &old).await;
    let path = obj(90).path(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let (_, mut hit) = pingora_cache::Storage::lookup(s, &key(90), &super::tests::span())
        .await
        .unwrap()
        .unwrap();
    put(s, &key(90), &new).await; // replaces the file the hit has open
    assert!(super::tests::read_all(&mut hit).await.is_err(), "bad body");
    assert!(path.is_file(), "the newer publish was unlinked");
    assert_eq!(get(s, &key(90)).await.unwrap(), new);
    assert_index_matches_dir(s, dir.path(), "after the race");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_and_directory_agree_after_racing_fills_hits_and_evictions() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 24 * BLOCK); // six of the twelve objects
    let tasks: Vec<_> = (0..4u32)
        .map(|t| {
            tokio::spawn(async move {
                let mut x = 0x9E37_79B9u32.wrapping_mul(t + 1);
                for i in 0..150u32 {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    let n = 100 + x % 12;
                    if i % 3 == 0 {
                        put(s, &key(n), &body(3 * BLOCK as usize, n as u8)).await;
                    } else if let Some(b) = get(s, &key(n)).await {
                        assert_eq!(b, body(3 * BLOCK as usize, n as u8), "{n}");
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_index_matches_dir(s, dir.path(), "after the traffic");
}
