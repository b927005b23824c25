//! What requests read, shared with the background services that change it: the
//! current settings and fleet view (swapped whole on reload or sync), the bans, the
//! readiness flag, and the cache parts that Pingora needs as `&'static`. Nothing here
//! exists only for a background service (the reloader holds the certificate store and
//! the fixed config itself).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use arc_swap::{ArcSwap, ArcSwapOption};
use pingora_cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora_cache::predictor::Predictor;

use crate::cache::disk::DiskStorage;
use crate::cache::memory::MemoryStorage;
use crate::cache::tiered::TieredStorage;
use crate::config::{Fixed, Settings};
use crate::fleet::{FleetView, Silo};
use crate::metrics;
use crate::object::{Md5, ObjectRef};
use crate::peers::{peer_table, Peers};
use crate::shimmie::{Bans, S3Rows};
use crate::sync::{SyncService, SyncTarget};

/// The cache parts live for the whole process: Pingora's cache API takes `&'static`.
pub struct CacheParts {
    /// The memory tier (also inside `storage`).
    pub memory: &'static MemoryStorage,
    /// The disk tier, when `shimmer.cache.dir` is set (also inside `storage`).
    pub disk: Option<&'static DiskStorage>,
    /// What the proxy enables: the memory tier over the disk tier. Purge through it
    /// (`purge_hash`) to reach every tier.
    pub storage: TieredStorage,
    pub lock: Box<CacheKeyLockImpl>,
    /// Remembers keys that turned out uncacheable (too large, origin said no), so
    /// their next requests skip the cache lock instead of queueing behind it.
    pub predictor: Predictor<16>,
    /// Proxy mode's hot cache (`shimmer.proxy.hot_bytes`, fixed at start): the hottest
    /// objects this node fetches from their owners, as groupcache's hot cache. The
    /// memory tier's TinyLFU admission is what keeps it to the hottest.
    pub hot: Option<&'static MemoryStorage>,
    /// The hot cache's own: too large for the hot cache is not too large to own.
    pub hot_predictor: Predictor<16>,
}

impl CacheParts {
    /// Builds the parts once and leaks them: they are never freed before exit. The disk
    /// directory is prepared here (no threads: Pingora may fork after this); its
    /// restart scan starts with the first request. The budgets are fixed; the lock's
    /// age limit and the memory tier's object cap come from the settings at start.
    pub fn leak(fixed: &Fixed, settings: &Settings) -> &'static CacheParts {
        // A writer holding the lock longer than this is presumed dead and others compete
        // for the lock again; a slow origin streaming a big video must not trip it.
        let lock_age = settings.lock_timeout.max(Duration::from_secs(1)) * 6;
        let memory: &'static MemoryStorage =
            Box::leak(Box::new(MemoryStorage::with_max_object_bytes(
                usize::try_from(fixed.memory_bytes).unwrap_or(usize::MAX),
                usize::try_from(settings.max_object_bytes).unwrap_or(usize::MAX),
            )));
        let disk = fixed
            .disk
            .clone()
            .map(|cfg| &*Box::leak(Box::new(DiskStorage::open(cfg))));
        Box::leak(Box::new(CacheParts {
            memory,
            disk,
            storage: TieredStorage::new(memory, disk),
            lock: CacheLock::new_boxed(lock_age),
            predictor: Predictor::new(4096, None),
            hot: (settings.mode == crate::config::Mode::Proxy && settings.peers.hot_bytes > 0)
                .then(|| {
                    let bytes = usize::try_from(settings.peers.hot_bytes).unwrap_or(usize::MAX);
                    // An object larger than an eighth of the share would flush it.
                    &*Box::leak(Box::new(MemoryStorage::with_max_object_bytes(
                        bytes,
                        bytes / 8,
                    )))
                }),
            hot_predictor: Predictor::new(1024, None),
        }))
    }
}

/// The mirror's shared state. Requests take one snapshot of each `ArcSwap` and keep it.
pub struct Shared {
    pub settings: ArcSwap<Settings>,
    pub fleet: ArcSwap<FleetView>,
    pub cache: &'static CacheParts,
    /// Increases with every fleet view swapped in (1 = the view loaded at start).
    pub view_version: AtomicU64,
    /// Whether the mirror serves yet (`/readyz`); set by [`MarkReady`] only.
    pub ready: Readiness,
    /// Banned hashes (from Shimmie's `image_bans`): 404 whatever any cache holds.
    pub bans: Bans,
    /// The database sync, when the source is a database (for status and metrics).
    pub sync: OnceLock<Arc<SyncService>>,
    /// The other mirrors: addresses and health (probed by `peers::health`).
    pub peers: Arc<Peers>,
    /// The view before the current one and when it was replaced, for handoff.
    pub previous_view: ArcSwapOption<PreviousView>,
    /// Copies of origin fills at the other owner (`peers::warm`).
    pub warm: crate::peers::warm::Warm,
    /// `origin: shimmie`: the last Shimmie S3 settings that built (to build again on
    /// reload, with the new file's overrides). Also held by every settings swap, so a
    /// reload and the sync cannot undo each other's swap.
    shimmie_origin: parking_lot::Mutex<Option<S3Rows>>,
}

