//! Hits the proxy may send with `sendfile` (`sendable.rs`): only files whose body CRC
//! was checked once, indexed, and held by the page cache; never a purged or bad file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use pingora_cache::Storage;

use super::nowait::page_cached;
use super::tests::{body, get, key, obj, open, put, read_all, span};
use super::tests_nowait::evict_pages;
use super::AnswerHead;

/// The config generation asked about.
const TAG: u64 = 1;
const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n";

fn now() -> SystemTime {
    SystemTime::now()
}

/// The body bytes a sendable hit would send.
fn sent_bytes(hit: &super::SendableHit) -> Vec<u8> {
    let mut buf = vec![0u8; usize::try_from(hit.body_len).unwrap()];
    hit.file.read_exact_at(&mut buf, hit.body_off).unwrap();
    buf
}

#[tokio::test]
async fn a_file_this_process_wrote_is_sendable_at_once_with_its_body_range() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    let b = body(300_000, 1);
    put(s, &key(1), &b).await;
    let hit = s
        .lookup_sendable(obj(1), TAG, now())
        .expect("written here, cached, verified");
    assert_eq!(hit.body_len, b.len() as u64);
    assert_eq!(sent_bytes(&hit), b);
    let AnswerHead::Make(stored) = hit.answer else {
        panic!("no answer head kept yet: the stored header is decoded");
    };
    assert_eq!(stored.status, 200);
    assert_eq!(s.stats().sendable_hits, 1);
}

#[tokio::test]
async fn a_file_found_at_restart_is_sent_only_after_a_whole_read_checked_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    let b = body(200_000, 2);
    put(s, &key(2), &b).await;
    let s2 = open(dir.path(), 1 << 30); // a restart
    assert!(
        s2.lookup_sendable(obj(2), TAG, now()).is_none(),
        "not indexed yet"
    );
    // A ranged read indexes it but checks nothing.
    let (_, mut hit) = s2.lookup(&key(2), &span()).await.unwrap().unwrap();
    hit.seek(1000, Some(2000)).unwrap();
    assert_eq!(read_all(&mut hit).await.unwrap(), &b[1000..2000]);
    assert!(s2.indexed_object(&obj(2).key_hash()).is_some());
    assert!(
        s2.lookup_sendable(obj(2), TAG, now()).is_none(),
        "a range checks no CRC"
    );
    // A whole read checks it.
    assert_eq!(get(s2, &key(2)).await.unwrap(), b);
    let hit = s2
        .lookup_sendable(obj(2), TAG, now())
        .expect("checked once, then sendable");
    assert_eq!(sent_bytes(&hit), b);
}

#[tokio::test]
async fn a_flipped_body_byte_found_at_restart_is_never_sent_and_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    let b = body(300_000, 3);
    put(s, &key(3), &b).await;
    let path = obj(3).path(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let s2 = open(dir.path(), 1 << 30);
    let (_, mut hit) = s2.lookup(&key(3), &span()).await.unwrap().unwrap();
    assert!(read_all(&mut hit).await.is_err(), "the CRC fails the read");
    assert!(s2.lookup_sendable(obj(3), TAG, now()).is_none());
    assert!(!path.exists(), "removed");
    assert_eq!(s2.stats().sendable_hits, 0);
}

#[tokio::test]
async fn a_purged_object_is_not_sendable() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    put(s, &key(4), &body(50_000, 4)).await;
    assert!(s.lookup_sendable(obj(4), TAG, now()).is_some());
    assert!(s.remove_now(obj(4)));
    assert!(s.lookup_sendable(obj(4), TAG, now()).is_none());
}

#[tokio::test]
async fn a_file_whose_pages_were_dropped_is_left_to_the_read_path() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    let b = body(400_000, 5);
    put(s, &key(5), &b).await;
    let file = File::open(obj(5).path(dir.path())).unwrap();
    evict_pages(&file);
    assert!(
        s.lookup_sendable(obj(5), TAG, now()).is_none(),
        "sending would wait for the disk on the event loop"
    );
    // The read path brings the pages back, and then it is sendable again.
    assert_eq!(get(s, &key(5)).await.unwrap(), b);
    assert!(s.lookup_sendable(obj(5), TAG, now()).is_some());
}

#[test]
fn page_cached_tells_a_cached_range_from_a_dropped_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, body(3 * 4096 + 100, 6)).unwrap();
    let file = File::open(&path).unwrap();
    assert!(page_cached(&file, 0, 3 * 4096 + 100), "just written");
    assert!(page_cached(&file, 4000, 200), "a range across two pages");
    assert!(page_cached(&file, 0, 0), "nothing to send is always there");
    evict_pages(&file);
    assert!(!page_cached(&file, 0, 3 * 4096 + 100));
    assert!(!page_cached(&file, 5000, 1));
}

