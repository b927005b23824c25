//! Source of truth: Shimmie's own database (or the static YAML fallback).
//!
//! One [`Source`] trait, one module per engine, all on sqlx. The queries and their
//! row handling are written once, generic over the engine, in [`sql`]; each engine
//! module adds only what differs (placeholders, column types, connection options):
//! - [`postgres`]: polling plus `LISTEN config` / `LISTEN shm_image_bans`, so a
//!   Shimmie config save (which sends `NOTIFY config`) wakes the sync at once;
//! - [`mysql`] (MySQL and MariaDB) and [`sqlite`]: polling only (Shimmie's notify is a
//!   no-op there);
//! - [`static_source`]: the two templates from the YAML, no bans.
//!
//! [`connect`] picks the engine from the DSN scheme and never touches the network:
//! a database that is down right now is the sync loop's business, not a startup error.
//! Rows that Shimmie would never write (a hash that is not 32 hex digits, a template
//! that is not UTF-8 or absurdly long) are reported once and skipped, never a panic.

pub mod bans;
pub mod mysql;
pub mod persist;
pub mod postgres;
pub mod s3_rows;
pub mod sql;
pub mod sqlite;
pub mod static_source;

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::{ColumnIndex, Decode, Row, ValueRef};

use crate::object::Md5;

pub use bans::{BanDiff, Bans};
pub use s3_rows::{S3Rows, Secret};
pub use static_source::StaticSource;

/// Templates longer than this are refused as corrupt: a real one is a URL with a
/// handful of nodes, and the flexihash ring size is bounded by `fleet` anyway.
pub const MAX_TEMPLATE_BYTES: usize = 16 * 1024;

/// Shimmie's two link templates, raw. `None`: the row is absent or NULL, which
/// Shimmie treats as its unbalanced default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShimmieSettings {
    pub image_ilink: Option<String>,
    pub image_tlink: Option<String>,
}

/// One valid `image_bans` row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BanRow {
    pub id: i64,
    /// The banned md5 (either case in the table; normalised here).
    pub hash: Md5,
}

/// What one ban query returned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BanBatch {
    /// Valid rows, in ascending `id`.
    pub rows: Vec<BanRow>,
    /// Rows the query returned, valid or not: `read == limit` means there may be more.
    pub read: usize,
    /// The highest `id` read, valid or not: the next cursor, so a bad row is not
    /// re-read (and re-reported) on every poll.
    pub last_id: Option<i64>,
    /// Rows skipped as malformed (each reported once in the log).
    pub skipped: usize,
}

/// What the reconcile of deleted posts asks before a pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PostsProbe {
    /// `images` has at least one row. An empty table is taken for the wrong database
    /// (or one being restored), never for "every post was deleted": nothing is purged.
    pub has_posts: bool,
    /// `s3_sync_queue` (Shimmie's ext/s3) exists, so its action 'D' rows count too.
    pub delete_queue: bool,
}

/// Why [`Source::wait_for_change`] returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A notification arrived (PostgreSQL only): `config` or `shm_image_bans`.
    Notified { channel: String, payload: String },
    /// The notification connection was (re)established: anything sent before it was
    /// missed, so the caller should poll now.
    Subscribed,
    /// `max_wait` passed: time for the safety-net poll.
    Timeout,
}

