//! The Shimmie sync against real databases: private PostgreSQL and MariaDB servers
//! (tests/common/db.rs) and SQLite files, written to the way Shimmie writes.
//!
//! Every test runs on a current-thread runtime, so the sync service's task runs on
//! the test's thread and its log lines land in the test's own capture buffer.
//!
//! No test asserts on timing: latencies are printed (see `-- --nocapture`) and the
//! assertions are on state, waited for up to [`DEADLINE`] so that nothing hangs.

mod common;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use shimmer::fleet::{Algorithm, FleetSpec, FleetView, Silo};
use shimmer::object::Md5;
use shimmer::shimmie::{self, persist, Bans, Change, ShimmieSettings, Source, SourceError};
use shimmer::sync::{SyncOptions, SyncService, SyncStatus, SyncTarget};

use common::db::{self, DbServer, Shimmie};

const T_A: &str = "https://m-{a=5,b=5}.example.com/_images/$hash/$id%20-%20$tags.$ext";
const T_B: &str = "https://m-{a=1,b=9,c=10}.example.com/_images/$hash/$id%20-%20$tags.$ext";
const BROKEN: &str = "https://m-{a=1,b=2=3}.example.com/_images/$hash/x.jpg";
const TLINK: &str = "_thumbs/$hash/thumb.$ext";
const H1: &str = "e28e3076236eff37065d36416001263e";
const H2: &str = "d41d8cd98f00b204e9800998ecf8427e";
const H3: &str = "098f6bcd4621d373cade4e832627b4f6";

fn md5(hash: &str) -> u128 {
    parse(hash).to_u128()
}