/// A view that placement has moved on from, kept for `shimmer.fleet.handoff`.
pub struct PreviousView {
    pub view: Arc<FleetView>,
    pub replaced_at: Instant,
}

impl Shared {
    pub fn new(settings: Settings, fleet: FleetView, cache: &'static CacheParts) -> Arc<Shared> {
        let table = peer_table(&settings.node, &fleet, &settings.peers.peers);
        let peers = Peers::new(&settings.node, table, settings.peers.clone());
        let shared = Arc::new(Shared {
            settings: ArcSwap::from_pointee(settings),
            fleet: ArcSwap::from_pointee(fleet),
            cache,
            view_version: AtomicU64::new(1),
            ready: Readiness::default(),
            bans: Bans::new(),
            sync: OnceLock::new(),
            peers,
            previous_view: ArcSwapOption::empty(),
            warm: crate::peers::warm::Warm::default(),
            shimmie_origin: parking_lot::Mutex::new(None),
        });
        shared.record_view(&shared.fleet.load(), 1);
        shared
    }

    /// Swaps in a new fleet view: requests already running finish on the old one.
    pub fn install_view(&self, view: FleetView) {
        let version = self.view_version.fetch_add(1, Ordering::SeqCst) + 1;
        self.record_view(&view, version);
        let before = self.fleet.swap(Arc::new(view));
        if !before.same_placement(&self.fleet.load()) {
            self.previous_view.store(Some(Arc::new(PreviousView {
                view: before,
                replaced_at: Instant::now(),
            })));
        }
        self.refresh_peers();
    }

    /// The previous view, while its handoff lasts.
    pub fn handoff_view(&self, handoff: Duration) -> Option<Arc<FleetView>> {
        let p = self.previous_view.load_full()?;
        (p.replaced_at.elapsed() < handoff).then(|| p.view.clone())
    }

    /// Swaps in new settings (a reload): requests already running keep theirs. With
    /// `origin: shimmie` the bucket read from the database is built again with the new
    /// file's overrides (if that fails, the bucket in force stays).
    pub fn install_settings(&self, mut settings: Settings) {
        let rows = self.shimmie_origin.lock();
        if let (Some(opts), Some(rows)) = (&settings.shimmie_origin, rows.as_ref()) {
            match crate::origin::shimmie::build(rows, opts, crate::config::resolve_origin) {
                Ok(s3) => use_bucket(&mut settings, Arc::new(s3)),
                Err(why) => {
                    tracing::error!("reload: the bucket from Shimmie's config does not build with the new file ({why}); the bucket in force stays");
                    if let Some(s3) = self.settings.load().s3.clone() {
                        use_bucket(&mut settings, s3);
                    }
                }
            }
        }
        self.settings.store(Arc::new(settings));
        drop(rows);
        self.refresh_peers();
    }

    /// `origin: shimmie`: builds the bucket Shimmie's S3 settings name and swaps it into
    /// the settings. Returns a line about it, or why the rows do not build.
    pub fn install_shimmie_origin(&self, rows: &S3Rows) -> Result<String, String> {
        let mut held = self.shimmie_origin.lock();
        let current = self.settings.load_full();
        let Some(opts) = &current.shimmie_origin else {
            return Err("the settings in force do not say origin: shimmie".into());
        };
        let s3 = crate::origin::shimmie::build(rows, opts, crate::config::resolve_origin)?;
        let described = crate::origin::shimmie::describe(&s3);
        let mut next = Settings::clone(&current);
        use_bucket(&mut next, Arc::new(s3));
        self.settings.store(Arc::new(next));
        *held = Some(rows.clone());
        Ok(described)
    }

    /// The peer table follows the view (template links) and `shimmer.peers`.
    fn refresh_peers(&self) {
        let s = self.settings.load();
        let table = peer_table(&s.node, &self.fleet.load(), &s.peers.peers);
        self.peers.update(&s.node, table, s.peers.clone());
    }

