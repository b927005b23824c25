//! SIGHUP: re-read the config file, validate all of it, then swap it in whole. A file
//! that does not validate changes nothing. Pingora has no SIGHUP handling of its own
//! (without one, SIGHUP would kill the process).

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{self, Settings};
use crate::metrics;
use crate::state::Shared;

/// The background service that waits for SIGHUP.
pub struct Reloader {
    pub shared: Arc<Shared>,
    /// `None` when running on the embedded default: there is nothing to re-read.
    pub path: Option<PathBuf>,
}

impl Reloader {
    /// Loads and applies the file once. Returns whether the new config is in force.
    pub fn reload(&self) -> bool {
        let Some(path) = &self.path else {
            tracing::warn!("SIGHUP: running on the embedded default config; nothing to reload");
            return false;
        };
        let loaded = match config::load(path) {
            Ok(l) => l,
            Err(e) => {
                metrics::RELOADS.with_label_values(&["failed"]).inc();
                tracing::error!("reload refused, the running config stays: {e}");
                return false;
            }
        };
        let old = self.shared.settings.load_full();
        for key in needs_restart(&old, &loaded.settings) {
            tracing::warn!(
                "reload: {key} cannot change in a running process; the old value stays \
                 until a graceful upgrade (SIGQUIT + `shimmer -u`)"
            );
        }
        let mut new = loaded.settings;
        // Keep what cannot change live, so the snapshot tells the truth.
        new.listen = old.listen.clone();
        new.memory_bytes = old.memory_bytes;
        new.admin.listen = old.admin.listen;
        match (&self.shared.certs, &new.tls) {
            (Some(store), Some(tls)) => {
                store.replace(tls.certs.clone());
                if let Some(old_tls) = &old.tls {
                    let mut keep = tls.clone();
                    keep.listen = old_tls.listen.clone();
                    new.tls = Some(keep);
                }
            }
            _ => new.tls = old.tls.clone(),
        }
        self.shared.settings.store(Arc::new(new));
        self.shared.install_view(loaded.fleet);
        metrics::RELOADS.with_label_values(&["ok"]).inc();
        tracing::info!("reloaded {}", path.display());
        true
    }
}

/// Settings that are fixed once the listeners and the cache exist.
fn needs_restart(old: &Settings, new: &Settings) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if old.admin.listen != new.admin.listen {
        keys.push("shimmer.admin.listen");
    }
    let tls_listen = |s: &Settings| s.tls.as_ref().map(|t| t.listen.clone());
    if tls_listen(old) != tls_listen(new) {
        keys.push("shimmer.tls (listeners added, removed or moved)");
    }
    if old.listen != new.listen {
        keys.push("shimmer.listen");
    }
    if old.memory_bytes != new.memory_bytes {
        keys.push("shimmer.cache.memory_bytes");
    }
    keys
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Services start once the server runs its listeners, and a view was loaded
        // before any of them: from here on the mirror can serve.
        self.shared
            .ready
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot listen for SIGHUP, reload is off: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    self.reload();
                }
            }
        }
    }
}
