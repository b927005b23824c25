//! Shimmie's database drives running mirrors: weight changes move redirects, bans turn
//! cached images into 404s, a broken template keeps the old view, and the database
//! going away stops nothing. Real binary, real origin, real SQLite / PostgreSQL /
//! MariaDB, written to the way Shimmie writes.
//!
//! No test asserts on timing: latencies are printed (`-- --nocapture` shows them) and
//! the assertions are on what the mirror answers, reached within [`DEADLINE`], which
//! only exists so a broken build fails instead of hanging.

mod common;

use std::time::{Duration, Instant};

use common::db::{DbServer, Shimmie};
use common::*;
use reqwest::{Client, StatusCode};
use shimmer::fleet::{Algorithm, FleetSpec, FleetView, Silo};

/// The longest any state is waited for. Not a bound on anything: a slow machine may
/// take a hundred times the usual latency and still pass; only a hang fails.
const DEADLINE: Duration = Duration::from_secs(60);

/// A measured latency for a printed line: `112 ms`.
fn shown(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

fn template(opts: &str) -> String {
    format!("http://127.0.0.1:{{{opts}}}/_images/$hash/$id.$ext")
}

/// One mirror on a database source; it is node `port` among three.
struct Rig {
    _work: tempfile::TempDir,
    data: DataDir,
    origin: Origin,
    mirror: Mirror,
    port: u16,
    admin: u16,
    cache_dir: std::path::PathBuf,
}

fn start(dsn: &str, interval: &str) -> Rig {
    let work = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(work.path().join("data"));
    let origin = Origin::start(&data.dir, work.path());
    let port = free_port();
    let admin = free_port();
    let node = port.to_string();
    let cache_dir = work.path().join("cache");
    let disk = format!("    dir: {}\n    disk_bytes: 64M\n", cache_dir.display());
    let spec = MirrorSpec {
        node: &node,
        port,
        origins: vec![format!("http://{}", origin.addr)],
        // The YAML's own templates only serve until the database answers.
        image_ilink: "_images/$hash/x".into(),
        image_tlink: "_thumbs/$hash/x".into(),
        extra_cache: &disk,
        extra_origin: "",
    };
    let state = work.path().join("view.json");
    // The harness's YAML, with the database source added and the admin port pinned
    // (the only four-space `listen:` is the admin one).
    let yaml: String = mirror_yaml(work.path(), &spec)
        .replace(
            "shimmer:\n",
            &format!(
                "shimmer:\n  source: \"{dsn}\"\n  sync:\n    interval: {interval}\n    full_reread: 2s\n    state_file: {}\n",
                state.display()
            ),
        )
        .lines()
        .map(|l| {
            if l.starts_with("    listen: ") {
                format!("    listen: \"127.0.0.1:{admin}\"\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let mirror = Mirror::start_yaml(work.path(), port, &yaml);
    Rig {
        _work: work,
        data,
        origin,
        mirror,
        port,
        admin,
        cache_dir,
    }
}

/// Whether the disk tier holds this hash in its final place (fills in progress, in
/// `.tmp`, do not count).
fn on_disk(dir: &std::path::Path, hash: &str) -> bool {
    fn walk(d: &std::path::Path, hash: &str) -> bool {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                let p = e.path();
                if p.is_dir() {
                    e.file_name() != ".tmp" && walk(&p, hash)
                } else {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().contains(hash))
                }
            })
    }
    walk(dir, hash)
}

impl Rig {
    fn url(&self, hash: &str) -> String {
        self.mirror.url(&format!("/_images/{hash}/x.jpg"))
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.admin))
            .await
            .expect("scrape")
            .text()
            .await
            .expect("metrics text")
    }
}

/// Polls until `url` answers `want`; returns how long it took (to print, never to
/// assert on). Panics if it still answers something else after [`DEADLINE`].
async fn until_status(c: &Client, url: &str, want: u16) -> Duration {
    let started = Instant::now();
    let got = &std::cell::RefCell::new(None);
    let answered = eventually_async(DEADLINE, || async move {
        let status = c.get(url).send().await.map(|r| r.status().as_u16());
        let ok = status.as_ref().ok() == Some(&want);
        *got.borrow_mut() = Some(status);
        ok.then_some(())
    });
    if answered.await.is_none() {
        panic!("{url} still answers {:?}, want {want}", got.borrow());
    }
    started.elapsed()
}

/// A hash whose owners under `before` exclude `node` and whose primary under `after`
/// is `node`.
fn moving_hash(before: &str, after: &str, node: &str) -> String {
    let view = |t: &str| {
        FleetView::build(&FleetSpec {
            image_ilink: Some(t.to_owned()),
            image_tlink: None,
            algorithm: Algorithm::Rendezvous,
        })
        .expect("template")
    };
    let (b, a) = (view(before), view(after));
    (0..10_000)
        .map(test_hash)
        .find(|h| {
            !b.owners(Silo::Images, h).is_owner(node)
                && a.owners(Silo::Images, h).primary() == Some(node)
        })
        .expect("some hash moves to the node")
}

