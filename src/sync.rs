//! Background service: Shimmie's database -> fleet view swap, bans -> purge.
//!
//! Each round reads the two link templates and, if they changed, builds a new
//! [`FleetView`] off the request path and hands it to the [`SyncTarget`], which swaps
//! it in atomically (requests in flight keep the view they started with). Then it
//! reads new bans by `id` (a full re-read every `full_reread` catches unbans), puts
//! them in the [`Bans`] set (from then on they answer 404) and purges them from every
//! cache tier. Rounds run every `interval`, and at once on a PostgreSQL notification.
//!
//! With `origin: shimmie` each round also reads Shimmie's S3 settings and swaps in the
//! bucket they name ([`origin`]). Beside the rounds, a second loop reconciles cached
//! hashes with Shimmie's `images` table and purges deleted posts ([`reconcile`]).
//!
//! Faults never stop the mirror: a template that does not parse keeps the last good
//! view (logged with its key and value, counted); a database that is down keeps the
//! last view and bans, retried with capped backoff (never longer than one interval,
//! so a database that is back is caught up within one interval). The last good
//! settings and bans are persisted, so a restart with the database down serves them.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use pingora_cache::key::HashBinary;

use crate::fleet::{Algorithm, FleetError, FleetSpec, FleetView, Silo};
use crate::object::{Md5, ObjectRef};
use crate::shimmie::persist::{self, Snapshot};
use crate::shimmie::{shown, Bans, Change, S3Rows, ShimmieSettings, Source, SourceError};

mod backoff;
mod bans;
mod origin;
mod reconcile;

pub use backoff::Backoff;
pub use reconcile::{ReconcileOptions, ReconcileStatus};

/// What the sync service drives: the mirror's shared state, behind a small seam.
#[async_trait]
pub trait SyncTarget: Send + Sync {
    /// The placement algorithm from the YAML (Shimmie's database does not say).
    fn algorithm(&self) -> Algorithm;
    /// Swaps in a new view, already built and validated. Called only when the
    /// settings changed (or when the persisted state is restored at start).
    fn install_view(&self, spec: FleetSpec, view: FleetView);
    /// The ban set that requests consult.
    fn bans(&self) -> &Bans;
    /// Removes this hash (32 lowercase hex) from every cache tier, both silos.
    async fn purge(&self, hash: Md5);
    /// [`Self::purge`] for a post Shimmie no longer has (the reconcile).
    async fn purge_deleted(&self, hash: Md5) {
        self.purge(hash).await;
    }
    /// Whether the origin is the bucket Shimmie's config names (`origin: shimmie`).
    fn origin_from_shimmie(&self) -> bool {
        false
    }
    /// Builds the bucket from Shimmie's S3 settings and swaps it in; a line about it
    /// (no credentials), or why the rows do not build (the origin in force stays).
    /// Resolves the endpoint's name: call it off the async workers.
    fn install_shimmie_origin(&self, rows: &S3Rows) -> Result<String, String> {
        let _ = rows;
        Err("this mirror does not take its origin from Shimmie".into())
    }
    /// The memory tier's key hashes (one copy).
    fn memory_keys(&self) -> Vec<HashBinary> {
        Vec::new()
    }
    /// One page of the disk tier's index from slot `from`, and where to go on.
    fn disk_page(&self, from: usize, limit: usize) -> (Vec<ObjectRef>, Option<usize>) {
        let _ = (from, limit);
        (Vec::new(), None)
    }
}

/// Tuning, from the YAML.
#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// Poll interval (PostgreSQL: the safety net behind LISTEN, and the only way
    /// to see stock Shimmie's bans, which send no notification).
    pub interval: Duration,
    /// Full ban re-read period: catches unbans (Shimmie deletes the row).
    pub full_reread: Duration,
    /// Where the last good settings and bans are kept; `None`: not persisted.
    pub state_path: Option<PathBuf>,
    /// Rows per ban query.
    pub ban_page: usize,
    /// Longest wait for one source call before it counts as a failure.
    pub query_timeout: Duration,
    /// First retry delay after a failure; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Retry delay cap (never more than `interval` either).
    pub max_backoff: Duration,
    /// The reconcile of deleted posts.
    pub reconcile: ReconcileOptions,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            // Stock Shimmie sends no NOTIFY for bans: polling twice a second keeps a
            // new ban within 1 s on every engine. Two indexed queries, no rows read.
            interval: Duration::from_millis(500),
            full_reread: Duration::from_secs(600),
            state_path: None,
            ban_page: 50_000,
            query_timeout: Duration::from_secs(30),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            reconcile: ReconcileOptions::default(),
        }
    }
}