    fn record_view(&self, view: &FleetView, version: u64) {
        let node = self.settings.load().node.clone();
        metrics::VIEW_VERSION.set(i64::try_from(version).unwrap_or(i64::MAX));
        metrics::NODE_WEIGHT.reset();
        for silo in Silo::ALL {
            for n in view.template(silo).nodes() {
                metrics::NODE_WEIGHT
                    .with_label_values(&[silo.as_str(), &n.name])
                    .set(n.weight as f64);
            }
            metrics::EXPECTED_SHARE
                .with_label_values(&[silo.as_str()])
                .set(view.primary_share(silo, &node));
        }
    }

    /// Removes an image from every cache tier, both silos. Returns whether any tier
    /// held it.
    pub fn purge_hash(&self, hash: Md5) -> bool {
        // Through the tiered store, so the disk tier's file is unlinked too.
        let mut found = self.cache.storage.purge_hash(hash);
        if let Some(hot) = self.cache.hot {
            for silo in Silo::ALL {
                found |= hot.remove_hash(&crate::object::ObjectRef::new(silo, hash).key_hash());
            }
        }
        found
    }

    /// The cache tiers' numbers, for `/status` and `/metrics`.
    pub fn tier_stats(&self) -> Vec<metrics::TierStats> {
        let stats = self.cache.storage.stats();
        let memory_row = |tier, m: crate::cache::memory::MemoryStats| metrics::TierStats {
            tier,
            bytes: m.bytes as u64,
            objects: m.objects as u64,
            budget: m.budget as u64,
            evictions: m.evictions,
            evicted_bytes: m.evicted_bytes,
        };
        let mut tiers = vec![memory_row("memory", stats.memory)];
        if let Some(hot) = self.cache.hot {
            tiers.push(memory_row("hot", hot.stats()));
        }
        if let Some(d) = stats.disk {
            tiers.push(metrics::TierStats {
                tier: "disk",
                bytes: d.bytes,
                objects: d.objects,
                budget: d.budget,
                evictions: d.evictions,
                evicted_bytes: d.evicted_bytes,
            });
        }
        tiers
    }
}

/// Makes `s3` the origin of `settings` (its endpoint the one server).
fn use_bucket(settings: &mut Settings, s3: Arc<crate::origin::s3::S3Origin>) {
    settings.origins = vec![s3.server.clone()];
    settings.s3 = Some(s3);
}

/// Whether the mirror can serve: false until the services run, then true for good.
#[derive(Debug, Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    /// What `/readyz` answers from.
    pub fn load(&self, order: Ordering) -> bool {
        self.0.load(order)
    }
}

/// The one writer of [`Shared::ready`]: a background service that sets it when it
/// starts. Services start once the server runs its listeners, and a view was loaded
/// before any of them: from then on the mirror can serve.
pub struct MarkReady(pub Arc<Shared>);

#[async_trait]
impl BackgroundService for MarkReady {
    async fn start(&self, _shutdown: ShutdownWatch) {
        self.0.ready.0.store(true, Ordering::SeqCst);
    }
}

/// The database sync drives the mirror through this seam.
#[async_trait]
impl SyncTarget for Shared {
    fn algorithm(&self) -> crate::fleet::Algorithm {
        self.settings.load().fleet.algorithm
    }

    fn install_view(&self, spec: crate::fleet::FleetSpec, view: FleetView) {
        tracing::info!(
            "fleet view from the database: image_ilink {:?}, image_tlink {:?}",
            spec.image_ilink,
            spec.image_tlink
        );
        Shared::install_view(self, view);
    }

    fn bans(&self) -> &Bans {
        &self.bans
    }

    async fn purge(&self, hash: Md5) {
        metrics::PURGES.with_label_values(&["ban"]).inc();
        self.purge_hash(hash);
    }

    async fn purge_deleted(&self, hash: Md5) {
        metrics::PURGES.with_label_values(&["deleted"]).inc();
        self.purge_hash(hash);
    }

    fn origin_from_shimmie(&self) -> bool {
        self.settings.load().shimmie_origin.is_some()
    }

    fn install_shimmie_origin(&self, rows: &S3Rows) -> Result<String, String> {
        Shared::install_shimmie_origin(self, rows)
    }

    fn memory_keys(&self) -> Vec<pingora_cache::key::HashBinary> {
        self.cache.memory.resident_keys()
    }

    fn disk_page(&self, from: usize, limit: usize) -> (Vec<ObjectRef>, Option<usize>) {
        match self.cache.disk {
            Some(d) => d.indexed_page(from, limit),
            None => (Vec::new(), None),
        }
    }
}
