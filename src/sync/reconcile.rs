//! Deleted posts: the cached hashes, checked against Shimmie's `images` table a batch
//! at a time; a hash no live post has any more is purged from every tier, as a ban is.
//!
//! Shimmie leaves no record of a plain deletion, but every live post has its `images`
//! row, so a cached hash without one was deleted (or replaced). With Shimmie's ext/s3
//! a deletion may also wait in `s3_sync_queue` (action 'D') while the file is still in
//! the bucket: such a hash counts as deleted too.
//!
//! A pass walks what is cached: the disk tier's index (a page a lock hold), then the
//! memory tier's keys (copied once, in one lock hold). The memory tier keeps bare key
//! hashes, which may be an image's md5 or a thumbnail's masked one, so both md5s go to
//! the database and the object counts as deleted only if neither is a live post. Each
//! query asks for at most `batch` hashes (an index lookup each), and queries are
//! `interval` apart, so a pass costs the database `batch / interval` lookups a second
//! at most. A pass starts at most every `every`.
//!
//! Safety: nothing is purged on an error (the pass stops, and the next one starts
//! over), and nothing at all while `images` is empty, which is taken for the wrong
//! database, never for a gallery whose every post was deleted.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use pingora::server::ShutdownWatch;

use super::{pause, SyncService};
use crate::object::{Md5, ObjectRef};
use crate::shimmie::SourceError;

/// Disk index entries read in one lock hold.
const DISK_PAGE: usize = 4096;
/// Deleted hashes logged one by one per pass; the rest are counted.
const LOG_EACH: u64 = 20;
/// The first pass after start waits at most this (the disk index is still being
/// rebuilt then; the passes after it see the rest).
const FIRST_PASS_AFTER: Duration = Duration::from_secs(60);

/// `shimmer.sync.reconcile`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReconcileOptions {
    pub enabled: bool,
    /// Hashes per query.
    pub batch: usize,
    /// Pause between two queries (0: back to back, for measuring).
    pub interval: Duration,
    /// A pass starts at most this often.
    pub every: Duration,
}

impl Default for ReconcileOptions {
    fn default() -> Self {
        ReconcileOptions {
            enabled: true,
            // 4,000 index lookups a second at most: a 2-million-object cache is checked
            // in about 8 minutes.
            batch: 1000,
            interval: Duration::from_millis(250),
            every: Duration::from_secs(600),
        }
    }
}

/// The reconcile's numbers, for metrics and `/status`. Counters are cumulative.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcileStatus {
    /// Passes completed.
    pub passes: u64,
    /// Queries sent.
    pub queries: u64,
    /// Hashes sent (a memory-tier object is two).
    pub checked: u64,
    /// Cached objects found deleted, and purged.
    pub deleted: u64,
    /// Passes that stopped on a database error.
    pub errors: u64,
    /// The most hashes one query asked for (never more than `batch`).
    pub largest_query: usize,
    pub last_pass: Option<Duration>,
    /// Hashes the last pass checked.
    pub last_pass_checked: u64,
    /// Queries the last pass sent.
    pub last_pass_queries: u64,
    /// Why the last pass stopped or purged nothing on purpose (kept after recovery).
    pub last_problem: Option<String>,
}

/// One cached object: the md5s it may be (one from the disk index, two from a bare
/// memory key).
#[derive(Clone, Copy)]
struct Candidates {
    md5s: [Md5; 2],
    len: usize,
}

impl Candidates {
    fn exact(md5: Md5) -> Candidates {
        Candidates {
            md5s: [md5; 2],
            len: 1,
        }
    }

    fn either(objs: [ObjectRef; 2]) -> Candidates {
        Candidates {
            md5s: [objs[0].md5, objs[1].md5],
            len: 2,
        }
    }

    fn md5s(&self) -> &[Md5] {
        &self.md5s[..self.len]
    }
}

