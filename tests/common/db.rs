//! Private database servers for integration tests: a PostgreSQL or MariaDB of the
//! machine's Debian packages (`make deps` installs them), initialised into a temp
//! directory, listening on a free 127.0.0.1 port, stopped and removed on drop.
//!
//! Root: CI runs the tests as root, and both servers refuse to run as root. When the
//! test process is root, the server (and initdb / mariadb-install-db) runs as the
//! account its Debian package created (`postgres`, `mysql`; `nobody` if missing),
//! via `Command::uid/gid` (no `su`/`runuser`: nothing to quote, no PAM), and its temp
//! directory is chowned to that account. As any other user, they run as that user.
//!
//! Each server gets PR_SET_PDEATHSIG, so even a test process killed with SIGKILL
//! leaves no server behind. The signal fires when the *thread* that started the
//! server exits: start servers from the test's own thread, not a spawned one.
//!
//! [`Shimmie`] writes the way Shimmie does (settings: DELETE + INSERT + NOTIFY in one
//! transaction; bans: INSERT ... now()).
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, Row};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    MariaDb,
}

/// A running (or stopped, between [`DbServer::stop`] and [`DbServer::start`]) server.
pub struct DbServer {
    pub kind: Kind,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    run_as: Option<(u32, u32)>,
    bin: PathBuf,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// uid and gid of `name`, if that account exists.
fn account(name: &str) -> Option<(u32, u32)> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam with a valid C string; the result is read before any other call.
    unsafe {
        let pw = libc::getpwnam(c.as_ptr());
        (!pw.is_null()).then(|| ((*pw).pw_uid, (*pw).pw_gid))
    }
}

fn run_as(preferred: &str) -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    Some(
        account(preferred)
            .or_else(|| account("nobody"))
            .expect("no account to run the database as"),
    )
}

/// The newest PostgreSQL server's bin dir (Debian: /usr/lib/postgresql/<ver>/bin).
fn pg_bindir() -> PathBuf {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let ver = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((ver, bin))
        })
        .collect();
    dirs.sort();
    if let Some((_, bin)) = dirs.pop() {
        return bin;
    }
    which("postgres")
        .and_then(|p| p.parent().map(Path::to_owned))
        .expect("PostgreSQL server not found: run `make deps` (Debian package postgresql)")
}

fn which(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

fn command(bin: &Path, run_as: Option<(u32, u32)>, log: &Path) -> Command {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the server log");
    let err = out.try_clone().expect("clone the log handle");
    let mut cmd = Command::new(bin);
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .env("LC_ALL", "C");
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid);
    }
    // SAFETY: prctl is async-signal-safe; it runs in the child after fork.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd
}

impl DbServer {
    /// initdb (superuser `shimmie`, trust auth, UTF8) and start a private PostgreSQL.
    pub fn postgres() -> DbServer {
        let bin = pg_bindir().join("postgres");
        let server = DbServer::prepare(Kind::Postgres, "shimmer-pg-", run_as("postgres"), bin);
        let status = command(
            &server.bin.with_file_name("initdb"),
            server.run_as,
            &server.log(),
        )
        .args([
            "-U",
            "shimmie",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "-D",
        ])
        .arg(server.data())
        .status()
        .expect("run initdb");
        assert!(status.success(), "initdb failed:\n{}", server.log_text());
        server.started()
    }

