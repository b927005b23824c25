//! A restart over 100,000 cached objects: the first disk hit comes at once (lookups go
//! by path, not by the index) and the index rebuild finishes in the background.
//! Prints the numbers the README quotes; run with `--nocapture` to see them.
//!
//! Creating and deleting 100,000 files (in some 50,000 directories, as real hashes
//! spread them) takes minutes on a slow disk, so the cache lives in tmpfs (/dev/shm)
//! when there is one. `SHIMMER_REBUILD_TEST_DIR=/some/disk/dir` measures a real disk.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use shimmer::cache::disk::seed_object;
use shimmer::object::{Md5, ObjectRef, Silo};

const OBJECTS: usize = 100_000;
const BODY: usize = 600;

fn body_of(i: usize) -> Vec<u8> {
    whole_jpeg(BODY, i as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_100k_objects_serves_at_once_and_rebuilds_the_index() {
    let work = tempfile::tempdir().expect("tempdir");
    let base = std::env::var_os("SHIMMER_REBUILD_TEST_DIR")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/dev/shm")).filter(|p| Path::new(p).is_dir()))
        .unwrap_or_else(std::env::temp_dir);
    let cache_root = tempfile::tempdir_in(&base).expect("cache tempdir");
    let cache = cache_root.path().join("cache");
    println!("cache directory in {}", base.display());
    let hashes: Vec<String> = (0..OBJECTS)
        .map(|i| test_hash(1_000_000 + i as u64))
        .collect();

    let seeding = Instant::now();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(hash) = hashes.get(i) else {
                    return;
                };
                let obj = ObjectRef::new(Silo::Images, Md5::parse(hash).expect("a valid hash"));
                seed_object(&cache, obj, "image/jpeg", &body_of(i), None).expect("seed");
            });
        }
    });
    println!("seeded {OBJECTS} objects in {:?}", seeding.elapsed());

    let data = DataDir::new(work.path().join("data")); // the origin has none of them
    let origin = Origin::start(&data.dir, work.path());
    let lines = format!("    dir: {}\n    disk_bytes: 10G\n", path_str(&cache));
    let started = Instant::now();
    let mirror = owner_mirror(
        work.path(),
        &format!("http://{}", origin.addr),
        free_port(),
        &lines,
    );
    let listening = started.elapsed();
    let pick = 12_345;
    let resp = reqwest::get(mirror.url(&format!("/_images/{}/x.jpg", hashes[pick])))
        .await
        .expect("first request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-cache"], "HIT");
    assert_eq!(resp.bytes().await.expect("body").as_ref(), body_of(pick));
    let first_hit = started.elapsed();
    println!("listening after {listening:?}, first disk hit after {first_hit:?}");

    let line = wait_for_log(&mirror.proc, "disk index rebuilt", Duration::from_secs(60))
        .unwrap_or_else(|| panic!("no rebuild line; log:\n{}", mirror.proc.log_text()));
    println!("{line}");
    assert!(
        line.contains(&format!("disk index rebuilt: {OBJECTS} objects")),
        "{line}"
    );
    for i in [0, 50_000, OBJECTS - 1] {
        let url = mirror.url(&format!("/_images/{}/y.jpg", hashes[i]));
        let resp = reqwest::get(url).await.expect("request");
        assert_eq!(resp.headers()["x-cache"], "HIT");
        assert_eq!(resp.bytes().await.expect("body").as_ref(), body_of(i));
    }
    assert_eq!(origin.requests().await, 0);
    drop(mirror);
    let cleanup = Instant::now();
    drop(cache_root);
    println!("removed the cache directory in {:?}", cleanup.elapsed());
}
