//! MySQL and MariaDB: polling (Shimmie's `NOTIFY` is a no-op on this engine).

use std::str::FromStr;

use sqlx::mysql::{MySql, MySqlConnectOptions, MySqlRow};
use sqlx::Row;

use super::sql::{Engine, SqlSource};
use super::{dsn_error, SourceError};

pub use super::sql::SETTINGS_SQL;

/// The incremental ban query: a range scan on the primary key starting after the
/// last id seen (`EXPLAIN`: `type=range, key=PRIMARY`).
pub const BANS_AFTER_SQL: &str = "SELECT id, hash FROM image_bans WHERE id > ? ORDER BY id LIMIT ?";

impl Engine for MySql {
    const ENGINE: &'static str = "mysql";
    const BANS_AFTER_SQL: &'static str = BANS_AFTER_SQL;

    /// `id` is a signed `INTEGER` in Shimmie's schema; accept `BIGINT` and unsigned too.
    fn ban_id(row: &MySqlRow) -> Option<i64> {
        row.try_get::<i64, _>(0).ok().or_else(|| {
            row.try_get::<u64, _>(0)
                .ok()
                .and_then(|id| i64::try_from(id).ok())
        })
    }

    const QUEUE_TABLE_SQL: &'static str = "SELECT 1 FROM information_schema.tables \
         WHERE table_schema = DATABASE() AND table_name = 's3_sync_queue'";

    fn hash_placeholder(_n: usize) -> String {
        "?".into()
    }
}

pub type MySqlSource = SqlSource<MySql>;

impl SqlSource<MySql> {
    /// Checks the DSN's syntax (`mysql://` or `mariadb://`); does not connect.
    pub fn new(dsn: &str) -> Result<MySqlSource, SourceError> {
        // sqlx knows only the mysql scheme; MariaDB speaks the same protocol.
        let url = match dsn.strip_prefix("mariadb:") {
            Some(rest) => format!("mysql:{rest}"),
            None => dsn.to_owned(),
        };
        let options = MySqlConnectOptions::from_str(&url).map_err(|e| dsn_error(dsn, e))?;
        Ok(SqlSource::with_options(options))
    }
}
