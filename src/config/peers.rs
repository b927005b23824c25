//! The fleet's own keys: `shimmer.peers`, `shimmer.fleet_token_file`,
//! `shimmer.health`, `shimmer.proxy` and `shimmer.fleet`. All reloadable.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::units::{ByteSize, Seconds};
use crate::peers::hop::FleetToken;
use crate::peers::{FleetSettings, HealthSettings, PeerAddr, PeerSettings, WarmSettings};

type Invalid = (&'static str, String);

/// How peers are probed, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHealth {
    pub interval: Seconds,
    pub timeout: Seconds,
    pub rise: usize,
    pub fall: usize,
}

impl Default for RawHealth {
    fn default() -> Self {
        let d = HealthSettings::default();
        RawHealth {
            interval: Seconds(d.interval),
            timeout: Seconds(d.timeout),
            rise: d.rise,
            fall: d.fall,
        }
    }
}

/// Proxy mode's knobs, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawProxy {
    /// Connect and first-byte timeout of a request to a peer.
    pub timeout: Seconds,
    /// Memory for the hottest objects this node does not own.
    pub hot_bytes: ByteSize,
}

impl Default for RawProxy {
    fn default() -> Self {
        RawProxy {
            timeout: Seconds(Duration::from_secs(2)),
            hot_bytes: ByteSize(0),
        }
    }
}

/// `shimmer.fleet`: how the owners of an object share it, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFleet {
    /// Copies of every origin fill at the object's other owner: `true`, `false`, or
    /// the knobs.
    pub warm_secondary: RawWarm,
    /// After a view change, how long a new owner asks the previous owners first.
    pub handoff: Seconds,
    /// Connect and first-byte timeout of an only-if-cached ask to a peer.
    pub fill_timeout: Seconds,
}

impl Default for RawFleet {
    fn default() -> Self {
        let d = FleetSettings::default();
        RawFleet {
            warm_secondary: RawWarm::Knobs(RawWarmKnobs::default()),
            handoff: Seconds(d.handoff),
            fill_timeout: Seconds(d.fill_timeout),
        }
    }
}

