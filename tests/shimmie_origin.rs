//! `origin: shimmie`: the bucket comes from Shimmie's own `config` table (`s3_endpoint`,
//! `s3_image_bucket`, `s3_access_key_id`, `s3_access_key_secret`) and follows it live.
//! Real moto S3 server checking SigV4 (so the keys from the database really sign),
//! real PostgreSQL, MariaDB and SQLite written to the way Shimmie writes, the real
//! binary. Latencies are printed (`-- --nocapture`), never asserted.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::db::{DbServer, Shimmie};
use common::s3::{fill_with_creds, moto, post, Post};
use common::*;
use reqwest::StatusCode;

/// Only so that a broken build fails instead of hanging.
const WAIT: Duration = Duration::from_secs(60);

struct Rig {
    _moto: Proc,
    moto: SocketAddr,
    mirror: Mirror,
    admin: SocketAddr,
    key_id: String,
    secret: String,
    a: Vec<Post>,
    b: Vec<Post>,
}

fn yaml(work: &Path, port: u16, admin: u16, dsn: &str) -> String {
    format!(
        r#"
threads: 2
pid_file: {work}/shimmer-{port}.pid
upgrade_sock: {work}/shimmer-{port}.sock
grace_period_seconds: 1
graceful_shutdown_timeout_seconds: 1
shimmer:
  node: "a"
  listen: ["127.0.0.1:{port}"]
  source: "{dsn}"
  sync:
    interval: 200ms
  origin: shimmie
  cache:
    memory_bytes: 64M
  admin:
    listen: "127.0.0.1:{admin}"
  log_level: info
"#,
        work = path_str(work),
    )
}

/// Two private buckets (signatures checked) with different posts, Shimmie's config
/// pointing at the first, and a mirror on `origin: shimmie`.
async fn start(work: &Path, db: &Shimmie, dsn: &str) -> Rig {
    let (proc, addr) = moto(work, true);
    let a: Vec<Post> = (0..3)
        .map(|i| post(10 + i, 20_000, "image/jpeg", "jpg"))
        .collect();
    let b: Vec<Post> = (0..9)
        .map(|i| post(20 + i, 30_000, "image/png", "png"))
        .collect();
    let creds = work.join("creds");
    fill_with_creds(work, addr, "shimmie-a", true, &a, &creds);
    fill_with_creds(work, addr, "shimmie-b", true, &b, &creds);
    let read = |f: &str| {
        std::fs::read_to_string(creds.join(f))
            .expect("key file")
            .trim()
            .to_owned()
    };
    let (key_id, secret) = (read("access_key_id"), read("secret_access_key"));
    // As Shimmie's setup page saves them; s3_region stays unset (Shimmie: "auto").
    db.set_config("s3_endpoint", Some(&format!("http://{addr}")))
        .await;
    db.set_config("s3_image_bucket", Some("shimmie-a")).await;
    db.set_config("s3_access_key_id", Some(&key_id)).await;
    db.set_config("s3_access_key_secret", Some(&secret)).await;
    let (port, admin) = (free_port(), free_port());
    let mirror = Mirror::start_yaml(work, port, &yaml(work, port, admin, dsn));
    Rig {
        _moto: proc,
        moto: addr,
        mirror,
        admin: format!("127.0.0.1:{admin}").parse().expect("addr"),
        key_id,
        secret,
        a,
        b,
    }
}

impl Rig {
    async fn status(&self) -> serde_json::Value {
        let r = reqwest::get(format!("http://{}/status", self.admin))
            .await
            .expect("status");
        serde_json::from_slice(&r.bytes().await.expect("status body")).expect("status JSON")
    }

    async fn metrics(&self) -> String {
        let r = reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .expect("metrics");
        r.text().await.expect("metrics text")
    }

    async fn origin_errors(&self) -> f64 {
        metric_value(
            &self.metrics().await,
            "shimmer_sync_origin_errors_total",
            &[],
        )
        .unwrap_or(0.0)
    }

    async fn installs(&self) -> f64 {
        metric_value(
            &self.metrics().await,
            "shimmer_sync_origin_installs_total",
            &[],
        )
        .unwrap_or(0.0)
    }

    /// Waits until `want` buckets have been installed from the database.
    async fn until_installs(&self, want: f64) {
        let done = eventually_async(WAIT, || async {
            (self.installs().await >= want).then_some(())
        })
        .await;
        assert!(done.is_some(), "no new bucket installed");
    }

    /// Waits until `/status` says the bucket in force is `bucket`; how long it took.
    async fn until_bucket(&self, bucket: &str) -> Duration {
        let started = Instant::now();
        let seen = eventually_async(WAIT, || async {
            let s = self.status().await;
            (s["origin"]["bucket"] == bucket).then_some(())
        })
        .await;
        assert!(
            seen.is_some(),
            "the bucket never became {bucket}: {}\n{}",
            self.status().await,
            self.mirror.proc.log_text()
        );
        started.elapsed()
    }