/// Why a source could not answer. Messages carry the engine and what was being done;
/// DSNs appear with their password masked.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The DSN cannot be used at all (syntax, unknown scheme): a config error.
    #[error("source {dsn:?}: {reason}")]
    Dsn { dsn: String, reason: String },
    /// The database refused or failed a query, or is unreachable.
    #[error("{engine}: {what}: {source}")]
    Db {
        engine: &'static str,
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// A query or connection attempt took longer than allowed.
    #[error("{engine}: {what}: no answer within {after:?}")]
    Timeout {
        engine: &'static str,
        what: &'static str,
        after: Duration,
    },
    /// The LISTEN connection dropped; notifications may have been missed.
    #[error("{engine}: the notification connection was lost")]
    ListenerLost { engine: &'static str },
    /// A config value that no template could be built from (not UTF-8, too long).
    /// The database itself answered: the sync keeps its view and reports the key.
    #[error("{key}: {reason}")]
    BadValue { key: &'static str, reason: String },
}

/// Shimmie's database (or a stand-in), as the sync loop needs it.
#[async_trait]
pub trait Source: Send + Sync {
    /// `"postgres"`, `"mysql"`, `"sqlite"` or `"static"`: for logs and metrics labels.
    fn engine(&self) -> &'static str;

    /// Reads `image_ilink` and `image_tlink` from `config`.
    async fn read_settings(&self) -> Result<ShimmieSettings, SourceError>;

    /// Bans with `id > after_id`, ascending, at most `limit` rows. Each engine's SQL
    /// is an index range scan on the primary key (PostgreSQL:
    /// [`postgres::BANS_AFTER_SQL`] = `SELECT id, hash FROM image_bans WHERE id > $1
    /// ORDER BY id LIMIT $2`), so a poll with no new bans reads no old rows.
    async fn bans_after(&self, after_id: i64, limit: usize) -> Result<BanBatch, SourceError>;

    /// Every ban, read as consecutive `bans_after` pages of `page` rows (keyset
    /// pagination: each page is an index range scan, none re-reads earlier rows).
    async fn all_bans(&self, page: usize) -> Result<BanBatch, SourceError> {
        let page = page.max(1);
        let mut all = BanBatch::default();
        let mut cursor = i64::MIN;
        loop {
            let batch = self.bans_after(cursor, page).await?;
            all.read += batch.read;
            all.skipped += batch.skipped;
            all.rows.extend(batch.rows);
            match batch.last_id {
                Some(last) if batch.read >= page => {
                    all.last_id = Some(last);
                    cursor = last;
                }
                last => {
                    all.last_id = last.or(all.last_id);
                    return Ok(all);
                }
            }
        }
    }

    /// Reads Shimmie's S3 settings (`origin: shimmie`): five rows of `config` by
    /// primary key. A source without them has none.
    async fn read_s3(&self) -> Result<S3Rows, SourceError> {
        Ok(S3Rows::default())
    }

    /// Whether `images` has posts and `s3_sync_queue` exists. A source without posts
    /// (static) has none: the reconcile never purges from it.
    async fn posts_probe(&self) -> Result<PostsProbe, SourceError> {
        Ok(PostsProbe::default())
    }

    /// Of `hashes`, the ones that are live posts: with a row in `images` and, when
    /// `delete_queue`, no action 'D' row in `s3_sync_queue`. One query with one
    /// placeholder a hash, each an index lookup on `images.hash` (UNIQUE). A source
    /// without posts calls every hash live.
    async fn live_hashes(
        &self,
        hashes: &[Md5],
        delete_queue: bool,
    ) -> Result<HashSet<Md5>, SourceError> {
        let _ = delete_queue;
        Ok(hashes.iter().copied().collect())
    }

    /// Waits up to `max_wait` for something to change. Engines without notifications
    /// just sleep; PostgreSQL returns early on `NOTIFY config` / `shm_image_bans`.
    async fn wait_for_change(&self, max_wait: Duration) -> Result<Change, SourceError> {
        tokio::time::sleep(max_wait).await;
        Ok(Change::Timeout)
    }
}

/// Opens the database the DSN names (`postgres://`, `postgresql://`, `mysql://`,
/// `mariadb://`, `sqlite://` / `sqlite:`). Lazy: only the syntax is checked here; an
/// unreachable server is not an error until the first query (and not fatal then).
pub fn connect(dsn: &str) -> Result<Box<dyn Source>, SourceError> {
    let scheme = dsn.split(':').next().unwrap_or_default();
    match scheme {
        "postgres" | "postgresql" => Ok(Box::new(postgres::PgSource::new(dsn)?)),
        "mysql" | "mariadb" => Ok(Box::new(mysql::MySqlSource::new(dsn)?)),
        "sqlite" => Ok(Box::new(sqlite::SqliteSource::new(dsn)?)),
        "static" => Err(dsn_error(
            dsn,
            "a static source has no database: build a StaticSource from the YAML's `static` templates",
        )),
        _ => Err(dsn_error(
            dsn,
            "unknown scheme: expected postgres://, mysql://, mariadb:// or sqlite://",
        )),
    }
}

pub(crate) fn dsn_error(dsn: &str, reason: impl fmt::Display) -> SourceError {
    SourceError::Dsn {
        dsn: redact_dsn(dsn),
        reason: reason.to_string(),
    }
}

/// The DSN with any password replaced by `***`, for log lines and errors.
pub fn redact_dsn(dsn: &str) -> String {
    let Some((scheme, rest)) = dsn.split_once("://") else {
        return dsn.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        _ => dsn.to_owned(),
    }
}

/// sqlx reports a database that cannot be reached as "pool timed out"; one direct
/// connection attempt recovers the cause ("Connection refused", "password
/// authentication failed", ...) for the log line. Runs only after a failure.
pub(crate) async fn unmask<O>(options: &O, error: sqlx::Error) -> sqlx::Error
where
    O: sqlx::ConnectOptions,
    O::Connection: Sized,
{
    if !matches!(error, sqlx::Error::PoolTimedOut) {
        return error;
    }
    match tokio::time::timeout(Duration::from_secs(2), options.connect()).await {
        Ok(Err(cause)) => cause,
        Ok(Ok(conn)) => {
            let _ = sqlx::Connection::close(conn).await;
            error
        }
        Err(_) => error,
    }
}

/// Logs a problem once per distinct key, so a bad row or a NULL setting read on
/// every poll does not flood the log. Bounded: past the cap, problems log again.
#[derive(Default)]
pub(crate) struct Reported(parking_lot::Mutex<HashSet<String>>);

impl Reported {
    const CAP: usize = 10_000;

    /// True the first time `key` is seen (the caller logs then).
    pub(crate) fn first(&self, key: String) -> bool {
        let mut seen = self.0.lock();
        if seen.len() >= Self::CAP {
            seen.clear();
        }
        seen.insert(key)
    }

    pub(crate) fn forget(&self, key: &str) {
        self.0.lock().remove(key);
    }
}

/// A column's raw bytes, `None` for SQL NULL. Decoding to bytes never fails on text
/// that is not UTF-8, so the caller can report such a value instead of erroring.
pub(crate) fn raw_bytes<'r, R>(row: &'r R, index: usize) -> Result<Option<&'r [u8]>, sqlx::Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    &'r [u8]: Decode<'r, R::Database>,
{
    if row.try_get_raw(index)?.is_null() {
        return Ok(None);
    }
    row.try_get_unchecked::<&[u8], _>(index).map(Some)
}

/// Text for a log line: lossy UTF-8, cut at `max` characters.
pub(crate) fn shown(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out: String = text.chars().take(max).collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out
}

/// Collects ban rows into a [`BanBatch`], skipping and reporting malformed ones.
pub(crate) struct BatchBuilder<'a> {
    engine: &'static str,
    reported: &'a Reported,
    batch: BanBatch,
}

