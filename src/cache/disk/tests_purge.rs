//! Purges racing disk fills (`disk/publish.rs`): a purge wins over every fill that was in
//! progress when it came, whatever the interleaving, and never over a fill started after
//! it. One failure mode per test.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use pingora_cache::storage::{MissFinishType, MissHandler, PurgeOutcome, PurgeTarget, PurgeType};
use pingora_cache::Storage;

use super::tests::{body, get, key, meta_with, obj, open, put, span};
use super::{DiskStorage, ObjectRef, TestHook};

/// The ways a purge reaches the disk tier.
#[derive(Debug, Clone, Copy)]
enum Purge {
    /// `remove` (tiered `purge_hash`: bans, admin purge).
    Path,
    /// `remove_now` (tiered `purge_hash_now`, synchronous callers).
    PathNow,
    /// pingora's `Storage::purge` by cache key (the index or a fill must know the object).
    Key,
}

const PURGES: [Purge; 3] = [Purge::Path, Purge::PathNow, Purge::Key];

async fn purge(s: &'static DiskStorage, n: u32, how: Purge) -> bool {
    match how {
        Purge::Path => s.remove(obj(n)).await,
        Purge::PathNow => s.remove_now(obj(n)),
        Purge::Key => {
            let compact = key(n).to_compact();
            let sp = span();
            let outcome = s
                .purge(PurgeTarget::Active(&compact), PurgeType::Invalidation, &sp)
                .await
                .unwrap();
            outcome != PurgeOutcome::NotFound
        }
    }
}

/// A fill of object `n` (`total` bytes) that has written `first`.
async fn start(s: &'static DiskStorage, n: u32, first: &[u8], total: usize) -> MissHandler {
    let mut miss = s
        .get_miss_handler(&key(n), &meta_with(Some(total)), &span())
        .await
        .unwrap();
    miss.write_body(Bytes::copy_from_slice(first), false)
        .await
        .unwrap();
    miss
}

/// Writes `rest` and finishes; the bytes charged.
async fn end(mut miss: MissHandler, rest: &[u8]) -> usize {
    miss.write_body(Bytes::copy_from_slice(rest), true)
        .await
        .unwrap();
    match miss.finish().await.unwrap() {
        MissFinishType::Created(n) => n,
        MissFinishType::Appended(..) => panic!("never appends"),
    }
}

/// Waits for the temp files of dropped writers to go (removed on the blocking pool).
async fn assert_no_temps(dir: &Path) {
    let temps = || -> Vec<_> {
        std::fs::read_dir(dir.join(".tmp"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    super::tests::eventually("temp files removed", || temps().is_empty()).await;
}

/// Nothing of object `n` is left: no file, no index entry, no fill, no reservation.
async fn assert_gone(s: &'static DiskStorage, dir: &Path, n: u32, ctx: &str) {
    assert!(!obj(n).path(dir).exists(), "{ctx}: file left on disk");
    assert!(get(s, &key(n)).await.is_none(), "{ctx}: lookup hit");
    assert!(
        s.indexed_object(&obj(n).key_hash()).is_none(),
        "{ctx}: indexed"
    );
    assert_eq!(
        s.writing.in_progress(&obj(n).key_hash()),
        0,
        "{ctx}: fill left"
    );
    assert_eq!(s.stats().reserved, 0, "{ctx}: reservation left");
}

fn set_hook(s: &'static DiskStorage, f: impl Fn(TestHook, ObjectRef) + Send + Sync + 'static) {
    *s.hook.lock() = Some(Arc::new(f));
}

#[tokio::test]
async fn purge_during_fill_wins_over_the_rename() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    let b = body(100_000, 1);
    for (i, how) in PURGES.into_iter().enumerate() {
        let n = 40 + i as u32;
        let miss = start(s, n, &b[..30_000], b.len()).await;
        assert!(
            purge(s, n, how).await,
            "{how:?}: a fill in progress is found"
        );
        assert_eq!(end(miss, &b[30_000..]).await, 0, "{how:?}: nothing charged");
        assert_gone(s, dir.path(), n, &format!("{how:?}")).await;
    }
    assert_no_temps(dir.path()).await;
    let st = s.stats();
    assert_eq!((st.objects, st.bytes, st.purged), (0, 0, 3));
}

#[tokio::test]
async fn purge_after_finish_removes_the_published_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    for (i, how) in PURGES.into_iter().enumerate() {
        let n = 50 + i as u32;
        put(s, &key(n), &body(20_000, 2)).await;
        assert!(obj(n).path(dir.path()).is_file());
        assert!(purge(s, n, how).await, "{how:?}");
        assert_gone(s, dir.path(), n, &format!("{how:?}")).await;
        assert!(
            !purge(s, n, how).await,
            "{how:?}: a second purge finds nothing"
        );
    }
    assert_eq!(s.stats().objects, 0);
}

#[tokio::test]
async fn fill_started_after_purge_publishes_normally() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    let (old, new) = (body(50_000, 3), body(50_000, 4));
    // Nothing there: the purge finds nothing and changes nothing for the next fill.
    assert!(!s.remove(obj(60)).await);
    put(s, &key(60), &new).await;
    assert_eq!(get(s, &key(60)).await.unwrap(), new);
    // A purged fill still in progress while a fill started after the purge completes,
    // finishing after it (61) or before it (62).
    for (n, purged_finishes_last) in [(61, true), (62, false)] {
        let before = start(s, n, &old[..10_000], old.len()).await;
        assert!(s.remove(obj(n)).await);
        let after = start(s, n, &new[..10_000], new.len()).await;
        if purged_finishes_last {
            assert!(end(after, &new[10_000..]).await > 0);
            assert_eq!(end(before, &old[10_000..]).await, 0);
        } else {
            assert_eq!(end(before, &old[10_000..]).await, 0);
            assert!(end(after, &new[10_000..]).await > 0);
        }
        assert!(
            obj(n).path(dir.path()).is_file(),
            "{n}: later fill not published"
        );
        assert_eq!(get(s, &key(n)).await.unwrap(), new, "{n}");
    }
    assert_no_temps(dir.path()).await;
    assert_eq!(s.stats().objects, 3);
}