/// `shimmer.fleet.warm_secondary`: a switch, or the knobs (which mean "on").
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawWarm {
    Switch(bool),
    Knobs(RawWarmKnobs),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawWarmKnobs {
    pub enabled: bool,
    /// Copies pulled at once.
    pub concurrency: usize,
    /// Bytes per second the copies may take (0: unbounded).
    pub max_bytes_per_second: ByteSize,
    /// Notices waiting here, per direction; beyond it new ones are dropped.
    pub queue: usize,
    /// Hashes per notice sent to the other owner.
    pub batch: usize,
    /// How long a notice waits for its batch to fill.
    pub batch_wait: Seconds,
}

impl Default for RawWarmKnobs {
    fn default() -> Self {
        let d = WarmSettings::default();
        RawWarmKnobs {
            enabled: d.enabled,
            concurrency: d.concurrency,
            max_bytes_per_second: ByteSize(d.max_bytes_per_second),
            queue: d.queue,
            batch: d.batch,
            batch_wait: Seconds(d.batch_wait),
        }
    }
}

pub(super) fn render_fleet(raw: &RawFleet) -> Result<FleetSettings, Invalid> {
    let knobs = match &raw.warm_secondary {
        RawWarm::Switch(on) => RawWarmKnobs {
            enabled: *on,
            ..RawWarmKnobs::default()
        },
        RawWarm::Knobs(k) => k.clone(),
    };
    if raw.fill_timeout.0.is_zero() {
        return Err((
            "shimmer.fleet.fill_timeout",
            "must be greater than zero".into(),
        ));
    }
    for (key, n) in [
        (
            "shimmer.fleet.warm_secondary.concurrency",
            knobs.concurrency,
        ),
        ("shimmer.fleet.warm_secondary.queue", knobs.queue),
        ("shimmer.fleet.warm_secondary.batch", knobs.batch),
    ] {
        if n == 0 {
            return Err((key, "must be at least 1".into()));
        }
    }
    if knobs.batch > 4096 {
        return Err((
            "shimmer.fleet.warm_secondary.batch",
            "at most 4096 hashes per notice".into(),
        ));
    }
    Ok(FleetSettings {
        warm: WarmSettings {
            enabled: knobs.enabled,
            concurrency: knobs.concurrency,
            max_bytes_per_second: knobs.max_bytes_per_second.0,
            queue: knobs.queue,
            batch: knobs.batch,
            batch_wait: knobs.batch_wait.0,
        },
        handoff: raw.handoff.0,
        fill_timeout: raw.fill_timeout.0,
    })
}

pub(super) fn render(
    peers: &BTreeMap<String, String>,
    token_file: Option<&PathBuf>,
    health: &RawHealth,
    proxy: &RawProxy,
) -> Result<PeerSettings, Invalid> {
    let mut parsed = BTreeMap::new();
    for (node, url) in peers {
        if node.trim().is_empty() || node.contains(['{', '}', ',', '=']) {
            return Err(("shimmer.peers", format!("{node:?} is not a node name")));
        }
        let addr =
            PeerAddr::parse(url.trim()).map_err(|m| ("shimmer.peers", format!("{node}: {m}")))?;
        parsed.insert(node.clone(), addr);
    }
    let token = token_file.map(read_token).transpose()?;
    for (key, d) in [
        ("shimmer.health.interval", health.interval),
        ("shimmer.health.timeout", health.timeout),
        ("shimmer.proxy.timeout", proxy.timeout),
    ] {
        if d.0.is_zero() {
            return Err((key, "must be greater than zero".into()));
        }
    }
    for (key, n) in [
        ("shimmer.health.rise", health.rise),
        ("shimmer.health.fall", health.fall),
    ] {
        if n == 0 {
            return Err((key, "must be at least 1".into()));
        }
    }
    Ok(PeerSettings {
        peers: parsed,
        token,
        health: HealthSettings {
            interval: health.interval.0,
            timeout: health.timeout.0,
            rise: health.rise,
            fall: health.fall,
        },
        timeout: proxy.timeout.0,
        hot_bytes: proxy.hot_bytes.0,
        fleet: FleetSettings::default(),
    })
}

fn read_token(path: &PathBuf) -> Result<FleetToken, Invalid> {
    const KEY: &str = "shimmer.fleet_token_file";
    let text =
        std::fs::read_to_string(path).map_err(|e| (KEY, format!("{}: {e}", path.display())))?;
    let secret = text.trim();
    // Anyone who can guess it can make any mirror fetch from the origin.
    if secret.len() < 16 || secret.bytes().any(|b| b.is_ascii_whitespace()) {
        return Err((
            KEY,
            format!(
                "{}: the token must be one word of at least 16 characters",
                path.display()
            ),
        ));
    }
    FleetToken::new(secret.as_bytes()).ok_or((KEY, "empty token".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn defaults_render() {
        let p = render(
            &BTreeMap::new(),
            None,
            &RawHealth::default(),
            &RawProxy::default(),
        )
        .expect("defaults");
        assert!(p.peers.is_empty() && p.token.is_none());
        assert_eq!(p.health, HealthSettings::default());
    }

    #[test]
    fn each_bad_value_names_its_key() {
        let h = RawHealth::default();
        let x = RawProxy::default();
        let bad_url = render(&peers(&[("b", "10.0.0.2:80")]), None, &h, &x);
        assert_eq!(bad_url.map(|_| ()).unwrap_err().0, "shimmer.peers");
        let bad_name = render(&peers(&[("b,c", "http://x")]), None, &h, &x);
        assert_eq!(bad_name.map(|_| ()).unwrap_err().0, "shimmer.peers");
        let zero = RawHealth {
            rise: 0,
            ..RawHealth::default()
        };
        let e = render(&BTreeMap::new(), None, &zero, &x)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.0, "shimmer.health.rise");
        let dir = tempfile::tempdir().expect("dir");
        let short = dir.path().join("t");
        std::fs::write(&short, "short\n").expect("write");
        let e = render(&BTreeMap::new(), Some(&short), &h, &x)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.0, "shimmer.fleet_token_file");
        let missing = dir.path().join("nope");
        let e = render(&BTreeMap::new(), Some(&missing), &h, &x)
            .map(|_| ())
            .unwrap_err();
        assert!(e.1.contains("nope"), "{}", e.1);
    }

    fn fleet(yaml: &str) -> Result<FleetSettings, Invalid> {
        let raw: RawFleet = serde_yaml::from_str(yaml).map_err(|e| ("yaml", e.to_string()))?;
        render_fleet(&raw)
    }

    #[test]
    fn warm_secondary_is_a_switch_or_its_knobs() {
        let d = fleet("{}").expect("defaults");
        assert_eq!(d, FleetSettings::default());
        assert!(d.warm.enabled, "on by default");
        let off = fleet("warm_secondary: false").expect("off");
        assert!(!off.warm.enabled);
        assert_eq!(off.warm.concurrency, d.warm.concurrency);
        let k = fleet("warm_secondary: {concurrency: 2, max_bytes_per_second: 10M}\nhandoff: 5m")
            .expect("knobs");
        assert!(k.warm.enabled);
        assert_eq!(k.warm.concurrency, 2);
        assert_eq!(k.warm.max_bytes_per_second, 10 << 20);
        assert_eq!(k.handoff, Duration::from_secs(300));
    }

    #[test]
    fn bad_fleet_values_name_their_key() {
        for (yaml, key) in [
            ("fill_timeout: 0s", "shimmer.fleet.fill_timeout"),
            (
                "warm_secondary: {concurrency: 0}",
                "shimmer.fleet.warm_secondary.concurrency",
            ),
            (
                "warm_secondary: {batch: 5000}",
                "shimmer.fleet.warm_secondary.batch",
            ),
            (
                "warm_secondary: {queue: 0}",
                "shimmer.fleet.warm_secondary.queue",
            ),
        ] {
            assert_eq!(fleet(yaml).map(|_| ()).unwrap_err().0, key, "{yaml}");
        }
        assert!(fleet("warm_secondary: maybe").is_err());
        assert!(fleet("warm_secondary: {speed: 1}").is_err(), "unknown knob");
        assert!(fleet("handof: 1m").is_err(), "unknown key");
    }

    #[test]
    fn a_good_token_file_is_read() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("t");
        std::fs::write(&path, "0123456789abcdef0123\n").expect("write");
        let p = render(
            &BTreeMap::new(),
            Some(&path),
            &RawHealth::default(),
            &RawProxy::default(),
        )
        .expect("token");
        assert!(p.token.is_some());
    }
}
