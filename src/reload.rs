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
use tracing_subscriber::EnvFilter;

use crate::config::{self, ops, Config, Fixed};
use crate::metrics;
use crate::state::Shared;
use crate::tls::CertStore;

/// Installs a new log filter (`shimmer.log_level`, parsed) in the running process.
pub type LogLevelHook = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// The background service that waits for SIGHUP.
pub struct Reloader {
    /// Where the settings and the fleet view are swapped in.
    pub shared: Arc<Shared>,
    /// `None` when running on the embedded default: there is nothing to re-read.
    pub path: Option<PathBuf>,
    /// The fixed part the process started with: a reload names what differs and
    /// keeps this.
    pub fixed: Fixed,
    /// The certificate store the TLS listeners pick from; `None` without TLS.
    pub certs: Option<Arc<CertStore>>,
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
        // The server keys and the parsed database source are dropped with the rest of
        // the fixed part: the ones in force stay.
        let Config { fixed, live, .. } = loaded;
        for key in self.fixed.changed_keys(&fixed) {
            tracing::warn!(
                "reload: {key} cannot change in a running process; the old value stays \
                 until a graceful upgrade (start `shimmer -u -c FILE`, then SIGQUIT this one)"
            );
        }
        let old = self.shared.settings.load_full();
        let mut new = live.settings;
        new.tls = tls_in_force(self.fixed.tls.as_ref(), new.tls, old.tls.as_ref());
        if let (Some(store), Some(certs)) = (&self.certs, live.certs) {
            store.replace(certs);
        }
        let level_change = (new.log_level != old.log_level)
            .then(|| (old.log_level.clone(), new.log_level.clone()));
        let node_changed = new.node != old.node;
        let node = new.node.clone();
        self.shared.install_settings(new);
        // With a database source the view follows the database; the YAML's `static`
        // templates only matter at start (before the first sync or the state file).
        if self.fixed.source.is_none() && fixed.source.is_none() {
            self.shared.install_view(live.fleet);
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
            if let Err(e) = set(live.log_filter) {
                tracing::error!("reload: cannot apply log_level {to:?}: {e}");
            }
        }
        true
    }
}

