//! The restart scan and the adoption of shm-cached directories.

use std::path::Path;
use std::time::{Duration, SystemTime};

use pingora_cache::Storage;

use super::format::{Md5, ObjectRef, Silo};
use super::index::BLOCK;
use super::tests::{body, get, hex, key, obj, open, put, read_all, span};
use super::*;

/// A fresh store over an existing directory, as after a restart, scanned to the end.
fn restart(dir: &Path, budget: u64) -> &'static DiskStorage {
    let s = open(dir, budget);
    s.started.store(true, Ordering::Release);
    s.books.lock().removed_while_scanning = Some(HashSet::new());
    scan::rebuild(s);
    s
}

/// A file as shm-cached wrote it: raw bytes at the object path, mtime = Last-Modified.
fn legacy(dir: &Path, o: &ObjectRef, bytes: &[u8], mtime: SystemTime) {
    let path = o.path(dir);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

fn jpeg(len: usize) -> Vec<u8> {
    let mut v = vec![0xFF, 0xD8, 0xFF, 0xE0];
    v.extend(body(len - 6, 9));
    v.extend([0xFF, 0xD9]);
    v
}

#[tokio::test]
async fn restart_rebuilds_the_index_and_byte_count() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path(), 1 << 30);
    let mut charged = 0;
    for n in 0..50 {
        charged += put(first, &key(n), &body(1000 + n as usize * 100, 1)).await as u64;
    }
    let s = restart(dir.path(), 1 << 30);
    let st = s.stats();
    assert_eq!((st.objects, st.bytes), (50, charged));
    assert!(st.rebuild_done);
    assert_eq!(st.rebuild_scanned, 50);
    assert_eq!(get(s, &key(7)).await.unwrap(), body(1700, 1));
}

#[tokio::test]
async fn lookups_are_served_before_the_index_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    put(open(dir.path(), 1 << 30), &key(1), b"early").await;
    let s = open(dir.path(), 1 << 30);
    s.started.store(true, Ordering::Release); // no scan at all
    assert_eq!(get(s, &key(1)).await.unwrap(), b"early");
    assert_eq!(s.stats().objects, 1, "a hit indexes what it finds");
}

#[tokio::test]
async fn scan_removes_corrupt_short_and_unknown_files_and_leaves_strangers_alone() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path(), 1 << 30);
    for n in 0..3 {
        put(first, &key(n), &body(5000, 2)).await;
    }
    let flip = obj(0).path(dir.path());
    let mut b = std::fs::read(&flip).unwrap();
    b[20] ^= 4;
    std::fs::write(&flip, b).unwrap();
    let short = obj(1).path(dir.path());
    let b = std::fs::read(&short).unwrap();
    std::fs::write(&short, &b[..b.len() - 10]).unwrap();
    let junk = obj(3).path(dir.path());
    std::fs::create_dir_all(junk.parent().unwrap()).unwrap();
    std::fs::write(&junk, b"not a media file").unwrap();
    let stranger = dir.path().join("_images/README");
    std::fs::write(&stranger, b"mine").unwrap();

    let s = restart(dir.path(), 1 << 30);
    assert!(!flip.exists() && !short.exists() && !junk.exists());
    assert!(
        stranger.exists(),
        "files at non-object paths are not ours to delete"
    );
    let st = s.stats();
    assert_eq!((st.objects, st.corrupt_removed), (1, 3));
    assert!(get(s, &key(2)).await.is_some());
}

