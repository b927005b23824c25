//! The disk tier on its own, through pingora's `Storage` API: one failure mode per test.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use pingora_cache::key::CacheHashKey;
use pingora_cache::storage::{HitHandler, MissFinishType, PurgeOutcome, PurgeTarget, PurgeType};
use pingora_cache::trace::{Span, SpanHandle};
use pingora_cache::{CacheKey, CacheMeta, Storage};
use pingora_http::ResponseHeader;

use super::format::{self, Md5, ObjectRef, Silo};
use super::index::BLOCK;
use super::*;

pub(crate) fn span() -> SpanHandle {
    Span::inactive().handle()
}

pub(crate) fn hex(n: u32) -> String {
    format!("{n:08x}{:024x}", u128::from(n) * 0x9E37_79B9)
}

/// Polls `done` until it holds, for what the tier finishes in the background (temp
/// file removal on the blocking pool). Fails after 10 s: never a fixed sleep.
pub(crate) async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(crate) fn key(n: u32) -> CacheKey {
    obj(n).cache_key()
}

pub(crate) fn obj(n: u32) -> ObjectRef {
    ObjectRef::new(Silo::Images, Md5::parse(&hex(n)).unwrap())
}

pub(crate) fn meta_with(len: Option<usize>) -> CacheMeta {
    let mut header = ResponseHeader::build(200, None).unwrap();
    header.append_header("content-type", "image/jpeg").unwrap();
    if let Some(len) = len {
        header
            .append_header("content-length", len.to_string())
            .unwrap();
    }
    let now = SystemTime::now();
    CacheMeta::new(now + Duration::from_secs(3600), now, 0, 0, header)
}

pub(crate) fn config(dir: &Path, budget: u64) -> DiskConfig {
    DiskConfig {
        dir: dir.to_owned(),
        budget_bytes: budget,
        max_object_bytes: budget,
        fsync: false,
    }
}

/// A store whose restart scan never runs on its own (tests start it explicitly).
pub(crate) fn open(dir: &Path, budget: u64) -> &'static DiskStorage {
    let s = Box::leak(Box::new(DiskStorage::open(config(dir, budget))));
    s.started.store(true, std::sync::atomic::Ordering::Release);
    s
}

pub(crate) async fn put(s: &'static DiskStorage, k: &CacheKey, body: &[u8]) -> usize {
    let mut miss = s
        .get_miss_handler(k, &meta_with(Some(body.len())), &span())
        .await
        .unwrap();
    for chunk in body.chunks(7000) {
        miss.write_body(Bytes::copy_from_slice(chunk), false)
            .await
            .unwrap();
    }
    miss.write_body(Bytes::new(), true).await.unwrap();
    match miss.finish().await.unwrap() {
        MissFinishType::Created(n) => n,
        MissFinishType::Appended(..) => panic!("never appends"),
    }
}

