//! An object's meta as the memory tier keeps it: the internal part serialized (small
//! msgpack), the response header decoded, so a hit never decodes the header.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use once_cell::sync::Lazy;
use pingora_cache::CacheMeta;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;

use crate::cache::PreparedSlot;

/// An object's meta: the internal part serialized, the header decoded. Keeping the header
/// serialized meant a zstd decompression per hit, ~7% of a 20 KB hit's CPU (perf,
/// `make bench` hot20k); keeping it in both forms would charge the budget twice.
pub(crate) struct StoredMeta {
    internal: Vec<u8>,
    pub(super) decoded_header: ResponseHeader,
    decoded_bytes: usize,
    /// What the fast path needs of the internal meta, without decoding it.
    pub(super) fresh_until: SystemTime,
    pub(super) epoch: SystemTime,
    /// The answer head the proxy's fast path made for this object.
    prepared: PreparedSlot,
}

/// A completed, fresh object in the memory tier, for the proxy's fast path: what a plain
/// GET hit needs to be answered without pingora-cache's state machine.
pub struct FreshObject {
    meta: Arc<StoredMeta>,
    /// Seconds since the object was admitted or revalidated (the `Age` header).
    pub age_secs: u64,
    pub body: Bytes,
}

impl FreshObject {
    pub(super) fn new(meta: Arc<StoredMeta>, age_secs: u64, body: Bytes) -> Self {
        Self {
            meta,
            age_secs,
            body,
        }
    }

    /// The stored response header.
    pub fn header(&self) -> &ResponseHeader {
        &self.meta.decoded_header
    }

    /// Where the proxy keeps the answer head it made for this object.
    pub fn prepared(&self) -> &PreparedSlot {
        &self.meta.prepared
    }
}

/// The serialized form of an empty response header. A hit rebuilds its `CacheMeta` from
/// the (cheap, msgpack) internal part and this, then puts the decoded header in: the
/// zstd frame of an empty header costs next to nothing to decode. `CacheMeta` is not
/// `Clone`, hence the detour. `None` only if header serialization fails, and then no
/// object could have been stored in the first place (`from_meta` serializes too).
static EMPTY_HEADER: Lazy<Option<Vec<u8>>> = Lazy::new(|| {
    let header = ResponseHeader::build(200, Some(0)).ok()?;
    let now = SystemTime::now();
    let (_, serialized) = CacheMeta::new(now, now, 0, 0, header).serialize().ok()?;
    Some(serialized)
});

impl StoredMeta {
    /// For a fill of the memory tier alone. Pingora serializes the internal part only
    /// together with the header (zstd), so the header's bytes are made and dropped here;
    /// a tiered fill serializes once for the disk and uses [`Self::from_parts`].
    pub(super) fn from_meta(meta: &CacheMeta) -> Result<Self> {
        let (internal, _header) = meta.serialize()?;
        Ok(Self::from_parts(internal, meta))
    }

    /// From the internal part already serialized (for the disk tier) and the meta it
    /// came from: nothing is encoded again.
    pub(crate) fn from_parts(internal: Vec<u8>, meta: &CacheMeta) -> Self {
        Self {
            internal,
            // Without the name-case map: a hit clones one map instead of two, and the
            // fast path edits it in place (src/proxy/memory_hit.rs). Names then go out
            // as Pingora writes them without case: standard ones titled, others lower.
            decoded_header: ResponseHeader::from(meta.response_header().as_owned_parts()),
            decoded_bytes: decoded_bytes(meta),
            fresh_until: meta.fresh_until(),
            epoch: meta.epoch(),
            prepared: PreparedSlot::default(),
        }
    }

    /// What [`Self::len`] will be for `meta`, give or take the internal part (a few
    /// dozen bytes of msgpack, within the tiered store's per-object allowance), without
    /// serializing anything.
    pub(crate) fn estimated_len(meta: &CacheMeta) -> usize {
        decoded_bytes(meta)
    }

    pub(super) fn to_meta(&self) -> Result<CacheMeta> {
        let empty = EMPTY_HEADER.as_deref().ok_or_else(|| {
            Error::explain(
                ErrorType::InternalError,
                "cache header serialization unavailable",
            )
        })?;
        let mut meta = CacheMeta::deserialize(&self.internal, empty)?;
        *meta.response_header_mut() = self.decoded_header.clone();
        Ok(meta)
    }

    pub(crate) fn len(&self) -> usize {
        self.internal.len() + self.decoded_bytes
    }
}

/// What the decoded header map holds, plus a small per-header allowance for its
/// bookkeeping: charged like the rest, so the budget stays honest.
fn decoded_bytes(meta: &CacheMeta) -> usize {
    meta.headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum()
}
