//! MySQL and MariaDB: polling (Shimmie's `NOTIFY` is a no-op on this engine).

use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::Row;

use super::{
    dsn_error, raw_bytes, settings_from_rows, unmask, BanBatch, BatchBuilder, Reported,
    ShimmieSettings, Source, SourceError,
};

const ENGINE: &str = "mysql";

/// The settings query: two rows by primary key.
pub const SETTINGS_SQL: &str =
    "SELECT name, value FROM config WHERE name IN ('image_ilink', 'image_tlink')";

/// The incremental ban query: a range scan on the primary key starting after the
/// last id seen (`EXPLAIN`: `type=range, key=PRIMARY`).
pub const BANS_AFTER_SQL: &str = "SELECT id, hash FROM image_bans WHERE id > ? ORDER BY id LIMIT ?";

/// How long to wait for a connection before calling the database unreachable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

pub struct MySqlSource {
    options: MySqlConnectOptions,
    /// Created on first use: sqlx pools spawn tasks, so they need the runtime that
    /// will drive them, which does not exist yet when the config is read.
    pool: OnceLock<MySqlPool>,
    reported: Reported,
}

impl MySqlSource {
    /// Checks the DSN's syntax (`mysql://` or `mariadb://`); does not connect.
    pub fn new(dsn: &str) -> Result<MySqlSource, SourceError> {
        // sqlx knows only the mysql scheme; MariaDB speaks the same protocol.
        let url = match dsn.strip_prefix("mariadb:") {
            Some(rest) => format!("mysql:{rest}"),
            None => dsn.to_owned(),
        };
        let options = MySqlConnectOptions::from_str(&url).map_err(|e| dsn_error(dsn, e))?;
        Ok(MySqlSource {
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

    fn pool(&self) -> &MySqlPool {
        self.pool.get_or_init(|| {
            MySqlPoolOptions::new()
                .max_connections(2)
                .min_connections(0)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_lazy_with(self.options.clone())
        })
    }
}

/// `id` is a signed `INTEGER` in Shimmie's schema; accept `BIGINT` and unsigned too.
fn row_id(row: &MySqlRow) -> Option<i64> {
    row.try_get::<i64, _>(0).ok().or_else(|| {
        row.try_get::<u64, _>(0)
            .ok()
            .and_then(|id| i64::try_from(id).ok())
    })
}

#[async_trait]
impl Source for MySqlSource {
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
            batch.push(row_id(row), raw_bytes(row, 1));
        }
        Ok(batch.finish())
    }
}
