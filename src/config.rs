//! The one configuration file: Pingora's server keys at the top level and shimmer's
//! under `shimmer:`. Parsing, defaults and validation live here; everything else gets a
//! validated [`Settings`] and never sees raw YAML.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pingora::server::configuration::ServerConf;
use serde::{Deserialize, Deserializer};

use crate::cache::disk::DiskConfig;
use crate::fleet::{Algorithm, FleetSpec, FleetView};

pub mod ops;

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

/// A byte count written as `512M`, `16GiB`, `500G` or a bare number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// A duration written as `500ms`, `2s`, `5m`, `1h` or a bare number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub Duration);

/// The `shimmer:` section as written. Unknown keys are refused so typos are loud.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShimmer {
    pub node: String,
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub algorithm: Algorithm,
    pub origin: RawOrigin,
    #[serde(default = "default_source")]
    pub source: String,
    #[serde(default)]
    pub sync: RawSync,
    #[serde(rename = "static", default)]
    pub static_fleet: RawStaticFleet,
    #[serde(default)]
    pub cache: RawCache,
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub admin: ops::RawAdmin,
    #[serde(default)]
    pub tls: Option<ops::RawTls>,
    #[serde(default = "default_log_level")]
    pub log_level: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOrigin {
    pub servers: Vec<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Seconds,
    #[serde(default = "default_read_timeout")]
    pub read_timeout: Seconds,
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Seconds,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStaticFleet {
    pub image_ilink: Option<String>,
    pub image_tlink: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCache {
    pub memory_bytes: ByteSize,
    pub max_object_bytes: ByteSize,
    pub lock_timeout: Seconds,
    pub not_found_ttl: Seconds,
    /// The disk tier's directory; none: memory only.
    pub dir: Option<PathBuf>,
    pub disk_bytes: Option<ByteSize>,
    pub disk_max_object_bytes: Option<ByteSize>,
    pub fsync: bool,
}

impl Default for RawCache {
    fn default() -> Self {
        RawCache {
            memory_bytes: ByteSize(256 << 20),
            max_object_bytes: ByteSize(128 << 20),
            lock_timeout: Seconds(Duration::from_secs(10)),
            not_found_ttl: Seconds(Duration::from_secs(10)),
            dir: None,
            disk_bytes: None,
            disk_max_object_bytes: None,
            fsync: false,
        }
    }
}

/// Largest object kept on disk when `disk_max_object_bytes` is not set (and at most an
/// eighth of `disk_bytes`).
const DEFAULT_DISK_MAX_OBJECT: u64 = 1 << 30;
/// Smallest disk tier worth having.
const MIN_DISK_BYTES: u64 = 16 << 20;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHttp {
    pub cache_control: String,
    pub max_path_bytes: usize,
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp {
            cache_control: "public, max-age=31536000, immutable".into(),
            max_path_bytes: 2048,
        }
    }
}

fn default_listen() -> Vec<String> {
    vec!["0.0.0.0:8080".into()]
}
/// `shimmer.sync`: how the database source is read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSync {
    pub interval: Seconds,
    pub full_reread: Seconds,
    pub state_file: Option<PathBuf>,
}

impl Default for RawSync {
    fn default() -> Self {
        let d = crate::sync::SyncOptions::default();
        RawSync {
            interval: Seconds(d.interval),
            full_reread: Seconds(d.full_reread),
            state_file: None,
        }
    }
}

fn default_source() -> String {
    "static".into()
}
fn default_log_level() -> String {
    "info".into()
}
fn default_connect_timeout() -> Seconds {
    Seconds(Duration::from_secs(2))
}
fn default_read_timeout() -> Seconds {
    Seconds(Duration::from_secs(30))
}
fn default_idle_timeout() -> Seconds {
    Seconds(Duration::from_secs(60))
}

/// One origin server, resolved once at load time so the request path never does DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginServer {
    pub addr: SocketAddr,
    pub tls: bool,
    /// Host name for SNI and, unless `origin.host` is set, the Host header.
    pub host: String,
}

/// The validated settings every request reads through one `Arc` snapshot.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node: String,
    pub listen: Vec<String>,
    pub mode: Mode,
    pub origins: Vec<OriginServer>,
    pub origin_host: Option<String>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub idle_timeout: Duration,
    pub fleet: FleetSpec,
    pub memory_bytes: u64,
    pub max_object_bytes: u64,
    pub lock_timeout: Duration,
    pub not_found_ttl: Duration,
    /// The disk tier (`shimmer.cache.dir` and friends), if configured. The directory is
    /// not touched here: one that cannot be used is reported when the mirror starts
    /// (and by `shimmer -t`, see [`warnings`]).
    pub disk: Option<DiskConfig>,
    pub cache_control: String,
    pub max_path_bytes: usize,
    pub log_level: String,
    pub admin: ops::Admin,
    pub tls: Option<ops::Tls>,
    /// The Shimmie database DSN; `None` for the `static` source.
    pub source: Option<String>,
    pub sync: crate::sync::SyncOptions,
}

