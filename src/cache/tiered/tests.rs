//! Memory over disk: fills, promotion, degradation and purges.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use pingora_cache::storage::{HitHandler, MissFinishType};
use pingora_cache::{CacheKey, CacheMeta, Storage};
use pingora_http::ResponseHeader;

use super::*;
use crate::cache::disk::tests::{body, eventually, key, meta_with, obj, open, read_all, span};
use crate::cache::memory::MemoryStorage;
use pingora_cache::key::CacheHashKey;

/// Memory tier of 4 MiB taking objects up to 64 KiB, over a disk tier in `dir`.
fn tiered(dir: &Path) -> &'static TieredStorage {
    let memory = Box::leak(Box::new(MemoryStorage::with_max_object_bytes(
        4 << 20,
        64 << 10,
    )));
    let disk = open(dir, 1 << 30);
    Box::leak(Box::new(TieredStorage::new(memory, Some(disk))))
}

fn disk_of(t: &TieredStorage) -> &'static DiskStorage {
    t.disk().unwrap()
}

async fn put(t: &'static TieredStorage, k: &CacheKey, b: &[u8]) -> usize {
    put_meta(t, k, b, &meta_with(Some(b.len()))).await
}

async fn put_meta(t: &'static TieredStorage, k: &CacheKey, b: &[u8], meta: &CacheMeta) -> usize {
    let mut miss = t.get_miss_handler(k, meta, &span()).await.unwrap();
    for chunk in b.chunks(10_000) {
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

async fn hit(t: &'static TieredStorage, k: &CacheKey) -> Option<(CacheMeta, HitHandler)> {
    t.lookup(k, &span()).await.unwrap()
}

async fn in_memory(t: &TieredStorage, k: &CacheKey) -> bool {
    t.memory().lookup(k, &span()).await.unwrap().is_some()
}

#[tokio::test]
async fn fill_goes_to_disk_and_to_memory_when_it_fits() {
    let dir = tempfile::tempdir().unwrap();
    let t = tiered(dir.path());
    let small = body(20_000, 1);
    let big = body(200_000, 2);
    put(t, &key(1), &small).await;
    put(t, &key(2), &big).await;
    assert!(obj(1).path(dir.path()).is_file());
    assert!(obj(2).path(dir.path()).is_file());
    assert_eq!(
        t.memory().stats().objects,
        1,
        "only the small one fits memory"
    );
    let (_, mut h) = hit(t, &key(1)).await.unwrap();
    assert_eq!(read_all(&mut h).await.unwrap(), small);
    let (_, mut h) = hit(t, &key(2)).await.unwrap();
    assert_eq!(read_all(&mut h).await.unwrap(), big);
    assert!(in_memory(t, &key(1)).await);
    assert!(!in_memory(t, &key(2)).await);
}

#[tokio::test]
async fn disk_hit_is_promoted_into_memory_after_a_full_read() {
    let dir = tempfile::tempdir().unwrap();
    let b = body(30_000, 3);
    put(tiered(dir.path()), &key(3), &b).await;
    let t = tiered(dir.path()); // a restart: empty memory, same directory
    assert_eq!(t.memory().stats().objects, 0);
    let (_, mut h) = hit(t, &key(3)).await.unwrap();
    assert_eq!(read_all(&mut h).await.unwrap(), b);
    assert_eq!(t.stats().promotions, 1);
    std::fs::remove_file(obj(3).path(dir.path())).unwrap();
    let (_, mut h) = hit(t, &key(3)).await.expect("served from memory now");
    assert_eq!(read_all(&mut h).await.unwrap(), b);
}

#[tokio::test]
async fn a_disk_hit_read_in_one_piece_is_promoted_without_a_copy() {
    let dir = tempfile::tempdir().unwrap();
    let b = body(30_000, 13);
    put(tiered(dir.path()), &key(13), &b).await;
    let t = tiered(dir.path());
    let (_, mut h) = hit(t, &key(13)).await.unwrap();
    let sent = h.read_body().await.unwrap().expect("the whole body");
    assert_eq!(&sent[..], &b[..]);
    let kept = t
        .memory()
        .fresh_object(&key(13).combined_bin(), std::time::SystemTime::now())
        .expect("promoted");
    assert_eq!(
        kept.body.as_ptr(),
        sent.as_ptr(),
        "the memory tier keeps the buffer the client was sent"
    );
}

#[tokio::test]
async fn a_disk_hit_the_memory_tier_refuses_costs_no_copy_and_leaves_memory_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    // Memory holds one 40 KB object; the disk holds two.
    let memory = Box::leak(Box::new(MemoryStorage::with_max_object_bytes(
        50_000, 50_000,
    )));
    let t: &'static TieredStorage = Box::leak(Box::new(TieredStorage::new(
        memory,
        Some(open(dir.path(), 1 << 30)),
    )));
    let (a, b) = (body(40_000, 14), body(40_000, 15));
    put(t, &key(14), &a).await;
    put(t, &key(15), &b).await;
    let resident = |n| {
        t.memory()
            .fresh_object(&key(n).combined_bin(), std::time::SystemTime::now())
    };
    let (keep, other) = if resident(14).is_some() {
        (14, 15)
    } else {
        (15, 14)
    };
    // Make the resident one popular in TinyLFU's eyes, then hit the other on disk.
    for _ in 0..5 {
        let meta = meta_with(Some(40_000));
        let mut miss = t
            .memory()
            .get_miss_handler(&key(keep), &meta, &span())
            .await
            .unwrap();
        miss.write_body(Bytes::from(body(40_000, keep as u8)), true)
            .await
            .unwrap();
        miss.finish().await.unwrap();
    }
    let rejected = t.memory().stats().rejected;
    let (_, mut h) = hit(t, &key(other)).await.unwrap();
    let sent = h.read_body().await.unwrap().unwrap();
    assert_eq!(sent.len(), 40_000);
    assert_eq!(
        t.memory().stats().rejected,
        rejected + 1,
        "offered, refused"
    );
    assert!(resident(keep).is_some(), "the popular one stays");
    assert!(resident(other).is_none());
    assert_eq!(t.stats().promotions, 1);
}