    /// mariadb-install-db (root@127.0.0.1 without password) and start a private MariaDB.
    pub fn mariadb() -> DbServer {
        let mariadbd = which("mariadbd")
            .or_else(|| which("mysqld"))
            .expect("MariaDB server not found: run `make deps` (Debian package mariadb-server)");
        let install = which("mariadb-install-db")
            .or_else(|| which("mysql_install_db"))
            .expect("mariadb-install-db not found (Debian package mariadb-server)");
        let server = DbServer::prepare(Kind::MariaDb, "shimmer-my-", run_as("mysql"), mariadbd);
        // A private tmpdir: parallel bootstraps sharing /tmp trip over each other's
        // temporary tables ("Unknown table 'mysql.tmp_user_sys'").
        let tmp = server.dir.path().join("tmp");
        std::fs::create_dir(&tmp).expect("create tmpdir");
        if let Some((uid, gid)) = server.run_as {
            std::os::unix::fs::chown(&tmp, Some(uid), Some(gid)).expect("chown tmpdir");
        }
        let status = command(&install, server.run_as, &server.log())
            .arg("--no-defaults")
            .arg(format!("--datadir={}", server.data().display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ])
            .status()
            .expect("run mariadb-install-db");
        assert!(
            status.success(),
            "mariadb-install-db failed:\n{}",
            server.log_text()
        );
        std::fs::write(
            server.dir.path().join("init.sql"),
            "CREATE DATABASE IF NOT EXISTS shimmie;\n",
        )
        .expect("write init.sql");
        server.started()
    }

    fn prepare(kind: Kind, prefix: &str, run_as: Option<(u32, u32)>, bin: PathBuf) -> DbServer {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("temp dir");
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the temp dir");
        }
        DbServer {
            kind,
            dir,
            port: free_port(),
            child: None,
            run_as,
            bin,
        }
    }

    fn started(mut self) -> DbServer {
        self.start();
        self
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// The DSN of Shimmie's database on this server.
    pub fn dsn(&self) -> String {
        match self.kind {
            Kind::Postgres => format!("postgres://shimmie@127.0.0.1:{}/shimmie", self.port),
            Kind::MariaDb => format!("mysql://root@127.0.0.1:{}/shimmie", self.port),
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Starts the server (again) on the same port and data dir; waits until it
    /// accepts queries. Retries while a killed predecessor's leftovers go away.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut child = self.spawn();
            match self.wait_ready(&mut child, deadline) {
                Ok(()) => {
                    self.child = Some(child);
                    return;
                }
                Err(why) if Instant::now() < deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    eprintln!("{:?} did not start ({why}); retrying", self.kind);
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "{:?} did not start: {why}; its log:\n{}",
                        self.kind,
                        self.log_text()
                    );
                }
            }
        }
    }

    fn spawn(&self) -> Child {
        let dir = self.dir.path();
        let mut cmd = command(&self.bin, self.run_as, &self.log());
        match self.kind {
            Kind::Postgres => {
                cmd.arg("-D").arg(self.data()).arg("-k").arg(dir).args([
                    "-p",
                    &self.port.to_string(),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    // Survives a killed server (the tests kill it), not a killed machine.
                    "fsync=off",
                    "-c",
                    "full_page_writes=off",
                ]);
            }
            Kind::MariaDb => {
                cmd.arg("--no-defaults")
                    .arg(format!("--datadir={}", self.data().display()))
                    .arg(format!("--socket={}", dir.join("mysqld.sock").display()))
                    .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
                    .arg(format!("--init-file={}", dir.join("init.sql").display()))
                    .arg(format!("--tmpdir={}", dir.join("tmp").display()))
                    .arg(format!("--port={}", self.port))
                    .args([
                        "--bind-address=127.0.0.1",
                        "--skip-networking=0",
                        "--skip-name-resolve",
                        "--innodb-buffer-pool-size=64M",
                        "--innodb-flush-log-at-trx-commit=2",
                        "--innodb-doublewrite=0",
                    ]);
            }
        }
        cmd.spawn().expect("start the database server")
    }

    fn wait_ready(&self, child: &mut Child, deadline: Instant) -> Result<(), String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited with {status}"));
            }
            let listening = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
            // PostgreSQL listens before it accepts queries (recovery after a kill).
            let ready = listening
                && (self.kind != Kind::Postgres
                    || Command::new(self.bin.with_file_name("pg_isready"))
                        .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                        .status()
                        .is_ok_and(|s| s.success()));
            if ready {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("not ready in time".into())
    }

    /// Stops the server the clean way (PostgreSQL: SIGINT, "fast" shutdown, since its
    /// SIGTERM waits for clients to leave; MariaDB: SIGTERM), SIGKILL after 15 s.
    pub fn stop(&mut self) {
        let sig = match self.kind {
            Kind::Postgres => libc::SIGINT,
            Kind::MariaDb => libc::SIGTERM,
        };
        self.signal_and_reap(sig, Duration::from_secs(15));
    }

    /// Kills the server outright, as a crash would.
    pub fn kill(&mut self) {
        self.signal_and_reap(libc::SIGKILL, Duration::from_secs(15));
    }

    fn signal_and_reap(&mut self, sig: i32, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as i32, sig);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for DbServer {
    fn drop(&mut self) {
        self.stop();
        // The TempDir removes the directory after this.
    }
}

