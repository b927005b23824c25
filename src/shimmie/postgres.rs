//! PostgreSQL: polling plus `LISTEN config` and `LISTEN shm_image_bans`.
//!
//! Shimmie saves a setting as `DELETE` + `INSERT` + `NOTIFY config` in one
//! transaction, so the notification arrives after the commit and the next read sees
//! the new value. Older paheal deployments also `NOTIFY shm_image_bans, '<hash>'`.

use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::Row;
use tokio::time::{timeout_at, Instant};

use super::{
    dsn_error, raw_bytes, settings_from_rows, unmask, BanBatch, BatchBuilder, Change, Reported,
    ShimmieSettings, Source, SourceError,
};

const ENGINE: &str = "postgres";

/// The settings query: two rows by primary key.
pub const SETTINGS_SQL: &str =
    "SELECT name, value FROM config WHERE name IN ('image_ilink', 'image_tlink')";

/// The incremental ban query: an index range scan on `image_bans_pkey` that starts
/// after the last id seen, so a poll with no new bans reads no rows at all.
pub const BANS_AFTER_SQL: &str =
    "SELECT id, hash FROM image_bans WHERE id > $1 ORDER BY id LIMIT $2";

/// The channels listened to: Shimmie's own and the older paheal one.
pub const CHANNELS: [&str; 2] = ["config", "shm_image_bans"];

/// How long to wait for a connection before calling the database unreachable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

pub struct PgSource {
    options: PgConnectOptions,
    /// Created on first use: sqlx pools spawn tasks, so they need the runtime that
    /// will drive them, which does not exist yet when the config is read.
    pool: OnceLock<PgPool>,
    listener: tokio::sync::Mutex<Option<PgListener>>,
    reported: Reported,
}

impl PgSource {
    /// Checks the DSN's syntax; does not connect.
    pub fn new(dsn: &str) -> Result<PgSource, SourceError> {
        let options = PgConnectOptions::from_str(dsn)
            .map_err(|e| dsn_error(dsn, e))?
            .application_name("shimmer");
        Ok(PgSource {
            options,
            pool: OnceLock::new(),
            listener: tokio::sync::Mutex::new(None),
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

    fn pool(&self) -> &PgPool {
        self.pool.get_or_init(|| {
            // One connection for queries, one held by the listener, one spare.
            PgPoolOptions::new()
                .max_connections(3)
                .min_connections(0)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_lazy_with(self.options.clone())
        })
    }

    async fn subscribe(&self) -> Result<PgListener, SourceError> {
        let mut listener = match PgListener::connect_with(self.pool()).await {
            Ok(listener) => listener,
            Err(e) => return Err(self.fail("LISTEN", e).await),
        };
        // On a lost connection, return at once: the sync loop polls (catching up on
        // what it missed) before it listens again.
        listener.eager_reconnect(false);
        if let Err(e) = listener.listen_all(CHANNELS).await {
            return Err(self.fail("LISTEN", e).await);
        }
        Ok(listener)
    }
}

/// `id` is `INTEGER` in Shimmie's schema (tried first: a failed decode allocates its
/// error, which would cost 200,000 allocations on a full read); `BIGINT` also works.
fn row_id(row: &PgRow) -> Option<i64> {
    row.try_get::<i32, _>(0)
        .map(i64::from)
        .or_else(|_| row.try_get::<i64, _>(0))
        .ok()
}

#[async_trait]
impl Source for PgSource {
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
        // Unnamed statement: planned with the real cursor every time, so a cursor at
        // the newest id is always an index scan (a cached generic plan might not be).
        let rows = sqlx::query(BANS_AFTER_SQL)
            .persistent(false)
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
