//! Raw schema -> [`Config`]: every check, once. What `shimmer -t` validates is what
//! runs: the DSN parsed here is the source the sync service gets, and the log filter
//! parsed here is the one installed.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;

use pingora::server::configuration::ServerConf;

use super::fixed::{server_keys, Fixed};
use super::raw::{File, RawCache, RawShimmer};
use super::units::ByteSize;
use super::{ops, AnswerHeaders, Config, ConfigError, Live, OriginServer, Settings};
use crate::cache::disk::DiskConfig;
use crate::fleet::{FleetSpec, FleetView};
use crate::origin::path::OriginPaths;
use crate::origin::s3::S3Origin;
use crate::origin::shimmie::ShimmieOrigin;

/// Largest object kept on disk when `disk_max_object_bytes` is not set (and at most an
/// eighth of `disk_bytes`).
const DEFAULT_DISK_MAX_OBJECT: u64 = 1 << 30;
/// Smallest disk tier worth having.
const MIN_DISK_BYTES: u64 = 16 << 20;

type Invalid = (&'static str, String);

/// Parses and validates config text; `path` is only used in messages.
pub fn render(path: &Path, text: &str) -> Result<Config, ConfigError> {
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
    shimmer(raw, server).map_err(|(key, message)| ConfigError::Invalid {
        path: path.to_owned(),
        key,
        message,
    })
}

fn mentions_top_level_key(text: &str, key: &str) -> bool {
    text.lines().any(|l| {
        l.strip_prefix(key)
            .is_some_and(|r| r.trim_start().starts_with(':'))
    })
}

/// The `shimmer:` section, beside Pingora's validated keys.
fn shimmer(raw: RawShimmer, server: ServerConf) -> Result<Config, Invalid> {
    let node = raw.node.trim().to_owned();
    if node.is_empty() || node.contains(['{', '}', ',', '=']) {
        return Err((
            "shimmer.node",
            format!(
                "{:?} is not a node name as used in the link templates",
                raw.node
            ),
        ));
    }
    if raw.listen.is_empty() && raw.tls.is_none() {
        return Err((
            "shimmer.listen",
            "needs at least one address (or TLS listeners under shimmer.tls)".into(),
        ));
    }
    for l in &raw.listen {
        l.parse::<SocketAddr>()
            .map_err(|e| ("shimmer.listen", format!("{l:?}: {e}")))?;
    }
    let mut peers = super::peers::render(
        &raw.peers,
        raw.fleet_token_file.as_ref(),
        &raw.health,
        &raw.proxy,
    )?;
    peers.fleet = super::peers::render_fleet(&raw.fleet)?;
    let (source, database) = match raw.source.trim() {
        "static" => (None, None),
        // Syntax only, no connection: a database that is down now must not stop the
        // mirror. The parsed source is the one the sync service runs on.
        dsn => match crate::shimmie::connect(dsn) {
            Ok(db) => (Some(dsn.to_owned()), Some(db)),
            Err(e) => return Err(("shimmer.source", e.to_string())),
        },
    };
    for (key, d) in [
        ("shimmer.sync.interval", raw.sync.interval),
        ("shimmer.sync.full_reread", raw.sync.full_reread),
    ] {
        if d.0.is_zero() {
            return Err((key, "must be greater than zero".into()));
        }
    }
    let reconcile = reconcile_options(&raw.sync.reconcile)?;
    let sync = crate::sync::SyncOptions {
        interval: raw.sync.interval.0,
        full_reread: raw.sync.full_reread.0,
        state_path: raw.sync.state_file.clone(),
        reconcile,
        ..crate::sync::SyncOptions::default()
    };
    let (origins, origin_paths, s3) = origin_kind(&raw.origin)?;
    let shimmie_origin = shimmie_origin(&raw.origin)?;
    if shimmie_origin.is_some() && source.is_none() {
        return Err((
            "shimmer.origin",
            "`shimmie` reads the bucket from Shimmie's config table, so shimmer.source must \
             be Shimmie's database (postgres://, mysql://, mariadb:// or sqlite://), not static"
                .into(),
        ));
    }
    if let Some(h) = &raw.origin.host {
        if h.is_empty() || h.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(("shimmer.origin.host", format!("{h:?} is not a host")));
        }
    }
    for (key, d) in [
        ("shimmer.origin.connect_timeout", raw.origin.connect_timeout),
        ("shimmer.origin.read_timeout", raw.origin.read_timeout),
        ("shimmer.cache.lock_timeout", raw.cache.lock_timeout),
        ("shimmer.http.send_timeout", raw.http.send_timeout),
    ] {
        if d.0.is_zero() {
            return Err((key, "must be greater than zero".into()));
        }
    }
    if raw.cache.memory_bytes.0 < (1 << 20) {
        return Err((
            "shimmer.cache.memory_bytes",
            "must be at least 1M (1 MiB)".into(),
        ));
    }
    let disk = disk_config(&raw.cache)?;
    if raw.http.max_path_bytes < 64 {
        return Err(("shimmer.http.max_path_bytes", "must be at least 64".into()));
    }
    // Pingora itself stops reading a request head at about 1 MiB (and answers 400).
    let max_header_bytes = match raw.http.max_header_bytes.0 {
        n @ 1024..=1_048_575 => n as usize,
        _ => {
            return Err((
                "shimmer.http.max_header_bytes",
                "must be between 1K and 1M - 1 byte".into(),
            ))
        }
    };
    let answer = AnswerHeaders {
        cache_control: http::HeaderValue::from_str(&raw.http.cache_control)
            .map_err(|e| ("shimmer.http.cache_control", e.to_string()))?,
        not_found_cache_control: http::HeaderValue::from_str(&format!(
            "public, max-age={}",
            raw.cache.not_found_ttl.0.as_secs()
        ))
        .map_err(|e| ("shimmer.cache.not_found_ttl", e.to_string()))?,
        node: http::HeaderValue::from_str(&node).map_err(|_| {
            let why = format!("{node:?} cannot be sent as the x-shimmer-node header");
            ("shimmer.node", why)
        })?,
        generation: AnswerHeaders::next_generation(),
    };
    let log_filter = tracing_subscriber::EnvFilter::try_new(&raw.log_level)
        .map_err(|e| ("shimmer.log_level", e.to_string()))?;
    let (admin_listen, admin) = ops::admin(&raw.admin)?;
    let tls = raw.tls.as_ref().map(ops::tls).transpose()?;
    let tls_listeners = tls.as_ref().map(|t| &t.listeners);
    distinct_listeners(&raw.listen, tls_listeners, admin_listen)?;
    let fleet_spec = FleetSpec {
        image_ilink: raw.static_fleet.image_ilink,
        image_tlink: raw.static_fleet.image_tlink,
        algorithm: raw.algorithm,
    };
    let fleet = FleetView::build(&fleet_spec).map_err(|e| ("shimmer.static", e.to_string()))?;
    let fixed = Fixed {
        server_keys: server_keys(&server),
        listen: raw.listen,
        tls: tls.as_ref().map(|t| t.listeners.clone()),
        admin_listen,
        memory_bytes: raw.cache.memory_bytes.0,
        disk,
        source,
        sync,
    };
    let settings = Settings {
        node,
        mode: raw.mode,
        origins,
        origin_host: raw.origin.host,
        origin_paths,
        s3,
        shimmie_origin,
        connect_timeout: raw.origin.connect_timeout.0,
        read_timeout: raw.origin.read_timeout.0,
        idle_timeout: raw.origin.idle_timeout.0,
        fleet: fleet_spec,
        max_object_bytes: raw.cache.max_object_bytes.0,
        lock_timeout: raw.cache.lock_timeout.0,
        not_found_ttl: raw.cache.not_found_ttl.0,
        range_passthrough_ahead: raw.cache.range_passthrough_ahead.0,
        cache_control: raw.http.cache_control,
        answer,
        max_path_bytes: raw.http.max_path_bytes,
        max_header_bytes,
        send_timeout: raw.http.send_timeout.0,
        log_level: raw.log_level,
        admin,
        tls: tls.as_ref().map(|t| ops::Tls {
            listen: t.listeners.listen.clone(),
            redirect_http: t.redirect_http,
        }),
        peers,
    };
    Ok(Config {
        fixed,
        server,
        database,
        live: Live {
            settings,
            certs: tls.map(|t| t.certs),
            log_filter,
            fleet,
        },
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
    tls: Option<&ops::TlsListeners>,
    admin: Option<SocketAddr>,
) -> Result<(), Invalid> {
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

/// The disk tier from `shimmer.cache`: `disk_bytes` is required with `dir`, and the
/// other disk keys make no sense without it.
fn disk_config(raw: &RawCache) -> Result<Option<DiskConfig>, Invalid> {
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
        return Err((
            "shimmer.cache.disk_bytes",
            "must be at least 16M (16 MiB)".into(),
        ));
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

/// The origin servers, path templates and S3 bucket from `shimmer.origin`: either
/// `servers` (HTTP) or `s3`, and `path` checked for either.
#[allow(clippy::type_complexity)]
fn origin_kind(
    raw: &super::raw::RawOrigin,
) -> Result<(Vec<OriginServer>, OriginPaths, Option<Arc<S3Origin>>), Invalid> {
    let paths = OriginPaths::from_raw(raw.path.as_ref()).map_err(|m| ("shimmer.origin.path", m))?;
    if raw.from.is_some() {
        // Checked by `shimmie_origin`; the bucket comes later, from the database.
        return Ok((
            Vec::new(),
            paths.or_default(&S3Origin::default_template()),
            None,
        ));
    }
    if let Some(raw_s3) = &raw.s3 {
        if !raw.servers.is_empty() {
            return Err((
                "shimmer.origin.servers",
                "give either servers or s3, not both".into(),
            ));
        }
        if raw.host.is_some() {
            return Err((
                "shimmer.origin.host",
                "does not apply to s3 (the Host is the bucket's)".into(),
            ));
        }
        let s3 = S3Origin::from_raw(raw_s3, parse_origin)?;
        let paths = paths.or_default(&S3Origin::default_template());
        return Ok((vec![s3.server.clone()], paths, Some(Arc::new(s3))));
    }
    if raw.servers.is_empty() {
        return Err((
            "shimmer.origin.servers",
            "needs at least one origin (or shimmer.origin.s3)".into(),
        ));
    }
    let origins = raw
        .servers
        .iter()
        .map(|s| parse_origin(s).map_err(|m| ("shimmer.origin.servers", m)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((origins, paths, None))
}

/// `origin: shimmie` / `from: shimmie` and its overrides; `None` for the other kinds,
/// which may not use those overrides.
fn shimmie_origin(raw: &super::raw::RawOrigin) -> Result<Option<ShimmieOrigin>, Invalid> {
    let Some(from) = &raw.from else {
        let stray = [
            ("shimmer.origin.region", raw.region.is_some()),
            ("shimmer.origin.path_style", raw.path_style.is_some()),
            ("shimmer.origin.anonymous", raw.anonymous.is_some()),
        ];
        return match stray.iter().find(|(_, set)| *set) {
            Some((key, _)) => Err((
                key,
                "only applies with `from: shimmie` (for `s3`, give it under shimmer.origin.s3)"
                    .into(),
            )),
            None => Ok(None),
        };
    };
    if from != "shimmie" {
        return Err((
            "shimmer.origin.from",
            format!("{from:?}: the only origin read from elsewhere is `shimmie`"),
        ));
    }
    let clash = [
        ("shimmer.origin.servers", !raw.servers.is_empty()),
        ("shimmer.origin.s3", raw.s3.is_some()),
        ("shimmer.origin.host", raw.host.is_some()),
    ];
    if let Some((key, _)) = clash.iter().find(|(_, set)| *set) {
        return Err((
            key,
            "does not apply with `from: shimmie` (the bucket comes from Shimmie's config table)"
                .into(),
        ));
    }
    let region = match raw.region.as_deref().map(str::trim) {
        Some(r) if r.is_empty() || !r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => {
            return Err(("shimmer.origin.region", format!("{r:?} is not a region")))
        }
        r => r.map(str::to_owned),
    };
    Ok(Some(ShimmieOrigin {
        region,
        path_style: raw.path_style.unwrap_or(true),
        anonymous: raw.anonymous.unwrap_or(false),
    }))
}

/// `shimmer.sync.reconcile`, checked.
fn reconcile_options(
    raw: &super::raw::RawReconcile,
) -> Result<crate::sync::ReconcileOptions, Invalid> {
    let max = crate::shimmie::sql::MAX_LIVE_BATCH;
    // Two at least: a memory-tier object is checked as two md5s in one query.
    if raw.batch < 2 || raw.batch > max {
        return Err((
            "shimmer.sync.reconcile.batch",
            format!("must be between 2 and {max} hashes"),
        ));
    }
    if raw.every.0.is_zero() {
        return Err((
            "shimmer.sync.reconcile.every",
            "must be greater than zero".into(),
        ));
    }
    Ok(crate::sync::ReconcileOptions {
        enabled: raw.enabled,
        batch: raw.batch,
        interval: raw.interval.0,
        every: raw.every.0,
    })
}

/// `http://host[:port]`, `https://host[:port]` or `host:port` (plain HTTP), resolved
/// once so the request path never does DNS (here for the YAML's origins, and by the
/// sync for the bucket `origin: shimmie` reads from the database).
pub fn resolve_origin(s: &str) -> Result<OriginServer, String> {
    parse_origin(s)
}

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