/// An admin connection to Shimmie's database that writes the way Shimmie does.
pub enum Shimmie {
    Pg(PgPool),
    My(MySqlPool),
    Lite(SqlitePool),
}

/// Runs `$body` with `$p` bound to this connection's pool; the body is type-checked
/// once per engine.
macro_rules! with_pool {
    ($db:expr, $p:ident => $body:expr) => {
        match $db {
            Shimmie::Pg($p) => $body,
            Shimmie::My($p) => $body,
            Shimmie::Lite($p) => $body,
        }
    };
}

/// Shimmie's two tables as SHIMMIE.md gives them; only `image_bans.id` differs.
const CONFIG_TABLE: &str =
    "CREATE TABLE config(name VARCHAR(128) NOT NULL, value TEXT, PRIMARY KEY (name))";
const BANS_TABLE: &str = "CREATE TABLE image_bans(id {ID}, hash CHAR(32) NOT NULL, \
     date TIMESTAMP DEFAULT CURRENT_TIMESTAMP, reason TEXT NOT NULL)";

impl Shimmie {
    /// Creates the `shimmie` database (PostgreSQL; MariaDB's init file does it) and
    /// Shimmie's two tables.
    pub async fn create(server: &DbServer) -> Shimmie {
        if server.kind == Kind::Postgres {
            let admin = format!("postgres://shimmie@127.0.0.1:{}/postgres", server.port());
            let pool = PgPool::connect(&admin).await.expect("connect to postgres");
            let created = sqlx::query("CREATE DATABASE shimmie").execute(&pool).await;
            created.expect("create database");
            pool.close().await;
        }
        let db = Shimmie::connect(&server.dsn()).await;
        db.create_schema().await;
        db
    }

    /// A SQLite file with Shimmie's schema, and the DSN to give the source.
    pub async fn sqlite(path: &Path) -> (Shimmie, String) {
        let dsn = format!("sqlite://{}", path.display());
        let db = Shimmie::connect(&dsn).await;
        db.create_schema().await;
        (db, dsn)
    }

    pub async fn connect(dsn: &str) -> Shimmie {
        let wait = Duration::from_secs(20);
        if dsn.starts_with("postgres") {
            let opts = PgConnectOptions::from_str(dsn).expect("dsn");
            let pool = PgPoolOptions::new()
                .acquire_timeout(wait)
                .connect_with(opts);
            Shimmie::Pg(pool.await.expect("connect"))
        } else if dsn.starts_with("mysql") {
            let opts = MySqlConnectOptions::from_str(dsn).expect("dsn");
            let pool = MySqlPoolOptions::new()
                .acquire_timeout(wait)
                .connect_with(opts);
            Shimmie::My(pool.await.expect("connect"))
        } else {
            let opts = SqliteConnectOptions::from_str(dsn).expect("dsn");
            let pool = SqlitePoolOptions::new().max_connections(1);
            Shimmie::Lite(
                pool.connect_with(opts.create_if_missing(true))
                    .await
                    .expect("connect"),
            )
        }
    }