/// The whole file: Pingora's part and shimmer's part, both validated.
pub struct Loaded {
    pub server: ServerConf,
    pub settings: Settings,
    pub fleet: FleetView,
}

impl fmt::Debug for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loaded")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct File {
    shimmer: Option<RawShimmer>,
}

/// Reads, parses and validates a config file. Nothing is applied: the caller decides.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// Parses and validates config text; `path` is only used in messages.
pub fn parse(path: &Path, text: &str) -> Result<Loaded, ConfigError> {
    let parse_err = |message: String| ConfigError::Parse {
        path: path.to_owned(),
        message,
    };
    let file: File = serde_yaml::from_str(text).map_err(|e| parse_err(e.to_string()))?;
    let raw = file
        .shimmer
        .ok_or_else(|| parse_err("missing the `shimmer:` section".into()))?;
    let mut server = ServerConf::from_yaml(text).map_err(|e| parse_err(e.to_string()))?;
    // Pingora's default grace period is 300 s: far too long for a mirror behind a
    // load balancer. Keep the operator's value when the file sets one.
    if !mentions_top_level_key(text, "grace_period_seconds") {
        server.grace_period_seconds = Some(10);
    }
    if !mentions_top_level_key(text, "graceful_shutdown_timeout_seconds") {
        server.graceful_shutdown_timeout_seconds = Some(5);
    }
    let server = server.validate().map_err(|e| parse_err(e.to_string()))?;
    let settings = validate(path, raw)?;
    let fleet = FleetView::build(&settings.fleet).map_err(|e| ConfigError::Invalid {
        path: path.to_owned(),
        key: "shimmer.static",
        message: e.to_string(),
    })?;
    Ok(Loaded {
        server,
        settings,
        fleet,
    })
}

fn mentions_top_level_key(text: &str, key: &str) -> bool {
    text.lines().any(|l| {
        l.strip_prefix(key)
            .is_some_and(|r| r.trim_start().starts_with(':'))
    })
}

