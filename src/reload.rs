//! SIGHUP: re-read the config file, validate all of it, then swap it in whole. A file
//! that does not validate changes nothing. Pingora has no SIGHUP handling of its own
//! (without one, SIGHUP would kill the process): `main` calls [`hold_early_sighup`]
//! first thing, and a SIGHUP that arrives before the reload service listens is
//! remembered and acted on when the service starts.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{self, Settings};
use crate::metrics;
use crate::state::Shared;

/// Applies a new `log_level` (a tracing filter) to the running process.
pub type LogLevelHook = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// The background service that waits for SIGHUP.
pub struct Reloader {
    pub shared: Arc<Shared>,
    /// `None` when running on the embedded default: there is nothing to re-read.
    pub path: Option<PathBuf>,
    /// Pingora's own keys as the process started with them (none of them can change
    /// live); a reload names those that differ.
    pub server_keys: serde_yaml::Value,
    /// Sets the log filter live; `None` leaves the level as it started.
    pub set_log_level: Option<LogLevelHook>,
}

/// Set by the early SIGHUP handler; read once by the reload service when it starts.
static EARLY_SIGHUP: AtomicBool = AtomicBool::new(false);

extern "C" fn note_early_sighup(_signal: libc::c_int) {
    // Async-signal-safe: one atomic store, nothing else.
    EARLY_SIGHUP.store(true, Ordering::SeqCst);
}

/// Replaces SIGHUP's default action (terminate) with a handler that only remembers the
/// signal, so a SIGHUP during start-up (before the reload service listens) is never
/// fatal; the service reloads once for it when it starts. Call it first thing in
/// `main`: the disposition is process-wide and survives Pingora's daemon fork. When
/// the service registers its own listener, tokio chains to this handler, which then
/// sets a flag nobody reads any more.
pub fn hold_early_sighup() -> std::io::Result<()> {
    // SAFETY: a zeroed `sigaction` is a valid value to fill in; the handler only does
    // an atomic store (async-signal-safe); the pointers passed are valid for the call.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = note_early_sighup as extern "C" fn(libc::c_int) as usize;
        // Restart interrupted reads (e.g. of the config file) instead of failing them.
        action.sa_flags = libc::SA_RESTART;
        if libc::sigemptyset(&mut action.sa_mask) != 0
            || libc::sigaction(libc::SIGHUP, &action, std::ptr::null_mut()) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether a SIGHUP arrived before the reload service listened (once: it clears it).
fn take_early_sighup() -> bool {
    EARLY_SIGHUP.swap(false, Ordering::SeqCst)
}

/// Pingora's keys of a loaded config, for comparing on reload.
pub fn server_keys(conf: &pingora::server::configuration::ServerConf) -> serde_yaml::Value {
    serde_yaml::to_value(conf).unwrap_or(serde_yaml::Value::Null)
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
        let mut fixed = needs_restart(&old, &loaded.settings);
        let new_server_keys = server_keys(&loaded.server);
        fixed.extend(changed_server_keys(&self.server_keys, &new_server_keys));
        for key in &fixed {
            tracing::warn!(
                "reload: {key} cannot change in a running process; the old value stays \
                 until a graceful upgrade (start `shimmer -u -c FILE`, then SIGQUIT this one)"
            );
        }
        let mut new = loaded.settings;
        // Keep what cannot change live, so the snapshot tells the truth.
        new.listen = old.listen.clone();
        new.memory_bytes = old.memory_bytes;
        new.disk = old.disk.clone();
        new.admin.listen = old.admin.listen;
        match (&self.shared.certs, &new.tls) {
            (Some(store), Some(tls)) => {
                store.replace(tls.certs.clone());
                if let Some(old_tls) = &old.tls {
                    let mut keep = tls.clone();
                    keep.listen = old_tls.listen.clone();
                    // ALPN is fixed in the listeners when they are built.
                    keep.h2 = old_tls.h2;
                    new.tls = Some(keep);
                }
            }
            _ => new.tls = old.tls.clone(),
        }
        let level_change = (new.log_level != old.log_level)
            .then(|| (old.log_level.clone(), new.log_level.clone()));
        let node_changed = new.node != old.node;
        let node = new.node.clone();
        // With a database source the view follows the database; the YAML's `static`
        // templates only matter at start (before the first sync or the state file).
        let static_source = new.source.is_none();
        if old.source != new.source {
            tracing::warn!(
                "reload: shimmer.source cannot change in a running process; the old \
                 source stays until a graceful upgrade (SIGQUIT + `shimmer -u`)"
            );
            new.source = old.source.clone();
        }
        self.shared.settings.store(Arc::new(new));
        if static_source && old.source.is_none() {
            self.shared.install_view(loaded.fleet);
        }
        if node_changed {
            metrics::set_node(&node);
        }
        metrics::RELOADS.with_label_values(&["ok"]).inc();
        match &level_change {
            Some((from, to)) => {
                tracing::info!("reloaded {} (log level {from:?} -> {to:?})", path.display())
            }
            None => tracing::info!("reloaded {}", path.display()),
        }
        // Last, so the line above is still written at the old level.
        if let (Some((_, to)), Some(set)) = (&level_change, &self.set_log_level) {
            if let Err(e) = set(to) {
                // Validation already parsed this filter; this is not expected.
                tracing::error!("reload: cannot apply log_level {to:?}: {e}");
            }
        }
        true
    }
}

