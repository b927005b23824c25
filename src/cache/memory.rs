//! The memory tier: a byte-bounded, scan-resistant pingora-cache [`Storage`].
//!
//! pingora-cache's `MemCache` is unbounded and test-only, so this is our own.
//!
//! - **Completed objects** live in a [`TinyUfo`] (TinyLFU admission + S3-FIFO eviction), so
//!   a crawl of one-hit images cannot flush the hot set. TinyUFO is the eviction policy: use
//!   this storage with no pingora `EvictionManager` (pass `None` to `HttpCache::enable`).
//! - **Objects being fetched** live in a separate in-progress map (see `fill`), visible to
//!   `lookup` so that readers released by the cache lock stream the body while it arrives.
//!   A fill that dies before `finish()` makes its readers fail, never end cleanly (#932).
//!
//! Byte accounting: every resident object is charged `body + stored meta (internal part + decoded header) +
//! ENTRY_OVERHEAD` bytes. Our own ledger (behind one mutex that also serializes every TinyUFO
//! `put`) records each resident entry and is updated from what `put` returns, so
//! `stats().bytes` is exactly the sum of what is resident and never exceeds the budget.
//! Fills in progress are not charged to the budget (they are reported as `fill_bytes`);
//! bound them with `HttpCache::set_max_file_size_bytes`.
//!
//! The budget is fixed at construction: TinyUFO's weight limit cannot be changed after it is
//! built, so a new budget needs a new `MemoryStorage` (i.e. a restart or graceful upgrade).

mod fill;
mod hit;
mod meta;
#[cfg(test)]
mod tests;

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use pingora_cache::key::{CacheHashKey, HashBinary};
use pingora_cache::storage::streaming_write::U64WriteId;
use pingora_cache::storage::{HitHandler, MissHandler, PurgeOutcome, PurgeTarget, PurgeType};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheEntryKey, CacheKey, CacheMeta, Storage};
use pingora_error::Result;
use tinyufo::TinyUfo;

use crate::cache::declared_len;
use crate::cache::CacheError;
use crate::cache::{FillProgress, FillRegistry};
use fill::{Fill, MemoryMissHandler};
use hit::CompleteHit;
pub use meta::FreshObject;
pub(crate) use meta::StoredMeta;

/// Bytes charged per object on top of body and metadata: a fixed estimate of our
/// bookkeeping (ledger entry, TinyUFO bucket and queue slot, `Arc`s, key).
const ENTRY_OVERHEAD: usize = 128;
/// Largest object admitted by default. TinyUFO weights are `u16`, so the byte-to-weight unit
/// is `max_object / 65535`; a smaller max object means finer accounting for small images.
pub const DEFAULT_MAX_OBJECT_BYTES: usize = 64 << 20;
/// By default one object may take at most this fraction (1/N) of the budget.
const MAX_OBJECT_FRACTION: usize = 8;
/// Typical object size, used only to size TinyUFO's tables and frequency sketch.
const ESTIMATED_OBJECT_BYTES: usize = 16 << 10;

/// Counters for Prometheus. `evictions`, `evicted_bytes` and `rejected` are cumulative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// The byte budget for completed objects.
    pub budget: usize,
    /// Bytes charged for resident completed objects (always `<= budget`).
    pub bytes: usize,
    /// Resident completed objects.
    pub objects: usize,
    /// Objects evicted to make room (not counting purges or replacements).
    pub evictions: u64,
    /// Bytes charged for the evicted objects.
    pub evicted_bytes: u64,
    /// Completed objects not admitted: too large, or lost TinyLFU's admission contest.
    pub rejected: u64,
    /// Fills in progress.
    pub fills: usize,
    /// Body bytes held by fills in progress (and their readers), outside the budget.
    pub fill_bytes: usize,
}

/// One TinyUFO value: a completed object, or a tombstone left by a purge.
pub(crate) struct Slot {
    key: HashBinary,
    id: u64,
    charged: usize,
    object: Option<Object>,
}

/// A completed object.
pub(crate) struct Object {
    meta: Arc<StoredMeta>,
    body: Bytes,
}

/// The bytes charged against the budget for one object.
fn charge(body_len: usize, meta: &StoredMeta) -> usize {
    body_len
        .saturating_add(meta.len())
        .saturating_add(ENTRY_OVERHEAD)
}

/// What the ledger knows about one TinyUFO entry.
#[derive(Clone, Copy)]
struct Resident {
    id: u64,
    charged: usize,
    live: bool,
}

/// Exact mirror of TinyUFO's contents, kept under one mutex with every `put`.
#[derive(Default)]
struct Ledger {
    resident: HashMap<HashBinary, Resident>,
    bytes: usize,
    objects: usize,
    evictions: u64,
    evicted_bytes: u64,
    rejected: u64,
}