    async fn create_schema(&self) {
        let id = match self {
            Shimmie::Pg(_) => "INTEGER NOT NULL PRIMARY KEY GENERATED ALWAYS AS IDENTITY",
            Shimmie::My(_) => "INTEGER PRIMARY KEY auto_increment",
            Shimmie::Lite(_) => "INTEGER PRIMARY KEY AUTOINCREMENT",
        };
        self.exec(CONFIG_TABLE).await;
        self.exec(&BANS_TABLE.replace("{ID}", id)).await;
    }

    /// SQL written with `?` placeholders, numbered `$1, $2, ...` for PostgreSQL.
    fn sql(&self, text: &str) -> AssertSqlSafe<String> {
        let Shimmie::Pg(_) = self else {
            return AssertSqlSafe(text.to_owned());
        };
        let mut out = String::new();
        for (n, part) in text.split('?').enumerate() {
            if n > 0 {
                out.push_str(&format!("${n}"));
            }
            out.push_str(part);
        }
        AssertSqlSafe(out)
    }

    /// Runs one statement (test-controlled SQL, e.g. to write malformed rows).
    pub async fn exec(&self, sql: &str) {
        let sql = AssertSqlSafe(sql.to_owned());
        with_pool!(self, p => sqlx::query(sql).execute(p).await.map(|_| ())).expect("statement");
    }

    /// Saves a setting as Shimmie does: DELETE + INSERT (+ NOTIFY config on
    /// PostgreSQL; a no-op elsewhere) in one transaction.
    pub async fn set_config(&self, name: &str, value: Option<&str>) {
        let delete = self.sql("DELETE FROM config WHERE name = ?");
        let insert = self.sql("INSERT INTO config(name, value) VALUES(?, ?)");
        let notify = matches!(self, Shimmie::Pg(_));
        with_pool!(self, p => {
            let mut tx = p.begin().await.expect("begin");
            let q = sqlx::query(delete).bind(name);
            q.execute(&mut *tx).await.expect("delete");
            let q = sqlx::query(insert).bind(name).bind(value);
            q.execute(&mut *tx).await.expect("insert");
            if notify {
                sqlx::query("NOTIFY config").execute(&mut *tx).await.expect("notify");
            }
            tx.commit().await.expect("commit");
        })
    }

    /// Bans a hash as Shimmie does; returns the new row's id.
    pub async fn ban(&self, hash: &str) -> i64 {
        // Shimmie registers now() as a SQLite function; CURRENT_TIMESTAMP is the same.
        let now = if let Shimmie::Lite(_) = self {
            "CURRENT_TIMESTAMP"
        } else {
            "now()"
        };
        let insert = format!("INSERT INTO image_bans (hash, reason, date) VALUES (?, ?, {now})");
        let insert = self.sql(&insert);
        let newest = self.sql("SELECT id FROM image_bans WHERE hash = ? ORDER BY id DESC LIMIT 1");
        with_pool!(self, p => {
            sqlx::query(insert).bind(hash).bind("test").execute(p).await.expect("ban");
            let row = sqlx::query(newest).bind(hash).fetch_one(p).await.expect("ban id");
            row.try_get::<i64, _>(0).or_else(|_| row.try_get::<i32, _>(0).map(i64::from))
        })
        .expect("ban id")
    }

    /// Unbans as Shimmie does: deletes every row for the hash.
    pub async fn unban(&self, hash: &str) {
        let delete = self.sql("DELETE FROM image_bans WHERE hash = ?");
        with_pool!(self, p => sqlx::query(delete).bind(hash).execute(p).await.map(|_| ()))
            .expect("unban");
    }

