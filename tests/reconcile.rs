//! Deleted posts stop being served: the reconcile checks cached hashes against
//! Shimmie's `images` table (and ext/s3's `s3_sync_queue` action 'D') and purges the
//! ones no post has any more from every tier. Real binary, real origin, real
//! PostgreSQL / MariaDB / SQLite with Shimmie's tables, posts deleted the way Shimmie
//! deletes them. Times are printed (`-- --nocapture`), never asserted.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::db::{DbServer, Shimmie};
use common::*;
use reqwest::StatusCode;
use shimmer::cache::disk::seed_object;
use shimmer::object::{Md5, ObjectRef, Silo};

/// Only so that a broken build fails instead of hanging.
const WAIT: Duration = Duration::from_secs(120);

/// The mirror of these tests: node `a` on Shimmie's database `dsn` (no static
/// templates), reconciling with `reconcile`, a disk tier in `cache`.
fn mirror_spec(dsn: &str, origin: &Origin, cache: &Path, reconcile: &str) -> OpsSpec {
    let mut spec = OpsSpec::new(origin.addr);
    spec.static_templates = false;
    // The origin's default timeouts, as these tests always had.
    spec.origin_yaml = Some(format!("    servers: [\"http://{}\"]\n", origin.addr));
    spec.shimmer_extra =
        format!("  source: \"{dsn}\"\n  sync:\n    interval: 200ms\n    reconcile: {reconcile}\n");
    spec.cache_extra = format!("    dir: {}\n    disk_bytes: 10G\n", path_str(cache));
    spec
}

struct Rig {
    mirror: Mirror,
    admin: std::net::SocketAddr,
    cache: PathBuf,
}

fn start(work: &Path, dsn: &str, origin: &Origin, cache: &Path, reconcile: &str) -> Rig {
    let spec = mirror_spec(dsn, origin, cache, reconcile);
    Rig {
        mirror: Mirror::start_yaml(work, spec.port, &spec.yaml(work)),
        admin: format!("127.0.0.1:{}", spec.admin_port)
            .parse()
            .expect("addr"),
        cache: cache.to_owned(),
    }
}

impl Rig {
    async fn metrics(&self) -> String {
        let r = reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .expect("metrics");
        r.text().await.expect("metrics text")
    }

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics().await, name, labels).unwrap_or(0.0)
    }

    async fn status(&self) -> serde_json::Value {
        let r = reqwest::get(format!("http://{}/status", self.admin))
            .await
            .expect("status");
        serde_json::from_slice(&r.bytes().await.expect("body")).expect("status JSON")
    }

    /// Waits until `passes` reconcile passes have completed.
    async fn until_passes(&self, passes: f64) {
        let done = eventually_async(WAIT, || async {
            (self.metric("shimmer_reconcile_passes_total", &[]).await >= passes).then_some(())
        })
        .await;
        assert!(
            done.is_some(),
            "reconcile passes stuck: {}\n{}",
            self.status().await["source"]["reconcile"],
            self.mirror.proc.log_text()
        );
    }

    async fn get(&self, silo: &str, hash: &str) -> (StatusCode, String) {
        let url = self.mirror.url(&format!("/{silo}/{hash}/x.jpg"));
        let r = client().get(url).send().await.expect("request");
        let x_cache = r
            .headers()
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        (r.status(), x_cache)
    }

    fn on_disk(&self, silo: &str, hash: &str) -> bool {
        cache_path(&self.cache, silo, hash).exists()
    }
}