#[tokio::test]
async fn shm_cached_file_is_adopted_and_served_with_sniffed_type_and_mtime() {
    let dir = tempfile::tempdir().unwrap();
    let o = ObjectRef::new(Silo::Thumbs, Md5::parse(&hex(40)).unwrap());
    let lm = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    let bytes = jpeg(30_000);
    legacy(dir.path(), &o, &bytes, lm);
    // Served straight away, before any scan...
    let s = open(dir.path(), 1 << 30);
    let (meta, mut hit) = s.lookup(&o.cache_key(), &span()).await.unwrap().unwrap();
    let h = meta.headers();
    assert_eq!(h.get("content-type").unwrap(), "image/jpeg");
    assert_eq!(h.get("content-length").unwrap(), "30000");
    assert_eq!(
        h.get("last-modified").unwrap(),
        "Sun, 13 Sep 2020 12:26:40 GMT"
    );
    assert_eq!(h.get("etag").unwrap(), format!("\"{}\"", hex(40)).as_str());
    assert!(meta.is_fresh(SystemTime::now()));
    assert_eq!(read_all(&mut hit).await.unwrap(), bytes);
    // ...and counted by the scan; the file itself is left as it is.
    let s = restart(dir.path(), 1 << 30);
    assert_eq!((s.stats().adopted, s.stats().objects), (1, 1));
    assert_eq!(std::fs::read(o.path(dir.path())).unwrap(), bytes);
    assert_eq!(
        std::fs::metadata(o.path(dir.path()))
            .unwrap()
            .modified()
            .unwrap(),
        lm
    );
    // Ranges work on adopted files too.
    let (_, mut hit) = s.lookup(&o.cache_key(), &span()).await.unwrap().unwrap();
    hit.seek(10, Some(20)).unwrap();
    assert_eq!(read_all(&mut hit).await.unwrap(), &bytes[10..20]);
}

#[tokio::test]
async fn truncated_shm_cached_file_is_a_miss_and_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = jpeg(30_000);
    legacy(dir.path(), &obj(41), &bytes[..20_000], SystemTime::now());
    let s = open(dir.path(), 1 << 30);
    assert!(get(s, &key(41)).await.is_none());
    assert!(!obj(41).path(dir.path()).exists());
    legacy(dir.path(), &obj(42), &bytes[..20_000], SystemTime::now());
    let s = restart(dir.path(), 1 << 30);
    assert!(!obj(42).path(dir.path()).exists());
    assert_eq!(s.stats().adopted, 0);
}

#[tokio::test]
async fn restart_orders_the_lru_by_mtime_and_evicts_down_to_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let old = SystemTime::now() - Duration::from_secs(86_400);
    for n in 0..10u32 {
        let o = obj(n);
        // n = 0 is the newest, n = 9 the oldest.
        let mtime = old - Duration::from_secs(u64::from(n) * 60);
        seed_object(
            dir.path(),
            o,
            "image/png",
            &body(2 * BLOCK as usize, 3),
            Some(mtime),
        )
        .unwrap();
    }
    // Each file is 3 blocks: 6 fit.
    let s = restart(dir.path(), 18 * BLOCK);
    let st = s.stats();
    assert_eq!((st.objects, st.evictions), (6, 4));
    for n in 0..10 {
        assert_eq!(obj(n).path(dir.path()).exists(), n < 6, "object {n}");
    }
}

#[tokio::test]
async fn scan_does_not_bring_back_what_was_purged_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    put(open(dir.path(), 1 << 30), &key(50), b"x").await;
    let s = open(dir.path(), 1 << 30);
    s.started.store(true, Ordering::Release);
    s.books.lock().removed_while_scanning = Some(HashSet::new());
    // The scan saw the file, then a ban removed it before the merge.
    let seen = vec![scan_entry(obj(50))];
    s.forget(obj(50));
    assert_eq!(scan::merge_for_tests(s, &seen), 0);
    assert_eq!(s.stats().objects, 0);
}

fn scan_entry(o: ObjectRef) -> index::Rec {
    index::Rec { obj: o, blocks: 1 }
}

#[tokio::test]
async fn seeded_objects_are_served_like_fills() {
    let dir = tempfile::tempdir().unwrap();
    let b = body(10_000, 4);
    seed_object(dir.path(), obj(60), "image/webp", &b, None).unwrap();
    let s = open(dir.path(), 1 << 30);
    let (meta, mut hit) = s.lookup(&key(60), &span()).await.unwrap().unwrap();
    assert_eq!(meta.headers().get("content-type").unwrap(), "image/webp");
    assert_eq!(read_all(&mut hit).await.unwrap(), b);
}