#[tokio::test]
async fn a_purge_during_a_disk_hit_cancels_its_promotion() {
    let dir = tempfile::tempdir().unwrap();
    let b = body(30_000, 16);
    put(tiered(dir.path()), &key(16), &b).await;
    let t = tiered(dir.path());
    let (_, mut h) = hit(t, &key(16)).await.unwrap();
    assert!(t.purge_hash(obj(16).md5));
    assert_eq!(
        read_all(&mut h).await.unwrap(),
        b,
        "served from the open file"
    );
    h.finish(t, &key(16), &span()).await.unwrap();
    assert_eq!(t.memory().stats().objects, 0, "not resurrected in memory");
    assert!(hit(t, &key(16)).await.is_none());
}

#[tokio::test]
async fn disk_hit_read_partly_is_promoted_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let b = body(30_000, 4);
    put(tiered(dir.path()), &key(4), &b).await;
    let t = tiered(dir.path());
    let (_, mut h) = hit(t, &key(4)).await.unwrap();
    h.seek(0, Some(10)).unwrap(); // a Range request
    read_all(&mut h).await.unwrap();
    h.finish(t, &key(4), &span()).await.unwrap();
    eventually("promoted in the background", || {
        t.memory().stats().objects == 1
    })
    .await;
}

#[tokio::test]
async fn disk_hit_larger_than_the_memory_limit_is_never_promoted() {
    let dir = tempfile::tempdir().unwrap();
    let b = body(300_000, 5);
    put(tiered(dir.path()), &key(5), &b).await;
    let t = tiered(dir.path());
    let (_, mut h) = hit(t, &key(5)).await.unwrap();
    assert_eq!(read_all(&mut h).await.unwrap(), b);
    h.finish(t, &key(5), &span()).await.unwrap();
    // The decision is made in `finish`, synchronously: no background read was started.
    assert!(t.promoting.lock().is_empty());
    assert_eq!(t.stats().promotions, 0);
    assert_eq!(t.memory().stats().objects, 0);
}