    /// Inserts `n` bans with distinct pseudo-random hashes, 1,000 rows a statement.
    pub async fn ban_many(&self, n: usize, seed: u64) {
        for start in (0..n).step_by(1000) {
            let values: Vec<String> = (start..(start + 1000).min(n))
                .map(|i| format!("('{}', 'bulk', CURRENT_TIMESTAMP)", bulk_hash(seed, i)))
                .collect();
            let values = values.join(",");
            self.exec(&format!(
                "INSERT INTO image_bans (hash, reason, date) VALUES {values}"
            ))
            .await;
        }
    }

    /// Vacuums and refreshes the planner's statistics, as a live database's
    /// autovacuum would have (PostgreSQL's first read after a bulk insert otherwise
    /// also writes every page, setting hint bits).
    pub async fn analyze(&self) {
        match self {
            Shimmie::Pg(_) => self.exec("VACUUM ANALYZE image_bans").await,
            Shimmie::My(_) => self.exec("ANALYZE TABLE image_bans").await,
            Shimmie::Lite(_) => self.exec("ANALYZE image_bans").await,
        }
    }

    /// The plan of `sql` (a ban query with two placeholders) from the engine's EXPLAIN.
    pub async fn explain(&self, sql: &str, after_id: i64, limit: i64) -> String {
        let explain = match self {
            Shimmie::Pg(_) => "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF)",
            Shimmie::My(_) => "EXPLAIN",
            Shimmie::Lite(_) => "EXPLAIN QUERY PLAN",
        };
        let query = AssertSqlSafe(format!("{explain} {sql}"));
        let lines: Vec<String> = with_pool!(self, p => {
            let q = sqlx::query(query).bind(after_id).bind(limit);
            let rows = q.fetch_all(p).await.expect("explain");
            rows.iter().map(|r| plan_line(self, r)).collect()
        });
        lines.join("\n")
    }
}

/// Shimmie's `images` (core columns) and ext/s3's `s3_sync_queue`, as SHIMMIE.md gives
/// them; `{ID}` and `{IP}` differ by engine.
const IMAGES_TABLE: &str = "CREATE TABLE images(id {ID}, owner_id INTEGER NOT NULL, \
     owner_ip {IP} NOT NULL, filename VARCHAR(64) NOT NULL, filesize INTEGER NOT NULL, \
     hash CHAR(32) UNIQUE NOT NULL, ext CHAR(4) NOT NULL, source VARCHAR(255), \
     width INTEGER NOT NULL, height INTEGER NOT NULL, \
     posted TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)";
const S3_QUEUE_TABLE: &str = "CREATE TABLE s3_sync_queue(hash CHAR(32) NOT NULL PRIMARY KEY, \
     time TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, action CHAR(1) NOT NULL DEFAULT 'S')";

impl Shimmie {
    /// Creates `images` (every Shimmie has it) and, with `s3_queue`, ext/s3's
    /// `s3_sync_queue`.
    pub async fn create_posts_tables(&self, s3_queue: bool) {
        let (id, ip) = match self {
            Shimmie::Pg(_) => (
                "INTEGER NOT NULL PRIMARY KEY GENERATED ALWAYS AS IDENTITY",
                "INET",
            ),
            Shimmie::My(_) => ("INTEGER PRIMARY KEY auto_increment", "CHAR(15)"),
            Shimmie::Lite(_) => ("INTEGER PRIMARY KEY AUTOINCREMENT", "CHAR(15)"),
        };
        self.exec(&IMAGES_TABLE.replace("{ID}", id).replace("{IP}", ip))
            .await;
        if s3_queue {
            self.exec(S3_QUEUE_TABLE).await;
        }
    }

    /// Adds a post for each hash, 1,000 rows a statement, as Shimmie's upload would
    /// (hashes are test-made hex, so inlining them is safe).
    pub async fn add_posts(&self, hashes: &[String]) {
        for chunk in hashes.chunks(1000) {
            let values: Vec<String> = chunk
                .iter()
                .map(|h| format!("(1, '127.0.0.1', 'x.jpg', 1000, '{h}', 'jpg', 10, 10)"))
                .collect();
            self.exec(&format!(
                "INSERT INTO images (owner_id, owner_ip, filename, filesize, hash, ext, width, height) VALUES {}",
                values.join(",")
            ))
            .await;
        }
    }

