//! What the three sqlx engines share: the pool, the two queries and their row
//! handling, written once over [`sqlx::Database`].
//!
//! An engine module supplies only what really differs, through [`Engine`]: its name,
//! the ban query in its placeholder syntax, how to decode an `id` column of its
//! types, and how it opens its connections. PostgreSQL wraps a [`SqlSource`] to add
//! LISTEN/NOTIFY; MySQL and SQLite use it as it is.

use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::database::HasStatementCache;
use sqlx::pool::{Pool, PoolOptions};
use sqlx::query::Query;
use sqlx::{
    AssertSqlSafe, ColumnIndex, ConnectOptions, Connection, Database, Decode, Encode, Executor,
    IntoArguments, Type,
};

use super::s3_rows::{S3Rows, S3_SETTINGS_SQL};
use super::{
    raw_bytes, settings_from_rows, unmask, BanBatch, BatchBuilder, PostsProbe, Reported,
    ShimmieSettings, Source, SourceError,
};
use crate::object::Md5;

/// The settings query, the same on every engine: two rows by primary key.
pub const SETTINGS_SQL: &str =
    "SELECT name, value FROM config WHERE name IN ('image_ilink', 'image_tlink')";

/// Whether `images` has a row: the reconcile's guard against an empty (wrong) database.
pub const HAS_POSTS_SQL: &str = "SELECT 1 FROM images LIMIT 1";

/// Most hashes in one live-posts query (`shimmer.sync.reconcile.batch` is checked
/// against it): within every engine's placeholder limit (SQLite's is 32,766).
pub const MAX_LIVE_BATCH: usize = 10_000;

/// The live-posts query for `n` hashes (in this engine's placeholders): an index
/// lookup on `images.hash` a hash and, with the delete queue, one on
/// `s3_sync_queue`'s primary key for each hash found.
pub fn live_sql<DB: Engine>(n: usize, delete_queue: bool) -> String {
    let mut list = String::with_capacity(n * 12);
    for i in 1..=n {
        if i > 1 {
            list.push_str(", ");
        }
        list.push_str(&DB::hash_placeholder(i));
    }
    let queue = if delete_queue {
        " AND NOT EXISTS (SELECT 1 FROM s3_sync_queue q WHERE q.hash = images.hash AND q.action = 'D')"
    } else {
        ""
    };
    format!("SELECT hash FROM images WHERE hash IN ({list}){queue}")
}

/// Placeholders in a live-posts query: the next power of two, so a pass prepares a
/// handful of statements, not one a batch size (the extra slots repeat a hash).
fn padded(n: usize) -> usize {
    n.max(1).next_power_of_two().min(MAX_LIVE_BATCH.max(n))
}

/// How long to wait for a connection before calling the database unreachable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// What one sqlx engine contributes to a [`SqlSource`].
pub trait Engine: Database + HasStatementCache {
    /// `"postgres"`, `"mysql"` or `"sqlite"`: for logs, metrics labels and errors.
    const ENGINE: &'static str;

    /// `SELECT id, hash FROM image_bans WHERE id > <after> ORDER BY id LIMIT <limit>`
    /// in this engine's placeholder syntax: a range scan on the primary key.
    const BANS_AFTER_SQL: &'static str;

    /// Whether the ban query is prepared once and cached on the connection.
    const CACHE_BANS_PLAN: bool = true;

    /// Pool size: queries take one connection at a time.
    const MAX_CONNECTIONS: u32 = 2;

    /// A ban row's `id` (column 0), `None` if no integer type of this engine fits.
    fn ban_id(row: &Self::Row) -> Option<i64>;

    /// A row if `s3_sync_queue` exists, from this engine's catalog.
    const QUEUE_TABLE_SQL: &'static str;

    /// The `n`th (from 1) placeholder of a hash compared with `images.hash`, typed so
    /// the comparison can use the column's index.
    fn hash_placeholder(n: usize) -> String;
}

/// Connection options of an engine.
pub type Options<DB> = <<DB as Database>::Connection as Connection>::Options;

/// A Shimmie database on one sqlx engine: settings and bans by polling.
pub struct SqlSource<DB: Engine> {
    options: Options<DB>,
    /// Created on first use: sqlx pools spawn tasks, so they need the runtime that
    /// will drive them, which does not exist yet when the config is read.
    pool: OnceLock<Pool<DB>>,
    reported: Reported,
}

impl<DB: Engine> SqlSource<DB> {
    /// Wraps options already checked by the engine's `new`; does not connect.
    pub(super) fn with_options(options: Options<DB>) -> SqlSource<DB> {
        SqlSource {
            options,
            pool: OnceLock::new(),
            reported: Reported::default(),
        }
    }

    pub(super) fn pool(&self) -> &Pool<DB> {
        self.pool.get_or_init(|| {
            PoolOptions::<DB>::new()
                .max_connections(DB::MAX_CONNECTIONS)
                .min_connections(0)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_lazy_with(self.options.clone())
        })
    }

    /// A failed query as a [`SourceError`], with the real cause of a pool timeout.
    pub(super) async fn fail(&self, what: &'static str, error: sqlx::Error) -> SourceError
    where
        <Options<DB> as ConnectOptions>::Connection: Sized,
    {
        SourceError::Db {
            engine: DB::ENGINE,
            what,
            source: unmask(&self.options, error).await,
        }
    }
}

#[async_trait]
impl<DB: Engine> Source for SqlSource<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    <Options<DB> as ConnectOptions>::Connection: Sized,
    DB::Arguments: IntoArguments<DB>,
    i64: for<'e> Encode<'e, DB> + Type<DB>,
    for<'r> &'r [u8]: Decode<'r, DB>,
    usize: ColumnIndex<DB::Row>,
    String: for<'e> Encode<'e, DB> + Type<DB>,
{
    fn engine(&self) -> &'static str {
        DB::ENGINE
    }

