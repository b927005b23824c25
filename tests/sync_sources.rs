//! The Shimmie sync against real databases: private PostgreSQL and MariaDB servers
//! (tests/common/db.rs) and SQLite files, written to the way Shimmie writes.
//!
//! Every test runs on a current-thread runtime, so the sync service's task runs on
//! the test's thread and its log lines land in the test's own capture buffer.

#[path = "common/db.rs"]
mod db;

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use shimmer::fleet::{Algorithm, FleetSpec, FleetView, Silo};
use shimmer::shimmie::{
    self, parse_md5, persist, Bans, Change, ShimmieSettings, Source, SourceError,
};
use shimmer::sync::{SyncOptions, SyncService, SyncStatus, SyncTarget};

use db::{DbServer, Shimmie};

const T_A: &str = "https://m-{a=5,b=5}.example.com/_images/$hash/$id%20-%20$tags.$ext";
const T_B: &str = "https://m-{a=1,b=9,c=10}.example.com/_images/$hash/$id%20-%20$tags.$ext";
const BROKEN: &str = "https://m-{a=1,b=2=3}.example.com/_images/$hash/x.jpg";
const TLINK: &str = "_thumbs/$hash/thumb.$ext";
const H1: &str = "e28e3076236eff37065d36416001263e";
const H2: &str = "d41d8cd98f00b204e9800998ecf8427e";
const H3: &str = "098f6bcd4621d373cade4e832627b4f6";

// ---------------------------------------------------------------- environments

struct Env {
    server: Option<DbServer>,
    _dir: Option<tempfile::TempDir>,
    db: Shimmie,
    dsn: String,
    engine: &'static str,
}

async fn pg() -> Env {
    let server = DbServer::postgres();
    let db = Shimmie::create(&server).await;
    Env {
        dsn: server.dsn(),
        server: Some(server),
        _dir: None,
        db,
        engine: "postgres",
    }
}

async fn maria() -> Env {
    let server = DbServer::mariadb();
    let db = Shimmie::create(&server).await;
    Env {
        dsn: server.dsn(),
        server: Some(server),
        _dir: None,
        db,
        engine: "mysql",
    }
}

async fn lite() -> Env {
    let dir = tempfile::tempdir().expect("temp dir");
    let (db, dsn) = Shimmie::sqlite(&dir.path().join("shimmie.db")).await;
    Env {
        server: None,
        _dir: Some(dir),
        db,
        dsn,
        engine: "sqlite",
    }
}

impl Env {
    fn source(&self) -> Box<dyn Source> {
        shimmie::connect(&self.dsn).expect("connect is lazy and the DSN is valid")
    }

    fn bans_after_sql(&self) -> &'static str {
        match self.engine {
            "postgres" => shimmie::postgres::BANS_AFTER_SQL,
            "mysql" => shimmie::mysql::BANS_AFTER_SQL,
            _ => shimmie::sqlite::BANS_AFTER_SQL,
        }
    }
}

// ---------------------------------------------------------------- a recording target

#[derive(Default)]
struct Recorder {
    bans: Bans,
    installs: Mutex<Vec<FleetSpec>>,
    view: Mutex<Option<FleetView>>,
    purged: Mutex<Vec<String>>,
}

#[async_trait]
impl SyncTarget for Recorder {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Rendezvous
    }
    fn install_view(&self, spec: FleetSpec, view: FleetView) {
        self.installs.lock().push(spec);
        *self.view.lock() = Some(view);
    }
    fn bans(&self) -> &Bans {
        &self.bans
    }
    async fn purge(&self, hash: &str) {
        self.purged.lock().push(hash.to_owned());
    }
}

impl Recorder {
    fn ilink(&self) -> Option<String> {
        self.installs
            .lock()
            .last()
            .and_then(|s| s.image_ilink.clone())
    }
    fn purged(&self, hash: &str) -> bool {
        self.purged.lock().iter().any(|h| h == hash)
    }
}

