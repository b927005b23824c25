//! SQLite: polling. The embedded default, and what `make run` / `make demo` use.
//!
//! The file is opened read-only and never created: a mirror must not write to (or
//! invent) Shimmie's database. A missing file is "unreachable", like a stopped server.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{Sqlite, SqliteConnectOptions, SqliteRow};
use sqlx::Row;

use super::sql::{Engine, SqlSource};
use super::{dsn_error, SourceError};

pub use super::sql::SETTINGS_SQL;

/// The incremental ban query: a rowid range search
/// (`EXPLAIN QUERY PLAN`: `SEARCH image_bans USING INTEGER PRIMARY KEY (rowid>?)`).
pub const BANS_AFTER_SQL: &str =
    "SELECT id, hash FROM image_bans WHERE id > ?1 ORDER BY id LIMIT ?2";

/// How long a read waits for Shimmie's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

impl Engine for Sqlite {
    const ENGINE: &'static str = "sqlite";
    const BANS_AFTER_SQL: &'static str = BANS_AFTER_SQL;

    fn ban_id(row: &SqliteRow) -> Option<i64> {
        row.try_get::<i64, _>(0).ok()
    }

    const QUEUE_TABLE_SQL: &'static str =
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 's3_sync_queue'";

    fn hash_placeholder(n: usize) -> String {
        format!("?{n}")
    }
}

pub type SqliteSource = SqlSource<Sqlite>;

impl SqlSource<Sqlite> {
    /// Checks the DSN (`sqlite:///abs/path.db`, `sqlite://rel.db`); does not open it.
    pub fn new(dsn: &str) -> Result<SqliteSource, SourceError> {
        let options = SqliteConnectOptions::from_str(dsn)
            .map_err(|e| dsn_error(dsn, e))?
            .read_only(true)
            .create_if_missing(false)
            .busy_timeout(BUSY_TIMEOUT);
        Ok(SqlSource::with_options(options))
    }
}