#[tokio::test]
async fn readers_stream_a_fill_in_progress_from_memory_or_file() {
    let dir = tempfile::tempdir().unwrap();
    let t = tiered(dir.path());
    for (n, len) in [(6u32, 30_000usize), (7, 300_000)] {
        let b = body(len, n as u8);
        let mut miss = t
            .get_miss_handler(&key(n), &meta_with(Some(len)), &span())
            .await
            .unwrap();
        let tag = miss.streaming_write_tag().unwrap().to_vec();
        let (_, mut own) = t
            .lookup_streaming_write(&key(n), Some(&tag), &span())
            .await
            .unwrap()
            .expect("the writer finds its own fill");
        let mut readers = vec![tokio::spawn(
            async move { read_all(&mut own).await.unwrap() },
        )];
        for chunk in b.chunks(25_000) {
            let (_, mut r) = hit(t, &key(n)).await.unwrap();
            readers.push(tokio::spawn(async move { read_all(&mut r).await.unwrap() }));
            miss.write_body(Bytes::copy_from_slice(chunk), false)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        miss.write_body(Bytes::new(), true).await.unwrap();
        miss.finish().await.unwrap();
        for r in readers {
            assert_eq!(r.await.unwrap(), b, "object {n}");
        }
    }
}

#[tokio::test]
async fn writer_dropped_mid_body_readers_get_an_error_and_temp_file_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let t = tiered(dir.path());
    for (n, len) in [(8u32, 30_000usize), (9, 300_000)] {
        let mut miss = t
            .get_miss_handler(&key(n), &meta_with(Some(len)), &span())
            .await
            .unwrap();
        miss.write_body(Bytes::from(body(len / 2, 1)), false)
            .await
            .unwrap();
        let (_, mut r) = hit(t, &key(n)).await.unwrap();
        drop(miss);
        assert!(read_all(&mut r).await.is_err(), "object {n}: a clean end");
        assert!(hit(t, &key(n)).await.is_none());
    }
    let temps = || std::fs::read_dir(dir.path().join(".tmp")).unwrap().count();
    eventually("temp files removed", || temps() == 0).await;
    assert_eq!(t.stats().aborted_fills, 2);
}

#[tokio::test]
async fn disk_failure_mid_body_goes_on_from_memory_for_small_objects() {
    let dir = tempfile::tempdir().unwrap();
    let t = tiered(dir.path());
    disk_of(t)
        .fail_writes_after
        .store(15_000, Ordering::Relaxed);
    let b = body(40_000, 10);
    let mut miss = t
        .get_miss_handler(&key(10), &meta_with(Some(b.len())), &span())
        .await
        .unwrap();
    let (_, mut r) = hit(t, &key(10)).await.unwrap();
    let reader = tokio::spawn(async move { read_all(&mut r).await.unwrap() });
    for chunk in b.chunks(10_000) {
        miss.write_body(Bytes::copy_from_slice(chunk), false)
            .await
            .expect("a disk failure never fails the fill");
    }
    miss.write_body(Bytes::new(), true).await.unwrap();
    miss.finish().await.unwrap();
    assert_eq!(reader.await.unwrap(), b);
    assert!(!obj(10).path(dir.path()).exists());
    let (_, mut h) = hit(t, &key(10)).await.expect("kept in memory");
    assert_eq!(read_all(&mut h).await.unwrap(), b);
    let st = t.stats();
    assert_eq!(
        (st.disk_dropped_fills, st.disk.unwrap().write_errors),
        (1, 1)
    );
    // The disk takes no new fills for a while: the next one is memory only.
    put(t, &key(11), b"later").await;
    assert_eq!(t.stats().memory_only_fills, 1);
    assert!(!obj(11).path(dir.path()).exists());
}

