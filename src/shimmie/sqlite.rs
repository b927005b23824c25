//! SQLite: polling. The embedded default, and what `make run` / `make demo` use.
//!
//! The file is opened read-only and never created: a mirror must not write to (or
//! invent) Shimmie's database. A missing file is "unreachable", like a stopped server.

use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::Row;

use super::{
    dsn_error, raw_bytes, settings_from_rows, unmask, BanBatch, BatchBuilder, Reported,
    ShimmieSettings, Source, SourceError,
};

const ENGINE: &str = "sqlite";

/// The settings query: two rows by primary key.
pub const SETTINGS_SQL: &str =
    "SELECT name, value FROM config WHERE name IN ('image_ilink', 'image_tlink')";

/// The incremental ban query: a rowid range search
/// (`EXPLAIN QUERY PLAN`: `SEARCH image_bans USING INTEGER PRIMARY KEY (rowid>?)`).
pub const BANS_AFTER_SQL: &str =
    "SELECT id, hash FROM image_bans WHERE id > ?1 ORDER BY id LIMIT ?2";

/// How long to wait for a connection before calling the database unreachable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a read waits for Shimmie's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

pub struct SqliteSource {
    options: SqliteConnectOptions,
    /// Created on first use: sqlx pools spawn tasks, so they need the runtime that
    /// will drive them, which does not exist yet when the config is read.
    pool: OnceLock<SqlitePool>,
    reported: Reported,
}

impl SqliteSource {
    /// Checks the DSN (`sqlite:///abs/path.db`, `sqlite://rel.db`); does not open it.
    pub fn new(dsn: &str) -> Result<SqliteSource, SourceError> {
        let options = SqliteConnectOptions::from_str(dsn)
            .map_err(|e| dsn_error(dsn, e))?
            .read_only(true)
            .create_if_missing(false)
            .busy_timeout(BUSY_TIMEOUT);
        Ok(SqliteSource {
            options,
            pool: OnceLock::new(),
            reported: Reported::default(),
        })
    }

    async fn fail(&self, what: &'static str, error: sqlx::Error) -> SourceError {
        SourceError::Db {
            engine: ENGINE,
            what,
            source: unmask(&self.options, error).await,
        }
    }

    fn pool(&self) -> &SqlitePool {
        self.pool.get_or_init(|| {
            SqlitePoolOptions::new()
                .max_connections(2)
                .min_connections(0)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_lazy_with(self.options.clone())
        })
    }
}

#[async_trait]
impl Source for SqliteSource {
    fn engine(&self) -> &'static str {
        ENGINE
    }

    async fn read_settings(&self) -> Result<ShimmieSettings, SourceError> {
        let rows = sqlx::query(SETTINGS_SQL).fetch_all(self.pool()).await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => return Err(self.fail("reading config", e).await),
        };
        settings_from_rows(
            ENGINE,
            &self.reported,
            rows.iter()
                .map(|r| (raw_bytes(r, 0).ok().flatten(), raw_bytes(r, 1))),
        )
    }

    async fn bans_after(&self, after_id: i64, limit: usize) -> Result<BanBatch, SourceError> {
        let rows = sqlx::query(BANS_AFTER_SQL)
            .bind(after_id)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(self.pool())
            .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => return Err(self.fail("reading image_bans", e).await),
        };
        let mut batch = BatchBuilder::new(ENGINE, &self.reported, rows.len());
        for row in &rows {
            batch.push(row.try_get::<i64, _>(0).ok(), raw_bytes(row, 1));
        }
        Ok(batch.finish())
    }
}