pub(crate) async fn read_all(hit: &mut HitHandler) -> pingora_error::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = hit.read_body().await? {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

pub(crate) async fn get(s: &'static DiskStorage, k: &CacheKey) -> Option<Vec<u8>> {
    let (_, mut hit) = s.lookup(k, &span()).await.unwrap()?;
    Some(read_all(&mut hit).await.unwrap())
}

pub(crate) fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn temps(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir.join(".tmp"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Rewrites the file of `o` with `f` applied to its bytes.
fn mangle(dir: &Path, o: &ObjectRef, f: impl FnOnce(&mut Vec<u8>)) {
    let path = o.path(dir);
    let mut bytes = std::fs::read(&path).unwrap();
    f(&mut bytes);
    std::fs::write(&path, bytes).unwrap();
}

#[tokio::test]
async fn hit_after_complete_write_returns_identical_bytes_and_meta() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    let b = body(200_000, 1);
    let charged = put(s, &key(1), &b).await;
    assert_eq!(charged as u64 % BLOCK, 0);
    let (meta, mut hit) = s.lookup(&key(1), &span()).await.unwrap().unwrap();
    assert_eq!(meta.headers().get("content-type").unwrap(), "image/jpeg");
    assert_eq!(meta.response_header().status, 200);
    assert_eq!(read_all(&mut hit).await.unwrap(), b);
    let st = s.stats();
    assert_eq!((st.objects, st.bytes, st.reserved), (1, charged as u64, 0));
    assert!(obj(1).path(dir.path()).is_file());
    assert!(temps(dir.path()).is_empty());
}

#[tokio::test]
async fn fsync_mode_writes_and_serves_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DiskConfig {
        fsync: true,
        ..config(dir.path(), 1 << 30)
    };
    let s: &'static DiskStorage = Box::leak(Box::new(DiskStorage::open(cfg)));
    let b = body(100_000, 9);
    put(s, &key(30), &b).await;
    assert_eq!(get(s, &key(30)).await.unwrap(), b);
}

#[tokio::test]
async fn large_object_is_read_in_bounded_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    let b = body(3_000_000, 2);
    put(s, &key(2), &b).await;
    let (_, mut hit) = s.lookup(&key(2), &span()).await.unwrap().unwrap();
    let mut got = Vec::new();
    let mut sizes = Vec::new();
    while let Some(chunk) = hit.read_body().await.unwrap() {
        assert!(chunk.len() as u64 <= super::io::WHOLE_READ);
        sizes.push(chunk.len());
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, b);
    assert_eq!(sizes[0], 64 << 10, "not read whole: {sizes:?}");
}

#[tokio::test]
async fn file_appears_at_its_path_only_when_complete() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    let mut miss = s
        .get_miss_handler(&key(3), &meta_with(Some(10)), &span())
        .await
        .unwrap();
    miss.write_body(Bytes::from_static(b"01234"), false)
        .await
        .unwrap();
    assert!(!obj(3).path(dir.path()).exists());
    assert_eq!(temps(dir.path()).len(), 1);
    miss.write_body(Bytes::from_static(b"56789"), true)
        .await
        .unwrap();
    miss.finish().await.unwrap();
    assert!(obj(3).path(dir.path()).is_file());
    assert!(temps(dir.path()).is_empty());
    assert_eq!(get(s, &key(3)).await.unwrap(), b"0123456789");
}

#[tokio::test]
async fn corrupt_header_is_a_miss_and_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    let b = body(5000, 3);
    put(s, &key(4), &b).await;
    let header_len = format::header_len_for(
        format::MetaBytes::from_meta(&meta_with(Some(b.len())))
            .unwrap()
            .len(),
    );
    // Magic, version, lengths, silo, md5, reserved, checksum, meta and padding bytes.
    for at in [0, 3, 8, 13, 17, 30, 36, 40, 55, 61, 70, header_len - 1] {
        put(s, &key(4), &b).await;
        mangle(dir.path(), &obj(4), |bytes| bytes[at] ^= 0x20);
        assert!(
            get(s, &key(4)).await.is_none(),
            "byte {at} flipped was served"
        );
        assert!(
            !obj(4).path(dir.path()).exists(),
            "byte {at}: file not removed"
        );
    }
    assert!(s.stats().corrupt_removed >= 12);
    assert_eq!(s.stats().objects, 0);
}

#[tokio::test]
async fn file_cut_short_is_a_miss_and_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    put(s, &key(5), &body(50_000, 5)).await;
    mangle(dir.path(), &obj(5), |bytes| bytes.truncate(bytes.len() - 1));
    assert!(get(s, &key(5)).await.is_none());
    assert!(!obj(5).path(dir.path()).exists());
    // Cut inside the header too.
    put(s, &key(5), &body(50_000, 5)).await;
    mangle(dir.path(), &obj(5), |bytes| bytes.truncate(40));
    assert!(get(s, &key(5)).await.is_none());
    assert!(!obj(5).path(dir.path()).exists());
}

