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

impl Shimmie {
    /// Creates the `shimmie` database (PostgreSQL; MariaDB's init file does it) and
    /// Shimmie's two tables, exactly as SHIMMIE.md gives them for the engine.
    pub async fn create(server: &DbServer) -> Shimmie {
        if server.kind == Kind::Postgres {
            let admin = format!("postgres://shimmie@127.0.0.1:{}/postgres", server.port());
            let pool = PgPool::connect(&admin).await.expect("connect to postgres");
            sqlx::query("CREATE DATABASE shimmie")
                .execute(&pool)
                .await
                .expect("create database");
            pool.close().await;
        }
        let db = Shimmie::connect(&server.dsn()).await;
        db.create_schema().await;
        db
    }

    /// A SQLite file with Shimmie's schema; the DSN to give the source.
    pub async fn sqlite(path: &Path) -> (Shimmie, String) {
        let db = Shimmie::connect(&format!("sqlite://{}", path.display())).await;
        db.create_schema().await;
        (db, format!("sqlite://{}", path.display()))
    }

    pub async fn connect(dsn: &str) -> Shimmie {
        let deadline = Duration::from_secs(20);
        if dsn.starts_with("postgres") {
            let opts = PgConnectOptions::from_str(dsn).expect("dsn");
            Shimmie::Pg(
                PgPoolOptions::new()
                    .acquire_timeout(deadline)
                    .connect_with(opts)
                    .await
                    .expect("connect"),
            )
        } else if dsn.starts_with("mysql") {
            let opts = MySqlConnectOptions::from_str(dsn).expect("dsn");
            Shimmie::My(
                MySqlPoolOptions::new()
                    .acquire_timeout(deadline)
                    .connect_with(opts)
                    .await
                    .expect("connect"),
            )
        } else {
            let opts = SqliteConnectOptions::from_str(dsn)
                .expect("dsn")
                .create_if_missing(true);
            Shimmie::Lite(
                SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(opts)
                    .await
                    .expect("connect"),
            )
        }
    }

    async fn create_schema(&self) {
        let (config, bans) = match self {
            Shimmie::Pg(_) => (
                "CREATE TABLE config(name VARCHAR(128) NOT NULL, value TEXT, PRIMARY KEY (name))",
                "CREATE TABLE image_bans(id INTEGER NOT NULL PRIMARY KEY GENERATED ALWAYS AS IDENTITY, hash CHAR(32) NOT NULL, date TIMESTAMP DEFAULT CURRENT_TIMESTAMP, reason TEXT NOT NULL)",
            ),
            Shimmie::My(_) => (
                "CREATE TABLE config(name VARCHAR(128) NOT NULL, value TEXT, PRIMARY KEY (name))",
                "CREATE TABLE image_bans(id INTEGER PRIMARY KEY auto_increment, hash CHAR(32) NOT NULL, date TIMESTAMP DEFAULT CURRENT_TIMESTAMP, reason TEXT NOT NULL)",
            ),
            Shimmie::Lite(_) => (
                "CREATE TABLE config(name VARCHAR(128) NOT NULL, value TEXT, PRIMARY KEY (name))",
                "CREATE TABLE image_bans(id INTEGER PRIMARY KEY AUTOINCREMENT, hash CHAR(32) NOT NULL, date TIMESTAMP DEFAULT CURRENT_TIMESTAMP, reason TEXT NOT NULL)",
            ),
        };
        self.exec(config).await;
        self.exec(bans).await;
    }