#[tokio::test]
async fn a_files_head_is_decoded_until_an_answer_head_is_kept_and_again_for_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    put(s, &key(7), &body(100_000, 7)).await;
    let first = s.lookup_sendable(obj(7), TAG, now()).expect("sendable");
    assert!(matches!(first.answer, AnswerHead::Make(_)));
    first.head.prepared.keep(TAG, Bytes::from_static(HEAD));
    for _ in 0..3 {
        let hit = s.lookup_sendable(obj(7), TAG, now()).expect("sendable");
        assert!(
            matches!(&hit.answer, AnswerHead::Kept(b) if b.as_ref() == HEAD),
            "nothing decoded"
        );
    }
    assert_eq!(s.head_decodes(), (1, 1), "decoded once, kept");
    // Another config: the header is decoded again for its head, the entry stays.
    let other = s.lookup_sendable(obj(7), TAG + 1, now()).expect("sendable");
    assert!(matches!(other.answer, AnswerHead::Make(_)));
    assert_eq!(s.head_decodes(), (2, 1));
    // Republished (purged and written again): a new inode, a new entry.
    assert!(s.remove_now(obj(7)));
    let b = body(120_000, 8);
    put(s, &key(7), &b).await;
    let hit = s.lookup_sendable(obj(7), TAG, now()).expect("the new file");
    assert!(
        matches!(hit.answer, AnswerHead::Make(_)),
        "the old file's head is not the new one's"
    );
    assert_eq!(
        sent_bytes(&hit),
        b,
        "the new file's body, not the old range"
    );
    assert_eq!(s.head_decodes(), (3, 1));
}

#[tokio::test]
async fn a_file_rewritten_in_place_is_not_sent_with_its_old_head() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    put(s, &key(9), &body(100_000, 9)).await;
    assert!(s.lookup_sendable(obj(9), TAG, now()).is_some());
    // Cut short under a running mirror: the length no longer matches the kept head.
    let path = obj(9).path(dir.path());
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(50_000).unwrap();
    assert!(
        s.lookup_sendable(obj(9), TAG, now()).is_none(),
        "a cut file is never sent"
    );
}

/// Stores `b` under `k` fresh for `fresh` from now.
async fn put_fresh_for(
    s: &'static super::DiskStorage,
    k: &pingora_cache::CacheKey,
    b: &[u8],
    fresh: Duration,
) {
    let mut header = pingora_http::ResponseHeader::build(200, None).unwrap();
    header.append_header("content-type", "image/jpeg").unwrap();
    header
        .append_header("content-length", b.len().to_string())
        .unwrap();
    let stored = now();
    let meta = pingora_cache::CacheMeta::new(stored + fresh, stored, 0, 0, header);
    let mut miss = s.get_miss_handler(k, &meta, &span()).await.unwrap();
    miss.write_body(Bytes::copy_from_slice(b), true)
        .await
        .unwrap();
    miss.finish().await.unwrap();
}

#[tokio::test]
async fn a_hit_past_its_freshness_is_not_sendable() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    put_fresh_for(s, &key(10), &body(10_000, 10), Duration::from_secs(10)).await;
    // A minute on: stale, and the file's mtime not yet due a touch (an hour).
    let later = now() + Duration::from_secs(60);
    assert!(s.lookup_sendable(obj(10), TAG, later).is_none());
    assert!(s.lookup_sendable(obj(10), TAG, now()).is_some());
}

#[tokio::test]
async fn a_file_due_a_touch_is_left_to_the_full_path() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    let day = Duration::from_secs(24 * 3600);
    put_fresh_for(s, &key(12), &body(10_000, 12), day).await;
    // Two hours on: still fresh, but its mtime (the LRU order after a restart) is due.
    let later = now() + Duration::from_secs(2 * 3600);
    assert!(
        s.lookup_sendable(obj(12), TAG, later).is_none(),
        "the touch is the blocking path's"
    );
    assert!(s.lookup_sendable(obj(12), TAG, now()).is_some());
}

#[tokio::test]
async fn a_file_whose_header_declares_no_length_is_left_to_the_full_path() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    let mut miss = s
        .get_miss_handler(&key(11), &super::tests::meta_with(None), &span())
        .await
        .unwrap();
    miss.write_body(Bytes::from_static(b"no length declared"), false)
        .await
        .unwrap();
    miss.write_body(Bytes::new(), true).await.unwrap();
    miss.finish().await.unwrap();
    assert!(s.indexed_object(&obj(11).key_hash()).is_some(), "on disk");
    assert!(
        s.lookup_sendable(obj(11), TAG, now()).is_none(),
        "framed by the full path"
    );
    assert_eq!(s.stats().sendable_hits, 0);
}

#[test]
fn the_kept_heads_stay_bounded() {
    let heads = super::sendable::Heads::default();
    let stamp = |n: u64| super::io::FileStamp {
        id: super::fs::FileId::for_tests(n),
        len: n,
        mtime: SystemTime::UNIX_EPOCH,
    };
    for n in 0..(super::sendable::HEADS_KEPT as u64 + 10) {
        heads.keep(
            obj(n as u32).key_hash(),
            stamp(n),
            super::sendable::DiskHead::for_tests(),
        );
        assert!(heads.len() <= super::sendable::HEADS_KEPT);
    }
    assert!(heads.len() >= 1, "the newest is kept");
}