/// The objects of one query and their distinct md5s.
struct Batch {
    limit: usize,
    objects: Vec<Candidates>,
    hashes: Vec<Md5>,
    seen: HashSet<Md5>,
}

impl Batch {
    fn new(limit: usize) -> Batch {
        Batch {
            // A memory-tier object needs two (the config refuses a batch below 2).
            limit: limit.max(2),
            objects: Vec::new(),
            hashes: Vec::new(),
            seen: HashSet::new(),
        }
    }

    /// Adds an object unless all its md5s are in already (an image and its thumbnail
    /// on disk are one md5). False if it would not fit: send this batch first.
    fn push(&mut self, c: Candidates) -> bool {
        let new: Vec<Md5> = c
            .md5s()
            .iter()
            .copied()
            .filter(|m| !self.seen.contains(m))
            .collect();
        if new.is_empty() {
            return true;
        }
        if self.hashes.len() + new.len() > self.limit {
            return false;
        }
        for m in new {
            self.seen.insert(m);
            self.hashes.push(m);
        }
        self.objects.push(c);
        true
    }

    fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }
}

/// What one pass did.
#[derive(Default)]
struct Pass {
    checked: u64,
    queries: u64,
    deleted: u64,
    logged: u64,
}

impl SyncService {
    /// The reconcile loop, beside the settings and bans loop; returns on shutdown.
    pub(super) async fn reconcile_loop(&self, mut shutdown: ShutdownWatch) {
        let o = self.opts.reconcile.clone();
        if !o.enabled {
            return;
        }
        let mut next = Instant::now() + o.every.min(FIRST_PASS_AFTER);
        loop {
            let wait = next.saturating_duration_since(Instant::now());
            if pause(&mut shutdown, wait).await {
                return;
            }
            let started = Instant::now();
            next = started + o.every;
            // The pass pauses on its own copy; this one stops a query in flight.
            let mut pauses = shutdown.clone();
            let pass = tokio::select! {
                _ = shutdown.changed() => return,
                p = self.reconcile_pass(&o, &mut pauses) => p,
            };
            self.finish_pass(pass, started.elapsed());
        }
    }

    fn finish_pass(&self, pass: Result<Option<Pass>, SourceError>, took: Duration) {
        match pass {
            Ok(Some(p)) => {
                let rate = p.checked as f64 / took.as_secs_f64().max(1e-9);
                tracing::info!(
                    "reconcile: {} cached hashes checked against images in {} queries in \
                     {took:.1?} ({rate:.0}/s), {} cached objects of deleted posts purged",
                    p.checked,
                    p.queries,
                    p.deleted
                );
                self.update(|s| {
                    let r = &mut s.reconcile;
                    r.passes += 1;
                    r.last_pass = Some(took);
                    r.last_pass_checked = p.checked;
                    r.last_pass_queries = p.queries;
                });
            }
            Ok(None) => {}
            Err(e) => {
                let message = e.to_string();
                if self.status.load().reconcile.last_problem.as_deref() != Some(&message) {
                    tracing::warn!("reconcile: pass stopped, nothing more purged: {message}");
                }
                self.update(|s| {
                    s.reconcile.errors += 1;
                    s.reconcile.last_problem = Some(message);
                });
            }
        }
    }