fn validate(path: &Path, raw: RawShimmer) -> Result<Settings, ConfigError> {
    let invalid = |key: &'static str, message: String| ConfigError::Invalid {
        path: path.to_owned(),
        key,
        message,
    };
    let node = raw.node.trim().to_owned();
    if node.is_empty() || node.contains(['{', '}', ',', '=']) {
        return Err(invalid(
            "shimmer.node",
            format!(
                "{:?} is not a node name as used in the link templates",
                raw.node
            ),
        ));
    }
    if raw.listen.is_empty() && raw.tls.is_none() {
        return Err(invalid(
            "shimmer.listen",
            "needs at least one address (or TLS listeners under shimmer.tls)".into(),
        ));
    }
    for l in &raw.listen {
        l.parse::<SocketAddr>()
            .map_err(|e| invalid("shimmer.listen", format!("{l:?}: {e}")))?;
    }
    if raw.mode == Mode::Proxy {
        return Err(invalid(
            "shimmer.mode",
            "proxy mode is not available yet; use redirect".into(),
        ));
    }
    let source = match raw.source.trim() {
        "static" => None,
        dsn => {
            // Syntax only: a database that is down now must not stop the mirror.
            crate::shimmie::connect(dsn).map_err(|e| invalid("shimmer.source", e.to_string()))?;
            Some(dsn.to_owned())
        }
    };
    for (key, d) in [
        ("shimmer.sync.interval", raw.sync.interval),
        ("shimmer.sync.full_reread", raw.sync.full_reread),
    ] {
        if d.0.is_zero() {
            return Err(invalid(key, "must be greater than zero".into()));
        }
    }
    let sync = crate::sync::SyncOptions {
        interval: raw.sync.interval.0,
        full_reread: raw.sync.full_reread.0,
        state_path: raw.sync.state_file.clone(),
        ..crate::sync::SyncOptions::default()
    };
    if raw.origin.servers.is_empty() {
        return Err(invalid(
            "shimmer.origin.servers",
            "needs at least one origin".into(),
        ));
    }
    let origins = raw
        .origin
        .servers
        .iter()
        .map(|s| parse_origin(s).map_err(|m| invalid("shimmer.origin.servers", m)))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(h) = &raw.origin.host {
        if h.is_empty() || h.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(invalid(
                "shimmer.origin.host",
                format!("{h:?} is not a host"),
            ));
        }
    }
    for (key, d) in [
        ("shimmer.origin.connect_timeout", raw.origin.connect_timeout),
        ("shimmer.origin.read_timeout", raw.origin.read_timeout),
        ("shimmer.cache.lock_timeout", raw.cache.lock_timeout),
    ] {
        if d.0.is_zero() {
            return Err(invalid(key, "must be greater than zero".into()));
        }
    }
    if raw.cache.memory_bytes.0 < (1 << 20) {
        return Err(invalid(
            "shimmer.cache.memory_bytes",
            "must be at least 1M".into(),
        ));
    }
    let disk = disk_config(&raw.cache).map_err(|(key, m)| invalid(key, m))?;
    if raw.http.max_path_bytes < 64 {
        return Err(invalid(
            "shimmer.http.max_path_bytes",
            "must be at least 64".into(),
        ));
    }
    http::HeaderValue::from_str(&raw.http.cache_control)
        .map_err(|e| invalid("shimmer.http.cache_control", e.to_string()))?;
    tracing_subscriber::EnvFilter::try_new(&raw.log_level)
        .map_err(|e| invalid("shimmer.log_level", e.to_string()))?;
    let admin = ops::admin(&raw.admin).map_err(|(key, m)| invalid(key, m))?;
    let tls = raw
        .tls
        .as_ref()
        .map(ops::tls)
        .transpose()
        .map_err(|(key, m)| invalid(key, m))?;
    distinct_listeners(&raw.listen, tls.as_ref(), admin.listen)
        .map_err(|(key, m)| invalid(key, m))?;
    Ok(Settings {
        node,
        listen: raw.listen,
        mode: raw.mode,
        origins,
        origin_host: raw.origin.host,
        connect_timeout: raw.origin.connect_timeout.0,
        read_timeout: raw.origin.read_timeout.0,
        idle_timeout: raw.origin.idle_timeout.0,
        fleet: FleetSpec {
            image_ilink: raw.static_fleet.image_ilink,
            image_tlink: raw.static_fleet.image_tlink,
            algorithm: raw.algorithm,
        },
        memory_bytes: raw.cache.memory_bytes.0,
        max_object_bytes: raw.cache.max_object_bytes.0,
        lock_timeout: raw.cache.lock_timeout.0,
        not_found_ttl: raw.cache.not_found_ttl.0,
        disk,
        cache_control: raw.http.cache_control,
        max_path_bytes: raw.http.max_path_bytes,
        log_level: raw.log_level,
        admin,
        tls,
        source,
        sync,
    })
}

/// Refuses two listeners on one address. Pingora would not refuse them: its listeners
/// take an address's socket from one table of bound sockets, so the second listener
/// would silently share the first one's socket, and two services (plain HTTP and TLS,
/// or the mirror and the admin API) would take turns accepting its connections, e.g.
/// half the TLS handshakes answered by the admin API and cut short. An unspecified
/// address (`0.0.0.0`, `[::]`) overlaps every address on its port.
fn distinct_listeners(
    listen: &[String],
    tls: Option<&ops::Tls>,
    admin: Option<SocketAddr>,
) -> Result<(), (&'static str, String)> {
    let named = |key: &'static str, addrs: &[String]| -> Vec<(&'static str, SocketAddr)> {
        // Each was parsed already; one that does not parse was refused before this.
        addrs
            .iter()
            .filter_map(|a| a.parse().ok())
            .map(|a| (key, a))
            .collect()
    };
    let mut all = named("shimmer.listen", listen);
    all.extend(named(
        "shimmer.tls.listen",
        tls.map_or(&[][..], |t| &t.listen[..]),
    ));
    all.extend(admin.map(|a| ("shimmer.admin.listen", a)));
    let overlap = |a: &SocketAddr, b: &SocketAddr| {
        a.port() == b.port()
            && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
    };
    for (i, (key, addr)) in all.iter().enumerate() {
        if let Some((other_key, other)) = all[..i].iter().find(|(_, o)| overlap(o, addr)) {
            let clash = if other == addr {
                format!("{addr} is also in {other_key}")
            } else {
                format!("{addr} overlaps {other} in {other_key}")
            };
            return Err((
                key,
                format!("{clash}: each address can carry one listener only"),
            ));
        }
    }
    Ok(())
}

