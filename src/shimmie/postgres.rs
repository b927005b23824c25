//! PostgreSQL: polling plus `LISTEN config` and `LISTEN shm_image_bans`.
//!
//! Shimmie saves a setting as `DELETE` + `INSERT` + `NOTIFY config` in one
//! transaction, so the notification arrives after the commit and the next read sees
//! the new value. Older paheal deployments also `NOTIFY shm_image_bans, '<hash>'`.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgRow, Postgres};
use sqlx::Row;
use tokio::time::{timeout_at, Instant};

use super::sql::{Engine, SqlSource};
use super::{
    dsn_error, BanBatch, Change, PostsProbe, S3Rows, ShimmieSettings, Source, SourceError,
};
use crate::object::Md5;

pub use super::sql::SETTINGS_SQL;

const ENGINE: &str = "postgres";

/// The incremental ban query: an index range scan on `image_bans_pkey` that starts
/// after the last id seen, so a poll with no new bans reads no rows at all.
pub const BANS_AFTER_SQL: &str =
    "SELECT id, hash FROM image_bans WHERE id > $1 ORDER BY id LIMIT $2";

/// The live-posts query: one array parameter whatever the batch size, so it is
/// parsed and planned once per connection (a list of 1,000 placeholders costs ~20 ms
/// a query to plan). The cast keeps `bpchar = bpchar`, which can use the index on
/// `images.hash` (sqlx sends `text[]`; `char(32) = text` compares as text, which
/// cannot).
pub const LIVE_SQL: &str = "SELECT hash FROM images WHERE hash = ANY($1::bpchar[])";

/// [`LIVE_SQL`] with ext/s3's queued deletions counted as deleted.
pub const LIVE_WITH_QUEUE_SQL: &str = "SELECT hash FROM images WHERE hash = ANY($1::bpchar[]) \
     AND NOT EXISTS (SELECT 1 FROM s3_sync_queue q WHERE q.hash = images.hash AND q.action = 'D')";

/// The channels listened to: Shimmie's own and the older paheal one.
pub const CHANNELS: [&str; 2] = ["config", "shm_image_bans"];

impl Engine for Postgres {
    const ENGINE: &'static str = ENGINE;
    const BANS_AFTER_SQL: &'static str = BANS_AFTER_SQL;
    /// Unnamed statement: planned with the real cursor every time, so a cursor at
    /// the newest id is always an index scan (a cached generic plan might not be).
    const CACHE_BANS_PLAN: bool = false;
    /// One connection for queries, one held by the listener, one spare.
    const MAX_CONNECTIONS: u32 = 3;

    /// `id` is `INTEGER` in Shimmie's schema (tried first: a failed decode allocates
    /// its error, which would cost 200,000 allocations on a full read); `BIGINT` also
    /// works.
    fn ban_id(row: &PgRow) -> Option<i64> {
        row.try_get::<i32, _>(0)
            .map(i64::from)
            .or_else(|_| row.try_get::<i64, _>(0))
            .ok()
    }

    /// Found on the search path, as Shimmie's own queries find it.
    const QUEUE_TABLE_SQL: &'static str = "SELECT 1 WHERE to_regclass('s3_sync_queue') IS NOT NULL";

    /// For the generic list query (PgSource sends [`LIVE_SQL`] instead): sqlx sends a
    /// `String` as `text`, and `char(32) = text` compares as text, which cannot use
    /// the index on `images.hash`; the cast makes it `bpchar = bpchar`.
    fn hash_placeholder(n: usize) -> String {
        format!("${n}::bpchar")
    }
}

/// The shared polling source plus the LISTEN connection.
pub struct PgSource {
    sql: SqlSource<Postgres>,
    listener: tokio::sync::Mutex<Option<PgListener>>,
}

impl PgSource {
    /// Checks the DSN's syntax; does not connect.
    pub fn new(dsn: &str) -> Result<PgSource, SourceError> {
        let options = PgConnectOptions::from_str(dsn)
            .map_err(|e| dsn_error(dsn, e))?
            .application_name("shimmer");
        Ok(PgSource {
            sql: SqlSource::with_options(options),
            listener: tokio::sync::Mutex::new(None),
        })
    }

    async fn subscribe(&self) -> Result<PgListener, SourceError> {
        let mut listener = match PgListener::connect_with(self.sql.pool()).await {
            Ok(listener) => listener,
            Err(e) => return Err(self.sql.fail("LISTEN", e).await),
        };
        // On a lost connection, return at once: the sync loop polls (catching up on
        // what it missed) before it listens again.
        listener.eager_reconnect(false);
        if let Err(e) = listener.listen_all(CHANNELS).await {
            return Err(self.sql.fail("LISTEN", e).await);
        }
        Ok(listener)
    }
}

#[async_trait]
impl Source for PgSource {
    fn engine(&self) -> &'static str {
        ENGINE
    }

    async fn read_settings(&self) -> Result<ShimmieSettings, SourceError> {
        self.sql.read_settings().await
    }

    async fn bans_after(&self, after_id: i64, limit: usize) -> Result<BanBatch, SourceError> {
        self.sql.bans_after(after_id, limit).await
    }

    async fn read_s3(&self) -> Result<S3Rows, SourceError> {
        self.sql.read_s3().await
    }

    async fn posts_probe(&self) -> Result<PostsProbe, SourceError> {
        self.sql.posts_probe().await
    }

    async fn live_hashes(
        &self,
        hashes: &[Md5],
        delete_queue: bool,
    ) -> Result<std::collections::HashSet<Md5>, SourceError> {
        let sql = if delete_queue {
            LIVE_WITH_QUEUE_SQL
        } else {
            LIVE_SQL
        };
        let list: Vec<String> = hashes.iter().map(|h| h.hex().to_string()).collect();
        let rows = sqlx::query(sql).bind(list).fetch_all(self.sql.pool()).await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => return Err(self.sql.fail("reading images", e).await),
        };
        Ok(rows
            .iter()
            .filter_map(|r| {
                let bytes = super::raw_bytes(r, 0).ok().flatten()?;
                Md5::parse_any_case(std::str::from_utf8(bytes).ok()?)
            })
            .collect())
    }

    async fn wait_for_change(&self, max_wait: Duration) -> Result<Change, SourceError> {
        let deadline = Instant::now() + max_wait;
        let mut slot = self.listener.lock().await;
        let Some(listener) = slot.as_mut() else {
            let listener = timeout_at(deadline, self.subscribe()).await.map_err(|_| {
                SourceError::Timeout {
                    engine: ENGINE,
                    what: "LISTEN",
                    after: max_wait,
                }
            })??;
            *slot = Some(listener);
            return Ok(Change::Subscribed);
        };
        // try_recv is cancel-safe: a timeout never loses half a message.
        match timeout_at(deadline, listener.try_recv()).await {
            Err(_elapsed) => Ok(Change::Timeout),
            Ok(Ok(Some(note))) => {
                // Several saves in a row arrive together: one poll covers them all.
                while listener.next_buffered().is_some() {}
                Ok(Change::Notified {
                    channel: note.channel().to_owned(),
                    payload: note.payload().to_owned(),
                })
            }
            Ok(Ok(None)) => {
                *slot = None;
                Err(SourceError::ListenerLost { engine: ENGINE })
            }
            Ok(Err(e)) => {
                *slot = None;
                Err(SourceError::Db {
                    engine: ENGINE,
                    what: "waiting for notifications",
                    source: e,
                })
            }
        }
    }
}