/// The sync's health, for metrics and the admin status page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncStatus {
    pub engine: &'static str,
    /// The last round reached the database.
    pub up: bool,
    pub last_success: Option<SystemTime>,
    pub bans_known: usize,
    /// Views installed by this service so far (0: still on the YAML's view).
    pub view_version: u64,
    /// The most recent database error (kept after recovery, for the status page).
    pub last_error: Option<String>,
    /// Failed rounds since start.
    pub sync_errors: u64,
    /// Distinct bad templates seen since start.
    pub template_errors: u64,
    /// The bad template in the database right now, if any (the old view is serving).
    pub template_error: Option<String>,
    /// Hashes purged because they were newly banned.
    pub purges: u64,
    pub last_full_reread: Option<SystemTime>,
    /// How long the last full ban read took.
    pub last_full_read: Option<Duration>,
    /// The view and bans at start came from the state file.
    pub restored_from_disk: bool,
    /// `origin: shimmie`: buckets installed from Shimmie's config so far.
    pub origin_installs: u64,
    /// Distinct sets of S3 settings refused.
    pub origin_errors: u64,
    /// Why the S3 settings in the database right now are refused (the bucket in force
    /// stays). Never shows a credential.
    pub origin_error: Option<String>,
    /// The reconcile of deleted posts.
    pub reconcile: ReconcileStatus,
}

/// The service. Share it as `Arc` (pingora's `background_service(..).task()`) to read
/// [`SyncService::status`].
pub struct SyncService {
    source: Box<dyn Source>,
    target: Arc<dyn SyncTarget>,
    opts: SyncOptions,
    status: ArcSwap<SyncStatus>,
    preloaded: AtomicBool,
    restored: parking_lot::Mutex<Option<FleetSpec>>,
}

/// The loop's own memory, between rounds.
struct LoopState {
    /// What this service installed last (compared to decide whether to install).
    installed: Option<FleetSpec>,
    /// The last rejected settings, so one bad value is logged and counted once.
    rejected: Option<String>,
    /// Highest ban id read.
    cursor: i64,
    last_full: Option<Instant>,
    /// Settings or bans changed since the state file was written.
    dirty: bool,
    save_failing: bool,
    down_since: Option<Instant>,
    /// The S3 rows the bucket in force was built from (`origin: shimmie`).
    origin_installed: Option<S3Rows>,
    /// The last S3 rows refused, so they are logged and counted once.
    origin_rejected: Option<S3Rows>,
}

impl SyncService {
    pub fn new(
        source: Box<dyn Source>,
        target: Arc<dyn SyncTarget>,
        opts: SyncOptions,
    ) -> SyncService {
        let status = SyncStatus {
            engine: source.engine(),
            ..SyncStatus::default()
        };
        SyncService {
            source,
            target,
            opts,
            status: ArcSwap::from_pointee(status),
            preloaded: AtomicBool::new(false),
            restored: parking_lot::Mutex::new(None),
        }
    }

    /// A copy of the current status (cheap: one pointer load and a clone).
    pub fn status(&self) -> SyncStatus {
        SyncStatus::clone(&self.status.load())
    }

    pub fn view_version(&self) -> u64 {
        self.status.load().view_version
    }