struct Running {
    svc: Arc<SyncService>,
    target: Arc<Recorder>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn run(source: Box<dyn Source>, opts: SyncOptions) -> Running {
    let target = Arc::new(Recorder::default());
    let svc = Arc::new(SyncService::new(source, target.clone(), opts));
    let (stop, watch) = tokio::sync::watch::channel(false);
    let task = tokio::spawn({
        let svc = Arc::clone(&svc);
        async move { svc.run(watch).await }
    });
    Running {
        svc,
        target,
        stop,
        task,
    }
}

impl Running {
    fn status(&self) -> SyncStatus {
        self.svc.status()
    }
    async fn shutdown(self) {
        let _ = self.stop.send(true);
        let ended = tokio::time::timeout(Duration::from_secs(5), self.task).await;
        assert!(ended.is_ok(), "the sync service did not stop on shutdown");
    }
}

/// Polls `probe` until true; how long it took, or `None` after `within`.
async fn eventually(within: Duration, mut probe: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() <= within {
        if probe() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

// ---------------------------------------------------------------- log capture

#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

impl Logs {
    /// Captures this thread's log lines (the service runs on it: current-thread runtime).
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        (logs.clone(), tracing::subscriber::set_default(subscriber))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}

// ---------------------------------------------------------------- source checks

async fn check_source(env: &Env) {
    let source = env.source();
    assert_eq!(source.engine(), env.engine);

    // Absent rows: both None (unbalanced).
    assert_eq!(
        source.read_settings().await.expect("settings"),
        ShimmieSettings::default()
    );

    env.db.set_config("image_ilink", Some(T_A)).await;
    env.db.set_config("image_tlink", Some(TLINK)).await;
    let s = source.read_settings().await.expect("settings");
    assert_eq!(s.image_ilink.as_deref(), Some(T_A));
    assert_eq!(s.image_tlink.as_deref(), Some(TLINK));

    // NULL is absent, as Shimmie reads it.
    env.db.set_config("image_tlink", None).await;
    assert_eq!(
        source.read_settings().await.expect("settings").image_tlink,
        None
    );

    // An absurdly long template is refused, naming the key.
    let long = format!("https://{{a,b}}.example.com/{}", "x".repeat(20_000));
    env.db.set_config("image_ilink", Some(&long)).await;
    match source.read_settings().await {
        Err(SourceError::BadValue {
            key: "image_ilink",
            reason,
        }) => assert!(reason.contains("limit"), "{reason}"),
        other => panic!("{}: long template: {other:?}", env.engine),
    }
    env.db.set_config("image_ilink", Some(T_A)).await;

    // Bans: two valid (one in upper case), two malformed; read in pages of 2.
    env.db.ban(H1).await;
    env.db.exec("INSERT INTO image_bans (hash, reason) VALUES ('not-a-hash-at-all-not-a-hash-at!', 'x')").await;
    env.db
        .exec("INSERT INTO image_bans (hash, reason) VALUES ('abc', 'x')")
        .await;
    env.db.ban(&H2.to_uppercase()).await;
    let all = source.all_bans(2).await.expect("all bans");
    let got: Vec<u128> = all.rows.iter().map(|r| r.hash).collect();
    assert_eq!(
        got,
        [parse_md5(H1), parse_md5(H2)].map(Option::unwrap_or_default),
        "{}",
        env.engine
    );
    assert_eq!((all.read, all.skipped), (4, 2), "{}", env.engine);
    let last = all.last_id.expect("last id");

    // Incremental: nothing after the last id, then exactly the new row.
    let none = source.bans_after(last, 1000).await.expect("bans after");
    assert_eq!(
        (none.read, none.last_id),
        (0, None),
        "{}: a poll with no new bans reads no rows",
        env.engine
    );
    let id3 = env.db.ban(H3).await;
    let one = source.bans_after(last, 1000).await.expect("bans after");
    assert_eq!(
        one.rows.iter().map(|r| (r.id, r.hash)).collect::<Vec<_>>(),
        [(id3, parse_md5(H3).unwrap_or_default())]
    );
}

#[tokio::test]
async fn postgres_source_reads_settings_and_bans() {
    check_source(&pg().await).await;
}

#[tokio::test]
async fn mariadb_source_reads_settings_and_bans() {
    check_source(&maria().await).await;
}

#[tokio::test]
async fn sqlite_source_reads_settings_and_bans_and_skips_non_utf8() {
    let env = lite().await;
    check_source(&env).await;
    let source = env.source();
    // Only SQLite lets a non-UTF-8 value in.
    env.db
        .exec("DELETE FROM config WHERE name = 'image_ilink'")
        .await;
    env.db
        .exec("INSERT INTO config VALUES ('image_ilink', CAST(X'7B61FF7D' AS TEXT))")
        .await;
    let err = source
        .read_settings()
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.starts_with("image_ilink: value is not valid UTF-8"),
        "{err}"
    );
    let before = source.all_bans(100).await.expect("bans");
    env.db
        .exec("INSERT INTO image_bans (hash, reason) VALUES (X'FFFEFD', 'x')")
        .await;
    let after = source.all_bans(100).await.expect("bans");
    assert_eq!(
        (after.rows.len(), after.skipped),
        (before.rows.len(), before.skipped + 1)
    );
}

#[tokio::test]
async fn postgres_notification_wakes_the_wait() {
    let env = pg().await;
    let source = env.source();
    assert_eq!(
        source
            .wait_for_change(Duration::from_secs(5))
            .await
            .expect("listen"),
        Change::Subscribed
    );
    assert_eq!(
        source
            .wait_for_change(Duration::from_millis(100))
            .await
            .expect("wait"),
        Change::Timeout
    );

    // A Shimmie-style save (DELETE + INSERT + NOTIFY config in one transaction).
    let started = Instant::now();
    let (change, ()) = tokio::join!(source.wait_for_change(Duration::from_secs(20)), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        env.db.set_config("image_ilink", Some(T_B)).await;
    });
    let waited = started.elapsed();
    assert_eq!(
        change.expect("wait"),
        Change::Notified {
            channel: "config".into(),
            payload: String::new()
        }
    );
    assert!(
        waited < Duration::from_secs(20),
        "returned on the notification, not the timeout: {waited:?}"
    );
    eprintln!("postgres: NOTIFY config woke the wait after {waited:?} (write issued at 200ms)");
    assert_eq!(
        source
            .read_settings()
            .await
            .expect("settings")
            .image_ilink
            .as_deref(),
        Some(T_B)
    );

    // The older paheal channel, with the hash as payload.
    env.db.exec(&format!("NOTIFY shm_image_bans, '{H1}'")).await;
    let change = source
        .wait_for_change(Duration::from_secs(20))
        .await
        .expect("wait");
    assert_eq!(
        change,
        Change::Notified {
            channel: "shm_image_bans".into(),
            payload: H1.into()
        }
    );
}

#[tokio::test]
async fn polled_engines_wait_the_interval() {
    let env = lite().await;
    let source = env.source();
    env.db.set_config("image_ilink", Some(T_A)).await;
    let started = Instant::now();
    assert_eq!(
        source
            .wait_for_change(Duration::from_millis(150))
            .await
            .expect("wait"),
        Change::Timeout
    );
    assert!(started.elapsed() >= Duration::from_millis(150));
}

// ---------------------------------------------------------------- 200,000 bans

async fn check_bulk(env: &Env) {
    env.db.ban_many(200_000, 1).await;
    let source = env.source();
    let started = Instant::now();
    let all = source.all_bans(50_000).await.expect("all bans");
    let took = started.elapsed();
    let bans = Bans::new();
    bans.replace_all(all.rows.iter().map(|r| r.hash).collect());
    let total = started.elapsed();
    eprintln!(
        "{}: full load of 200,000 bans: {took:?} to read, {total:?} into the set ({} bytes)",
        env.engine,
        bans.heap_bytes()
    );
    assert_eq!(bans.len(), 200_000);
    assert!(bans.contains(&db::bulk_hash(1, 123_456)));
    let last = all.last_id.expect("last id");
    let next = source.bans_after(last, 50_000).await.expect("incremental");
    assert_eq!(
        next.read, 0,
        "an incremental poll with no new bans reads no rows"
    );

    // The query it runs is an index range scan starting after the cursor: with
    // nothing newer, it reads no rows at all.
    let sql = env.bans_after_sql();
    assert!(
        sql.starts_with("SELECT id, hash FROM image_bans WHERE id > "),
        "{sql}"
    );
    env.db.analyze().await;
    let plan = env.db.explain(sql, last, 50_000).await;
    eprintln!("{}: {sql}\n{plan}", env.engine);
    match env.engine {
        "postgres" => {
            assert_eq!(
                sql,
                "SELECT id, hash FROM image_bans WHERE id > $1 ORDER BY id LIMIT $2"
            );
            assert!(
                plan.contains("Index Scan using image_bans_pkey")
                    && plan.contains("Index Cond: (id > "),
                "{plan}"
            );
            assert!(
                plan.contains("Index Scan using image_bans_pkey on image_bans (actual rows=0"),
                "{plan}"
            );
        }
        "mysql" => assert!(plan.contains("type=range key=PRIMARY"), "{plan}"),
        _ => assert!(
            plan.contains("USING INTEGER PRIMARY KEY (rowid>?)"),
            "{plan}"
        ),
    }
}

#[tokio::test]
async fn postgres_loads_200k_bans() {
    check_bulk(&pg().await).await;
}

#[tokio::test]
async fn mariadb_loads_200k_bans() {
    check_bulk(&maria().await).await;
}

#[tokio::test]
async fn sqlite_loads_200k_bans() {
    check_bulk(&lite().await).await;
}

// ---------------------------------------------------------------- the service

async fn check_service(env: &Env) {
    let (logs, _guard) = Logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("sync.state");
    env.db.set_config("image_ilink", Some(T_A)).await;
    env.db.set_config("image_tlink", Some(TLINK)).await;
    env.db.ban(H1).await;
    // The default interval (500 ms); the bound: 1 s on PostgreSQL (NOTIFY for
    // settings, polling for bans), one interval (+ query time) on the others.
    let interval = SyncOptions::default().interval;
    let bound = if env.engine == "postgres" {
        Duration::from_secs(1)
    } else {
        interval + Duration::from_millis(500)
    };
    let opts = SyncOptions {
        full_reread: Duration::from_secs(2),
        state_path: Some(state.clone()),
        ..SyncOptions::default()
    };
    let r = run(env.source(), opts);
    let t = &r.target;
    let e = env.engine;

    assert!(
        eventually(Duration::from_secs(10), || t.ilink().as_deref()
            == Some(T_A))
        .await
        .is_some(),
        "{e}: first view"
    );
    let loaded = eventually(Duration::from_secs(5), || {
        t.bans.contains(H1) && t.purged(H1)
    })
    .await;
    assert!(loaded.is_some(), "{e}: the initial load bans and purges");
    let view = t.view.lock().clone().expect("view");
    assert!(view.template(Silo::Images).is_balanced());
    assert!(
        !view.template(Silo::Thumbs).is_balanced(),
        "a template without braces is unbalanced"
    );
    assert_eq!(r.status().view_version, 1);

    // A weight change.
    env.db.set_config("image_ilink", Some(T_B)).await;
    let took = eventually(bound * 3, || t.ilink().as_deref() == Some(T_B)).await;
    eprintln!("{e}: weight change reached the view in {took:?} (bound {bound:?})");
    assert!(
        took.is_some_and(|d| d <= bound),
        "{e}: weight change took {took:?}"
    );
    assert_eq!(r.status().view_version, 2);

    // A broken template: the view stays, the error is counted and logged.
    env.db.set_config("image_ilink", Some(BROKEN)).await;
    assert!(
        eventually(bound * 3, || r.status().template_errors == 1)
            .await
            .is_some(),
        "{e}: template error"
    );
    tokio::time::sleep(interval * 2).await;
    let s = r.status();
    assert_eq!(
        (s.view_version, s.template_errors),
        (2, 1),
        "{e}: counted once, view kept"
    );
    assert_eq!(t.ilink().as_deref(), Some(T_B));
    let msg = s.template_error.expect("current template error");
    assert!(msg.contains("image_ilink") && msg.contains(BROKEN), "{msg}");
    let log = logs.text();
    assert!(
        log.contains("ERROR") && log.contains("image_ilink") && log.contains(BROKEN),
        "{e}: log:\n{log}"
    );
    env.db.set_config("image_ilink", Some(T_B)).await;
    assert!(
        eventually(bound * 3, || r.status().template_error.is_none())
            .await
            .is_some(),
        "{e}: error clears"
    );
    assert_eq!(
        r.status().view_version,
        2,
        "{e}: same settings, no new view"
    );

    // A ban while serving: in the set and purged within the bound.
    env.db.ban(H2).await;
    let took = eventually(Duration::from_secs(5), || {
        t.bans.contains(H2) && t.purged(H2)
    })
    .await;
    eprintln!("{e}: new ban purged in {took:?}");
    assert!(took.is_some_and(|d| d <= bound), "{e}: ban took {took:?}");

    // An unban: servable again after the full re-read.
    env.db.unban(H1).await;
    let took = eventually(Duration::from_secs(6), || !t.bans.contains(H1)).await;
    eprintln!("{e}: unban seen in {took:?} (full re-read every 2s)");
    assert!(took.is_some(), "{e}: unban");
    assert!(t.bans.contains(H2));

    // The status and the state file follow at the end of the round.
    assert!(
        eventually(Duration::from_secs(5), || r.status().bans_known == 1)
            .await
            .is_some(),
        "{e}: {:?}",
        r.status()
    );
    let s = r.status();
    assert!(s.up && s.last_success.is_some(), "{e}: {s:?}");
    let saved = persist::load(&state)
        .expect("state file")
        .expect("state file exists");
    assert_eq!(saved.image_ilink.as_deref(), Some(T_B));
    assert_eq!(saved.bans, vec![parse_md5(H2).unwrap_or_default()]);
    r.shutdown().await;
}

#[tokio::test]
async fn postgres_service_swaps_views_and_purges_bans() {
    check_service(&pg().await).await;
}

#[tokio::test]
async fn mariadb_service_swaps_views_and_purges_bans() {
    check_service(&maria().await).await;
}

#[tokio::test]
async fn sqlite_service_swaps_views_and_purges_bans() {
    check_service(&lite().await).await;
}

// ---------------------------------------------------------------- faults

async fn check_restart(mut env: Env) {
    let e = env.engine;
    env.db.set_config("image_ilink", Some(T_A)).await;
    let interval = Duration::from_secs(1);
    let opts = SyncOptions {
        interval,
        ..SyncOptions::default()
    };
    let r = run(env.source(), opts);
    let t = Arc::clone(&r.target);
    assert!(
        eventually(Duration::from_secs(10), || r.status().up)
            .await
            .is_some(),
        "{e}: up"
    );
    assert_eq!(r.status().view_version, 1);

    let server = env.server.as_mut().expect("a server");
    server.kill();
    let down = eventually(Duration::from_secs(15), || !r.status().up).await;
    assert!(down.is_some(), "{e}: noticed the database is gone");
    let s = r.status();
    eprintln!("{e}: while down: {:?}", s.last_error);
    assert!(
        s.last_error.is_some() && s.view_version == 1 && t.ilink().as_deref() == Some(T_A),
        "{e}: view kept: {s:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !r.task.is_finished(),
        "{e}: the service never exits on database errors"
    );

    // Back, and a ban arrives before the service has reconnected.
    server.start();
    let back = Instant::now();
    env.db.ban(H3).await;
    let took = eventually(Duration::from_secs(15), || t.purged(H3)).await;
    eprintln!(
        "{e}: caught up {took:?} after the database came back ({:?} after restart)",
        back.elapsed()
    );
    assert!(took.is_some(), "{e}: catch-up");
    assert!(eventually(Duration::from_secs(5), || r.status().up)
        .await
        .is_some());
    assert_eq!(r.status().view_version, 1, "{e}: same settings, same view");
    r.shutdown().await;
}

#[tokio::test]
async fn postgres_killed_and_restarted() {
    check_restart(pg().await).await;
}

#[tokio::test]
async fn mariadb_killed_and_restarted() {
    check_restart(maria().await).await;
}

/// Database unreachable at start: serve the persisted view and bans, keep retrying,
/// catch up once the database is there.
#[tokio::test]
async fn sqlite_missing_at_start_uses_the_state_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("sync.state");
    let saved = persist::Snapshot::now(
        Some(T_A.into()),
        None,
        vec![parse_md5(H1).unwrap_or_default()],
    );
    persist::save(&state, &saved).expect("save");
    let path = dir.path().join("later.db");
    let dsn = format!("sqlite://{}", path.display());
    let opts = SyncOptions {
        interval: Duration::from_millis(300),
        state_path: Some(state.clone()),
        ..SyncOptions::default()
    };
    let r = run(shimmie::connect(&dsn).expect("lazy"), opts);
    let t = Arc::clone(&r.target);
    assert!(
        eventually(Duration::from_secs(5), || r.status().sync_errors > 0)
            .await
            .is_some()
    );
    let s = r.status();
    assert!(
        !s.up && s.restored_from_disk && s.view_version == 1,
        "{s:?}"
    );
    assert_eq!(t.ilink().as_deref(), Some(T_A));
    assert!(
        t.bans.contains(H1),
        "persisted bans are in force while the database is away"
    );
    assert!(
        !path.exists(),
        "the source never creates Shimmie's database"
    );