#[tokio::test]
async fn file_cut_short_after_the_hit_opened_fails_the_read_and_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    put(s, &key(5), &body(50_000, 5)).await;
    let (_, mut hit) = s.lookup(&key(5), &span()).await.unwrap().expect("a hit");
    // The same inode the hit has open, cut in the middle of the body.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(obj(5).path(dir.path()))
        .unwrap();
    file.set_len(20_000).unwrap();
    let mut read = Vec::new();
    let failed = loop {
        match hit.read_body().await {
            Ok(Some(b)) => read.extend_from_slice(&b),
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    assert!(failed, "a short file must fail the read, never end cleanly");
    assert!(read.len() < 50_000);
    assert!(!obj(5).path(dir.path()).exists());
}

#[tokio::test]
async fn file_with_trailing_bytes_is_a_miss_and_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    put(s, &key(6), &body(1000, 6)).await;
    mangle(dir.path(), &obj(6), |bytes| bytes.push(0));
    assert!(get(s, &key(6)).await.is_none());
    assert!(!obj(6).path(dir.path()).exists());
}

#[tokio::test]
async fn flipped_body_byte_fails_a_full_read_and_removes_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    let b = body(300_000, 7);
    put(s, &key(7), &b).await;
    mangle(dir.path(), &obj(7), |bytes| {
        let at = bytes.len() - 1000;
        bytes[at] ^= 1;
    });
    let (_, mut hit) = s.lookup(&key(7), &span()).await.unwrap().unwrap();
    assert!(
        read_all(&mut hit).await.is_err(),
        "a bad body must not end cleanly"
    );
    assert!(!obj(7).path(dir.path()).exists());
}

#[tokio::test]
async fn writer_dropped_mid_body_readers_get_an_error_and_temp_file_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    let mut miss = s
        .get_miss_handler(&key(8), &meta_with(Some(100)), &span())
        .await
        .unwrap();
    miss.write_body(Bytes::from_static(b"first"), false)
        .await
        .unwrap();
    let (_, mut reader) = s.lookup(&key(8), &span()).await.unwrap().unwrap();
    assert_eq!(reader.read_body().await.unwrap().unwrap(), "first");
    drop(miss);
    assert!(
        reader.read_body().await.is_err(),
        "a dropped writer is not a clean end"
    );
    eventually("temp file removed", || temps(dir.path()).is_empty()).await;
    assert!(
        temps(dir.path()).is_empty(),
        "temp file left: {:?}",
        temps(dir.path())
    );
    assert!(!obj(8).path(dir.path()).exists());
    assert!(s.lookup(&key(8), &span()).await.unwrap().is_none());
    assert_eq!(s.stats().reserved, 0);
}

#[tokio::test]
async fn partial_reader_streams_bytes_written_after_it_attached() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    let mut miss = s
        .get_miss_handler(&key(9), &meta_with(None), &span())
        .await
        .unwrap();
    let (_, mut reader) = s.lookup(&key(9), &span()).await.unwrap().unwrap();
    let read = tokio::spawn(async move { read_all(&mut reader).await.unwrap() });
    for part in [&b"abc"[..], b"def", b"ghi"] {
        tokio::time::sleep(Duration::from_millis(5)).await;
        miss.write_body(Bytes::copy_from_slice(part), false)
            .await
            .unwrap();
    }
    miss.write_body(Bytes::new(), true).await.unwrap();
    miss.finish().await.unwrap();
    assert_eq!(read.await.unwrap(), b"abcdefghi");
}

#[tokio::test]
async fn body_shorter_than_content_length_fails_the_fill_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    let mut miss = s
        .get_miss_handler(&key(10), &meta_with(Some(10)), &span())
        .await
        .unwrap();
    miss.write_body(Bytes::from_static(b"short"), true)
        .await
        .unwrap();
    assert!(miss.finish().await.is_err());
    eventually("temp file removed", || temps(dir.path()).is_empty()).await;
    assert!(!obj(10).path(dir.path()).exists());
}