#[tokio::test]
async fn disk_failure_mid_body_of_a_large_object_keeps_the_rest_in_memory_up_to_a_cap() {
    let dir = tempfile::tempdir().unwrap();
    let t = tiered(dir.path());
    disk_of(t)
        .fail_writes_after
        .store(100_000, Ordering::Relaxed);
    // 150 KB: the rest after the failure (50 KB) fits the 64 KiB memory cap.
    let b = body(150_000, 12);
    assert_eq!(put(t, &key(12), &b).await, 0);
    // 300 KB: the rest does not; the fill fails for its readers, never ends cleanly.
    disk_of(t).degraded_until.store(0, Ordering::Relaxed);
    let mut miss = t
        .get_miss_handler(&key(13), &meta_with(Some(300_000)), &span())
        .await
        .unwrap();
    let (_, mut r) = hit(t, &key(13)).await.unwrap();
    let mut failed = false;
    for chunk in body(300_000, 13).chunks(10_000) {
        if miss
            .write_body(Bytes::copy_from_slice(chunk), false)
            .await
            .is_err()
        {
            failed = true;
            break;
        }
    }
    assert!(failed);
    drop(miss);
    assert!(read_all(&mut r).await.is_err());
}

#[tokio::test]
async fn unwritable_disk_means_memory_only_fills_that_still_serve() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("file"), b"x").unwrap();
    let t = tiered(&work.path().join("file/cache"));
    let b = body(20_000, 14);
    put(t, &key(14), &b).await;
    let (_, mut h) = hit(t, &key(14)).await.unwrap();
    assert_eq!(read_all(&mut h).await.unwrap(), b);
    let st = t.stats();
    assert_eq!(st.memory_only_fills, 1);
    assert!(!st.disk.unwrap().writable);
    // Too large for memory with no disk: not cached, but not an error for the client
    // either (pingora serves it uncached when the miss handler is refused).
    let big = meta_with(Some(1 << 20));
    assert!(t.get_miss_handler(&key(15), &big, &span()).await.is_err());
}

#[tokio::test]
async fn purge_hash_removes_an_image_from_every_tier() {
    let dir = tempfile::tempdir().unwrap();
    let t = tiered(dir.path());
    put(t, &key(16), &body(1000, 16)).await;
    let thumb = ObjectRef::new(Silo::Thumbs, obj(16).md5).cache_key();
    put(t, &thumb, &body(500, 17)).await;
    assert!(t.purge_hash(obj(16).md5));
    assert!(hit(t, &key(16)).await.is_none());
    assert!(hit(t, &thumb).await.is_none());
    assert!(!obj(16).path(dir.path()).exists());
    assert!(!t.purge_hash(obj(16).md5));
    put(t, &key(16), b"again").await;
    assert!(t.purge_hash(obj(16).md5));
    assert!(!obj(16).path(dir.path()).exists());
}

#[tokio::test]
async fn purge_during_a_fill_keeps_it_out_of_both_tiers() {
    let dir = tempfile::tempdir().unwrap();
    let t = tiered(dir.path());
    let mut miss = t
        .get_miss_handler(&key(18), &meta_with(Some(6)), &span())
        .await
        .unwrap();
    miss.write_body(Bytes::from_static(b"banned"), true)
        .await
        .unwrap();
    assert!(t.purge_hash(obj(18).md5));
    miss.finish().await.unwrap();
    assert!(hit(t, &key(18)).await.is_none());
    assert!(!obj(18).path(dir.path()).exists());
    assert_eq!(t.memory().stats().objects, 0);
}

#[tokio::test]
async fn negative_answers_are_kept_in_memory_only() {
    let dir = tempfile::tempdir().unwrap();
    let t = tiered(dir.path());
    let resp = ResponseHeader::build(404, None).unwrap();
    let now = std::time::SystemTime::now();
    let meta = CacheMeta::new(now + Duration::from_secs(10), now, 0, 0, resp);
    put_meta(t, &key(19), b"", &meta).await;
    assert!(!obj(19).path(dir.path()).exists());
    let (meta, _) = hit(t, &key(19)).await.unwrap();
    assert_eq!(meta.response_header().status, 404);
}

#[tokio::test]
async fn without_a_disk_the_tiered_store_is_the_memory_tier() {
    let memory = Box::leak(Box::new(MemoryStorage::new(1 << 20)));
    let t: &'static TieredStorage = Box::leak(Box::new(TieredStorage::new(memory, None)));
    put(t, &key(20), b"only memory").await;
    let (_, mut h) = hit(t, &key(20)).await.unwrap();
    assert_eq!(read_all(&mut h).await.unwrap(), b"only memory");
    assert_eq!(t.max_file_size_bytes(123), 123);
    assert!(t.purge_hash(obj(20).md5));
}
