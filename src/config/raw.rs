//! The file as written: the serde schema of the `shimmer:` section, with its defaults.
//! Nothing here is validated; [`super::render`] turns it into a [`super::Config`] and
//! nothing else reads these types.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ops::{RawAdmin, RawTls};
use super::units::{ByteSize, Seconds};
use super::Mode;
use crate::fleet::Algorithm;

/// The whole file as shimmer reads it; Pingora reads its own top-level keys itself.
#[derive(Deserialize)]
pub(super) struct File {
    pub shimmer: Option<RawShimmer>,
}

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
    #[serde(deserialize_with = "origin_form")]
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
    pub admin: RawAdmin,
    #[serde(default)]
    pub tls: Option<RawTls>,
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// Node name -> base URL for mirror-to-mirror traffic.
    #[serde(default)]
    pub peers: std::collections::BTreeMap<String, String>,
    /// The fleet's shared secret, which signs hops between mirrors.
    #[serde(default)]
    pub fleet_token_file: Option<PathBuf>,
    #[serde(default)]
    pub health: super::peers::RawHealth,
    #[serde(default)]
    pub proxy: super::peers::RawProxy,
    #[serde(default)]
    pub fleet: super::peers::RawFleet,
}

/// `shimmer.origin` as written: the word `shimmie` (the bucket from Shimmie's `config`
/// table, every other key at its default), or a map. The map has `servers` (HTTP),
/// `s3` (a bucket), or `from: shimmie` with the overrides that only apply to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOrigin {
    #[serde(default)]
    pub servers: Vec<String>,
    /// Where an image lives on the origin (`crate::origin::path`).
    #[serde(default)]
    pub path: Option<crate::origin::path::RawOriginPath>,
    /// A bucket instead of `servers` (`crate::origin::s3`).
    #[serde(default)]
    pub s3: Option<crate::origin::s3::RawS3>,
    /// `shimmie`: the bucket from Shimmie's `config` table (`crate::origin::shimmie`).
    #[serde(default)]
    pub from: Option<String>,
    /// With `from: shimmie`: the region to sign with instead of `s3_region`.
    #[serde(default)]
    pub region: Option<String>,
    /// With `from: shimmie`: `false` for virtual-hosted requests (default true).
    #[serde(default)]
    pub path_style: Option<bool>,
    /// With `from: shimmie`: never sign, whatever keys the table holds.
    #[serde(default)]
    pub anonymous: Option<bool>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Seconds,
    #[serde(default = "default_read_timeout")]
    pub read_timeout: Seconds,
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Seconds,
}

/// `origin: shimmie` as a plain word, or the map.
pub fn origin_form<'de, D: serde::Deserializer<'de>>(d: D) -> Result<RawOrigin, D::Error> {
    use serde::de::Error;
    // Through a Value so a map's own errors (an unknown key, say) stay precise; an
    // untagged enum would only say that no variant matched.
    match serde_yaml::Value::deserialize(d)? {
        serde_yaml::Value::String(word) if word == "shimmie" => Ok(RawOrigin {
            from: Some(word),
            ..RawOrigin::default()
        }),
        serde_yaml::Value::String(word) => Err(D::Error::custom(format!(
            "{word:?}: give `shimmie` (the bucket from Shimmie's config table), or a map \
             with `servers`, `s3` or `from: shimmie`"
        ))),
        map => RawOrigin::deserialize(map).map_err(D::Error::custom),
    }
}

impl Default for RawOrigin {
    fn default() -> Self {
        RawOrigin {
            servers: Vec::new(),
            path: None,
            s3: None,
            from: None,
            region: None,
            path_style: None,
            anonymous: None,
            host: None,
            connect_timeout: default_connect_timeout(),
            read_timeout: default_read_timeout(),
            idle_timeout: default_idle_timeout(),
        }
    }
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
    /// A Range starting further than this ahead of a fill in progress is fetched from
    /// the origin at once (a ranged pass-through); 0: never.
    pub range_passthrough_ahead: ByteSize,
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
            range_passthrough_ahead: ByteSize(2 << 20),
            dir: None,
            disk_bytes: None,
            disk_max_object_bytes: None,
            fsync: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHttp {
    pub cache_control: String,
    pub max_path_bytes: usize,
    /// The request line and header fields together; 431 beyond.
    pub max_header_bytes: ByteSize,
    /// How long a client may take to accept more of an answer (nginx's `send_timeout`).
    pub send_timeout: Seconds,
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp {
            cache_control: "public, max-age=31536000, immutable".into(),
            max_path_bytes: 2048,
            max_header_bytes: ByteSize(8 << 10),
            send_timeout: Seconds(Duration::from_secs(60)),
        }
    }
}

/// `shimmer.sync`: how the database source is read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSync {
    pub interval: Seconds,
    pub full_reread: Seconds,
    pub state_file: Option<PathBuf>,
    pub reconcile: RawReconcile,
}

impl Default for RawSync {
    fn default() -> Self {
        let d = crate::sync::SyncOptions::default();
        RawSync {
            interval: Seconds(d.interval),
            full_reread: Seconds(d.full_reread),
            state_file: None,
            reconcile: RawReconcile::default(),
        }
    }
}

/// `shimmer.sync.reconcile`: the cached hashes checked against Shimmie's `images`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawReconcile {
    pub enabled: bool,
    /// Hashes per query.
    pub batch: usize,
    /// Pause between two queries.
    pub interval: Seconds,
    /// A pass starts at most this often.
    pub every: Seconds,
}

impl Default for RawReconcile {
    fn default() -> Self {
        let d = crate::sync::ReconcileOptions::default();
        RawReconcile {
            enabled: d.enabled,
            batch: d.batch,
            interval: Seconds(d.interval),
            every: Seconds(d.every),
        }
    }
}

fn default_listen() -> Vec<String> {
    vec!["0.0.0.0:8080".into()]
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