/// Pingora's top-level keys whose value differs between two loaded files.
fn changed_server_keys(old: &serde_yaml::Value, new: &serde_yaml::Value) -> Vec<String> {
    let (Some(old), Some(new)) = (old.as_mapping(), new.as_mapping()) else {
        return Vec::new();
    };
    let mut keys: Vec<String> = old
        .iter()
        .filter(|(k, v)| new.get(*k) != Some(*v))
        .filter_map(|(k, _)| k.as_str().map(str::to_owned))
        .collect();
    keys.extend(
        new.iter()
            .filter(|(k, _)| !old.contains_key(*k))
            .filter_map(|(k, _)| k.as_str().map(str::to_owned)),
    );
    keys.sort();
    keys
}

/// Settings that are fixed once the listeners and the cache exist.
fn needs_restart(old: &Settings, new: &Settings) -> Vec<String> {
    let mut keys = Vec::new();
    if old.admin.listen != new.admin.listen {
        keys.push("shimmer.admin.listen");
    }
    let tls_listen = |s: &Settings| s.tls.as_ref().map(|t| t.listen.clone());
    if tls_listen(old) != tls_listen(new) {
        keys.push("shimmer.tls (listeners added, removed or moved)");
    }
    let h2 = |s: &Settings| s.tls.as_ref().map(|t| t.h2);
    if h2(old).is_some() && h2(new).is_some() && h2(old) != h2(new) {
        keys.push("shimmer.tls.h2");
    }
    if old.listen != new.listen {
        keys.push("shimmer.listen");
    }
    if old.memory_bytes != new.memory_bytes {
        keys.push("shimmer.cache.memory_bytes");
    }
    let dir = |s: &Settings| s.disk.as_ref().map(|d| d.dir.clone());
    if dir(old) != dir(new) {
        keys.push("shimmer.cache.dir");
    } else if old.disk != new.disk {
        keys.push("shimmer.cache disk tier (disk_bytes, disk_max_object_bytes, fsync)");
    }
    keys.into_iter().map(str::to_owned).collect()
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Services start once the server runs its listeners, and a view was loaded
        // before any of them: from here on the mirror can serve.
        self.shared.ready.store(true, Ordering::SeqCst);
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                // The early handler stays in place: SIGHUP is still not fatal.
                tracing::error!("cannot listen for SIGHUP, reload is off: {e}");
                return;
            }
        };
        // Registered first, then checked: a SIGHUP in between is seen by both, and
        // reloading twice does no harm, where missing one would.
        if take_early_sighup() {
            tracing::info!("SIGHUP arrived while the mirror was starting; reloading now");
            self.reload();
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::server::configuration::ServerConf;

    fn keys(yaml: &str) -> serde_yaml::Value {
        server_keys(&ServerConf::from_yaml(yaml).expect("server conf"))
    }

    #[test]
    fn pingora_keys_that_differ_are_named() {
        let old = keys("---\nversion: 1\nthreads: 2\ngrace_period_seconds: 10\n");
        let same = keys("---\nversion: 1\nthreads: 2\ngrace_period_seconds: 10\n");
        let new = keys("---\nversion: 1\nthreads: 4\ngrace_period_seconds: 10\nuser: nobody\n");
        assert!(changed_server_keys(&old, &same).is_empty());
        assert_eq!(changed_server_keys(&old, &new), vec!["threads", "user"]);
    }
}