async fn deleted_posts_are_purged(db: &Shimmie, dsn: &str, engine: &str) {
    let work = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(work.path().join("data"));
    let hashes: Vec<String> = (0..12).map(|i| test_hash(500 + i)).collect();
    for (i, h) in hashes.iter().enumerate() {
        data.put("_images", h, &jpeg_bytes(3000, i as u64));
        data.put("_thumbs", h, &jpeg_bytes(500, 100 + i as u64));
    }
    db.create_posts_tables(true).await;
    db.add_posts(&hashes).await;
    let origin = Origin::start(&data.dir, work.path());
    // Small batches, so a pass is several queries over both tiers.
    let rig = start(
        work.path(),
        dsn,
        &origin,
        &work.path().join("cache"),
        "{batch: 4, interval: 10ms, every: 300ms}",
    );
    for h in &hashes {
        assert_eq!(rig.get("_images", h).await, (StatusCode::OK, "MISS".into()));
    }
    for h in &hashes[..2] {
        assert_eq!(rig.get("_thumbs", h).await, (StatusCode::OK, "MISS".into()));
    }
    let cached = eventually_async(WAIT, || async {
        let all = hashes.iter().all(|h| rig.on_disk("_images", h))
            && hashes[..2].iter().all(|h| rig.on_disk("_thumbs", h));
        all.then_some(())
    });
    assert!(
        cached.await.is_some(),
        "not everything reached the disk tier"
    );
    // Passes so far purged nothing: every cached hash is a post.
    rig.until_passes(1.0).await;
    assert_eq!(
        rig.metric("shimmer_reconcile_deleted_total", &[]).await,
        0.0
    );

    // An admin deletes post 0; ext/s3 queues the deletion of post 1's file. The
    // origin keeps both files: if the mirror answers from the origin afterwards, both
    // tiers let go of them.
    let (gone, queued) = (&hashes[0], &hashes[1]);
    let started = Instant::now();
    db.delete_post(gone).await;
    db.queue_s3_delete(queued).await;
    let passes = rig.metric("shimmer_reconcile_passes_total", &[]).await;
    // The pass running now may have checked them already; the next one cannot miss.
    rig.until_passes(passes + 2.0).await;
    println!(
        "{engine}: a deleted post was purged from every tier within {} ms (passes every 300 ms)",
        started.elapsed().as_millis()
    );
    for h in [gone, queued] {
        for silo in ["_images", "_thumbs"] {
            assert!(!rig.on_disk(silo, h), "{silo}/{h} is still on disk");
        }
    }
    // Counted per cached object: each post's image and thumbnail in memory, and on
    // disk what the memory tier's purge had not reached yet.
    let deleted = rig.metric("shimmer_reconcile_deleted_total", &[]).await;
    assert!((2.0..=8.0).contains(&deleted), "{deleted} objects counted");
    assert!(
        rig.metric("shimmer_purges_total", &[("cause", "deleted")])
            .await
            >= 2.0
    );
    let before = origin.requests().await;
    for h in [gone, queued] {
        // Not a hit from memory either: the origin is asked again.
        assert_eq!(rig.get("_images", h).await, (StatusCode::OK, "MISS".into()));
        assert_eq!(rig.get("_thumbs", h).await, (StatusCode::OK, "MISS".into()));
    }
    assert_eq!(origin.requests().await, before + 4);
    for h in &hashes[2..] {
        assert_eq!(
            rig.get("_images", h).await,
            (StatusCode::OK, "HIT".into()),
            "{h}"
        );
        assert!(rig.on_disk("_images", h));
    }
    assert_eq!(
        origin.requests().await,
        before + 4,
        "a live post was purged"
    );
    assert!(
        rig.metric("shimmer_reconcile_largest_query_hashes", &[])
            .await
            <= 4.0
    );
    let logged = rig.mirror.proc.log_text();
    assert!(
        logged.contains(&format!("reconcile: {gone} is no longer a post: purged")),
        "{logged}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_deleted_posts_are_purged_from_every_tier() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, dsn) = Shimmie::sqlite(&dir.path().join("shimmie.db")).await;
    deleted_posts_are_purged(&db, &dsn, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_deleted_posts_are_purged_from_every_tier() {
    let server = DbServer::postgres();
    let db = Shimmie::create(&server).await;
    deleted_posts_are_purged(&db, &server.dsn(), "postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_deleted_posts_are_purged_from_every_tier() {
    let server = DbServer::mariadb();
    let db = Shimmie::create(&server).await;
    deleted_posts_are_purged(&db, &server.dsn(), "mariadb").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_images_table_purges_nothing() {
    let work = tempfile::tempdir().expect("tempdir");
    let (db, dsn) = Shimmie::sqlite(&work.path().join("shimmie.db")).await;
    db.create_posts_tables(false).await;
    let data = DataDir::new(work.path().join("data"));
    let h = test_hash(900);
    data.put("_images", &h, &jpeg_bytes(2000, 1));
    let origin = Origin::start(&data.dir, work.path());
    let rig = start(
        work.path(),
        &dsn,
        &origin,
        &work.path().join("cache"),
        "{every: 200ms}",
    );
    assert_eq!(
        rig.get("_images", &h).await,
        (StatusCode::OK, "MISS".into())
    );
    let refused = eventually_async(WAIT, || async {
        let s = rig.status().await;
        let why = s["source"]["reconcile"]["last_problem"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        why.contains("images has no rows").then_some(())
    });
    assert!(refused.await.is_some(), "the empty table was not noticed");
    assert_eq!(rig.get("_images", &h).await, (StatusCode::OK, "HIT".into()));
    assert_eq!(
        rig.metric("shimmer_reconcile_deleted_total", &[]).await,
        0.0
    );
}

// ------------------------------------------------------------ 100,000 cached images

const OBJECTS: usize = 100_000;
const DELETED: usize = 100;
const BATCH: usize = 1000;

/// Where 100,000 cache files go: tmpfs when there is one (see tests/disk_rebuild.rs).
fn cache_base() -> PathBuf {
    std::env::var_os("SHIMMER_REBUILD_TEST_DIR")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/dev/shm")).filter(|p| p.is_dir()))
        .unwrap_or_else(std::env::temp_dir)
}

fn seed(cache: &Path, hashes: &[String]) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(hash) = hashes.get(i) else {
                    return;
                };
                let obj = ObjectRef::new(Silo::Images, Md5::parse(hash).expect("hash"));
                seed_object(cache, obj, "image/jpeg", &whole_jpeg(300, i as u64), None)
                    .expect("seed");
            });
        }
    });
}

