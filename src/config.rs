//! The one configuration file: Pingora's server keys at the top level and shimmer's
//! under `shimmer:`. The file is rendered once, River style: the serde schema as written
//! ([`raw`]) becomes one validated [`Config`] ([`render`]), split into what is fixed at
//! start ([`Fixed`]: listeners, cache budgets, the database source, Pingora's keys) and
//! what a reload may change ([`Live`]: the request-time [`Settings`], the certificates,
//! the log filter, the static fleet view). Everything else gets these types and never
//! sees raw YAML. Sizes and durations are read as [`units`] documents (`1M` = 1 MiB).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pingora::server::configuration::ServerConf;
use serde::Deserialize;
use tracing_subscriber::EnvFilter;

use crate::fleet::{FleetSpec, FleetView};
use crate::shimmie::Source;

mod fixed;
pub mod ops;
mod peers;
mod raw;
mod render;
pub mod units;

pub use fixed::Fixed;
pub use ops::CertKey;
pub use render::resolve_origin;
pub use units::{ByteSize, Seconds};

/// Why a configuration was refused. The message names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

/// What shimmer does with a request for an image it does not own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// 307 to the owner's link (the default: the cheapest for the fleet).
    #[default]
    Redirect,
    /// Fetch from the owner and stream (for clients that cannot follow redirects).
    Proxy,
}

/// One origin server, resolved once at load time so the request path never does DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginServer {
    pub addr: SocketAddr,
    pub tls: bool,
    /// Host name for SNI and, unless `origin.host` is set, the Host header.
    pub host: String,
}

/// The whole file, validated: what is fixed at start and what a reload may change.
pub struct Config {
    /// Fixed at start; a reload compares it with the one in force and applies none of it.
    pub fixed: Fixed,
    /// Pingora's own keys, validated, for building the server (fixed too: their
    /// comparable form is [`Fixed::server_keys`]).
    pub server: ServerConf,
    /// The database source parsed from `shimmer.source` (not connected); `None` for
    /// `static`. Fixed at start: the sync service runs on this one.
    pub database: Option<Box<dyn Source>>,
    /// What a reload swaps in.
    pub live: Live,
}

/// The part of a config that a reload applies.
pub struct Live {
    /// What requests read, through one snapshot.
    pub settings: Settings,
    /// The TLS certificates (`shimmer.tls.certs`), loaded and checked, for the
    /// certificate store; `None` without TLS.
    pub certs: Option<Arc<Vec<CertKey>>>,
    /// `shimmer.log_level`, parsed: the filter that is installed.
    pub log_filter: EnvFilter,
    /// The fleet view from the `static` templates (a database source replaces it once
    /// it answers).
    pub fleet: FleetView,
}

/// The validated settings every request reads through one `Arc` snapshot. All of it
/// may change on reload; what cannot is in [`Fixed`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub node: String,
    pub mode: Mode,
    pub origins: Vec<OriginServer>,
    pub origin_host: Option<String>,
    /// `shimmer.origin.path`, with the origin kind's defaults filled in.
    pub origin_paths: crate::origin::path::OriginPaths,
    /// `shimmer.origin.s3`: the bucket and its credentials (then `origins` holds its
    /// one endpoint). With `origin: shimmie`, the bucket read from Shimmie's database
    /// (`None`, and no `origins`, until it has been read).
    pub s3: Option<Arc<crate::origin::s3::S3Origin>>,
    /// `origin: shimmie`: the YAML's overrides; the bucket itself comes from the
    /// database (`crate::state::Shared::install_shimmie_origin`).
    pub shimmie_origin: Option<crate::origin::shimmie::ShimmieOrigin>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub idle_timeout: Duration,
    pub fleet: FleetSpec,
    /// Largest object cached, per request (the memory tier's own cap is set at start).
    pub max_object_bytes: u64,
    /// How long a request waits for another's fill (the lock's age limit is set at
    /// start).
    pub lock_timeout: Duration,
    pub not_found_ttl: Duration,
    /// A single Range starting more than this many bytes past what a fill in progress
    /// has written is fetched from the origin at once instead of waiting (0: never).
    pub range_passthrough_ahead: u64,
    pub cache_control: String,
    /// The headers every served image carries, as values made once per config
    /// (`proxy::respond::decorate`), not parsed and copied again per answer.
    pub answer: AnswerHeaders,
    pub max_path_bytes: usize,
    /// Largest request head (request line and header fields) answered; 431 beyond.
    pub max_header_bytes: usize,
    /// How long a client may keep an answer waiting for room in its socket: each
    /// write, on every path (Pingora's writer and the direct one), is given up after
    /// this, and the connection closed.
    pub send_timeout: Duration,
    /// `shimmer.log_level` as written (the parsed filter is [`Live::log_filter`]).
    pub log_level: String,
    pub admin: ops::Admin,
    /// The TLS listeners in force and the https redirect, when TLS runs.
    pub tls: Option<ops::Tls>,
    /// The other mirrors: addresses, the fleet token, health checks, proxy mode.
    pub peers: crate::peers::PeerSettings,
}

/// Header values of [`Settings`], validated and built when the config is rendered.
#[derive(Debug, Clone)]
pub struct AnswerHeaders {
    /// `shimmer.http.cache_control`, for 200, 206 and 304.
    pub cache_control: http::HeaderValue,
    /// `public, max-age=<not_found_ttl>`, for 404.
    pub not_found_cache_control: http::HeaderValue,
    /// `x-shimmer-node`: `shimmer.node`.
    pub node: http::HeaderValue,
    /// Distinct for every set of these values rendered in this process, so a head made
    /// with them can be kept and told apart from one made with an older config.
    pub generation: u64,
}

impl AnswerHeaders {
    /// The next [`AnswerHeaders::generation`].
    pub(crate) fn next_generation() -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("fixed", &self.fixed)
            .field("settings", &self.live.settings)
            .finish_non_exhaustive()
    }
}

/// Reads, parses and validates a config file. Nothing is applied: the caller decides.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// Parses and validates config text; `path` is only used in messages.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    render::render(path, text)
}

/// What `shimmer -t` reports without refusing the file: the mirror would start, but
/// not as configured. Each names the file and the key, like a [`ConfigError`].
pub fn warnings(path: &Path, fixed: &Fixed) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(disk) = &fixed.disk {
        if let Err(e) = crate::cache::disk::DiskStorage::probe_dir(&disk.dir) {
            out.push(format!(
                "{}: shimmer.cache.dir: {} cannot be created or written ({e}); the mirror \
                 would run with the memory tier only until the directory can be used",
                path.display(),
                disk.dir.display()
            ));
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod tests_origin;