impl<'a> BatchBuilder<'a> {
    pub(crate) fn new(engine: &'static str, reported: &'a Reported, capacity: usize) -> Self {
        BatchBuilder {
            engine,
            reported,
            batch: BanBatch {
                rows: Vec::with_capacity(capacity),
                ..BanBatch::default()
            },
        }
    }

    /// One row: its id (`None` if it could not be decoded) and raw hash bytes.
    pub(crate) fn push(&mut self, id: Option<i64>, hash: Result<Option<&[u8]>, sqlx::Error>) {
        self.batch.read += 1;
        let Some(id) = id else {
            self.batch.skipped += 1;
            if self.reported.first("ban id undecodable".into()) {
                tracing::warn!(
                    engine = self.engine,
                    "image_bans: a row's id is not an integer; row skipped"
                );
            }
            return;
        };
        self.batch.last_id = Some(self.batch.last_id.map_or(id, |last| last.max(id)));
        // CHAR(32) comes back space-padded from PostgreSQL; Shimmie never writes spaces.
        let parsed = match &hash {
            Ok(Some(bytes)) => std::str::from_utf8(bytes.trim_ascii_end())
                .ok()
                .and_then(Md5::parse_any_case),
            _ => None,
        };
        match parsed {
            Some(hash) => self.batch.rows.push(BanRow { id, hash }),
            None => {
                self.batch.skipped += 1;
                if self.reported.first(format!("ban {id}")) {
                    let why = match hash {
                        Ok(Some(bytes)) => {
                            format!("hash {:?} is not 32 hex digits", shown(bytes, 64))
                        }
                        Ok(None) => "hash is NULL".to_owned(),
                        Err(e) => format!("hash cannot be read: {e}"),
                    };
                    tracing::warn!(
                        engine = self.engine,
                        ban_id = id,
                        "image_bans row {id} skipped: {why}"
                    );
                }
            }
        }
    }

    pub(crate) fn finish(self) -> BanBatch {
        self.batch
    }
}