impl Ledger {
    fn add(&mut self, key: HashBinary, r: Resident) {
        self.bytes += r.charged;
        self.objects += usize::from(r.live);
        self.resident.insert(key, r);
    }

    /// Drop `key` from the ledger if it still records entry `id`.
    fn take(&mut self, key: &HashBinary, id: u64) -> Option<Resident> {
        let r = *self.resident.get(key).filter(|r| r.id == id)?;
        self.resident.remove(key);
        self.bytes -= r.charged;
        self.objects -= usize::from(r.live);
        Some(r)
    }
}

/// The production memory tier. Build it once and leak it (or keep it in a static): pingora
/// wants `&'static dyn Storage`.
pub struct MemoryStorage {
    objects: TinyUfo<HashBinary, Arc<Slot>>,
    ledger: Mutex<Ledger>,
    /// In-progress writes by key; usually one per key, more if writers raced past the lock.
    fills: FillRegistry<Fill>,
    next_id: AtomicU64,
    fill_bytes: AtomicUsize,
    budget: usize,
    max_object: usize,
    /// Bytes per TinyUFO weight unit.
    unit: usize,
    /// The budget in weight units, as TinyUFO enforces it.
    limit_units: usize,
}

impl MemoryStorage {
    /// A memory tier of `budget_bytes`, admitting objects up to `budget / 8` (at most
    /// [`DEFAULT_MAX_OBJECT_BYTES`]).
    pub fn new(budget_bytes: usize) -> Self {
        let max_object = (budget_bytes / MAX_OBJECT_FRACTION).min(DEFAULT_MAX_OBJECT_BYTES);
        Self::with_max_object_bytes(budget_bytes, max_object)
    }

    /// A memory tier of `budget_bytes` admitting objects whose charge (body + meta +
    /// overhead) is at most `max_object_bytes` (clamped to the budget).
    pub fn with_max_object_bytes(budget_bytes: usize, max_object_bytes: usize) -> Self {
        let max_object = max_object_bytes.min(budget_bytes);
        // Round up so that no admissible object needs more than u16::MAX units.
        let unit = max_object.div_ceil(usize::from(u16::MAX)).max(1);
        // Floor: TinyUFO keeping units <= limit_units then keeps bytes <= budget.
        let limit_units = budget_bytes / unit;
        let estimated = (budget_bytes / ESTIMATED_OBJECT_BYTES).clamp(256, 4 << 20);
        Self {
            objects: TinyUfo::new(limit_units, estimated),
            ledger: Mutex::new(Ledger::default()),
            fills: FillRegistry::default(),
            next_id: AtomicU64::new(1),
            fill_bytes: AtomicUsize::new(0),
            budget: budget_bytes,
            max_object,
            unit,
            limit_units,
        }
    }

    /// The byte budget for completed objects.
    pub fn budget_bytes(&self) -> usize {
        self.budget
    }