    /// Writes a bad row and waits until it is refused with `reason` (counted, in
    /// `/status`); the bucket in force must still serve `fresh`.
    async fn refused(
        &self,
        db: &Shimmie,
        key: &str,
        value: Option<&str>,
        reason: &str,
        fresh: &Post,
    ) {
        let before = self.origin_errors().await;
        db.set_config(key, value).await;
        let counted = eventually_async(WAIT, || async {
            (self.origin_errors().await > before).then_some(())
        })
        .await;
        assert!(counted.is_some(), "{key}={value:?} was not refused");
        let status = self.status().await;
        let error = status["source"]["origin_error"].as_str().unwrap_or("");
        assert!(error.contains(reason), "{key}={value:?}: {error}");
        assert!(
            self.mirror.proc.log_text().contains(reason),
            "the refusal is not logged"
        );
        assert_eq!(status["origin"]["bucket"], "shimmie-b");
        self.assert_serves(fresh, "MISS").await;
    }

    async fn get(&self, hash: &str) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
        let url = self.mirror.url(&format!("/_images/{hash}/x.jpg"));
        let r = client().get(url).send().await.expect("request");
        let (status, headers) = (r.status(), r.headers().clone());
        (status, headers, r.bytes().await.expect("body").to_vec())
    }

    async fn assert_serves(&self, p: &Post, x_cache: &str) {
        let (status, headers, body) = self.get(&p.hash).await;
        assert_eq!(status, StatusCode::OK, "{}: {headers:?}", p.hash);
        assert_eq!(sha256(&body), sha256(&p.bytes));
        assert_eq!(headers["content-type"], p.content_type);
        assert_eq!(headers["content-disposition"], p.disposition.as_str());
        assert_eq!(headers["x-cache"], x_cache);
    }

    async fn assert_not_found(&self, p: &Post) {
        let (status, _, body) = self.get(&p.hash).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{}", p.hash);
        assert_eq!(String::from_utf8_lossy(&body), "not found\n");
    }
}

