//! What can go wrong in the cache, for every tier: one error type at the `Storage`
//! boundary, turned into pingora's error (an `InternalError` with this as its cause) in
//! one place. I/O failures carry what was being done and the path it was done to,
//! attached where the call is made (`DiskStorage::write_failed`, the readers).

use std::io;
use std::path::PathBuf;

use pingora_error::{Error, ErrorType};

use super::disk::format::Corrupt;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The writer of an in-progress object went away before `finish()`.
    #[error("the fill of this object was abandoned before it completed")]
    Aborted,
    /// Body bytes arrived after the writer said the body had ended.
    #[error("body data written after end of stream")]
    WriteAfterEnd,
    /// A seek started at or past the end of the body.
    #[error("seek to byte {start} is past the end of a {len}-byte body")]
    SeekPastEnd { start: u64, len: u64 },
    /// A seek range ends before it starts.
    #[error("seek range {start}..{end} ends before it starts")]
    BadRange { start: u64, end: u64 },
    /// The body does not have the length the response header promised.
    #[error("body is {written} bytes but Content-Length says {expected}")]
    LengthMismatch { written: u64, expected: u64 },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// Reading a fill's temp file, which has no path any more once it is unlinked.
    #[error("reading the cache file failed: {0}")]
    ReadFill(#[source] io::Error),
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: Corrupt },
    #[error("not a cacheable object key (expected one made by ObjectRef::cache_key)")]
    BadKey,
    #[error("the disk tier takes no writes for now (recent write errors)")]
    DiskUnavailable,
    #[error("a {0}-byte body is over the disk tier's object limit")]
    TooLarge(u64),
    #[error("a {0}-byte meta does not fit a cache file header")]
    MetaTooLarge(usize),
    #[error("purged while it was being written")]
    Purged,
    #[error("the disk failed and the rest of the body is over the {cap}-byte memory fallback")]
    OverMemoryFallback { cap: usize },
}

impl CacheError {
    /// An I/O failure with its context: what was being done, to which path.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        CacheError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn into_pingora(self) -> Box<Error> {
        Error::because(ErrorType::InternalError, "cache", self)
    }
}

impl From<CacheError> for Box<Error> {
    fn from(e: CacheError) -> Self {
        e.into_pingora()
    }
}