/// Builds [`ShimmieSettings`] from `(name, value)` rows of `config`.
pub(crate) fn settings_from_rows<'r>(
    engine: &'static str,
    reported: &Reported,
    rows: impl IntoIterator<Item = (Option<&'r [u8]>, Result<Option<&'r [u8]>, sqlx::Error>)>,
) -> Result<ShimmieSettings, SourceError> {
    let mut settings = ShimmieSettings::default();
    for (name, value) in rows {
        let (key, slot) = match name {
            Some(b"image_ilink") => ("image_ilink", &mut settings.image_ilink),
            Some(b"image_tlink") => ("image_tlink", &mut settings.image_tlink),
            _ => continue,
        };
        let null_key = format!("{key} NULL");
        match value {
            Ok(None) => {
                // Shimmie's get_string() falls back to the default for NULL.
                if reported.first(null_key) {
                    tracing::warn!(
                        engine,
                        "config {key} is NULL: treated as absent (unbalanced), as Shimmie does"
                    );
                }
            }
            Ok(Some(bytes)) if bytes.len() > MAX_TEMPLATE_BYTES => {
                return Err(SourceError::BadValue {
                    key,
                    reason: format!(
                        "value is {} bytes, over the {MAX_TEMPLATE_BYTES}-byte limit for a link template (starts {:?})",
                        bytes.len(),
                        shown(bytes, 80)
                    ),
                });
            }
            Ok(Some(bytes)) => match std::str::from_utf8(bytes) {
                Ok(text) => {
                    reported.forget(&null_key);
                    *slot = Some(text.to_owned());
                }
                Err(e) => {
                    return Err(SourceError::BadValue {
                        key,
                        reason: format!("value is not valid UTF-8 ({e}): {:?}", shown(bytes, 80)),
                    })
                }
            },
            Err(e) => {
                return Err(SourceError::BadValue {
                    key,
                    reason: format!("value cannot be read: {e}"),
                })
            }
        }
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "d41d8cd98f00b204e9800998ecf8427e";

    #[test]
    fn connect_checks_syntax_only() {
        // Nothing listens there; connect must still succeed (lazy).
        for dsn in [
            "postgres://u:p@127.0.0.1:1/db",
            "mysql://u@127.0.0.1:1/db",
            "mariadb://u@127.0.0.1:1/db",
            "sqlite:///nonexistent/dir/shimmie.db",
        ] {
            let source = connect(dsn).unwrap_or_else(|e| panic!("{dsn}: {e}"));
            assert!(["postgres", "mysql", "sqlite"].contains(&source.engine()));
        }
        for dsn in ["redis://x", "static", "", "postgres://u@h:notaport/db"] {
            assert!(
                matches!(connect(dsn), Err(SourceError::Dsn { .. })),
                "{dsn}"
            );
        }
    }

    #[test]
    fn dsn_errors_mask_the_password() {
        assert_eq!(
            redact_dsn("postgres://shimmie:s3cret@db:5432/shimmie?sslmode=require"),
            "postgres://shimmie:***@db:5432/shimmie?sslmode=require"
        );
        assert_eq!(
            redact_dsn("postgres://shimmie@db/x"),
            "postgres://shimmie@db/x"
        );
        assert_eq!(redact_dsn("sqlite:///var/a.db"), "sqlite:///var/a.db");
        let err = connect("redis://u:pw@h/")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("u:***@h") && !err.contains("pw"), "{err}");
    }

    #[test]
    fn batch_builder_skips_and_advances_past_bad_rows() {
        let reported = Reported::default();
        let mut b = BatchBuilder::new("test", &reported, 4);
        let padded = format!("{}   ", H.to_uppercase());
        b.push(Some(1), Ok(Some(H.as_bytes())));
        b.push(Some(2), Ok(Some(b"not-a-hash")));
        b.push(Some(3), Ok(None));
        b.push(Some(4), Ok(Some(&[0xff, 0xfe][..])));
        b.push(Some(5), Ok(Some(padded.as_bytes())));
        b.push(None, Ok(Some(H.as_bytes())));
        let batch = b.finish();
        assert_eq!(batch.read, 6);
        assert_eq!(batch.skipped, 4);
        assert_eq!(batch.last_id, Some(5));
        let ids: Vec<i64> = batch.rows.iter().map(|r| r.id).collect();
        assert_eq!(ids, [1, 5]);
        assert_eq!(Some(batch.rows[1].hash), Md5::parse_any_case(H));
        // Reported once: a second pass over row 2 does not log again.
        assert!(!reported.first("ban 2".into()));
    }

    #[test]
    fn settings_rows_null_long_and_non_utf8() {
        let reported = Reported::default();
        let ok = settings_from_rows(
            "test",
            &reported,
            [
                (
                    Some(&b"image_ilink"[..]),
                    Ok(Some(&b"https://{a,b}.x/$hash"[..])),
                ),
                (Some(&b"image_tlink"[..]), Ok(None)),
                (Some(&b"other"[..]), Ok(Some(&b"x"[..]))),
            ],
        );
        let ok = ok.unwrap_or_default();
        assert_eq!(ok.image_ilink.as_deref(), Some("https://{a,b}.x/$hash"));
        assert_eq!(ok.image_tlink, None);

        let long = vec![b'a'; MAX_TEMPLATE_BYTES + 1];
        let err = settings_from_rows(
            "test",
            &reported,
            [(Some(&b"image_tlink"[..]), Ok(Some(&long[..])))],
        );
        assert!(matches!(
            err,
            Err(SourceError::BadValue {
                key: "image_tlink",
                ..
            })
        ));

        let err = settings_from_rows(
            "test",
            &reported,
            [(Some(&b"image_ilink"[..]), Ok(Some(&[b'{', 0xff][..])))],
        );
        let msg = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.starts_with("image_ilink: value is not valid UTF-8"),
            "{msg}"
        );
    }
}
