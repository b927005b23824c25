//! Holding for an object being fetched (`wait_whole`): what wakes a waiter, what it
//! finds then, and the hold running out.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use pingora_cache::key::CacheHashKey;
use pingora_cache::Storage;

use super::*;
use crate::cache::disk::tests::{body, key, meta_with, open, span};
use crate::cache::memory::MemoryStorage;

const HOLD: Duration = Duration::from_secs(5);

fn memory_only() -> &'static TieredStorage {
    let memory = Box::leak(Box::new(MemoryStorage::new(16 << 20)));
    Box::leak(Box::new(TieredStorage::new(memory, None)))
}

fn over_disk(dir: &std::path::Path) -> &'static TieredStorage {
    let memory = Box::leak(Box::new(MemoryStorage::new(16 << 20)));
    Box::leak(Box::new(TieredStorage::new(
        memory,
        Some(open(dir, 1 << 30)),
    )))
}

/// Starts a waiter for `n` in the background; its answer comes through the handle.
fn waiter(t: &'static TieredStorage, n: u32, hold: Duration) -> tokio::task::JoinHandle<Waited> {
    let k = key(n).combined_bin();
    tokio::spawn(async move { t.wait_whole(&k, hold).await })
}

/// Lets the spawned waiters run up to their first wait.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn nothing_under_way_returns_at_once() {
    let t = memory_only();
    assert_eq!(
        t.wait_whole(&key(1).combined_bin(), HOLD).await,
        Waited::Nothing
    );
}

#[tokio::test]
async fn a_fetch_that_ends_without_a_fill_wakes_its_waiters() {
    let t = memory_only();
    let guard = t.fetching(key(2).combined_bin());
    let w = waiter(t, 2, HOLD);
    settle().await;
    assert!(!w.is_finished(), "held while the fetch is under way");
    drop(guard); // not cacheable, or failed: no fill ever starts
    assert_eq!(w.await.expect("waiter"), Waited::Ended);
}

async fn fill_and_finish(t: &'static TieredStorage, n: u32, bytes: &[u8]) {
    let k = key(n);
    let mut miss = t
        .get_miss_handler(&k, &meta_with(Some(bytes.len())), &span())
        .await
        .expect("miss handler");
    settle().await;
    for chunk in bytes.chunks(30_000) {
        miss.write_body(Bytes::copy_from_slice(chunk), false)
            .await
            .expect("write");
        settle().await;
    }
    miss.write_body(Bytes::new(), true).await.expect("end");
    miss.finish().await.expect("finish");
}

#[tokio::test]
async fn a_waiter_follows_the_fetch_into_its_fill_and_wakes_to_the_stored_object() {
    for disk in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = if disk {
            over_disk(dir.path())
        } else {
            memory_only()
        };
        let n = 3;
        let guard = t.fetching(key(n).combined_bin());
        let before_fill = waiter(t, n, HOLD);
        settle().await;
        let bytes = body(200_000, 7);
        let during_fill = {
            let meta = meta_with(Some(bytes.len()));
            let mut miss = t
                .get_miss_handler(&key(n), &meta, &span())
                .await
                .expect("miss handler");
            miss.write_body(Bytes::copy_from_slice(&bytes[..1000]), false)
                .await
                .expect("write");
            let w = waiter(t, n, HOLD);
            settle().await;
            assert!(
                !before_fill.is_finished() && !w.is_finished(),
                "disk {disk}"
            );
            miss.write_body(Bytes::copy_from_slice(&bytes[1000..]), true)
                .await
                .expect("write");
            miss.finish().await.expect("finish");
            w
        };
        for w in [before_fill, during_fill] {
            assert_eq!(w.await.expect("waiter"), Waited::Ended, "disk {disk}");
        }
        // Woken by the end, a waiter finds the object, not a fill that seems to go on.
        let object = t
            .memory_fresh_object(&key(n).combined_bin(), SystemTime::now())
            .expect("stored whole in memory");
        assert!(object.body[..] == bytes[..]);
        drop(guard);
    }
}

#[tokio::test(start_paused = true)]
async fn a_fill_slower_than_the_hold_is_left_to_stream() {
    let t = memory_only();
    let _guard = t.fetching(key(4).combined_bin());
    let k = key(4);
    let mut miss = t
        .get_miss_handler(&k, &meta_with(Some(100)), &span())
        .await
        .expect("miss handler");
    miss.write_body(Bytes::from_static(&[1; 10]), false)
        .await
        .expect("write");
    // The paused clock jumps to the deadline: the fill is still going.
    let waited = t
        .wait_whole(&k.combined_bin(), Duration::from_millis(100))
        .await;
    assert_eq!(waited, Waited::Held);
    // A fetch that never starts its fill is held as long, and no longer.
    let _other = t.fetching(key(5).combined_bin());
    let waited = t
        .wait_whole(&key(5).combined_bin(), Duration::from_millis(100))
        .await;
    assert_eq!(waited, Waited::Held);
}

#[tokio::test]
async fn a_failed_fill_wakes_its_waiters_and_leaves_nothing_to_serve() {
    let t = memory_only();
    let _guard = t.fetching(key(6).combined_bin());
    let k = key(6);
    let mut miss = t
        .get_miss_handler(&k, &meta_with(Some(100)), &span())
        .await
        .expect("miss handler");
    let w = waiter(t, 6, HOLD);
    settle().await;
    miss.write_body(Bytes::from_static(&[1; 10]), false)
        .await
        .expect("write");
    drop(miss); // the origin went away mid-body
    assert_eq!(w.await.expect("waiter"), Waited::Ended);
    assert!(t
        .memory_fresh_object(&k.combined_bin(), SystemTime::now())
        .is_none());
    // The next fetch fills it and is found.
    fill_and_finish(t, 6, &body(1000, 1)).await;
    assert!(t
        .memory_fresh_object(&k.combined_bin(), SystemTime::now())
        .is_some());
}