    /// One pass; `None` when skipped on purpose (no posts at all).
    async fn reconcile_pass(
        &self,
        o: &ReconcileOptions,
        shutdown: &mut ShutdownWatch,
    ) -> Result<Option<Pass>, SourceError> {
        let probe = self
            .timed("reading images", self.source.posts_probe())
            .await?;
        if !probe.has_posts {
            let why = "images has no rows: taken for the wrong database, nothing purged";
            if self.status.load().reconcile.last_problem.as_deref() != Some(why) {
                tracing::warn!("reconcile: {why}");
            }
            self.update(|s| s.reconcile.last_problem = Some(why.into()));
            return Ok(None);
        }
        let mut pass = Pass::default();
        let mut batch = Batch::new(o.batch);
        // The disk index first: its objects name their md5, and purging one also
        // takes both silos out of memory, so fewer ambiguous memory keys are left.
        let mut from = Some(0);
        while let Some(at) = from {
            let (page, next) = self.target.disk_page(at, DISK_PAGE);
            from = next;
            for obj in page {
                let c = Candidates::exact(obj.md5);
                self.add(&mut batch, c, &mut pass, o, probe.delete_queue, shutdown)
                    .await?;
            }
        }
        let memory = self.target.memory_keys();
        let objects = memory
            .iter()
            .map(|k| Candidates::either(ObjectRef::for_key_hash(k)));
        for c in objects {
            self.add(&mut batch, c, &mut pass, o, probe.delete_queue, shutdown)
                .await?;
        }
        if !batch.is_empty() {
            self.check(&mut batch, &mut pass, probe.delete_queue)
                .await?;
        }
        Ok(Some(pass))
    }

    /// Adds an object to the batch, sending the batch first (and pausing after it)
    /// when it is full.
    async fn add(
        &self,
        batch: &mut Batch,
        c: Candidates,
        pass: &mut Pass,
        o: &ReconcileOptions,
        delete_queue: bool,
        shutdown: &mut ShutdownWatch,
    ) -> Result<(), SourceError> {
        if batch.push(c) {
            return Ok(());
        }
        self.check(batch, pass, delete_queue).await?;
        if !o.interval.is_zero() && pause(shutdown, o.interval).await {
            return Ok(());
        }
        batch.push(c);
        Ok(())
    }

    /// Sends one query and purges the objects none of whose md5s is a live post.
    async fn check(
        &self,
        batch: &mut Batch,
        pass: &mut Pass,
        delete_queue: bool,
    ) -> Result<(), SourceError> {
        let full = std::mem::replace(batch, Batch::new(batch.limit));
        let call = self.source.live_hashes(&full.hashes, delete_queue);
        let live = self.timed("reading images", call).await?;
        let sent = full.hashes.len();
        let mut deleted = 0;
        for c in &full.objects {
            if c.md5s().iter().any(|m| live.contains(m)) {
                continue;
            }
            deleted += 1;
            if pass.logged < LOG_EACH {
                pass.logged += 1;
                match c.md5s() {
                    [one] => tracing::info!("reconcile: {one} is no longer a post: purged"),
                    both => tracing::info!(
                        "reconcile: a memory-tier object ({} or a thumbnail of {}) is no \
                         longer a post: purged",
                        both[0],
                        both[1]
                    ),
                }
            }
            for &md5 in c.md5s() {
                self.target.purge_deleted(md5).await;
            }
        }
        pass.checked += sent as u64;
        pass.queries += 1;
        pass.deleted += deleted;
        self.update(|s| {
            let r = &mut s.reconcile;
            r.queries += 1;
            r.checked += sent as u64;
            r.deleted += deleted;
            r.largest_query = r.largest_query.max(sent);
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md5(n: u8) -> Md5 {
        Md5([n; 16])
    }

    #[test]
    fn a_batch_holds_at_most_its_limit_of_distinct_hashes() {
        let mut b = Batch::new(3);
        assert!(b.push(Candidates::exact(md5(1))));
        // The same md5 again (its thumbnail on disk): no new hash.
        assert!(b.push(Candidates::exact(md5(1))));
        let pair = ObjectRef::for_key_hash(&md5(2).0);
        assert!(b.push(Candidates::either(pair)));
        assert_eq!(b.hashes.len(), 3);
        assert!(!b.push(Candidates::exact(md5(4))));
        assert_eq!((b.hashes.len(), b.objects.len()), (3, 2));
    }

    #[test]
    fn defaults_bound_the_database_load() {
        let o = ReconcileOptions::default();
        let per_second = o.batch as f64 / o.interval.as_secs_f64();
        assert!(per_second <= 5000.0, "{per_second}");
        assert!(o.every >= Duration::from_secs(60));
    }
}