#[tokio::test]
async fn purge_between_the_last_check_and_the_rename_wins() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    // The purge lands after the writer checked its flag and wrote the header, just
    // before it renames: exactly the window a check-then-rename writer loses.
    set_hook(s, move |at, o| {
        if at == TestHook::Publishing && o == obj(70) {
            assert!(s.remove_now(o));
        }
    });
    let b = body(30_000, 5);
    let miss = start(s, 70, &b[..1000], b.len()).await;
    assert_eq!(end(miss, &b[1000..]).await, 0);
    assert_gone(s, dir.path(), 70, "purged before the rename").await;
    assert_no_temps(dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purged_fill_never_removes_the_file_of_a_fill_started_after_the_purge() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    let (old, new) = (body(40_000, 6), body(40_000, 7));
    // Fill A is about to rename when a purge comes and then a whole fill B (started after
    // the purge) publishes. A "rename, re-check, unlink" writer would now put A's file in
    // place and then unlink the path, taking B's object with it.
    let rt = tokio::runtime::Handle::current();
    let once = AtomicBool::new(false);
    let new2 = new.clone();
    set_hook(s, move |at, o| {
        if at != TestHook::Publishing || o != obj(71) || once.swap(true, Ordering::SeqCst) {
            return;
        }
        assert!(s.remove_now(o));
        rt.block_on(put(s, &key(71), &new2));
        assert!(o.path(s.dir()).is_file(), "B published");
    });
    let a = start(s, 71, &old[..1000], old.len()).await;
    assert_eq!(end(a, &old[1000..]).await, 0, "A must not publish");
    assert!(obj(71).path(dir.path()).is_file(), "B's file was removed");
    assert_eq!(get(s, &key(71)).await.unwrap(), new);
    assert_eq!(s.indexed_object(&obj(71).key_hash()), Some(obj(71)));
    assert_eq!(s.stats().objects, 1);
    assert_no_temps(dir.path()).await;
}

#[tokio::test]
async fn purge_while_the_temp_file_is_created_wins() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    // The fill has started (its miss handler is being made) but has no temp file yet,
    // nor is it known to any reader: the purge must still reach it.
    set_hook(s, move |at, o| {
        if at == TestHook::CreatingTemp && o == obj(72) {
            assert!(s.remove_now(o), "the starting fill is found");
        }
    });
    let b = body(10_000, 8);
    let miss = start(s, 72, &b[..100], b.len()).await;
    *s.hook.lock() = None;
    assert_eq!(end(miss, &b[100..]).await, 0);
    assert_gone(s, dir.path(), 72, "purged while starting").await;
    // The next fill publishes.
    put(s, &key(72), &b).await;
    assert_eq!(get(s, &key(72)).await.unwrap(), b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_racing_finish_on_another_thread_never_leaves_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    let b = body(9000, 9);
    for i in 0..300u32 {
        let n = 1000 + i;
        let mut miss = start(s, n, &b, b.len()).await;
        miss.write_body(Bytes::new(), true).await.unwrap();
        let purger = std::thread::spawn(move || {
            if i % 2 == 0 {
                std::thread::yield_now();
            }
            s.remove_now(obj(n))
        });
        let charged = match miss.finish().await.unwrap() {
            MissFinishType::Created(c) => c,
            MissFinishType::Appended(..) => unreachable!(),
        };
        assert!(
            purger.join().unwrap(),
            "{n}: the purge found the fill or its file"
        );
        assert!(!obj(n).path(dir.path()).exists(), "{n} (charged {charged})");
        assert!(s.indexed_object(&obj(n).key_hash()).is_none(), "{n}");
    }
    let st = s.stats();
    assert_eq!((st.objects, st.bytes, st.reserved), (0, 0, 0));
    assert_no_temps(dir.path()).await;
}