/// The plan of one live-posts query, as the engine gives it.
async fn live_plan(db: &Shimmie, engine: &str, hashes: &[String]) -> String {
    use shimmer::shimmie::sql::live_sql;
    match engine {
        "postgres" => {
            let sql = shimmer::shimmie::postgres::LIVE_WITH_QUEUE_SQL;
            db.explain_array(sql, hashes).await
        }
        "mariadb" => {
            let sql = live_sql::<sqlx::MySql>(hashes.len(), true);
            db.explain_hashes(&sql, hashes).await
        }
        _ => {
            let sql = live_sql::<sqlx::Sqlite>(hashes.len(), true);
            db.explain_hashes(&sql, hashes).await
        }
    }
}

async fn reconcile_100k(db: &Shimmie, dsn: &str, engine: &str) {
    let work = tempfile::tempdir().expect("tempdir");
    let cache_root = tempfile::tempdir_in(cache_base()).expect("cache tempdir");
    let cache = cache_root.path().join("cache");
    let hashes: Vec<String> = (0..OBJECTS).map(bulk_hash_of).collect();
    let seeding = Instant::now();
    seed(&cache, &hashes);
    println!(
        "{engine}: seeded {OBJECTS} cached images in {:?}",
        seeding.elapsed()
    );
    db.create_posts_tables(true).await;
    // Every 1000th cached image is no longer a post.
    let (mut deleted, mut posts) = (Vec::new(), Vec::new());
    for (i, h) in hashes.iter().enumerate() {
        match i % (OBJECTS / DELETED) == 7 {
            true => deleted.push(h.clone()),
            false => posts.push(h.clone()),
        }
    }
    db.add_posts(&posts).await;
    db.analyze_table("images").await;
    let plan = live_plan(db, engine, &hashes[..4]).await;
    println!("{engine}: live-posts query plan: {plan}");
    let indexed = match engine {
        "postgres" => plan.contains("images_hash_key"),
        "mariadb" => plan.contains("key=hash"),
        _ => plan.contains("USING INDEX") || plan.contains("USING COVERING INDEX"),
    };
    assert!(
        indexed,
        "{engine}: the live-posts query does not use the hash index: {plan}"
    );

    let data = DataDir::new(work.path().join("data"));
    let origin = Origin::start(&data.dir, work.path());
    let rig = start(
        work.path(),
        dsn,
        &origin,
        &cache,
        &format!("{{batch: {BATCH}, interval: 0s, every: 2s}}"),
    );
    // The first request starts the disk tier's restart scan (a live post: a hit,
    // promoted into memory, so the passes see one memory-tier object as well).
    assert_eq!(
        rig.get("_images", &posts[0]).await,
        (StatusCode::OK, "HIT".into())
    );
    let rebuilt = wait_for_log(&rig.mirror.proc, "disk index rebuilt", WAIT);
    assert!(
        rebuilt.is_some(),
        "no index rebuild: {}",
        rig.mirror.proc.log_text()
    );
    // A pass may be running on the half-built index now; the next one sees every
    // object and purges the deleted ones; the one after it is measured.
    let passes = rig.metric("shimmer_reconcile_passes_total", &[]).await;
    rig.until_passes(passes + 3.0).await;
    let r = &rig.status().await["source"]["reconcile"];
    let checked = r["last_pass_checked"].as_u64().unwrap_or(0);
    let sent = r["last_pass_queries"].as_u64().unwrap_or(0);
    let took = r["last_pass_seconds"].as_f64().unwrap_or(0.0);
    let largest = r["largest_query"].as_u64().unwrap_or(u64::MAX);
    println!(
        "{engine}: a pass over {checked} cached hashes took {took:.2} s ({:.0} hashes/s, \
         {:.1} ms a query) in {sent} queries of at most {largest} hashes (interval 0)",
        checked as f64 / took.max(1e-9),
        took * 1000.0 / sent.max(1) as f64
    );
    // Every disk object, and the memory one's two md5s unless one was in its batch.
    let live = (OBJECTS - DELETED) as u64;
    assert!(
        (live..=live + 2).contains(&checked),
        "the last pass checked {checked}"
    );
    assert!(
        largest <= BATCH as u64,
        "a query asked for {largest} hashes"
    );
    assert!(sent >= checked.div_ceil(BATCH as u64), "{sent} queries");
    assert_eq!(
        rig.metric("shimmer_reconcile_deleted_total", &[]).await,
        DELETED as f64
    );
    for h in &deleted {
        assert!(
            !cache_path(&cache, "_images", h).exists(),
            "{h} stayed on disk"
        );
    }
    for h in posts.iter().step_by(997) {
        assert!(
            cache_path(&cache, "_images", h).exists(),
            "live post {h} was purged"
        );
    }
    let objects = rig
        .metric("shimmer_cache_objects", &[("tier", "disk")])
        .await;
    assert_eq!(objects, (OBJECTS - DELETED) as f64);
    drop(rig);
    drop(cache_root);
}

/// Distinct md5-like hashes for the big test (spread like real ones).
fn bulk_hash_of(i: usize) -> String {
    common::db::bulk_hash(77, i)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_reconciles_100k_cached_images_in_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, dsn) = Shimmie::sqlite(&dir.path().join("shimmie.db")).await;
    reconcile_100k(&db, &dsn, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reconciles_100k_cached_images_in_batches() {
    let server = DbServer::postgres();
    let db = Shimmie::create(&server).await;
    reconcile_100k(&db, &server.dsn(), "postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_reconciles_100k_cached_images_in_batches() {
    let server = DbServer::mariadb();
    let db = Shimmie::create(&server).await;
    reconcile_100k(&db, &server.dsn(), "mariadb").await;
}
