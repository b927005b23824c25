//! Every Prometheus metric shimmer exports, defined once, in the default registry.
//! Labels are low-cardinality by rule: never a hash, a path or a client address.

use once_cell::sync::Lazy;
use prometheus::{
    register_gauge, register_gauge_vec, register_histogram_vec, register_int_counter,
    register_int_counter_vec, register_int_gauge, register_int_gauge_vec, Gauge, GaugeVec,
    HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

/// Latency buckets from a memory hit (~100 µs) to a slow origin fetch of a video.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

macro_rules! metric {
    ($name:ident: $ty:ty = $init:expr) => {
        // Registration fails only for a name defined twice in this file: a bug that the
        // test below catches, never something input can cause.
        pub static $name: Lazy<$ty> = Lazy::new(|| $init.expect("metric defined once"));
    };
}

metric!(REQUESTS: IntCounterVec = register_int_counter_vec!(
    "shimmer_requests_total",
    "Requests answered, by silo and outcome (hit, miss, pass, redirect, not_found, rejected, error).",
    &["silo", "outcome"]
));

metric!(REQUEST_SECONDS: HistogramVec = register_histogram_vec!(
    "shimmer_request_duration_seconds",
    "Time from request to the end of the response, by outcome.",
    &["outcome"],
    LATENCY_BUCKETS.to_vec()
));

metric!(SENT_BYTES: IntCounter = register_int_counter!(
    "shimmer_sent_bytes_total",
    "Response body bytes sent to clients."
));

metric!(ORIGIN_REQUESTS: IntCounterVec = register_int_counter_vec!(
    "shimmer_origin_requests_total",
    "Requests sent to an origin, by result (ok, not_found, server_error, connect_error, timeout, error).",
    &["result"]
));

metric!(ORIGIN_SECONDS: HistogramVec = register_histogram_vec!(
    "shimmer_origin_response_seconds",
    "Time from choosing an origin to its response header, by result.",
    &["result"],
    LATENCY_BUCKETS.to_vec()
));

metric!(TLS_HANDSHAKES: IntCounterVec = register_int_counter_vec!(
    "shimmer_tls_handshakes_total",
    "TLS handshakes by stage: started, completed, cert_error (started minus completed failed).",
    &["stage"]
));

metric!(RELOADS: IntCounterVec = register_int_counter_vec!(
    "shimmer_config_reloads_total",
    "Config reloads (SIGHUP) by result: ok or failed (the old config stayed).",
    &["result"]
));

metric!(PURGES: IntCounterVec = register_int_counter_vec!(
    "shimmer_purges_total",
    "Hashes purged from the caches, by cause (admin, ban).",
    &["cause"]
));

metric!(VIEW_VERSION: IntGauge = register_int_gauge!(
    "shimmer_fleet_view_version",
    "Version of the fleet view in force; increases with every swap."
));

metric!(NODE_WEIGHT: GaugeVec = register_gauge_vec!(
    "shimmer_fleet_node_weight",
    "Weight of each node in each silo's link template, as Shimmie parses it.",
    &["silo", "node"]
));

metric!(EXPECTED_SHARE: GaugeVec = register_gauge_vec!(
    "shimmer_fleet_expected_share",
    "Share of each silo's images this node is primary for (0..1), by the current view.",
    &["silo"]
));

metric!(NODE_INFO: IntGaugeVec = register_int_gauge_vec!(
    "shimmer_node_info",
    "Always 1: this mirror's node name (as in the link templates) and version, for joins.",
    &["node", "version"]
));

// Sync with Shimmie's database (src/sync.rs). A static source has nothing to lose
// touch with: it counts as up from the start.

metric!(SYNC_UP: IntGauge = register_int_gauge!(
    "shimmer_sync_up",
    "1 while the last sync round with the source succeeded, 0 while the source is unreachable (the last good view stays)."
));

metric!(SYNC_ERRORS: IntCounter = register_int_counter!(
    "shimmer_sync_errors_total",
    "Sync rounds that failed to reach or read the source."
));

metric!(SYNC_TEMPLATE_ERRORS: IntCounter = register_int_counter!(
    "shimmer_sync_template_errors_total",
    "Link templates read from the source that did not parse (the current view stayed)."
));

metric!(SYNC_LAST_SUCCESS: Gauge = register_gauge!(
    "shimmer_sync_last_success_timestamp_seconds",
    "Unix time of the last successful sync round (0: none yet, or a static source)."
));

metric!(SYNC_BANS: IntGauge = register_int_gauge!(
    "shimmer_sync_bans",
    "Banned hashes known to this mirror."
));

/// Outcomes of [`REQUESTS`], created up front so ratios exist before the first request.
pub const OUTCOMES: [&str; 7] = [
    "hit",
    "miss",
    "pass",
    "redirect",
    "not_found",
    "rejected",
    "error",
];

/// Touches every metric so it is registered (and exported) before its first use, and
/// creates the known label sets, so a dashboard or an alert sees 0 rather than nothing.
pub fn init() {
    Lazy::force(&REQUESTS);
    Lazy::force(&REQUEST_SECONDS);
    Lazy::force(&SENT_BYTES);
    Lazy::force(&ORIGIN_REQUESTS);
    Lazy::force(&ORIGIN_SECONDS);
    Lazy::force(&TLS_HANDSHAKES);
    Lazy::force(&RELOADS);
    Lazy::force(&PURGES);
    Lazy::force(&VIEW_VERSION);
    Lazy::force(&NODE_WEIGHT);
    Lazy::force(&EXPECTED_SHARE);
    Lazy::force(&NODE_INFO);
    Lazy::force(&SYNC_UP);
    Lazy::force(&SYNC_ERRORS);
    Lazy::force(&SYNC_TEMPLATE_ERRORS);
    Lazy::force(&SYNC_LAST_SUCCESS);
    Lazy::force(&SYNC_BANS);
    for silo in ["_images", "_thumbs"] {
        for outcome in OUTCOMES {
            REQUESTS.with_label_values(&[silo, outcome]);
        }
    }
    for result in ["ok", "failed"] {
        RELOADS.with_label_values(&[result]);
    }
    for stage in ["started", "completed", "cert_error"] {
        TLS_HANDSHAKES.with_label_values(&[stage]);
    }
    for cause in ["admin", "ban"] {
        PURGES.with_label_values(&[cause]);
    }
}

/// Records this mirror's node name (at start and when a reload changes it).
pub fn set_node(node: &str) {
    NODE_INFO.reset();
    NODE_INFO
        .with_label_values(&[node, env!("CARGO_PKG_VERSION")])
        .set(1);
}

/// Copies the database sync's status into the sync metrics (at scrape time). Its
/// error counts are cumulative, so the counters advance by the difference.
pub fn observe_sync(status: &crate::sync::SyncStatus) {
    SYNC_UP.set(i64::from(status.up));
    if let Some(t) = status.last_success {
        let secs = t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        SYNC_LAST_SUCCESS.set(secs);
    }
    SYNC_BANS.set(i64::try_from(status.bans_known).unwrap_or(i64::MAX));
    for (counter, total) in [
        (&*SYNC_ERRORS, status.sync_errors),
        (&*SYNC_TEMPLATE_ERRORS, status.template_errors),
    ] {
        let seen = counter.get();
        if total > seen {
            counter.inc_by(total - seen);
        }
    }
}

/// For a static source (the YAML's `static:` block): always up, and no sync round ever
/// runs, so the last-success time stays 0.
pub fn sync_static_source() {
    SYNC_UP.set(1);
}

/// The Prometheus text exposition of everything registered.
pub fn render() -> Vec<u8> {
    use prometheus::Encoder;
    let mut out = Vec::new();
    // Encoding into a Vec cannot fail for well-formed families; a failure would only
    // truncate the scrape, which Prometheus reports.
    if let Err(e) = prometheus::TextEncoder::new().encode(&prometheus::gather(), &mut out) {
        tracing::error!("metrics encoding failed: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exported_under_its_name() {
        init();
        // Vectors only appear once a label set exists.
        REQUESTS.with_label_values(&["_images", "hit"]).inc();
        REQUEST_SECONDS.with_label_values(&["hit"]).observe(0.001);
        ORIGIN_REQUESTS.with_label_values(&["ok"]).inc();
        ORIGIN_SECONDS.with_label_values(&["ok"]).observe(0.01);
        SENT_BYTES.inc_by(10);
        let names: Vec<String> = prometheus::gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        for want in [
            "shimmer_requests_total",
            "shimmer_request_duration_seconds",
            "shimmer_sent_bytes_total",
            "shimmer_origin_requests_total",
            "shimmer_origin_response_seconds",
            // Created by init() with their known labels, before any event.
            "shimmer_config_reloads_total",
            "shimmer_tls_handshakes_total",
            "shimmer_purges_total",
            "shimmer_sync_up",
            "shimmer_sync_errors_total",
            "shimmer_sync_template_errors_total",
            "shimmer_sync_last_success_timestamp_seconds",
            "shimmer_sync_bans",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
    }
}

/// One cache tier's numbers at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct TierStats {
    pub tier: &'static str,
    pub bytes: u64,
    pub objects: u64,
    pub budget: u64,
    pub evictions: u64,
    pub evicted_bytes: u64,
}

/// Exports the tiers' own counters at scrape time instead of mirroring them into
/// separate metrics on every change.
struct TierCollector {
    read: Box<dyn Fn() -> Vec<TierStats> + Send + Sync>,
    descs: Vec<prometheus::core::Desc>,
}

const TIER_METRICS: [(&str, &str, bool); 5] = [
    (
        "shimmer_cache_bytes",
        "Bytes held by each cache tier.",
        false,
    ),
    (
        "shimmer_cache_objects",
        "Objects held by each cache tier.",
        false,
    ),
    (
        "shimmer_cache_budget_bytes",
        "Configured size of each cache tier.",
        false,
    ),
    (
        "shimmer_cache_evictions_total",
        "Objects evicted from each cache tier.",
        true,
    ),
    (
        "shimmer_cache_evicted_bytes_total",
        "Bytes evicted from each cache tier.",
        true,
    ),
];

impl prometheus::core::Collector for TierCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
        let tiers = (self.read)();
        TIER_METRICS
            .iter()
            .enumerate()
            .map(|(i, (name, help, counter))| {
                let mut family = MetricFamily::default();
                family.set_name(name.to_string());
                family.set_help(help.to_string());
                family.set_field_type(if *counter {
                    MetricType::COUNTER
                } else {
                    MetricType::GAUGE
                });
                for t in &tiers {
                    let v = [t.bytes, t.objects, t.budget, t.evictions, t.evicted_bytes][i] as f64;
                    let mut label = LabelPair::default();
                    label.set_name("tier".into());
                    label.set_value(t.tier.into());
                    let mut m = Metric::default();
                    m.set_label(vec![label]);
                    if *counter {
                        let mut c = Counter::default();
                        c.set_value(v);
                        m.set_counter(c);
                    } else {
                        let mut g = Gauge::default();
                        g.set_value(v);
                        m.set_gauge(g);
                    }
                    family.mut_metric().push(m);
                }
                family
            })
            .collect()
    }
}

/// Registers the function that reads the cache tiers' numbers at scrape time.
pub fn register_tiers(read: impl Fn() -> Vec<TierStats> + Send + Sync + 'static) {
    let descs = TIER_METRICS
        .iter()
        .filter_map(|(name, help, _)| {
            prometheus::core::Desc::new(
                name.to_string(),
                help.to_string(),
                vec!["tier".into()],
                Default::default(),
            )
            .ok()
        })
        .collect();
    let collector = TierCollector {
        read: Box::new(read),
        descs,
    };
    if let Err(e) = prometheus::register(Box::new(collector)) {
        tracing::error!("cache tier metrics not registered: {e}");
    }
}