    async fn read_s3(&self) -> Result<S3Rows, SourceError> {
        let rows = sqlx::query(S3_SETTINGS_SQL).fetch_all(self.pool()).await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => return Err(self.fail("reading config", e).await),
        };
        Ok(S3Rows::from_rows(rows.iter().map(|r| {
            (raw_bytes(r, 0).ok().flatten(), raw_bytes(r, 1))
        })))
    }

    async fn posts_probe(&self) -> Result<PostsProbe, SourceError> {
        let pool = self.pool();
        let posts = sqlx::query(HAS_POSTS_SQL).fetch_optional(pool).await;
        let has_posts = match posts {
            Ok(row) => row.is_some(),
            Err(e) => return Err(self.fail("reading images", e).await),
        };
        let queue = sqlx::query(DB::QUEUE_TABLE_SQL).fetch_optional(pool).await;
        match queue {
            Ok(row) => Ok(PostsProbe {
                has_posts,
                delete_queue: row.is_some(),
            }),
            Err(e) => Err(self.fail("looking for s3_sync_queue", e).await),
        }
    }

    async fn live_hashes(
        &self,
        hashes: &[Md5],
        delete_queue: bool,
    ) -> Result<HashSet<Md5>, SourceError> {
        let Some(last) = hashes.last() else {
            return Ok(HashSet::new());
        };
        let slots = padded(hashes.len());
        let sql = live_sql::<DB>(slots, delete_queue);
        let mut query: Query<'_, DB, DB::Arguments> = sqlx::query(AssertSqlSafe(sql));
        for hash in hashes.iter().chain(std::iter::repeat(last)).take(slots) {
            query = query.bind(hash.hex().to_string());
        }
        let rows = match query.fetch_all(self.pool()).await {
            Ok(rows) => rows,
            Err(e) => return Err(self.fail("reading images", e).await),
        };
        // CHAR(32) may come back space-padded; MySQL matches either case.
        Ok(rows
            .iter()
            .filter_map(|r| {
                let bytes = raw_bytes(r, 0).ok().flatten()?;
                Md5::parse_any_case(std::str::from_utf8(bytes).ok()?)
            })
            .collect())
    }

    async fn read_settings(&self) -> Result<ShimmieSettings, SourceError> {
        let rows = sqlx::query(SETTINGS_SQL).fetch_all(self.pool()).await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => return Err(self.fail("reading config", e).await),
        };
        settings_from_rows(
            DB::ENGINE,
            &self.reported,
            rows.iter()
                .map(|r| (raw_bytes(r, 0).ok().flatten(), raw_bytes(r, 1))),
        )
    }

    async fn bans_after(&self, after_id: i64, limit: usize) -> Result<BanBatch, SourceError> {
        let query: Query<'_, DB, DB::Arguments> = sqlx::query(DB::BANS_AFTER_SQL);
        let rows = query
            .persistent(DB::CACHE_BANS_PLAN)
            .bind(after_id)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(self.pool())
            .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => return Err(self.fail("reading image_bans", e).await),
        };
        let mut batch = BatchBuilder::new(DB::ENGINE, &self.reported, rows.len());
        for row in &rows {
            batch.push(DB::ban_id(row), raw_bytes(row, 1));
        }
        Ok(batch.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::{MySql, Postgres, Sqlite};

    #[test]
    fn engines_differ_only_where_they_must() {
        let names = (Postgres::ENGINE, MySql::ENGINE, Sqlite::ENGINE);
        assert_eq!(names, ("postgres", "mysql", "sqlite"));
        // PostgreSQL plans the ban query with the real cursor every time, and keeps a
        // connection for LISTEN.
        let cached = (
            Postgres::CACHE_BANS_PLAN,
            MySql::CACHE_BANS_PLAN,
            Sqlite::CACHE_BANS_PLAN,
        );
        assert_eq!(cached, (false, true, true));
        let pools = (
            Postgres::MAX_CONNECTIONS,
            MySql::MAX_CONNECTIONS,
            Sqlite::MAX_CONNECTIONS,
        );
        assert_eq!(pools, (3, 2, 2));
        let placeholders = [
            (Postgres::BANS_AFTER_SQL, ["$1", "$2"]),
            (MySql::BANS_AFTER_SQL, ["?", "?"]),
            (Sqlite::BANS_AFTER_SQL, ["?1", "?2"]),
        ];
        for (sql, [after, limit]) in placeholders {
            let want = format!(
                "SELECT id, hash FROM image_bans WHERE id > {after} ORDER BY id LIMIT {limit}"
            );
            assert_eq!(sql, want);
        }
    }

    #[test]
    fn live_posts_queries_are_typed_for_the_index_and_padded() {
        assert_eq!(
            live_sql::<Postgres>(2, false),
            "SELECT hash FROM images WHERE hash IN ($1::bpchar, $2::bpchar)"
        );
        assert_eq!(
            live_sql::<MySql>(3, false),
            "SELECT hash FROM images WHERE hash IN (?, ?, ?)"
        );
        let lite = live_sql::<Sqlite>(2, true);
        assert!(lite.starts_with("SELECT hash FROM images WHERE hash IN (?1, ?2) AND NOT EXISTS (SELECT 1 FROM s3_sync_queue q WHERE q.hash = images.hash AND q.action = 'D')"), "{lite}");
        assert_eq!((padded(1), padded(3), padded(1000)), (1, 4, 1024));
        assert_eq!(padded(MAX_LIVE_BATCH), MAX_LIVE_BATCH);
    }
}