    /// Runs one statement (test-controlled SQL, e.g. to write malformed rows).
    pub async fn exec(&self, sql: &str) {
        let sql = AssertSqlSafe(sql.to_owned());
        let res = match self {
            Shimmie::Pg(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
            Shimmie::My(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
            Shimmie::Lite(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
        };
        res.expect("statement");
    }

    /// Saves a setting as Shimmie does: DELETE + INSERT (+ NOTIFY config on
    /// PostgreSQL) in one transaction.
    pub async fn set_config(&self, name: &str, value: Option<&str>) {
        match self {
            Shimmie::Pg(p) => {
                let mut tx = p.begin().await.expect("begin");
                sqlx::query("DELETE FROM config WHERE name = $1")
                    .bind(name)
                    .execute(&mut *tx)
                    .await
                    .expect("delete");
                sqlx::query("INSERT INTO config(name, value) VALUES($1, $2)")
                    .bind(name)
                    .bind(value)
                    .execute(&mut *tx)
                    .await
                    .expect("insert");
                sqlx::query("NOTIFY config")
                    .execute(&mut *tx)
                    .await
                    .expect("notify");
                tx.commit().await.expect("commit");
            }
            Shimmie::My(p) => {
                let mut tx = p.begin().await.expect("begin");
                sqlx::query("DELETE FROM config WHERE name = ?")
                    .bind(name)
                    .execute(&mut *tx)
                    .await
                    .expect("delete");
                sqlx::query("INSERT INTO config(name, value) VALUES(?, ?)")
                    .bind(name)
                    .bind(value)
                    .execute(&mut *tx)
                    .await
                    .expect("insert");
                tx.commit().await.expect("commit");
            }
            Shimmie::Lite(p) => {
                let mut tx = p.begin().await.expect("begin");
                sqlx::query("DELETE FROM config WHERE name = ?")
                    .bind(name)
                    .execute(&mut *tx)
                    .await
                    .expect("delete");
                sqlx::query("INSERT INTO config(name, value) VALUES(?, ?)")
                    .bind(name)
                    .bind(value)
                    .execute(&mut *tx)
                    .await
                    .expect("insert");
                tx.commit().await.expect("commit");
            }
        }
    }

    /// Bans a hash as Shimmie does; returns the row's id.
    pub async fn ban(&self, hash: &str) -> i64 {
        match self {
            Shimmie::Pg(p) => sqlx::query(
                "INSERT INTO image_bans (hash, reason, date) VALUES ($1, $2, now()) RETURNING id",
            )
            .bind(hash)
            .bind("test")
            .fetch_one(p)
            .await
            .expect("ban")
            .get::<i32, _>(0)
            .into(),
            Shimmie::My(p) => {
                sqlx::query("INSERT INTO image_bans (hash, reason, date) VALUES (?, ?, now())")
                    .bind(hash)
                    .bind("test")
                    .execute(p)
                    .await
                    .expect("ban")
                    .last_insert_id() as i64
            }
            // Shimmie registers now() as a SQLite function; CURRENT_TIMESTAMP is the same.
            Shimmie::Lite(p) => sqlx::query(
                "INSERT INTO image_bans (hash, reason, date) VALUES (?, ?, CURRENT_TIMESTAMP)",
            )
            .bind(hash)
            .bind("test")
            .execute(p)
            .await
            .expect("ban")
            .last_insert_rowid(),
        }
    }

    /// Unbans as Shimmie does: deletes every row for the hash.
    pub async fn unban(&self, hash: &str) {
        let sql = match self {
            Shimmie::Pg(_) => "DELETE FROM image_bans WHERE hash = $1",
            _ => "DELETE FROM image_bans WHERE hash = ?",
        };
        let res = match self {
            Shimmie::Pg(p) => sqlx::query(sql).bind(hash).execute(p).await.map(|_| ()),
            Shimmie::My(p) => sqlx::query(sql).bind(hash).execute(p).await.map(|_| ()),
            Shimmie::Lite(p) => sqlx::query(sql).bind(hash).execute(p).await.map(|_| ()),
        };
        res.expect("unban");
    }

    /// Inserts `n` bans with distinct pseudo-random hashes, 1,000 rows a statement.
    pub async fn ban_many(&self, n: usize, seed: u64) {
        let mut start = 0;
        while start < n {
            let end = (start + 1000).min(n);
            let values: Vec<String> = (start..end)
                .map(|i| format!("('{}', 'bulk', CURRENT_TIMESTAMP)", bulk_hash(seed, i)))
                .collect();
            self.exec(&format!(
                "INSERT INTO image_bans (hash, reason, date) VALUES {}",
                values.join(",")
            ))
            .await;
            start = end;
        }
    }

    /// Refreshes the planner's statistics, as a live database has them.
    pub async fn analyze(&self) {
        match self {
            Shimmie::Pg(_) | Shimmie::Lite(_) => self.exec("ANALYZE image_bans").await,
            Shimmie::My(_) => self.exec("ANALYZE TABLE image_bans").await,
        }
    }

    /// The query plan for `sql` with the engine's EXPLAIN, as text.
    pub async fn explain(&self, sql: &str, after_id: i64, limit: i64) -> String {
        let lines: Vec<String> = match self {
            Shimmie::Pg(p) => sqlx::query(AssertSqlSafe(format!(
                "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {sql}"
            )))
            .bind(after_id)
            .bind(limit)
            .fetch_all(p)
            .await
            .expect("explain")
            .iter()
            .map(|r| r.get::<String, _>(0))
            .collect(),
            Shimmie::My(p) => sqlx::query(AssertSqlSafe(format!("EXPLAIN {sql}")))
                .bind(after_id)
                .bind(limit)
                .fetch_all(p)
                .await
                .expect("explain")
                .iter()
                .map(|r| {
                    format!(
                        "type={} key={}",
                        r.get::<String, _>("type"),
                        r.try_get::<String, _>("key").unwrap_or_default()
                    )
                })
                .collect(),
            Shimmie::Lite(p) => sqlx::query(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                .bind(after_id)
                .bind(limit)
                .fetch_all(p)
                .await
                .expect("explain")
                .iter()
                .map(|r| r.get::<String, _>("detail"))
                .collect(),
        };
        lines.join("\n")
    }
}

/// The `i`th hash [`Shimmie::ban_many`] inserts with `seed`.
pub fn bulk_hash(seed: u64, i: usize) -> String {
    let x = (u128::from(seed) << 64 | i as u128)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
    format!("{:032x}", x ^ (x >> 61))
}
