//! What the running mirror shares between requests and background services: the
//! current settings and fleet view (swapped whole on reload or sync), and the cache
//! parts that Pingora needs as `&'static`.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora_cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora_cache::predictor::Predictor;

use crate::cache::memory::MemoryStorage;
use crate::config::Settings;
use crate::fleet::FleetView;

/// The cache parts live for the whole process: Pingora's cache API takes `&'static`.
pub struct CacheParts {
    pub memory: MemoryStorage,
    pub lock: Box<CacheKeyLockImpl>,
    /// Remembers keys that turned out uncacheable (too large, origin said no), so
    /// their next requests skip the cache lock instead of queueing behind it.
    pub predictor: Predictor<16>,
}

impl CacheParts {
    /// Builds the parts once and leaks them: they are never freed before exit.
    pub fn leak(settings: &Settings) -> &'static CacheParts {
        // A writer holding the lock longer than this is presumed dead and others compete
        // for the lock again; a slow origin streaming a big video must not trip it.
        let lock_age = settings.lock_timeout.max(Duration::from_secs(1)) * 6;
        Box::leak(Box::new(CacheParts {
            memory: MemoryStorage::with_max_object_bytes(
                usize::try_from(settings.memory_bytes).unwrap_or(usize::MAX),
                usize::try_from(settings.max_object_bytes).unwrap_or(usize::MAX),
            ),
            lock: CacheLock::new_boxed(lock_age),
            predictor: Predictor::new(4096, None),
        }))
    }
}

/// The mirror's shared state. Requests take one snapshot of each `ArcSwap` and keep it.
pub struct Shared {
    pub settings: ArcSwap<Settings>,
    pub fleet: ArcSwap<FleetView>,
    pub cache: &'static CacheParts,
}

impl Shared {
    pub fn new(settings: Settings, fleet: FleetView, cache: &'static CacheParts) -> Arc<Shared> {
        Arc::new(Shared {
            settings: ArcSwap::from_pointee(settings),
            fleet: ArcSwap::from_pointee(fleet),
            cache,
        })
    }
}