/// What `shimmer -t` reports without refusing the file: the mirror would start, but
/// not as configured. Each names the file and the key, like a [`ConfigError`].
pub fn warnings(path: &Path, settings: &Settings) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(disk) = &settings.disk {
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

/// The disk tier from `shimmer.cache`: `disk_bytes` is required with `dir`, and the
/// other disk keys make no sense without it.
fn disk_config(raw: &RawCache) -> Result<Option<DiskConfig>, (&'static str, String)> {
    let Some(dir) = &raw.dir else {
        let stray = [
            ("shimmer.cache.disk_bytes", raw.disk_bytes.is_some()),
            (
                "shimmer.cache.disk_max_object_bytes",
                raw.disk_max_object_bytes.is_some(),
            ),
            ("shimmer.cache.fsync", raw.fsync),
        ];
        return match stray.iter().find(|(_, set)| *set) {
            Some((key, _)) => Err((
                key,
                "only applies with shimmer.cache.dir (the disk tier)".into(),
            )),
            None => Ok(None),
        };
    };
    if !dir.is_absolute() {
        return Err((
            "shimmer.cache.dir",
            format!("{} must be an absolute path", dir.display()),
        ));
    }
    let budget = raw
        .disk_bytes
        .ok_or((
            "shimmer.cache.disk_bytes",
            "is required when dir is set".to_owned(),
        ))?
        .0;
    if budget < MIN_DISK_BYTES {
        return Err(("shimmer.cache.disk_bytes", "must be at least 16M".into()));
    }
    let max_object = match raw.disk_max_object_bytes {
        Some(ByteSize(n)) if n == 0 || n > budget => {
            return Err((
                "shimmer.cache.disk_max_object_bytes",
                "must be more than 0 and at most disk_bytes".into(),
            ))
        }
        Some(ByteSize(n)) => n,
        None => DEFAULT_DISK_MAX_OBJECT.min(budget / 8),
    };
    Ok(Some(DiskConfig {
        dir: dir.clone(),
        budget_bytes: budget,
        max_object_bytes: max_object,
        fsync: raw.fsync,
    }))
}

/// `http://host[:port]`, `https://host[:port]` or `host:port` (plain HTTP).
fn parse_origin(s: &str) -> Result<OriginServer, String> {
    let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = s.strip_prefix("http://") {
        (false, r)
    } else if s.contains("://") {
        return Err(format!(
            "{s:?}: only http:// and https:// origins are supported"
        ));
    } else {
        (false, s)
    };
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(format!(
            "{s:?}: give scheme, host and port only; shimmer adds /<silo>/<hash>/<name>"
        ));
    }
    let with_port = if authority.rsplit_once(':').is_some_and(|(h, p)| {
        !h.is_empty() && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())
    }) {
        authority.to_owned()
    } else {
        format!("{authority}:{}", if tls { 443 } else { 80 })
    };
    let host = with_port
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_owned())
        .unwrap_or_default();
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("{s:?}: cannot resolve: {e}"))?
        .next()
        .ok_or_else(|| format!("{s:?}: resolves to no address"))?;
    Ok(OriginServer { addr, tls, host })
}

impl ByteSize {
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{s:?} is not a size like 512M or 16GiB"))?;
        let shift = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            "t" | "tb" | "tib" => 40,
            _ => return Err(format!("{s:?}: unknown unit (use K, M, G or T)")),
        };
        n.checked_mul(1u64 << shift)
            .map(ByteSize)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl Seconds {
    pub fn parse(s: &str) -> Result<Seconds, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration like 500ms, 2s or 5m"))?;
        let secs = match unit.trim() {
            "ms" => n / 1000.0,
            "" | "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            _ => return Err(format!("{s:?}: unknown unit (use ms, s, m or h)")),
        };
        Duration::try_from_secs_f64(secs)
            .map(Seconds)
            .map_err(|e| format!("{s:?}: {e}"))
    }
}

/// Both sizes and durations accept a number or a string with a unit.
#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrText {
    Num(u64),
    Float(f64),
    Text(String),
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumOrText::deserialize(d)? {
            NumOrText::Num(n) => Ok(ByteSize(n)),
            NumOrText::Float(f) => Err(serde::de::Error::custom(format!(
                "{f} is not a whole number of bytes"
            ))),
            NumOrText::Text(t) => ByteSize::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumOrText::deserialize(d)? {
            NumOrText::Num(n) => Ok(Seconds(Duration::from_secs(n))),
            NumOrText::Float(f) => Seconds::parse(&f.to_string()).map_err(serde::de::Error::custom),
            NumOrText::Text(t) => Seconds::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests;