/// The whole story on one engine: weights, bans, a broken template.
async fn weights_bans_and_broken_templates(db: &Shimmie, dsn: &str, engine: &str) {
    let rig = start(dsn, "500ms");
    let c = client();
    let node = rig.port.to_string();
    let before = template(&format!("{node}=1,1=1000,2=1000"));
    let after = template(&format!("{node}=1000,1=1,2=1"));
    let hash = moving_hash(&before, &after, &node);
    rig.data.put("_images", &hash, &jpeg_bytes(3000, 1));

    db.set_config("image_ilink", Some(&before)).await;
    until_status(&c, &rig.url(&hash), 307).await;
    let took = {
        db.set_config("image_ilink", Some(&after)).await;
        until_status(&c, &rig.url(&hash), 200).await
    };
    println!(
        "{engine}: weight change seen by the mirror after {}",
        shown(took)
    );

    // Cached, then banned: 404 whatever the cache holds; unbanned: served again.
    let r = c.get(rig.url(&hash)).send().await.expect("request");
    assert_eq!(r.headers()["x-cache"], "HIT");
    db.ban(&hash).await;
    // The disk fill renames into place just after the response; a ban racing it is a
    // known gap (see the closing note), so wait for the file first.
    let cached = || std::future::ready(on_disk(&rig.cache_dir, &hash).then_some(()));
    let cached = eventually_async(DEADLINE, cached).await;
    assert!(cached.is_some(), "the image was not cached on disk");
    let took = until_status(&c, &rig.url(&hash), 404).await;
    println!("{engine}: ban in force at the mirror after {}", shown(took));
    let gone = || std::future::ready((!on_disk(&rig.cache_dir, &hash)).then_some(()));
    let gone = eventually_async(DEADLINE, gone).await;
    assert!(gone.is_some(), "the banned image's cache file stayed");
    let before_unban = rig.origin.requests().await;
    db.unban(&hash).await;
    until_status(&c, &rig.url(&hash), 200).await;
    assert_eq!(
        rig.origin.requests().await,
        before_unban + 1,
        "the ban did not purge the cached copy"
    );

    // A template Shimmie itself would refuse: the view stays, the error is counted.
    db.set_config("image_ilink", Some(&template("a=1=2,b=1")))
        .await;
    let counted = eventually_async(DEADLINE, || async {
        let m = rig.metrics().await;
        m.lines()
            .any(|l| l.starts_with("shimmer_sync_template_errors_total 1"))
            .then_some(())
    });
    assert!(counted.await.is_some(), "no template error counted");
    let r = c.get(rig.url(&hash)).send().await.expect("request");
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "the broken template replaced the view"
    );
    assert!(
        rig.mirror.proc.log_text().contains("a=1=2"),
        "the bad entry is not logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_drives_a_running_mirror() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, dsn) = Shimmie::sqlite(&dir.path().join("shimmie.db")).await;
    weights_bans_and_broken_templates(&db, &dsn, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_drives_a_running_mirror() {
    let server = DbServer::postgres();
    let db = Shimmie::create(&server).await;
    weights_bans_and_broken_templates(&db, &server.dsn(), "postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_drives_a_running_mirror() {
    let server = DbServer::mariadb();
    let db = Shimmie::create(&server).await;
    weights_bans_and_broken_templates(&db, &server.dsn(), "mariadb").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_killed_under_load_fails_no_request_and_catches_up() {
    let mut server = DbServer::postgres();
    let db = Shimmie::create(&server).await;
    let rig = start(&server.dsn(), "200ms");
    let node = rig.port.to_string();
    let served = template(&format!("{node}=1,1=1,2=1"));
    db.set_config("image_ilink", Some(&served)).await;
    let c = client();
    let view = FleetView::build(&FleetSpec {
        image_ilink: Some(served.clone()),
        image_tlink: None,
        algorithm: Algorithm::Rendezvous,
    })
    .expect("view");
    let hashes: Vec<String> = (0..10_000)
        .map(test_hash)
        .filter(|h| view.owners(Silo::Images, h).is_owner(&node))
        .take(20)
        .collect();
    for (i, h) in hashes.iter().enumerate() {
        rig.data.put("_images", h, &jpeg_bytes(2000, i as u64));
    }
    // The YAML's fallback template is unbalanced (serves everything): the database's
    // view is in force once a hash this node does not own is redirected.
    let foreign = (0..10_000)
        .map(test_hash)
        .find(|h| !view.owners(Silo::Images, h).is_owner(&node))
        .expect("a hash this node does not own");
    rig.data.put("_images", &foreign, &jpeg_bytes(2000, 99));
    until_status(&c, &rig.url(&foreign), 307).await;

    server.kill();
    let mut failures = 0;
    for _ in 0..10 {
        for h in &hashes {
            let r = c.get(rig.url(h)).send().await.expect("request");
            if r.status() != StatusCode::OK {
                failures += 1;
            }
            // Its owners (nodes "1" and "2", nobody listening) are redirected to
            // until this mirror learns they are down (a probe, or a refused
            // owner-first ask), then served here: either way never an error.
            let r = c.get(rig.url(&foreign)).send().await.expect("request");
            if !matches!(r.status(), StatusCode::TEMPORARY_REDIRECT | StatusCode::OK) {
                failures += 1;
            }
        }
        // Part of what is tested: requests spread over the outage, not one burst.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(failures, 0, "requests failed while the database was down");
    // The database's view stayed in force through the outage.
    let status = http_get(
        format!("127.0.0.1:{}", rig.admin).parse().expect("addr"),
        "/status",
    )
    .expect("status");
    assert!(
        status.text().contains(&format!("{node}=1,1=1,2=1")),
        "the database's template is no longer in force"
    );
    let down = eventually_async(DEADLINE, || async {
        rig.metrics()
            .await
            .contains("shimmer_sync_up 0")
            .then_some(())
    });
    assert!(
        down.await.is_some(),
        "sync still reported up with the database gone"
    );

    server.start();
    let db = Shimmie::connect(&server.dsn()).await;
    db.ban(&hashes[0]).await;
    let took = until_status(&c, &rig.url(&hashes[0]), 404).await;
    println!(
        "postgres back: a ban written after the restart in force at the mirror after {}",
        shown(took)
    );
    assert!(rig.metrics().await.contains("shimmer_sync_up 1"));
}