    /// Deletes a post as Shimmie does (its row goes; nothing else records it).
    pub async fn delete_post(&self, hash: &str) {
        let delete = self.sql("DELETE FROM images WHERE hash = ?");
        with_pool!(self, p => sqlx::query(delete).bind(hash).execute(p).await.map(|_| ()))
            .expect("delete post");
    }

    /// Queues the deletion of a post's file from the bucket, as ext/s3 does when busy.
    pub async fn queue_s3_delete(&self, hash: &str) {
        let delete = self.sql("DELETE FROM s3_sync_queue WHERE hash = ?");
        let insert = self.sql("INSERT INTO s3_sync_queue (hash, action) VALUES (?, 'D')");
        with_pool!(self, p => {
            sqlx::query(delete).bind(hash).execute(p).await.expect("dequeue");
            sqlx::query(insert).bind(hash).execute(p).await.map(|_| ())
        })
        .expect("enqueue");
    }

    /// Refreshes the planner's statistics for one table (after a bulk insert).
    pub async fn analyze_table(&self, table: &str) {
        match self {
            Shimmie::Pg(_) => self.exec(&format!("VACUUM ANALYZE {table}")).await,
            Shimmie::My(_) => self.exec(&format!("ANALYZE TABLE {table}")).await,
            Shimmie::Lite(_) => self.exec(&format!("ANALYZE {table}")).await,
        }
    }

    /// PostgreSQL: the plan of `sql` with `$1` bound to the hashes as one array.
    pub async fn explain_array(&self, sql: &str, hashes: &[String]) -> String {
        let Shimmie::Pg(p) = self else {
            panic!("array parameters are PostgreSQL's");
        };
        let query = AssertSqlSafe(format!("EXPLAIN (COSTS OFF) {sql}"));
        let rows = sqlx::query(query)
            .bind(hashes.to_vec())
            .fetch_all(p)
            .await
            .expect("explain");
        let lines: Vec<String> = rows.iter().map(|r| plan_line(self, r)).collect();
        lines.join("\n")
    }

    /// The plan of `sql` with each `?` bound to a hash (PostgreSQL's `$n` as written).
    pub async fn explain_hashes(&self, sql: &str, hashes: &[String]) -> String {
        let explain = match self {
            Shimmie::Pg(_) => "EXPLAIN (COSTS OFF)",
            Shimmie::My(_) => "EXPLAIN",
            Shimmie::Lite(_) => "EXPLAIN QUERY PLAN",
        };
        let query = AssertSqlSafe(format!("{explain} {sql}"));
        let lines: Vec<String> = with_pool!(self, p => {
            let mut q = sqlx::query(query);
            for h in hashes {
                q = q.bind(h.clone());
            }
            let rows = q.fetch_all(p).await.expect("explain");
            rows.iter().map(|r| plan_line(self, r)).collect()
        });
        lines.join("\n")
    }
}

/// One EXPLAIN row as text: PostgreSQL's line, MySQL's `type` and `key`, SQLite's detail.
fn plan_line<R: Row>(db: &Shimmie, row: &R) -> String
where
    usize: sqlx::ColumnIndex<R>,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let text = |col: &str| row.try_get::<String, _>(col).unwrap_or_default();
    match db {
        Shimmie::Pg(_) => row.try_get::<String, _>(0).unwrap_or_default(),
        Shimmie::My(_) => format!("type={} key={}", text("type"), text("key")),
        Shimmie::Lite(_) => text("detail"),
    }
}

/// The `i`th hash [`Shimmie::ban_many`] inserts with `seed`.
pub fn bulk_hash(seed: u64, i: usize) -> String {
    let x = (u128::from(seed) << 64 | i as u128)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
    format!("{:032x}", x ^ (x >> 61))
}