    /// Installs the persisted view and bans, if there is a state file. Runs once;
    /// `start` calls it, and `main` may call it earlier so the first request already
    /// sees them. True if something was restored.
    pub fn preload(&self) -> bool {
        if self.preloaded.swap(true, Ordering::AcqRel) {
            return false;
        }
        let Some(path) = &self.opts.state_path else {
            return false;
        };
        let snapshot = match persist::load(path) {
            Ok(Some(s)) => s,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!("sync: ignoring the state file: {e}");
                return false;
            }
        };
        let spec = FleetSpec {
            image_ilink: snapshot.image_ilink,
            image_tlink: snapshot.image_tlink,
            algorithm: self.target.algorithm(),
        };
        match FleetView::build(&spec) {
            Ok(view) => {
                self.install(spec.clone(), view, "state file");
                *self.restored.lock() = Some(spec);
            }
            Err(e) => tracing::warn!(
                "sync: the saved templates in {} do not build ({e}); keeping the YAML's view",
                path.display()
            ),
        }
        let count = snapshot.bans.len();
        self.target.bans().replace_all(snapshot.bans);
        self.update(|s| {
            s.restored_from_disk = true;
            s.bans_known = count;
        });
        tracing::info!(
            "sync: restored the view and {count} bans saved at unix time {} from {}",
            snapshot.saved_at,
            path.display()
        );
        true
    }

    /// The loops (rounds, and the reconcile beside them). Return only on shutdown:
    /// database errors are retried forever.
    pub async fn run(&self, shutdown: ShutdownWatch) {
        tokio::join!(self.rounds(shutdown.clone()), self.reconcile_loop(shutdown));
    }

    async fn rounds(&self, mut shutdown: ShutdownWatch) {
        self.preload();
        let mut st = LoopState {
            installed: self.restored.lock().take(),
            rejected: None,
            cursor: i64::MIN,
            last_full: None,
            dirty: false,
            save_failing: false,
            down_since: None,
            origin_installed: None,
            origin_rejected: None,
        };
        let o = &self.opts;
        let cap = o.max_backoff.min(o.interval).max(o.min_backoff);
        let mut backoff = Backoff::new(o.min_backoff, cap);
        let mut listen_backoff = Backoff::new(o.min_backoff, cap);
        let mut listen_failing = false;
        loop {
            let round = tokio::select! {
                _ = shutdown.changed() => return,
                r = self.round(&mut st) => r,
            };
            if let Err(e) = round {
                self.mark_down(&mut st, &e);
                if pause(&mut shutdown, backoff.delay()).await {
                    return;
                }
                continue;
            }
            self.mark_up(&mut st);
            backoff.reset();

            let since_full = st.last_full.map_or(o.full_reread, |t| t.elapsed());
            let until_full = o.full_reread.saturating_sub(since_full);
            let wait = o.interval.min(until_full).max(Duration::from_millis(10));
            let change = tokio::select! {
                _ = shutdown.changed() => return,
                c = self.source.wait_for_change(wait) => c,
            };
            if change.is_ok() {
                listen_backoff.reset();
            }
            match change {
                Ok(Change::Notified { channel, payload }) => {
                    tracing::debug!("sync: notified on {channel} ({payload:?})");
                }
                Ok(Change::Subscribed) => {
                    if std::mem::take(&mut listen_failing) {
                        tracing::info!("sync: notifications are back");
                    }
                }
                Ok(Change::Timeout) => {}
                Err(e) => {
                    // While the database answers queries (a pooler without LISTEN,
                    // say), say once that only polling is left; an outage is
                    // reported by the next round instead.
                    if !listen_failing && self.status.load().up {
                        tracing::warn!(
                            "sync: no notifications, polling every {:?}: {e}",
                            self.opts.interval
                        );
                        listen_failing = true;
                    }
                    tracing::debug!("sync: {e}");
                    if pause(&mut shutdown, listen_backoff.delay()).await {
                        return;
                    }
                }
            }
        }
    }

    async fn round(&self, st: &mut LoopState) -> Result<(), SourceError> {
        let settings = self.timed("reading config", self.source.read_settings());
        match settings.await {
            Ok(settings) => self.apply_settings(st, settings),
            Err(SourceError::BadValue { key, reason }) => {
                self.reject(
                    st,
                    format!("{key}: {reason}"),
                    format!("Shimmie config {key} rejected, the current view stays: {reason}"),
                );
            }
            Err(e) => return Err(e),
        }
        self.follow_origin(st).await?;
        self.sync_bans(st).await?;
        self.persist(st).await;
        Ok(())
    }

    fn apply_settings(&self, st: &mut LoopState, settings: ShimmieSettings) {
        let spec = FleetSpec {
            image_ilink: settings.image_ilink,
            image_tlink: settings.image_tlink,
            algorithm: self.target.algorithm(),
        };
        if st.installed.as_ref() == Some(&spec) {
            if st.rejected.take().is_some() {
                tracing::info!("sync: Shimmie's config is valid again");
                self.update(|s| s.template_error = None);
            }
            return;
        }
        let fingerprint = format!("{spec:?}");
        if st.rejected.as_deref() == Some(fingerprint.as_str()) {
            return;
        }
        match FleetView::build(&spec) {
            Ok(view) => {
                st.rejected = None;
                st.installed = Some(spec.clone());
                st.dirty = true;
                self.install(spec, view, "database");
            }
            Err(error) => {
                let value = match &error {
                    FleetError::Config { key, .. } if *key == Silo::Thumbs.config_key() => {
                        spec.template_for(Silo::Thumbs)
                    }
                    _ => spec.template_for(Silo::Images),
                };
                let message = format!(
                    "Shimmie config rejected, the current view stays: {error} (value {:?})",
                    shown(value.as_bytes(), 300)
                );
                self.reject(st, fingerprint, message);
            }
        }
    }

    /// Logs and counts a bad template once; the installed view stays.
    fn reject(&self, st: &mut LoopState, fingerprint: String, message: String) {
        if st.rejected.as_deref() == Some(fingerprint.as_str()) {
            return;
        }
        tracing::error!("sync: {message}");
        st.rejected = Some(fingerprint);
        // metrics: shimmer_sync_template_errors_total += 1 (status.template_errors)
        self.update(|s| {
            s.template_errors += 1;
            s.template_error = Some(message);
        });
    }

    fn install(&self, spec: FleetSpec, view: FleetView, from: &str) {
        let version = self.status.load().view_version + 1;
        tracing::info!(
            "sync: fleet view {version} installed from the {from}: image_ilink={:?} image_tlink={:?} algorithm={}",
            spec.template_for(Silo::Images),
            spec.template_for(Silo::Thumbs),
            spec.algorithm
        );
        self.target.install_view(spec, view);
        // metrics: shimmer_sync_view_version = version
        self.update(|s| {
            s.view_version = version;
            s.template_error = None;
        });
    }

    /// Writes the state file if anything changed; a failure is logged, not fatal.
    async fn persist(&self, st: &mut LoopState) {
        let (Some(path), true, Some(spec)) = (
            self.opts.state_path.clone(),
            st.dirty,
            st.installed.as_ref(),
        ) else {
            return;
        };
        let bans = self.target.bans().snapshot();
        let snapshot = Snapshot::now(spec.image_ilink.clone(), spec.image_tlink.clone(), bans);
        let saved = tokio::task::spawn_blocking(move || persist::save(&path, &snapshot)).await;
        let error = match saved {
            Ok(Ok(())) => {
                (st.dirty, st.save_failing) = (false, false);
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        // Retried every round; said once.
        if !std::mem::replace(&mut st.save_failing, true) {
            tracing::warn!("sync: cannot save the state file (will retry): {error}");
        }
    }

    fn mark_down(&self, st: &mut LoopState, error: &SourceError) {
        let message = error.to_string();
        let known = self.status.load().last_error.as_deref() == Some(message.as_str());
        if st.down_since.is_none() || !known {
            tracing::warn!(
                "sync: {} unavailable, serving the last view (version {}) and {} bans; retrying: {message}",
                self.source.engine(),
                self.view_version(),
                self.target.bans().len()
            );
        }
        st.down_since.get_or_insert_with(Instant::now);
        // metrics: shimmer_sync_up = 0; shimmer_sync_errors_total += 1
        self.update(|s| {
            s.up = false;
            s.sync_errors += 1;
            s.last_error = Some(message);
        });
    }

    fn mark_up(&self, st: &mut LoopState) {
        if let Some(since) = st.down_since.take() {
            tracing::info!(
                "sync: {} reachable again after {:.1?}; caught up",
                self.source.engine(),
                since.elapsed()
            );
        }
        let bans_known = self.target.bans().len();
        // metrics: shimmer_sync_up = 1; shimmer_sync_last_success_timestamp_seconds = now;
        // shimmer_sync_bans = bans_known
        self.update(|s| {
            s.up = true;
            s.last_success = Some(SystemTime::now());
            s.bans_known = bans_known;
        });
    }

    async fn timed<T>(
        &self,
        what: &'static str,
        call: impl Future<Output = Result<T, SourceError>>,
    ) -> Result<T, SourceError> {
        let after = self.opts.query_timeout;
        tokio::time::timeout(after, call)
            .await
            .unwrap_or(Err(SourceError::Timeout {
                engine: self.source.engine(),
                what,
                after,
            }))
    }

    /// Only the loop writes, so load-modify-store cannot lose an update.
    fn update(&self, change: impl FnOnce(&mut SyncStatus)) {
        let mut next = SyncStatus::clone(&self.status.load());
        change(&mut next);
        self.status.store(Arc::new(next));
    }
}

#[async_trait]
impl BackgroundService for SyncService {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.run(shutdown).await;
    }
}

/// Sleeps, or returns true at once on shutdown.
async fn pause(shutdown: &mut ShutdownWatch, delay: Duration) -> bool {
    tokio::select! {
        _ = shutdown.changed() => true,
        _ = tokio::time::sleep(delay) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_a_pingora_background_service() {
        fn check<T: BackgroundService + Send + Sync + 'static>() {}
        check::<SyncService>();
    }

    #[test]
    fn defaults_poll_twice_a_second() {
        let o = SyncOptions::default();
        assert_eq!(o.interval, Duration::from_millis(500));
        assert!(o.full_reread > o.interval);
        assert!(o.min_backoff < o.max_backoff);
    }
}