async fn follows_the_database(db: &Shimmie, dsn: &str, engine: &str) {
    let work = tempfile::tempdir().expect("tempdir");
    let rig = start(work.path(), db, dsn).await;
    rig.until_bucket("shimmie-a").await;
    let origin = rig.status().await["origin"].clone();
    assert_eq!(origin["kind"], "shimmie");
    assert_eq!(origin["region"], "auto");
    assert_eq!(origin["signed"], true);
    assert_eq!(origin["endpoint"], format!("http://{}", rig.moto));
    rig.assert_serves(&rig.a[0], "MISS").await;
    rig.assert_serves(&rig.a[0], "HIT").await;
    rig.assert_not_found(&rig.b[0]).await;

    // The admin points Shimmie at another bucket: no restart, no reload.
    db.set_config("s3_image_bucket", Some("shimmie-b")).await;
    let took = rig.until_bucket("shimmie-b").await;
    println!(
        "{engine}: s3_image_bucket change in force at the mirror after {} ms",
        took.as_millis()
    );
    rig.assert_serves(&rig.b[1], "MISS").await;
    rig.assert_not_found(&rig.a[1]).await;
    // Content addressed: what was cached from the old bucket stays a hit.
    rig.assert_serves(&rig.a[0], "HIT").await;

    // Rows Shimmie's own client could not use either: refused, the bucket stays.
    let endpoint = format!("http://{}", rig.moto);
    let b = &rig.b;
    rig.refused(db, "s3_endpoint", Some(""), "s3_endpoint is empty", &b[2])
        .await;
    rig.refused(
        db,
        "s3_endpoint",
        Some("ftp://127.0.0.1"),
        "unknown scheme \"ftp\"",
        &b[3],
    )
    .await;
    rig.refused(
        db,
        "s3_endpoint",
        Some("no-such-host.invalid"),
        "cannot resolve",
        &b[4],
    )
    .await;
    db.set_config("s3_endpoint", Some(&endpoint)).await;
    rig.refused(
        db,
        "s3_image_bucket",
        Some("Bad_Bucket"),
        "is not an S3 bucket name",
        &b[5],
    )
    .await;
    rig.refused(
        db,
        "s3_image_bucket",
        None,
        "s3_image_bucket is not set",
        &b[6],
    )
    .await;
    db.set_config("s3_image_bucket", Some("shimmie-b")).await;
    let cleared = eventually_async(WAIT, || async {
        rig.status().await["source"]["origin_error"]
            .is_null()
            .then_some(())
    })
    .await;
    assert!(
        cleared.is_some(),
        "the error stayed after the rows were fixed"
    );

    // The keys really sign: a wrong secret is refused by S3 (502, nothing cached),
    // the right one serves again, both without a restart.
    let installs = rig.installs().await;
    db.set_config("s3_access_key_secret", Some("not-the-secret"))
        .await;
    rig.until_installs(installs + 1.0).await;
    for _ in 0..2 {
        let (status, _, body) = rig.get(&rig.b[7].hash).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "a wrong secret served");
        assert_eq!(String::from_utf8_lossy(&body), "origin failed\n");
    }
    db.set_config("s3_access_key_secret", Some(&rig.secret))
        .await;
    rig.until_installs(installs + 2.0).await;
    rig.assert_serves(&rig.b[7], "MISS").await;

    // SIGHUP with an override in the file: the bucket from the database is built
    // again with it (not dropped for want of one in the YAML).
    let conf = std::fs::read_to_string(&rig.mirror.conf).expect("config");
    let overridden = conf.replace(
        "  origin: shimmie\n",
        "  origin:\n    from: shimmie\n    region: us-east-1\n",
    );
    std::fs::write(&rig.mirror.conf, overridden).expect("rewrite config");
    let reloads = |text: String| {
        metric_value(&text, "shimmer_config_reloads_total", &[("result", "ok")]).unwrap_or(0.0)
    };
    let before = reloads(rig.metrics().await);
    rig.mirror.proc.signal(libc::SIGHUP);
    let reloaded = eventually_async(WAIT, || async {
        (reloads(rig.metrics().await) > before).then_some(())
    })
    .await;
    assert!(reloaded.is_some(), "no reload");
    let origin = rig.status().await["origin"].clone();
    assert_eq!(
        (&origin["bucket"], &origin["region"]),
        (&"shimmie-b".into(), &"us-east-1".into()),
        "{origin}"
    );
    rig.assert_serves(&rig.b[8], "MISS").await;

    // Secrets: never logged, never in /status or /metrics.
    let everything = format!(
        "{}\n{}\n{}",
        rig.mirror.proc.log_text(),
        rig.status().await,
        rig.metrics().await
    );
    for secret in [&rig.secret, &rig.key_id, &"not-the-secret".to_owned()] {
        assert!(!everything.contains(secret.as_str()), "a credential leaked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_bucket_follows_shimmies_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, dsn) = Shimmie::sqlite(&dir.path().join("shimmie.db")).await;
    follows_the_database(&db, &dsn, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bucket_follows_shimmies_config() {
    let server = DbServer::postgres();
    let db = Shimmie::create(&server).await;
    follows_the_database(&db, &server.dsn(), "postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_bucket_follows_shimmies_config() {
    let server = DbServer::mariadb();
    let db = Shimmie::create(&server).await;
    follows_the_database(&db, &server.dsn(), "mariadb").await;
}

/// `shimmer -t` on `text`: (ok, output).
fn check(work: &Path, text: &str) -> (bool, String) {
    config_check(work, "check.yaml", text)
}

#[test]
fn t_checks_origin_shimmie() {
    let work = tempfile::tempdir().expect("tempdir");
    let dsn = format!("sqlite://{}/shimmie.db", path_str(work.path()));
    let good = yaml(work.path(), 1, 2, &dsn);
    let (ok, out) = check(work.path(), &good);
    assert!(ok, "{out}");
    let (ok, out) = check(
        work.path(),
        &good.replace(&format!("  source: \"{dsn}\"\n"), ""),
    );
    assert!(
        !ok && out.contains("shimmer.origin: `shimmie` reads the bucket from Shimmie's config table, so shimmer.source must be Shimmie's database"),
        "{out}"
    );
    let both = good.replace(
        "  origin: shimmie\n",
        "  origin:\n    from: shimmie\n    s3: {bucket: x}\n",
    );
    let (ok, out) = check(work.path(), &both);
    assert!(
        !ok && out.contains("shimmer.origin.s3: does not apply"),
        "{out}"
    );
    let overrides = good.replace(
        "  origin: shimmie\n",
        "  origin:\n    from: shimmie\n    region: eu-central-1\n    anonymous: true\n",
    );
    let (ok, out) = check(work.path(), &overrides);
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_bucket_yet_is_a_502_then_the_first_good_rows_serve() {
    let work = tempfile::tempdir().expect("tempdir");
    let (db, dsn) = Shimmie::sqlite(&work.path().join("shimmie.db")).await;
    // Shimmie's S3 extension not configured yet: no bucket.
    let (proc, addr) = moto(work.path(), false);
    let p = post(40, 10_000, "image/jpeg", "jpg");
    common::s3::fill(
        work.path(),
        addr,
        "shimmie-public",
        false,
        std::slice::from_ref(&p),
    );
    let (port, admin) = (free_port(), free_port());
    let mirror = Mirror::start_yaml(work.path(), port, &yaml(work.path(), port, admin, &dsn));
    let url = mirror.url(&format!("/_images/{}/x.jpg", p.hash));
    let noticed = wait_for_log(&mirror.proc, "s3_image_bucket is not set", WAIT);
    assert!(noticed.is_some(), "{}", mirror.proc.log_text());
    let r = client().get(&url).send().await.expect("request");
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(r.text().await.expect("body"), "origin failed\n");
    db.set_config("s3_endpoint", Some(&format!("http://{addr}")))
        .await;
    db.set_config("s3_image_bucket", Some("shimmie-public"))
        .await;
    let served = eventually_async(WAIT, || async {
        let r = client().get(&url).send().await.ok()?;
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;
    assert!(served.is_some(), "{}", mirror.proc.log_text());
    drop(proc);
}