/// The TLS part of the settings snapshot describes the listeners that run: their
/// addresses are the ones in force, the redirect is the new file's; a file without a
/// `tls:` section cannot stop them, so the redirect in force stays with them.
fn tls_in_force(
    running: Option<&ops::TlsListeners>,
    new: Option<ops::Tls>,
    old: Option<&ops::Tls>,
) -> Option<ops::Tls> {
    match (running, new) {
        (Some(listeners), Some(new)) => Some(ops::Tls {
            listen: listeners.listen.clone(),
            redirect_http: new.redirect_http,
        }),
        (Some(_), None) => old.cloned(),
        (None, _) => None,
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
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

    fn tls(port: u16, redirect_http: bool) -> ops::Tls {
        ops::Tls {
            listen: vec![format!("127.0.0.1:{port}")],
            redirect_http,
        }
    }

    #[test]
    fn the_tls_snapshot_follows_the_listeners_in_force() {
        let running = ops::TlsListeners {
            listen: vec!["127.0.0.1:8443".into()],
            h2: true,
        };
        // Moved listeners: the address in force stays, the new redirect applies.
        let got = tls_in_force(
            Some(&running),
            Some(tls(9443, true)),
            Some(&tls(8443, false)),
        );
        assert_eq!(got, Some(tls(8443, true)));
        // The section removed: TLS keeps running as it was.
        let got = tls_in_force(Some(&running), None, Some(&tls(8443, true)));
        assert_eq!(got, Some(tls(8443, true)));
        // TLS added to a process that runs none: nothing listens, nothing redirects.
        assert_eq!(tls_in_force(None, Some(tls(9443, true)), None), None);
    }

    /// The full test config, its disk tier under `dir` (opening it creates it).
    fn config_in(dir: &std::path::Path) -> String {
        crate::config::tests::full_config(dir).replace(
            "dir: /var/cache/shimmer",
            &format!("dir: {}", dir.join("cache").display()),
        )
    }

    /// A mirror's shared state and reloader on `text`, as `main` wires them.
    fn running(path: &std::path::Path, text: &str) -> Reloader {
        std::fs::write(path, text).expect("write config");
        let Config { fixed, live, .. } = config::load(path).expect("config");
        let cache = crate::state::CacheParts::leak(&fixed, &live.settings);
        Reloader {
            shared: Shared::new(live.settings, live.fleet, cache),
            path: Some(path.to_owned()),
            certs: live.certs.map(CertStore::new),
            fixed,
            set_log_level: None,
        }
    }

    #[test]
    fn a_reload_applies_the_live_part_and_keeps_the_fixed_one() {
        let work = tempfile::tempdir().expect("tempdir");
        let path = work.path().join("shimmer.yaml");
        let text = config_in(work.path());
        let r = running(&path, &text);
        let (b_cert, _) = crate::config::tests::test_cert(work.path(), "b.example");
        let mut new = text.clone();
        for (from, to) in [
            // Fixed: named in the log, not applied.
            ("\"127.0.0.1:8443\"", "\"127.0.0.1:8444\""),
            ("memory_bytes: 64M", "memory_bytes: 128M"),
            ("threads: 2", "threads: 3"),
            // Live: applied.
            ("node: a", "node: b"),
            ("redirect_http: false", "redirect_http: true"),
            ("max-age=60", "max-age=120"),
            ("{a=5,b=5}", "{a=5,b=5,c=5}"),
            ("a.example.crt", "b.example.crt"),
            ("a.example.key", "b.example.key"),
        ] {
            assert!(new.contains(from), "{from:?}");
            new = new.replacen(from, to, 1);
        }
        std::fs::write(&path, new).expect("rewrite");
        assert!(r.reload());
        let s = r.shared.settings.load();
        assert_eq!(s.node, "b");
        assert_eq!(s.cache_control, "public, max-age=120");
        // The redirect follows the new file, its port the listener that runs.
        assert_eq!(s.tls, Some(tls(8443, true)));
        let store = r.certs.as_ref().expect("a certificate store");
        assert_eq!(store.pick(None).map(|c| c.source), Some(b_cert));
        assert_eq!(r.shared.cache.memory.stats().budget, 64 << 20);
        assert_eq!(r.fixed.memory_bytes, 64 << 20);
        // A database source: the view follows the database, not the YAML.
        let nodes = r
            .shared
            .fleet
            .load()
            .template(crate::fleet::Silo::Images)
            .nodes()
            .len();
        assert_eq!(nodes, 2);
    }

    #[test]
    fn a_static_source_takes_the_new_templates() {
        let work = tempfile::tempdir().expect("tempdir");
        let path = work.path().join("shimmer.yaml");
        let text =
            config_in(work.path()).replace("  source: \"sqlite:///nonexistent/shimmie.db\"\n", "");
        let r = running(&path, &text);
        std::fs::write(&path, text.replacen("{a=5,b=5}", "{a=5,b=5,c=5}", 1)).expect("rewrite");
        assert!(r.reload());
        let nodes = r
            .shared
            .fleet
            .load()
            .template(crate::fleet::Silo::Images)
            .nodes()
            .len();
        assert_eq!(nodes, 3);
        assert_eq!(r.shared.view_version.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_broken_file_changes_nothing() {
        let work = tempfile::tempdir().expect("tempdir");
        let path = work.path().join("shimmer.yaml");
        let text = config_in(work.path());
        let r = running(&path, &text);
        std::fs::write(&path, text.replacen("node: a", "node: \"a=1\"", 1)).expect("rewrite");
        assert!(!r.reload());
        assert_eq!(r.shared.settings.load().node, "a");
    }
}