    let (db, _) = Shimmie::sqlite(&path).await;
    db.set_config("image_ilink", Some(T_B)).await;
    db.ban(H2).await;
    let took = eventually(Duration::from_secs(5), || {
        t.ilink().as_deref() == Some(T_B) && t.bans.contains(H2)
    })
    .await;
    eprintln!("sqlite: caught up {took:?} after the database appeared");
    assert!(took.is_some());
    assert!(
        !t.bans.contains(H1),
        "the full read replaces the persisted set"
    );
    assert!(eventually(Duration::from_secs(5), || r.status().up)
        .await
        .is_some());
    r.shutdown().await;
}

/// Same on PostgreSQL: a server that is down when the mirror starts.
#[tokio::test]
async fn postgres_down_at_start_then_back() {
    let mut env = pg().await;
    env.db.set_config("image_ilink", Some(T_B)).await;
    env.db.ban(H2).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("sync.state");
    persist::save(
        &state,
        &persist::Snapshot::now(Some(T_A.into()), None, Vec::new()),
    )
    .expect("save");
    let source = env.source();
    let server = env.server.as_mut().expect("server");
    server.stop();
    let opts = SyncOptions {
        interval: Duration::from_secs(1),
        state_path: Some(state),
        ..SyncOptions::default()
    };
    let r = run(source, opts);
    let t = Arc::clone(&r.target);
    assert!(
        eventually(Duration::from_secs(15), || r.status().sync_errors > 0)
            .await
            .is_some()
    );
    assert_eq!(
        t.ilink().as_deref(),
        Some(T_A),
        "serving the persisted view"
    );
    server.start();
    let took = eventually(Duration::from_secs(15), || {
        t.ilink().as_deref() == Some(T_B) && t.purged(H2)
    })
    .await;
    eprintln!("postgres: caught up {took:?} after the server started");
    assert!(took.is_some());
    r.shutdown().await;
}