#[tokio::test]
async fn over_budget_evicts_least_recently_used() {
    let dir = tempfile::tempdir().unwrap();
    let budget = 40 * BLOCK;
    let s = open(dir.path(), budget);
    let b = body(3 * BLOCK as usize, 11); // 4 blocks with its header
    for n in 0..10 {
        put(s, &key(n), &b).await;
    }
    assert!(get(s, &key(0)).await.is_some()); // 0 is now the most recently used
    for n in 10..15 {
        put(s, &key(n), &b).await;
        let st = s.stats();
        assert!(st.bytes + st.reserved <= budget, "over budget at {n}");
    }
    // 10 fit: 0 and the 9 newest are kept, 1..=5 were evicted oldest first.
    for n in 1..=5 {
        assert!(!obj(n).path(dir.path()).exists(), "{n} should be evicted");
    }
    for n in [0, 6, 7, 8, 9, 10, 11, 12, 13, 14] {
        assert!(get(s, &key(n)).await.is_some(), "{n} should be kept");
    }
    assert_eq!(s.stats().evictions, 5);
}

#[tokio::test]
async fn purge_unlinks_the_file_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    put(s, &key(12), b"hello").await;
    let compact = key(12).to_compact();
    let sp = span();
    let outcome = s
        .purge(PurgeTarget::Active(&compact), PurgeType::Invalidation, &sp)
        .await;
    assert_eq!(outcome.unwrap(), PurgeOutcome::Purged(None));
    assert!(!obj(12).path(dir.path()).exists());
    let outcome = s
        .purge(PurgeTarget::Active(&compact), PurgeType::Invalidation, &sp)
        .await;
    assert_eq!(outcome.unwrap(), PurgeOutcome::NotFound);
    // By path, also for a file the index does not know.
    put(s, &key(12), b"hello").await;
    s.forget(obj(12));
    assert!(s.remove(obj(12)).await);
    assert!(!obj(12).path(dir.path()).exists());
}

#[tokio::test]
async fn fill_purged_while_in_progress_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    let mut miss = s
        .get_miss_handler(&key(13), &meta_with(None), &span())
        .await
        .unwrap();
    miss.write_body(Bytes::from_static(b"banned"), true)
        .await
        .unwrap();
    assert!(s.remove(obj(13)).await);
    miss.finish().await.unwrap();
    assert!(!obj(13).path(dir.path()).exists());
    assert!(s.lookup(&key(13), &span()).await.unwrap().is_none());
}

#[tokio::test]
async fn seek_serves_ranges_from_a_disk_hit() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    let b = body(200_000, 14);
    put(s, &key(14), &b).await;
    let (_, mut hit) = s.lookup(&key(14), &span()).await.unwrap().unwrap();
    assert!(hit.can_seek());
    hit.seek(100_000, Some(100_010)).unwrap();
    assert_eq!(read_all(&mut hit).await.unwrap(), &b[100_000..100_010]);
    hit.seek(5, Some(8)).unwrap(); // the next part of a multipart range
    assert_eq!(read_all(&mut hit).await.unwrap(), &b[5..8]);
    hit.seek(199_990, None).unwrap();
    assert_eq!(read_all(&mut hit).await.unwrap(), &b[199_990..]);
    assert!(hit.seek(200_000, None).is_err());
}

#[tokio::test]
async fn update_meta_rewrites_the_header_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    put(s, &key(15), b"body").await;
    let mut meta = meta_with(Some(4));
    meta.response_header_mut()
        .insert_header("x-new", "1")
        .unwrap();
    assert!(s.update_meta(&key(15), &meta, &span()).await.unwrap());
    let (meta, mut hit) = s.lookup(&key(15), &span()).await.unwrap().unwrap();
    assert_eq!(meta.headers().get("x-new").unwrap(), "1");
    assert_eq!(read_all(&mut hit).await.unwrap(), b"body");
    assert!(!s.update_meta(&key(16), &meta, &span()).await.unwrap());
}

#[tokio::test]
async fn keys_that_are_not_object_paths_never_become_paths() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    let mut varied = key(17);
    varied.set_variance_key([1; 16]);
    // Keys not made by `ObjectRef::cache_key`: a path-like primary, a user tag that is no
    // silo, an object key with a variance.
    for k in [
        CacheKey::new("_images/../../etc/passwd", ""),
        CacheKey::new("../../etc/passwd", "_images"),
        CacheKey::new(format!("_images/{}", hex(17)), ""),
        CacheKey::new(Vec::new(), "images"),
        varied,
    ] {
        assert!(s.lookup(&k, &span()).await.unwrap().is_none());
        assert!(s
            .get_miss_handler(&k, &meta_with(None), &span())
            .await
            .is_err());
    }
    assert!(ObjectRef::from_key(&key(17)).is_some());
    let only_tmp = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(only_tmp, 1, "nothing but .tmp may exist");
}