    /// The largest charge (body + meta + overhead) an object may have to be admitted.
    pub fn max_object_bytes(&self) -> usize {
        self.max_object
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> MemoryStats {
        let (fills, _) = self.fills.count_and_sum(|_| 0);
        let fill_bytes = self.fill_bytes.load(Ordering::Relaxed);
        let ledger = self.ledger.lock();
        MemoryStats {
            budget: self.budget,
            bytes: ledger.bytes,
            objects: ledger.objects,
            evictions: ledger.evictions,
            evicted_bytes: ledger.evicted_bytes,
            rejected: ledger.rejected,
            fills,
            fill_bytes,
        }
    }

    /// The key hashes of every resident completed object, copied under the ledger lock
    /// in one pass (no TinyUFO access, so no effect on admission or eviction). For the
    /// reconcile of deleted posts, once a pass. Hits never take this lock; fills
    /// finishing and purges wait for the copy: 17 ms for a million objects measured on
    /// the 2-core VM (a 16G tier of 100 KB images holds 160,000).
    pub fn resident_keys(&self) -> Vec<HashBinary> {
        let ledger = self.ledger.lock();
        let mut keys = Vec::with_capacity(ledger.objects);
        keys.extend(
            ledger
                .resident
                .iter()
                .filter(|(_, r)| r.live)
                .map(|(k, _)| *k),
        );
        keys
    }

    /// Remove the object for `key` (a [`CacheKey`] or
    /// [`CompactCacheKey`](pingora_cache::key::CompactCacheKey)), and keep any fill in
    /// progress for it from being stored or served to new readers. Used for bans.
    /// Returns whether anything was found. Only the entry with exactly this key's variance
    /// is removed (shimmer keys have none).
    pub fn remove<K: CacheHashKey + ?Sized>(&self, key: &K) -> bool {
        self.remove_hash(&key.combined_bin())
    }

    /// [`Self::remove`] by the key's combined hash (equal to the primary hash when, as in
    /// shimmer, there is no Vary variance).
    pub fn remove_hash(&self, hash: &HashBinary) -> bool {
        let mut ledger = self.ledger.lock();
        // Checked by `commit` under the ledger lock, so a fill that started before a ban
        // can never store the banned object afterwards.
        let found = self.fills.mark_purged(hash);
        found | self.tombstone(&mut ledger, hash)
    }

    /// Replace the resident object for `hash` with a tombstone; returns whether there was one.
    /// Not `TinyUfo::remove`: in TinyUFO 0.9.1 it leaves the key in its FIFO queue, and a
    /// later re-insert of that key can subtract its weight twice (an overflow panic in debug
    /// builds, a full flush in release; see the purge-then-refill test). A tombstone `put`
    /// replaces the entry in place and is evicted like any other entry.
    fn tombstone(&self, ledger: &mut Ledger, hash: &HashBinary) -> bool {
        if !ledger.resident.get(hash).is_some_and(|r| r.live) {
            return false;
        }
        let tombstone = Slot {
            key: *hash,
            id: self.next_id(),
            charged: 0,
            object: None,
        };
        self.store(ledger, tombstone);
        true
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// TinyUFO weight for a charge, or `None` if it must not be admitted.
    fn units(&self, charged: usize) -> Option<u16> {
        let units = charged.div_ceil(self.unit).max(1);
        if charged > self.max_object || units > self.limit_units {
            return None;
        }
        u16::try_from(units).ok()
    }

    /// Put `slot` into TinyUFO and bring the ledger in line with what TinyUFO did.
    /// The caller holds the ledger lock, which serializes all puts. Returns whether `slot`
    /// is resident afterwards.
    fn store(&self, ledger: &mut Ledger, slot: Slot) -> bool {
        let Some(units) = self.units(slot.charged) else {
            ledger.rejected += u64::from(slot.object.is_some());
            return false;
        };
        let (key, id) = (slot.key, slot.id);
        // TinyUFO replaces an existing entry for the key in place and drops the old value
        // without returning it, so forget the old one now.
        if let Some(old) = ledger.resident.get(&key).copied() {
            ledger.take(&key, old.id);
        }
        let live = slot.object.is_some();
        ledger.add(
            key,
            Resident {
                id,
                charged: slot.charged,
                live,
            },
        );
        // Everything TinyUFO let go of comes back here: evicted entries, or the new one
        // itself if TinyLFU judged it less popular than its victim.
        for kv in self.objects.put(key, Arc::new(slot), units) {
            let gone = kv.data;
            let Some(r) = ledger.take(&gone.key, gone.id) else {
                continue; // only a 64-bit hash collision in TinyUFO gets here
            };
            if gone.id == id {
                ledger.rejected += u64::from(live);
            } else if r.live {
                ledger.evictions += 1;
                ledger.evicted_bytes += r.charged as u64;
            }
        }
        debug_assert!(ledger.bytes <= self.budget);
        ledger.resident.get(&key).is_some_and(|r| r.id == id)
    }

    /// Store a finished fill. Returns the bytes charged if it was admitted.
    fn commit(&self, fill: &Fill, body: Bytes) -> Option<usize> {
        let charged = charge(body.len(), &fill.meta);
        let slot = Slot {
            key: fill.key,
            id: self.next_id(),
            charged,
            object: Some(Object {
                meta: fill.meta.clone(),
                body,
            }),
        };
        let mut ledger = self.ledger.lock();
        if fill.purged.load(Ordering::Acquire) {
            return None;
        }
        self.store(&mut ledger, slot).then_some(charged)
    }

    /// Replace the meta of a resident object, keeping its body. Caller holds the ledger.
    fn replace_meta(&self, ledger: &mut Ledger, hash: &HashBinary, meta: StoredMeta) -> bool {
        let Some(body) = self
            .live_slot(hash)
            .and_then(|s| Some(s.object.as_ref()?.body.clone()))
        else {
            return false;
        };
        let meta = Arc::new(meta);
        let slot = Slot {
            key: *hash,
            id: self.next_id(),
            charged: charge(body.len(), &meta),
            object: Some(Object { meta, body }),
        };
        self.store(ledger, slot)
    }

    /// The resident completed object for `hash`, if any (counts as an access in TinyUFO).
    fn live_slot(&self, hash: &HashBinary) -> Option<Arc<Slot>> {
        self.objects
            .get(hash)
            .filter(|s| s.key == *hash && s.object.is_some())
    }

    /// The completed object for `hash` if it is fresh at `now` and no fill for it is in
    /// progress (a fill would be newer). Counts as an access, like a `lookup` hit.
    pub fn fresh_object(&self, hash: &HashBinary, now: SystemTime) -> Option<FreshObject> {
        if self.fills.contains(hash) {
            return None;
        }
        let slot = self.live_slot(hash)?;
        let object = slot.object.as_ref()?;
        let meta = &object.meta;
        if meta.fresh_until < now {
            return None;
        }
        let age_secs = now
            .duration_since(meta.epoch)
            .map_or(0, |age| age.as_secs());
        Some(FreshObject::new(
            meta.clone(),
            age_secs,
            object.body.clone(),
        ))
    }

    /// A fill whose meta is already prepared (the tiered store's, serialized once).
    pub(crate) fn miss_handler_for(
        &'static self,
        hash: HashBinary,
        meta: StoredMeta,
        expected_len: Option<u64>,
    ) -> MissHandler {
        let fill = Arc::new(Fill::new(self, hash, self.next_id(), Arc::new(meta)));
        self.fills.insert(fill.clone());
        Box::new(MemoryMissHandler::new(fill, expected_len))
    }

    /// Stores a complete body that is already one exact-size buffer, without copying it.
    /// Returns the bytes charged if TinyLFU admitted it.
    pub(crate) fn insert_whole(
        &'static self,
        hash: HashBinary,
        meta: StoredMeta,
        body: Bytes,
    ) -> Option<usize> {
        let fill = Fill::new(self, hash, self.next_id(), Arc::new(meta));
        self.commit(&fill, body)
    }

    /// How far the fill a lookup of `hash` would attach to has got, if one is in progress.
    pub(crate) fn fill_progress(&self, hash: &HashBinary) -> Option<FillProgress> {
        self.fills.active(hash).map(|f| f.progress())
    }

    fn forget_fill(&self, fill: &Fill) {
        self.fills.forget(fill);
    }

    fn purge_target(&self, target: PurgeTarget<'_>) -> PurgeOutcome {
        // We assign no entry ids, so an identified entry cannot be ours.
        if matches!(target, PurgeTarget::Exact(CacheEntryKey::Identified { .. })) {
            return PurgeOutcome::NotFound;
        }
        if self.remove(target.key()) {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        }
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let hash = key.combined_bin();
        // Prefer a fill in progress: during a refresh it is newer than the stored object.
        if let Some(fill) = self.fills.active(&hash) {
            return fill.hit().map(Some);
        }
        let Some(slot) = self.live_slot(&hash) else {
            return Ok(None);
        };
        let Some(object) = slot.object.as_ref() else {
            return Ok(None);
        };
        let meta = object.meta.to_meta()?;
        let hit = CompleteHit::new(object.body.clone(), slot.charged);
        Ok(Some((meta, Box::new(hit))))
    }

    async fn lookup_streaming_write(
        &'static self,
        key: &CacheKey,
        streaming_write_tag: Option<&[u8]>,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(tag) = streaming_write_tag else {
            return self.lookup(key, trace).await;
        };
        // A tag we did not issue matches no write of ours.
        let Ok(id) = U64WriteId::try_from(tag).map(u64::from) else {
            return Ok(None);
        };
        let hash = key.combined_bin();
        // Purged fills stay findable by tag: their own writer still streams its client.
        self.fills.by_id(&hash, id).map(|f| f.hit()).transpose()
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let stored = StoredMeta::from_meta(meta)?;
        Ok(self.miss_handler_for(key.combined_bin(), stored, declared_len(meta)))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        Ok(self.purge_target(target))
    }

    async fn expire(
        &'static self,
        target: PurgeTarget<'_>,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        if matches!(target, PurgeTarget::Exact(CacheEntryKey::Identified { .. })) {
            return Ok(PurgeOutcome::NotFound);
        }
        let hash = target.key().combined_bin();
        // Fills in progress are left alone: they carry a fresh response.
        let mut ledger = self.ledger.lock();
        let Some(object) = self.live_slot(&hash).and_then(|s| {
            let o = s.object.as_ref()?;
            Some(o.meta.clone())
        }) else {
            return Ok(PurgeOutcome::NotFound);
        };
        let mut meta = object.to_meta()?;
        meta.expire_at(SystemTime::now());
        let meta = StoredMeta::from_meta(&meta)?;
        if self.replace_meta(&mut ledger, &hash, meta) {
            Ok(PurgeOutcome::Expired)
        } else {
            // Could not be stored stale (its meta grew past the max size): delete it instead,
            // which the contract allows, so it is never served as fresh.
            self.tombstone(&mut ledger, &hash);
            Ok(PurgeOutcome::Purged(None))
        }
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let meta = StoredMeta::from_meta(meta)?;
        let mut ledger = self.ledger.lock();
        Ok(self.replace_meta(&mut ledger, &key.combined_bin(), meta))
    }

    fn support_streaming_partial_write(&self) -> bool {
        true
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}
