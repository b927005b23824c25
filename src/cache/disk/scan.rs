//! The restart scan: rebuilds the index and the byte count from the directory.
//!
//! Work is split by `<silo>/<ab>` (512 jobs) over a few threads. Every file at a valid
//! `<silo>/<ab>/<cd>/<hash>` path is opened and checked like a hit would check it: bad
//! headers, wrong lengths and truncated legacy files are deleted; shm-cached files are
//! adopted. Found objects join the index least-recently-used, newest mtime first, and
//! never displace what live traffic touched meanwhile. Then the tier is evicted down to
//! its budget and one line is logged:
//! `disk index rebuilt: N objects, B bytes in T ms (...)`.

use std::cmp::Reverse;
use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Instant, UNIX_EPOCH};

use parking_lot::Mutex;

use super::format::{Md5, ObjectRef, Silo};
use super::index::{blocks_for, Rec};
use super::io::{self, Found, Inspected};
use super::DiskStorage;

/// Objects merged into the index per lock.
const MERGE_BATCH: usize = 4096;

/// Removes temp files left by processes that are gone (a crash mid-write). A temp file
/// of a live process (the old one during a graceful upgrade) is kept.
pub(super) fn clean_temps(tmp: &Path) -> std::io::Result<usize> {
    let me = std::process::id();
    let mut removed = 0;
    for entry in fs::read_dir(tmp)?.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|p| p == me || Path::new(&format!("/proc/{p}")).exists());
        if !alive && io::remove_quietly(&entry.path()) {
            removed += 1;
        }
    }
    Ok(removed)
}

struct Found2 {
    rec: Rec,
    mtime: u64,
}

#[derive(Default)]
struct Tally {
    found: Vec<Found2>,
    adopted: u64,
    removed: u64,
}

/// Runs the whole scan on the calling thread plus helpers. Called once, in the
/// background, by [`DiskStorage::start_background`].
pub(super) fn rebuild(store: &'static DiskStorage) {
    let started = Instant::now();
    let temps = clean_temps(&store.tmp).unwrap_or(0);
    let jobs: Vec<(Silo, u8)> = Silo::ALL
        .iter()
        .flat_map(|&s| (0..=255u8).map(move |ab| (s, ab)))
        .collect();
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Tally::default());
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 8);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut tally = Tally::default();
                while let Some(&(silo, ab)) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                    scan_ab(store, silo, ab, &mut tally);
                }
                let mut all = results.lock();
                all.found.append(&mut tally.found);
                all.adopted += tally.adopted;
                all.removed += tally.removed;
            });
        }
    });
    let mut tally = results.into_inner();
    // Newest first, each appended at the cold end: the oldest ends up evicted first.
    tally.found.sort_unstable_by_key(|f| Reverse(f.mtime));
    let merged = merge(store, &tally.found);
    let victims = {
        let mut books = store.books.lock();
        books.removed_while_scanning = None;
        store.evict_locked(&mut books)
    };
    store.unlink_evicted(&victims);
    let millis = started.elapsed().as_millis() as u64;
    let c = &store.counters;
    c.adopted.fetch_add(tally.adopted, Ordering::Relaxed);
    c.rebuild_millis.store(millis, Ordering::Relaxed);
    c.rebuild_done.store(true, Ordering::Release);
    let stats = store.stats();
    tracing::info!(
        "disk index rebuilt: {} objects, {} bytes in {millis} ms ({merged} found by the \
         scan, {} adopted from shm-cached, {} invalid files and {temps} temp files \
         removed, {} evicted to fit the budget)",
        stats.objects,
        stats.bytes,
        tally.adopted,
        tally.removed,
        victims.len(),
    );
}

/// Adds scanned objects to the index, skipping what was removed or used meanwhile.
fn merge(store: &DiskStorage, found: &[Found2]) -> usize {
    let mut merged = 0;
    for batch in found.chunks(MERGE_BATCH) {
        let keys: Vec<_> = batch.iter().map(|f| f.rec.obj.key_hash()).collect();
        let mut books = store.books.lock();
        let removed: HashSet<_> = books
            .removed_while_scanning
            .as_ref()
            .map(|s| keys.iter().filter(|k| s.contains(*k)).copied().collect())
            .unwrap_or_default();
        for (f, key) in batch.iter().zip(keys) {
            if !removed.contains(&key) && books.index.insert_cold(key, f.rec) {
                merged += 1;
            }
        }
    }
    merged
}

#[cfg(test)]
pub(super) fn merge_for_tests(store: &DiskStorage, recs: &[Rec]) -> usize {
    let found: Vec<_> = recs.iter().map(|&rec| Found2 { rec, mtime: 0 }).collect();
    merge(store, &found)
}

fn is_hex2(name: &str) -> bool {
    name.len() == 2 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn scan_ab(store: &DiskStorage, silo: Silo, ab: u8, tally: &mut Tally) {
    let ab_hex = format!("{ab:02x}");
    let ab_dir = store.cfg.dir.join(silo.as_str()).join(&ab_hex);
    let Ok(cds) = fs::read_dir(&ab_dir) else {
        return;
    };
    for cd in cds.flatten() {
        let cd_name = cd.file_name();
        let Some(cd_hex) = cd_name.to_str().filter(|n| is_hex2(n)) else {
            continue;
        };
        let Ok(files) = fs::read_dir(cd.path()) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name();
            let Some(obj) = name.to_str().and_then(|n| {
                let placed = n.get(0..2) == Some(ab_hex.as_str()) && n.get(2..4) == Some(cd_hex);
                placed
                    .then(|| Md5::parse(n).ok())
                    .flatten()
                    .map(|md5| ObjectRef::new(silo, md5))
            }) else {
                continue; // not an object path: leave it alone
            };
            store.counters.scanned.fetch_add(1, Ordering::Relaxed);
            scan_file(store, obj, &f.path(), tally);
        }
    }
}

fn scan_file(store: &DiskStorage, obj: ObjectRef, path: &Path, tally: &mut Tally) {
    match io::open_checked(path, &obj, false) {
        Ok(Found::Valid(opened)) => {
            if matches!(opened.kind, Inspected::Legacy { .. }) {
                tally.adopted += 1;
            }
            let mtime = opened
                .mtime
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            tally.found.push(Found2 {
                rec: Rec {
                    obj,
                    blocks: blocks_for(opened.len),
                },
                mtime,
            });
        }
        Ok(Found::Invalid(corrupt, id)) => {
            store.drop_file(obj, Some(id));
            tally.removed += 1;
            store.note_corrupt(&obj, corrupt);
        }
        Ok(Found::Missing) => {}
        Err(e) => store.note_read_error(&obj, &e),
    }
}