#[tokio::test]
async fn read_only_dir_degrades_to_no_disk_caching() {
    // Root ignores permissions, so "cannot be written" is a parent that is a file.
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("file"), b"x").unwrap();
    let s = open(&work.path().join("file/cache"), 1 << 30);
    let st = s.stats();
    assert!(!st.writable);
    assert_eq!(st.write_errors, 1);
    assert!(s
        .get_miss_handler(&key(18), &meta_with(None), &span())
        .await
        .is_err());
    assert!(s.lookup(&key(18), &span()).await.unwrap().is_none());
}

#[test]
fn probe_dir_tells_a_usable_directory_from_an_unusable_one() {
    let work = tempfile::tempdir().unwrap();
    assert!(DiskStorage::probe_dir(&work.path().join("not/yet/there")).is_ok());
    assert!(
        !work.path().join("not").exists(),
        "the probe creates nothing"
    );
    std::fs::write(work.path().join("file"), b"x").unwrap();
    assert!(DiskStorage::probe_dir(&work.path().join("file/cache")).is_err());
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 1);
}

#[tokio::test]
async fn write_failure_mid_body_fails_the_fill_and_counts_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    s.fail_writes_after
        .store(10_000, std::sync::atomic::Ordering::Relaxed);
    let mut miss = s
        .get_miss_handler(&key(19), &meta_with(None), &span())
        .await
        .unwrap();
    miss.write_body(Bytes::from(body(8000, 1)), false)
        .await
        .unwrap();
    assert!(miss
        .write_body(Bytes::from(body(8000, 2)), false)
        .await
        .is_err());
    drop(miss);
    let st = s.stats();
    assert_eq!(st.write_errors, 1);
    assert!(!st.writable, "the tier pauses writes after an error");
    eventually("temp file removed", || temps(dir.path()).is_empty()).await;
}

#[tokio::test]
async fn temp_files_of_dead_processes_are_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(".tmp")).unwrap();
    // pid_max is at most 2^22 on Linux: this process cannot exist.
    let stale = dir.path().join(".tmp/4294967-1-iabc");
    std::fs::write(&stale, b"half").unwrap();
    let mine = dir
        .path()
        .join(format!(".tmp/{}-9-iabc", std::process::id()));
    std::fs::write(&mine, b"live").unwrap();
    open(dir.path(), 1 << 30);
    assert!(!stale.exists());
    assert!(mine.exists(), "a live process's temp file is kept");
}

#[test]
fn header_round_trips_and_tolerates_no_bit_flip() {
    let o = obj(20);
    let meta = format::MetaBytes::from_meta(&meta_with(Some(3))).unwrap();
    let len = format::header_len_for(meta.len());
    let buf = format::encode(&o, &meta, len, 3, Some(7)).unwrap();
    let h = format::decode(&buf, &o).unwrap();
    assert_eq!(
        (h.body_len, h.body_crc, h.header_len),
        (3, Some(7), len as u64)
    );
    assert_eq!(h.meta, meta);
    assert!(format::decode(&buf, &obj(21)).is_err(), "wrong object");
    for bit in 0..len * 8 {
        let mut b = buf.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        assert!(format::decode(&b, &o).is_err(), "bit {bit} flipped decodes");
        assert!(
            bit / 8 >= 8 || format::looks_ours(&b),
            "bit {bit}: magic not recognised"
        );
    }
}

#[test]
fn paths_are_silo_ab_cd_hash() {
    let o = ObjectRef::new(
        Silo::Thumbs,
        Md5::parse("e28e3076236eff37065d36416001263e").unwrap(),
    );
    assert_eq!(
        o.path(Path::new("/c")),
        Path::new("/c/_thumbs/e2/8e/e28e3076236eff37065d36416001263e")
    );
    assert_eq!(o.key_hash(), o.cache_key().combined_bin());
}
