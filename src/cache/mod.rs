//! Cache storage behind pingora-cache: the memory tier, the disk tier and the tiered
//! composition the proxy enables (see `README.md` in this directory for the design).
//!
//! - [`memory::MemoryStorage`]: byte-bounded, TinyUFO (TinyLFU admission, S3-FIFO).
//! - [`disk::DiskStorage`]: a file per object under `<dir>/<silo>/<ab>/<cd>/<hash>`,
//!   crash-safe (temp file + rename), checked header, LRU-bounded by bytes, rebuilt from
//!   the directory in the background after a restart, adopts shm-cached directories.
//! - [`tiered::TieredStorage`]: memory over disk; fills go to both, disk hits are
//!   promoted into memory, a disk that cannot be written degrades to memory only.
pub mod disk;
mod error;
pub(crate) mod fills;
pub mod memory;
mod meta;
mod stream;
pub mod tiered;

use std::sync::atomic::{AtomicU64, Ordering};

pub use error::CacheError;
pub(crate) use fills::FillRegistry;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{header, StatusCode};
use pingora_cache::CacheMeta;
use pingora_http::ResponseHeader;

/// How long a 200 is fresh (an origin fill or a peer's copy). Content is addressed by
/// its md5, so it never changes; bans and purges remove it explicitly.
pub const IMMUTABLE_TTL: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// An answer head serialized once and sent with every later hit, valid for the config
/// it was made with (`tag`, the proxy's [`crate::config::AnswerHeaders::generation`]).
struct PreparedHead {
    tag: u64,
    bytes: bytes::Bytes,
}

/// Where a tier keeps the head the proxy's fast path made for an object, for the
/// object's next hits (its header never changes while it is stored: a new meta or a
/// new file is a new slot). Not charged to a budget: a few hundred bytes, made only
/// for objects that are hit.
#[derive(Default)]
pub struct PreparedSlot(arc_swap::ArcSwapOption<PreparedHead>);

impl PreparedSlot {
    /// The head kept here, if it was made with config `tag`.
    pub fn get(&self, tag: u64) -> Option<bytes::Bytes> {
        let kept = self.0.load();
        kept.as_ref()
            .filter(|p| p.tag == tag)
            .map(|p| p.bytes.clone())
    }

    /// Keeps `bytes`, the head made with config `tag`.
    pub fn keep(&self, tag: u64, bytes: bytes::Bytes) {
        let head = PreparedHead { tag, bytes };
        self.0.store(Some(std::sync::Arc::new(head)));
    }

    /// The head kept for config `tag`, or the one `make` makes, kept from now on.
    pub fn get_or_make(&self, tag: u64, make: impl FnOnce() -> bytes::Bytes) -> bytes::Bytes {
        self.get(tag).unwrap_or_else(|| {
            let bytes = make();
            self.keep(tag, bytes.clone());
            bytes
        })
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_now() -> u64 {
    unix_secs(SystemTime::now())
}

/// `t` as a Unix second (0 before the epoch).
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Lets a recurring warning through at most once per interval; the caller counts every
/// occurrence in a metric, the log only says that it keeps happening.
pub(crate) struct LogEvery {
    last: AtomicU64,
    every_secs: u64,
}

impl LogEvery {
    pub(crate) const fn new(every_secs: u64) -> Self {
        Self {
            last: AtomicU64::new(0),
            every_secs,
        }
    }

    /// Whether this occurrence should be logged.
    pub(crate) fn ready(&self) -> bool {
        let now = unix_now();
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now < last.saturating_add(self.every_secs) {
            return false;
        }
        self.last
            .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

/// How far a fill in progress has got: what the proxy's Range pass-through
/// (`src/proxy/range.rs`) compares a Range with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FillProgress {
    /// Body bytes written so far: a reader can have `[0, written)` now.
    pub written: u64,
    /// The body's length, when the response declares one.
    pub total: Option<u64>,
}

/// The body length a response declares and that its body must match, if any.
pub(crate) fn declared_len(meta: &CacheMeta) -> Option<u64> {
    declared_body_len(meta.response_header())
}

/// [`declared_len`] of a response header.
pub(crate) fn declared_body_len(resp: &ResponseHeader) -> Option<u64> {
    let bodyless = resp.status.is_informational()
        || resp.status == StatusCode::NO_CONTENT
        || resp.status == StatusCode::NOT_MODIFIED;
    if bodyless || resp.headers.contains_key(header::TRANSFER_ENCODING) {
        return None;
    }
    resp.headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}