fn parse(hash: &str) -> Md5 {
    Md5::parse(hash).expect("a valid md5")
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Not a bound on anything: a slow machine may take 100x the usual and still pass.
const DEADLINE: Duration = Duration::from_secs(60);

/// A measured latency for a printed line: `112 ms`.
fn shown(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

// ---------------------------------------------------------------- environments

struct Env {
    server: Option<DbServer>,
    _dir: Option<tempfile::TempDir>,
    db: Shimmie,
    dsn: String,
    engine: &'static str,
}

async fn served(server: DbServer, engine: &'static str) -> Env {
    let db = Shimmie::create(&server).await;
    let dsn = server.dsn();
    Env {
        server: Some(server),
        _dir: None,
        db,
        dsn,
        engine,
    }
}

async fn pg() -> Env {
    served(DbServer::postgres(), "postgres").await
}

async fn maria() -> Env {
    served(DbServer::mariadb(), "mysql").await
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

/// Default options with this poll interval and state file.
fn options(interval: Duration, state_path: Option<PathBuf>) -> SyncOptions {
    let mut opts = SyncOptions::default();
    (opts.interval, opts.state_path) = (interval, state_path);
    opts
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

/// One `#[tokio::test]` per engine for a check taking an [`Env`].
macro_rules! per_engine {
    ($check:ident: $($name:ident = $env:ident),+) => {
        $(#[tokio::test] async fn $name() { $check($env().await).await; })+
    };
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
    async fn purge(&self, hash: Md5) {
        self.purged.lock().push(hash.to_string());
    }
}

impl Recorder {
    fn ilink(&self) -> Option<String> {
        let installs = self.installs.lock();
        installs.last().and_then(|s| s.image_ilink.clone())
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
    let service = Arc::clone(&svc);
    let task = tokio::spawn(async move { service.run(watch).await });
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
        let ended = tokio::time::timeout(DEADLINE, self.task).await;
        assert!(ended.is_ok(), "the sync service did not stop on shutdown");
    }
}

/// Polls `probe` until true and returns how long that took: a measurement to print,
/// never to assert on. Panics naming `what` if it is still false after [`DEADLINE`].
async fn eventually(what: &str, mut probe: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    let seen = common::eventually_async(DEADLINE, || {
        let now = probe();
        async move { now.then_some(()) }
    });
    assert!(seen.await.is_some(), "{what}: never happened");
    start.elapsed()
}

/// Waits until the service has finished `n` more successful rounds (its
/// `last_success` moved `n` times): how a test knows later polls have seen a state,
/// instead of sleeping for a few intervals and hoping they ran.
async fn rounds(r: &Running, n: u32) {
    let mut last = r.status().last_success;
    let mut moved = 0;
    eventually("more sync rounds", || {
        let now = r.status().last_success;
        if now != last {
            (last, moved) = (now, moved + 1);
        }
        moved >= n
    })
    .await;
}

/// Waits until the service has failed `n` more rounds, so it is known to have kept
/// trying.
async fn failed_rounds(r: &Running, n: u64) {
    let target = r.status().sync_errors + n;
    eventually("more failed rounds", || r.status().sync_errors >= target).await;
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
            .finish();
        (logs.clone(), tracing::subscriber::set_default(subscriber))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}

// ---------------------------------------------------------------- source checks

async fn settings(source: &dyn Source) -> ShimmieSettings {
    source.read_settings().await.expect("settings")
}

async fn check_source(env: Env) {
    let (source, e) = (env.source(), env.engine);
    assert_eq!(source.engine(), e);

    // Absent rows: both None (unbalanced).
    assert_eq!(settings(&*source).await, ShimmieSettings::default());

    env.db.set_config("image_ilink", Some(T_A)).await;
    env.db.set_config("image_tlink", Some(TLINK)).await;
    let s = settings(&*source).await;
    assert_eq!(s.image_ilink.as_deref(), Some(T_A));
    assert_eq!(s.image_tlink.as_deref(), Some(TLINK));

    // NULL is absent, as Shimmie reads it.
    env.db.set_config("image_tlink", None).await;
    assert_eq!(settings(&*source).await.image_tlink, None);

    // An absurdly long template is refused, naming the key.
    let long = format!("https://{{a,b}}.example.com/{}", "x".repeat(20_000));
    env.db.set_config("image_ilink", Some(&long)).await;
    match source.read_settings().await {
        Err(SourceError::BadValue { key, reason }) => {
            assert!(key == "image_ilink" && reason.contains("limit"), "{reason}")
        }
        other => panic!("{e}: long template: {other:?}"),
    }
    env.db.set_config("image_ilink", Some(T_A)).await;

    // Bans: two valid (one in upper case), two malformed; read in pages of 2.
    let bad = "INSERT INTO image_bans (hash, reason) VALUES";
    env.db.ban(H1).await;
    env.db
        .exec(&format!("{bad} ('not-a-hash-at-all-not-a-hash-at!', 'x')"))
        .await;
    env.db.exec(&format!("{bad} ('abc', 'x')")).await;
    env.db.ban(&H2.to_uppercase()).await;
    let all = source.all_bans(2).await.expect("all bans");
    let got: Vec<u128> = all.rows.iter().map(|r| r.hash.to_u128()).collect();
    assert_eq!(got, [md5(H1), md5(H2)], "{e}");
    assert_eq!((all.read, all.skipped), (4, 2), "{e}");
    let last = all.last_id.expect("last id");

    // Incremental: nothing after the last id, then exactly the new row.
    let none = source.bans_after(last, 1000).await.expect("bans after");
    assert_eq!((none.read, none.last_id), (0, None), "{e}");
    let id3 = env.db.ban(H3).await;
    let one = source.bans_after(last, 1000).await.expect("bans after");
    let rows: Vec<(i64, u128)> = one.rows.iter().map(|r| (r.id, r.hash.to_u128())).collect();
    assert_eq!(rows, [(id3, md5(H3))], "{e}");
}

per_engine!(check_source:
    postgres_source_reads_settings_and_bans = pg,
    mariadb_source_reads_settings_and_bans = maria,
    sqlite_source_reads_settings_and_bans = lite);

#[tokio::test]
async fn sqlite_non_utf8_values_are_reported_not_fatal() {
    let env = lite().await;
    let source = env.source();
    // Only SQLite lets bytes that are not UTF-8 into a TEXT column.
    let value = "CAST(X'7B61FF7D' AS TEXT)";
    env.db
        .exec(&format!(
            "INSERT INTO config VALUES ('image_ilink', {value})"
        ))
        .await;
    let err = source.read_settings().await.err().map(|e| e.to_string());
    let err = err.unwrap_or_default();
    assert!(err.starts_with("image_ilink: value is not valid UTF-8"));
    env.db.ban(H1).await;
    env.db
        .exec("INSERT INTO image_bans (hash, reason) VALUES (X'FFFEFD', 'x')")
        .await;
    let all = source.all_bans(100).await.expect("bans");
    assert_eq!((all.rows.len(), all.skipped), (1, 1));
}

#[tokio::test]
async fn postgres_notification_wakes_the_wait() {
    let env = pg().await;
    let source = env.source();
    let wait = |limit| source.wait_for_change(limit);
    assert_eq!(wait(DEADLINE).await.expect("listen"), Change::Subscribed);
    assert_eq!(wait(ms(100)).await.expect("wait"), Change::Timeout);

    // A Shimmie-style save (DELETE + INSERT + NOTIFY config in one transaction).
    let started = Instant::now();
    let (change, ()) = tokio::join!(wait(DEADLINE), async {
        // Part of what is tested: the write lands while the wait is already blocked.
        tokio::time::sleep(ms(200)).await;
        env.db.set_config("image_ilink", Some(T_B)).await;
    });
    let waited = shown(started.elapsed());
    let config = Change::Notified {
        channel: "config".into(),
        payload: String::new(),
    };
    // Notified, not the deadline's Timeout: the notification woke the wait.
    assert_eq!(change.expect("wait"), config);
    eprintln!("postgres: NOTIFY config woke the wait after {waited} (written at 200 ms)");
    assert_eq!(settings(&*source).await.image_ilink.as_deref(), Some(T_B));

    // The older paheal channel, with the hash as payload.
    env.db.exec(&format!("NOTIFY shm_image_bans, '{H1}'")).await;
    let change = wait(DEADLINE).await.expect("wait");
    let bans = Change::Notified {
        channel: "shm_image_bans".into(),
        payload: H1.into(),
    };
    assert_eq!(change, bans);
}

#[tokio::test]
async fn polled_engines_wait_the_interval() {
    let env = lite().await;
    let source = env.source();
    env.db.set_config("image_ilink", Some(T_A)).await;
    // Only the interval ends the wait, not a change (an hour here, cut short by the test).
    let hour = Duration::from_secs(3600);
    let cut = tokio::time::timeout(ms(100), source.wait_for_change(hour)).await;
    assert!(cut.is_err(), "a polled source returned early: {cut:?}");
    let started = Instant::now();
    assert_eq!(
        source.wait_for_change(ms(150)).await.expect("wait"),
        Change::Timeout
    );
    let waited = shown(started.elapsed());
    eprintln!("sqlite: a 150 ms wait_for_change returned Timeout after {waited}");
}

// ---------------------------------------------------------------- 200,000 bans

async fn check_bulk(env: Env) {
    let e = env.engine;
    env.db.ban_many(200_000, 1).await;
    env.db.analyze().await;
    let source = env.source();
    let started = Instant::now();
    let all = source.all_bans(50_000).await.expect("all bans");
    let read = shown(started.elapsed());
    let bans = Bans::new();
    bans.replace_all(all.rows.iter().map(|r| r.hash.to_u128()).collect());
    let total = shown(started.elapsed());
    let bytes = bans.heap_bytes();
    eprintln!("{e}: 200,000 bans: read in {read}, in the set after {total} ({bytes} bytes)");
    assert_eq!(bans.len(), 200_000);
    assert!(bans.contains(parse(&db::bulk_hash(1, 123_456))));
    let last = all.last_id.expect("last id");
    let next = source.bans_after(last, 50_000).await.expect("incremental");
    assert_eq!(next.read, 0, "a poll with no new bans reads no rows");

    // The query it runs is an index range scan starting after the cursor: with
    // nothing newer, it reads no rows at all.
    let sql = env.bans_after_sql();
    assert!(sql.starts_with("SELECT id, hash FROM image_bans WHERE id > "));
    let plan = env.db.explain(sql, last, 50_000).await;
    eprintln!("{e}: {sql}\n{plan}");
    let pg_sql = "SELECT id, hash FROM image_bans WHERE id > $1 ORDER BY id LIMIT $2";
    let pg_scan = "Index Scan using image_bans_pkey on image_bans (actual rows=0 loops=1)";
    match e {
        "postgres" => assert!(sql == pg_sql && plan.contains(pg_scan), "{plan}"),
        "mysql" => assert!(plan.contains("type=range key=PRIMARY"), "{plan}"),
        _ => assert!(plan.contains("PRIMARY KEY (rowid>?)"), "{plan}"),
    }
}

per_engine!(check_bulk:
    postgres_loads_200k_bans = pg,
    mariadb_loads_200k_bans = maria,
    sqlite_loads_200k_bans = lite);

// ---------------------------------------------------------------- the service

async fn check_service(env: Env) {
    let (logs, _guard) = Logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("sync.state");
    env.db.set_config("image_ilink", Some(T_A)).await;
    env.db.set_config("image_tlink", Some(TLINK)).await;
    env.db.ban(H1).await;
    // The default interval (500 ms). The targets, printed next to the measurements
    // (not asserted: a slow machine may miss them): 1 s on PostgreSQL (NOTIFY for
    // settings, polling for bans), one interval (+ query time) on the others.
    let interval = SyncOptions::default().interval;
    let target = shown(match env.engine {
        "postgres" => Duration::from_secs(1),
        _ => interval + ms(500),
    });
    let full_reread = Duration::from_secs(2);
    let mut opts = options(interval, Some(state.clone()));
    opts.full_reread = full_reread;
    let r = run(env.source(), opts);
    let (t, e) = (&r.target, env.engine);

    eventually("first view", || t.ilink().as_deref() == Some(T_A)).await;
    let loaded = || t.bans.contains(parse(H1)) && t.purged(H1);
    eventually("initial ban load and purge", loaded).await;
    let view = t.view.lock().clone().expect("view");
    assert!(view.template(Silo::Images).is_balanced());
    assert!(!view.template(Silo::Thumbs).is_balanced(), "no braces");
    assert_eq!(r.status().view_version, 1);

    // A weight change.
    env.db.set_config("image_ilink", Some(T_B)).await;
    let changed = || t.ilink().as_deref() == Some(T_B);
    let took = shown(eventually("weight change", changed).await);
    eprintln!("{e}: weight change seen after {took} (target {target})");
    assert_eq!(
        r.status().view_version,
        2,
        "{e}: one new view for one change"
    );

    // A broken template: the view stays, the error is counted and logged.
    env.db.set_config("image_ilink", Some(BROKEN)).await;
    eventually("template error", || r.status().template_errors == 1).await;
    rounds(&r, 2).await;
    let s = r.status();
    // Counted once, however many polls see it.
    assert_eq!((s.view_version, s.template_errors), (2, 1), "{e}");
    assert_eq!(t.ilink().as_deref(), Some(T_B), "{e}: the old view stays");
    let msg = s.template_error.expect("current template error");
    assert!(msg.contains("image_ilink") && msg.contains(BROKEN), "{msg}");
    let log = logs.text();
    let error_line = |l: &str| l.contains("ERROR") && l.contains(BROKEN);
    let logged = log.lines().any(error_line);
    assert!(logged && log.contains("image_ilink"), "{e}: log:\n{log}");
    env.db.set_config("image_ilink", Some(T_B)).await;
    let cleared = || r.status().template_error.is_none();
    eventually("error clears", cleared).await;
    assert_eq!(r.status().view_version, 2, "{e}: same settings, same view");

    // A ban while serving: in the set and purged.
    env.db.ban(H2).await;
    let banned = || t.bans.contains(parse(H2)) && t.purged(H2);
    let took = shown(eventually("ban", banned).await);
    eprintln!("{e}: new ban in force and purged after {took} (target {target})");

    // An unban: servable again after the full re-read.
    env.db.unban(H1).await;
    let took = shown(eventually("unban", || !t.bans.contains(parse(H1))).await);
    eprintln!("{e}: unban seen after {took} (full re-read every {full_reread:?})");
    assert!(t.bans.contains(parse(H2)));

    // The status and the state file follow at the end of the round.
    eventually("status", || r.status().bans_known == 1).await;
    let s = r.status();
    assert!(s.up && s.last_success.is_some(), "{e}: {s:?}");
    let saved = persist::load(&state)
        .expect("state file")
        .expect("state file exists");
    assert_eq!(saved.image_ilink.as_deref(), Some(T_B));
    assert_eq!(saved.bans, vec![md5(H2)]);
    r.shutdown().await;
}

per_engine!(check_service:
    postgres_service_swaps_views_and_purges_bans = pg,
    mariadb_service_swaps_views_and_purges_bans = maria,
    sqlite_service_swaps_views_and_purges_bans = lite);

// ---------------------------------------------------------------- faults

async fn check_restart(mut env: Env) {
    let e = env.engine;
    env.db.set_config("image_ilink", Some(T_A)).await;
    let r = run(env.source(), options(Duration::from_secs(1), None));
    let t = Arc::clone(&r.target);
    eventually("up", || r.status().up).await;
    assert_eq!(r.status().view_version, 1);

    let server = env.server.as_mut().expect("a server");
    server.kill();
    eventually("noticed the database is gone", || !r.status().up).await;
    let s = r.status();
    eprintln!("{e}: while down: {:?}", s.last_error);
    assert!(s.last_error.is_some() && s.view_version == 1, "{e}: {s:?}");
    assert_eq!(t.ilink().as_deref(), Some(T_A), "{e}: the view stays");
    failed_rounds(&r, 2).await;
    assert!(!r.task.is_finished(), "{e}: never exits on database errors");

    // Back, and a ban arrives before the service has reconnected.
    server.start();
    let back = Instant::now();
    env.db.ban(H3).await;
    let took = shown(eventually("catch-up", || t.purged(H3)).await);
    let since = shown(back.elapsed());
    eprintln!("{e}: caught up {took} after the ban, {since} after the restart");
    eventually("up again", || r.status().up).await;
    assert_eq!(r.status().view_version, 1, "{e}: same settings, same view");
    r.shutdown().await;
}

per_engine!(check_restart:
    postgres_killed_and_restarted = pg,
    mariadb_killed_and_restarted = maria);

/// Database unreachable at start: serve the persisted view and bans, keep retrying,
/// catch up once the database is there.
#[tokio::test]
async fn sqlite_missing_at_start_uses_the_state_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("sync.state");
    let saved = persist::Snapshot::now(Some(T_A.into()), None, vec![md5(H1)]);
    persist::save(&state, &saved).expect("save");
    let path = dir.path().join("later.db");
    let dsn = format!("sqlite://{}", path.display());
    let opts = options(ms(300), Some(state.clone()));
    let r = run(shimmie::connect(&dsn).expect("lazy"), opts);
    let t = Arc::clone(&r.target);
    eventually("first failure", || r.status().sync_errors > 0).await;
    let s = r.status();
    let restored = !s.up && s.restored_from_disk && s.view_version == 1;
    assert!(restored, "{s:?}");
    assert_eq!(t.ilink().as_deref(), Some(T_A));
    // Persisted bans are in force while the database is away.
    assert!(t.bans.contains(parse(H1)));
    assert!(
        !path.exists(),
        "the source never creates Shimmie's database"
    );

    let (db, _) = Shimmie::sqlite(&path).await;
    db.set_config("image_ilink", Some(T_B)).await;
    db.ban(H2).await;
    let caught_up = || t.ilink().as_deref() == Some(T_B) && t.bans.contains(parse(H2));
    let took = shown(eventually("catch-up", caught_up).await);
    eprintln!("sqlite: caught up {took} after the database appeared");
    assert!(
        !t.bans.contains(parse(H1)),
        "the full read replaces the saved set"
    );
    eventually("up", || r.status().up).await;
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
    let saved = persist::Snapshot::now(Some(T_A.into()), None, Vec::new());
    persist::save(&state, &saved).expect("save");
    let source = env.source();
    let server = env.server.as_mut().expect("server");
    server.stop();
    let r = run(source, options(Duration::from_secs(1), Some(state)));
    let t = Arc::clone(&r.target);
    eventually("first failure", || r.status().sync_errors > 0).await;
    assert_eq!(t.ilink().as_deref(), Some(T_A), "the persisted view");
    server.start();
    let caught_up = || t.ilink().as_deref() == Some(T_B) && t.purged(H2);
    let took = shown(eventually("catch-up", caught_up).await);
    eprintln!("postgres: caught up {took} after the server started");
    r.shutdown().await;
}
