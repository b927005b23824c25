//! What is fixed once the process runs: the listeners, the cache budgets, the database
//! source and Pingora's own keys. A reload renders the whole file again, compares only
//! this part with the one in force, names what differs ("needs a graceful upgrade") and
//! applies none of it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use pingora::server::configuration::ServerConf;

use super::ops::TlsListeners;
use crate::cache::disk::DiskConfig;

/// The settings a running process cannot change; see the module docs.
#[derive(Debug, Clone)]
pub struct Fixed {
    /// Pingora's top-level keys as validated (`threads`, `pid_file`, ...), for
    /// comparing: Pingora reads them once, at start.
    pub server_keys: serde_yaml::Value,
    /// `shimmer.listen`: the plain-HTTP listeners.
    pub listen: Vec<String>,
    /// `shimmer.tls.listen` and `shimmer.tls.h2`, when TLS is configured.
    pub tls: Option<TlsListeners>,
    /// `shimmer.admin.listen`; `None`: no admin listener.
    pub admin_listen: Option<SocketAddr>,
    /// `shimmer.cache.memory_bytes`: the memory tier is sized once.
    pub memory_bytes: u64,
    /// The disk tier (`shimmer.cache.dir` and friends), if configured. The directory is
    /// not touched here: one that cannot be used is reported when the mirror starts
    /// (and by `shimmer -t`, see [`super::warnings`]).
    pub disk: Option<DiskConfig>,
    /// `shimmer.source` as written; `None` for `static`. The source parsed from it is
    /// [`super::Config::database`].
    pub source: Option<String>,
    /// `shimmer.sync`: the sync service is built with these once.
    pub sync: crate::sync::SyncOptions,
}

/// Pingora's keys of a validated [`ServerConf`], for comparing on reload.
pub fn server_keys(conf: &ServerConf) -> serde_yaml::Value {
    serde_yaml::to_value(conf).unwrap_or(serde_yaml::Value::Null)
}

impl Fixed {
    /// The keys of `new` that differ from `self` (the settings in force), named as the
    /// file spells them, shimmer's first, then Pingora's.
    pub fn changed_keys(&self, new: &Fixed) -> Vec<String> {
        let mut keys = Vec::new();
        if self.admin_listen != new.admin_listen {
            keys.push("shimmer.admin.listen");
        }
        let tls_listen = |f: &Fixed| f.tls.as_ref().map(|t| t.listen.clone());
        if tls_listen(self) != tls_listen(new) {
            keys.push("shimmer.tls (listeners added, removed or moved)");
        }
        let h2 = |f: &Fixed| f.tls.as_ref().map(|t| t.h2);
        if h2(self).is_some() && h2(new).is_some() && h2(self) != h2(new) {
            keys.push("shimmer.tls.h2");
        }
        if self.listen != new.listen {
            keys.push("shimmer.listen");
        }
        if self.memory_bytes != new.memory_bytes {
            keys.push("shimmer.cache.memory_bytes");
        }
        let dir = |f: &Fixed| f.disk.as_ref().map(|d| d.dir.clone());
        if dir(self) != dir(new) {
            keys.push("shimmer.cache.dir");
        } else if self.disk != new.disk {
            keys.push("shimmer.cache disk tier (disk_bytes, disk_max_object_bytes, fsync)");
        }
        if self.source != new.source {
            keys.push("shimmer.source");
        }
        if sync_keys(&self.sync) != sync_keys(&new.sync) {
            keys.push("shimmer.sync");
        }
        let mut keys: Vec<String> = keys.into_iter().map(str::to_owned).collect();
        keys.extend(changed_server_keys(&self.server_keys, &new.server_keys));
        keys
    }
}

/// The parts of the sync options the file sets.
fn sync_keys(s: &crate::sync::SyncOptions) -> (Duration, Duration, Option<PathBuf>) {
    (s.interval, s.full_reread, s.state_path.clone())
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

#[cfg(test)]
mod tests {
    use super::*;

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
