//! Every Prometheus metric shimmer exports, defined once, in the default registry.
//! Labels are low-cardinality by rule: never a hash, a path or a client address.

use once_cell::sync::Lazy;
use prometheus::{
    register_gauge, register_gauge_vec, register_histogram_vec, register_int_counter,
    register_int_counter_vec, register_int_gauge, register_int_gauge_vec, Gauge, GaugeVec,
    HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

use crate::cache::disk::DiskStats;
use crate::cache::tiered::TieredStats;

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
    "Requests answered, by silo and outcome (hit, miss, pass, redirect, proxy, not_found, rejected, error).",
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

metric!(RANGE_PASSTHROUGHS: IntCounterVec = register_int_counter_vec!(
    "shimmer_range_passthrough_total",
    "Range requests starting far ahead of a fill in progress, fetched from the origin at once instead of waiting for the fill, by answer (partial: the origin's 206; whole: the origin ignored the Range and it was cut here; error: anything else).",
    &["answer"]
));

metric!(RANGE_PASSTHROUGH_BYTES: IntCounter = register_int_counter!(
    "shimmer_range_passthrough_bytes_total",
    "Body bytes sent to clients by Range pass-throughs: fetched from the origin besides the fill."
));

metric!(PEER_UP: IntGaugeVec = register_int_gauge_vec!(
    "shimmer_peer_up",
    "Whether a peer mirror is up (1) or down (0), as this node sees it (health checks and passive failures).",
    &["peer"]
));

metric!(PEER_TRANSITIONS: IntCounterVec = register_int_counter_vec!(
    "shimmer_peer_transitions_total",
    "Peer health flips seen by the health checks, by peer and new state (up, down).",
    &["peer", "state"]
));

metric!(PEER_PASSIVE_FAILURES: IntCounterVec = register_int_counter_vec!(
    "shimmer_peer_passive_failures_total",
    "Peers taken out because a request to them failed before its first byte.",
    &["peer"]
));

metric!(PEER_REQUESTS: IntCounterVec = register_int_counter_vec!(
    "shimmer_peer_requests_total",
    "Requests proxied to a peer mirror, by peer and result (ok, not_found, server_error, connect_error, timeout, error).",
    &["peer", "result"]
));

metric!(PEER_SECONDS: HistogramVec = register_histogram_vec!(
    "shimmer_peer_response_seconds",
    "Time from choosing a peer to its response header, by result.",
    &["result"],
    LATENCY_BUCKETS.to_vec()
));

metric!(FILL_ASKS: IntCounterVec = register_int_counter_vec!(
    "shimmer_fill_asks_total",
    "Misses that asked a peer only-if-cached before the origin, by reason (owner: the other owner; handoff: an owner under the previous view) and result (hit, miss, timeout, connect_error, error).",
    &["reason", "result"]
));

metric!(WARM_QUEUE: IntGaugeVec = register_int_gauge_vec!(
    "shimmer_warm_queue",
    "Warm-secondary notices waiting: to send to the other owner (send), or to pull from it (pull).",
    &["direction"]
));

metric!(WARM_NOTICES: IntCounterVec = register_int_counter_vec!(
    "shimmer_warm_notices_total",
    "Hashes noticed between owners: sent to the other owner (sent), or received from it (received).",
    &["direction"]
));

metric!(WARM_COPIES: IntCounterVec = register_int_counter_vec!(
    "shimmer_warm_copies_total",
    "Warm copies pulled from the other owner, by result (copied; held: already here; gone: the owner no longer had it; too_large: more than this cache takes; failed).",
    &["result"]
));

metric!(WARM_BYTES: IntCounter = register_int_counter!(
    "shimmer_warm_bytes_total",
    "Body bytes of warm copies pulled from the other owner."
));

metric!(WARM_DROPS: IntCounterVec = register_int_counter_vec!(
    "shimmer_warm_dropped_total",
    "Warm notices dropped without harm, by reason (queue_full, peer_down, send_failed, banned, disabled).",
    &["reason"]
));

metric!(FAILOVERS: IntCounterVec = register_int_counter_vec!(
    "shimmer_failovers_total",
    "Requests whose primary owner was down, by where they went (secondary, local: every owner down).",
    &["to"]
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
    "Hashes purged from the caches, by cause (admin, ban, deleted: a post Shimmie no longer has).",
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

metric!(SYNC_ORIGIN_INSTALLS: IntCounter = register_int_counter!(
    "shimmer_sync_origin_installs_total",
    "Buckets installed from Shimmie's S3 settings (origin: shimmie)."
));

metric!(SYNC_ORIGIN_ERRORS: IntCounter = register_int_counter!(
    "shimmer_sync_origin_errors_total",
    "Sets of Shimmie S3 settings that did not build (origin: shimmie); the bucket in force stayed."
));

// The reconcile of deleted posts (src/sync/reconcile.rs).

metric!(RECONCILE_PASSES: IntCounter = register_int_counter!(
    "shimmer_reconcile_passes_total",
    "Completed passes over the cached hashes, checked against Shimmie's images table."
));

metric!(RECONCILE_QUERIES: IntCounter = register_int_counter!(
    "shimmer_reconcile_queries_total",
    "Queries the reconcile sent to Shimmie's database (one per batch)."
));

metric!(RECONCILE_CHECKED: IntCounter = register_int_counter!(
    "shimmer_reconcile_hashes_checked_total",
    "Hashes the reconcile looked up in Shimmie's images table."
));

metric!(RECONCILE_DELETED: IntCounter = register_int_counter!(
    "shimmer_reconcile_deleted_total",
    "Cached objects found to be deleted posts, and purged from every tier."
));

metric!(RECONCILE_ERRORS: IntCounter = register_int_counter!(
    "shimmer_reconcile_errors_total",
    "Reconcile passes stopped by a database error (nothing purged after it)."
));

metric!(RECONCILE_LARGEST_QUERY: IntGauge = register_int_gauge!(
    "shimmer_reconcile_largest_query_hashes",
    "The most hashes one reconcile query asked for (at most shimmer.sync.reconcile.batch)."
));

metric!(RECONCILE_LAST_PASS: Gauge = register_gauge!(
    "shimmer_reconcile_last_pass_seconds",
    "How long the last completed reconcile pass took."
));

/// Outcomes of [`REQUESTS`], created up front so ratios exist before the first request.
pub const OUTCOMES: [&str; 8] = [
    "hit",
    "miss",
    "pass",
    "redirect",
    "proxy",
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
    Lazy::force(&SYNC_ORIGIN_INSTALLS);
    Lazy::force(&SYNC_ORIGIN_ERRORS);
    Lazy::force(&RECONCILE_PASSES);
    Lazy::force(&RECONCILE_QUERIES);
    Lazy::force(&RECONCILE_CHECKED);
    Lazy::force(&RECONCILE_DELETED);
    Lazy::force(&RECONCILE_ERRORS);
    Lazy::force(&RECONCILE_LARGEST_QUERY);
    Lazy::force(&RECONCILE_LAST_PASS);
    Lazy::force(&PEER_UP);
    Lazy::force(&PEER_TRANSITIONS);
    Lazy::force(&PEER_PASSIVE_FAILURES);
    Lazy::force(&PEER_REQUESTS);
    Lazy::force(&PEER_SECONDS);
    Lazy::force(&FAILOVERS);
    Lazy::force(&RANGE_PASSTHROUGH_BYTES);
    for answer in ["partial", "whole", "error"] {
        RANGE_PASSTHROUGHS.with_label_values(&[answer]);
    }
    for reason in ["owner", "handoff"] {
        for result in ["hit", "miss"] {
            FILL_ASKS.with_label_values(&[reason, result]);
        }
    }
    for direction in ["send", "pull"] {
        WARM_QUEUE.with_label_values(&[direction]);
    }
    for direction in ["sent", "received"] {
        WARM_NOTICES.with_label_values(&[direction]);
    }
    for result in ["copied", "held", "gone", "too_large", "failed"] {
        WARM_COPIES.with_label_values(&[result]);
    }
    Lazy::force(&WARM_BYTES);
    for reason in [
        "queue_full",
        "peer_down",
        "send_failed",
        "banned",
        "disabled",
    ] {
        WARM_DROPS.with_label_values(&[reason]);
    }
    for to in ["secondary", "local"] {
        FAILOVERS.with_label_values(&[to]);
    }
    for result in ["ok", "not_found", "timeout", "connect_error"] {
        PEER_SECONDS.with_label_values(&[result]);
    }
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
    for cause in ["admin", "ban", "deleted"] {
        PURGES.with_label_values(&[cause]);
    }
}

/// Copies the peers' health into `shimmer_peer_up` (at scrape time): one series per
/// peer of the current view, so a peer that left the view leaves the scrape too.
pub fn observe_peers(states: &[(String, bool)]) {
    PEER_UP.reset();
    for (peer, up) in states {
        PEER_UP
            .with_label_values(&[peer.as_str()])
            .set(i64::from(*up));
        // Zero series for every current peer, so rates and dashboards exist before
        // the first proxied request or failure.
        PEER_REQUESTS.with_label_values(&[peer.as_str(), "ok"]);
        PEER_PASSIVE_FAILURES.with_label_values(&[peer.as_str()]);
        for state in ["up", "down"] {
            PEER_TRANSITIONS.with_label_values(&[peer.as_str(), state]);
        }
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
    let r = &status.reconcile;
    RECONCILE_LARGEST_QUERY.set(i64::try_from(r.largest_query).unwrap_or(i64::MAX));
    if let Some(d) = r.last_pass {
        RECONCILE_LAST_PASS.set(d.as_secs_f64());
    }
    for (counter, total) in [
        (&*SYNC_ERRORS, status.sync_errors),
        (&*SYNC_TEMPLATE_ERRORS, status.template_errors),
        (&*SYNC_ORIGIN_INSTALLS, status.origin_installs),
        (&*SYNC_ORIGIN_ERRORS, status.origin_errors),
        (&*RECONCILE_PASSES, r.passes),
        (&*RECONCILE_QUERIES, r.queries),
        (&*RECONCILE_CHECKED, r.checked),
        (&*RECONCILE_DELETED, r.deleted),
        (&*RECONCILE_ERRORS, r.errors),
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
            "shimmer_range_passthrough_total",
            "shimmer_range_passthrough_bytes_total",
            "shimmer_sync_origin_errors_total",
            "shimmer_reconcile_passes_total",
            "shimmer_reconcile_queries_total",
            "shimmer_reconcile_hashes_checked_total",
            "shimmer_reconcile_deleted_total",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
    }

    fn scrape(collector: TierCollector) -> String {
        use prometheus::Encoder;
        let registry = prometheus::Registry::new();
        registry.register(Box::new(collector)).expect("register");
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .expect("encode");
        String::from_utf8(out).expect("UTF-8")
    }

    fn memory_row() -> Vec<TierStats> {
        vec![TierStats {
            tier: "memory",
            bytes: 10,
            ..TierStats::default()
        }]
    }

    #[test]
    fn the_disk_tier_counters_are_exported_with_a_disk_tier_only() {
        let disk = DiskStats {
            reserved: 4096,
            write_errors: 2,
            read_errors: 3,
            corrupt_removed: 4,
            purged: 5,
            adopted: 6,
            rebuild_scanned: 7,
            rebuild_done: true,
            rebuild_millis: 1500,
            writable: true,
            ..DiskStats::default()
        };
        let stats = TieredStats {
            disk: Some(disk),
            fills: 1,
            promotions: 8,
            memory_only_fills: 9,
            disk_dropped_fills: 10,
            aborted_fills: 11,
            ..TieredStats::default()
        };
        let text = scrape(tier_collector(
            Box::new(memory_row),
            Some(Box::new(move || stats)),
        ));
        for line in [
            "# TYPE shimmer_cache_write_errors_total counter",
            "# TYPE shimmer_cache_rebuild_done gauge",
            "shimmer_cache_bytes{tier=\"memory\"} 10",
            "shimmer_cache_reserved_bytes{tier=\"disk\"} 4096",
            "shimmer_cache_writable{tier=\"disk\"} 1",
            "shimmer_cache_write_errors_total{tier=\"disk\"} 2",
            "shimmer_cache_read_errors_total{tier=\"disk\"} 3",
            "shimmer_cache_corrupt_removed_total{tier=\"disk\"} 4",
            "shimmer_cache_purged_total{tier=\"disk\"} 5",
            "shimmer_cache_adopted_total{tier=\"disk\"} 6",
            "shimmer_cache_rebuild_scanned_total{tier=\"disk\"} 7",
            "shimmer_cache_rebuild_done{tier=\"disk\"} 1",
            "shimmer_cache_rebuild_duration_seconds{tier=\"disk\"} 1.5",
            "shimmer_cache_disk_fills 1",
            "shimmer_cache_promotions_total 8",
            "shimmer_cache_memory_only_fills_total 9",
            "shimmer_cache_disk_dropped_fills_total 10",
            "shimmer_cache_aborted_fills_total 11",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        // Memory only: the disk families are left out, not exported empty or as 0.
        let text = scrape(tier_collector(
            Box::new(memory_row),
            Some(Box::new(TieredStats::default)),
        ));
        assert!(
            text.contains("shimmer_cache_bytes{tier=\"memory\"} 10"),
            "{text}"
        );
        assert!(!text.contains("shimmer_cache_write_errors_total"), "{text}");
        assert!(!text.contains("shimmer_cache_promotions_total"), "{text}");
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
/// separate metrics on every change: the per-tier rows ([`TIER_METRICS`]) and, with a
/// disk tier, its own counters and the tiered store's ([`DISK_METRICS`]).
struct TierCollector {
    read: Box<dyn Fn() -> Vec<TierStats> + Send + Sync>,
    details: Option<Box<dyn Fn() -> TieredStats + Send + Sync>>,
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

/// One number of the disk tier or of the tiered store, exported only when there is a
/// disk tier (without one the tiered store is the memory tier and these do not apply).
struct DiskMetric {
    name: &'static str,
    help: &'static str,
    counter: bool,
    /// `tier="disk"` for the disk tier's own numbers; none for the tiered store's.
    per_tier: bool,
    value: fn(&TieredStats, &DiskStats) -> f64,
}

const DISK_METRICS: [DiskMetric; 15] = [
    DiskMetric {
        name: "shimmer_cache_reserved_bytes",
        help: "Bytes reserved in a cache tier by fills in progress (disk tier).",
        counter: false,
        per_tier: true,
        value: |_, d| d.reserved as f64,
    },
    DiskMetric {
        name: "shimmer_cache_writable",
        help: "1 while a cache tier takes new fills, 0 while it is off for writes after errors (fills go to memory only).",
        counter: false,
        per_tier: true,
        value: |_, d| f64::from(u8::from(d.writable)),
    },
    DiskMetric {
        name: "shimmer_cache_write_errors_total",
        help: "Failed writes to a cache tier (create, write, rename); each one kept a fill out of the tier.",
        counter: true,
        per_tier: true,
        value: |_, d| d.write_errors as f64,
    },
    DiskMetric {
        name: "shimmer_cache_read_errors_total",
        help: "Failed reads from a cache tier (each one a miss).",
        counter: true,
        per_tier: true,
        value: |_, d| d.read_errors as f64,
    },
    DiskMetric {
        name: "shimmer_cache_corrupt_removed_total",
        help: "Cache files deleted because their header, length or checksum did not check.",
        counter: true,
        per_tier: true,
        value: |_, d| d.corrupt_removed as f64,
    },
    DiskMetric {
        name: "shimmer_cache_purged_total",
        help: "Objects removed from a cache tier by purges and bans.",
        counter: true,
        per_tier: true,
        value: |_, d| d.purged as f64,
    },
    DiskMetric {
        name: "shimmer_cache_adopted_total",
        help: "shm-cached files adopted in place by the disk tier's restart scan.",
        counter: true,
        per_tier: true,
        value: |_, d| d.adopted as f64,
    },
    DiskMetric {
        name: "shimmer_cache_rebuild_scanned_total",
        help: "Files the disk tier's restart scan has looked at so far.",
        counter: true,
        per_tier: true,
        value: |_, d| d.rebuild_scanned as f64,
    },
    DiskMetric {
        name: "shimmer_cache_rebuild_done",
        help: "1 once the disk tier's restart scan has rebuilt its index, 0 while it runs.",
        counter: false,
        per_tier: true,
        value: |_, d| f64::from(u8::from(d.rebuild_done)),
    },
    DiskMetric {
        name: "shimmer_cache_rebuild_duration_seconds",
        help: "How long the disk tier's restart scan took (0 until it is done).",
        counter: false,
        per_tier: true,
        value: |_, d| d.rebuild_millis as f64 / 1000.0,
    },
    DiskMetric {
        name: "shimmer_cache_disk_fills",
        help: "Fills in progress that are written to the disk tier.",
        counter: false,
        per_tier: false,
        value: |t, _| t.fills as f64,
    },
    DiskMetric {
        name: "shimmer_cache_promotions_total",
        help: "Disk hits offered to the memory tier (its admission may still refuse them).",
        counter: true,
        per_tier: false,
        value: |t, _| t.promotions as f64,
    },
    DiskMetric {
        name: "shimmer_cache_memory_only_fills_total",
        help: "Fills kept in memory only because the disk tier took no writes.",
        counter: true,
        per_tier: false,
        value: |t, _| t.memory_only_fills as f64,
    },
    DiskMetric {
        name: "shimmer_cache_disk_dropped_fills_total",
        help: "Fills whose disk write failed mid-body and went on from memory.",
        counter: true,
        per_tier: false,
        value: |t, _| t.disk_dropped_fills as f64,
    },
    DiskMetric {
        name: "shimmer_cache_aborted_fills_total",
        help: "Fills that failed for their readers (writer gone, or the disk failed on a body too large for memory).",
        counter: true,
        per_tier: false,
        value: |t, _| t.aborted_fills as f64,
    },
];

/// A metric family of one type, with one sample per `(labels, value)`.
fn family(
    name: &str,
    help: &str,
    counter: bool,
    samples: impl IntoIterator<Item = (Option<(&'static str, &'static str)>, f64)>,
) -> prometheus::proto::MetricFamily {
    use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
    let mut family = MetricFamily::default();
    family.set_name(name.to_string());
    family.set_help(help.to_string());
    family.set_field_type(if counter {
        MetricType::COUNTER
    } else {
        MetricType::GAUGE
    });
    for (label, v) in samples {
        let mut m = Metric::default();
        if let Some((name, value)) = label {
            let mut l = LabelPair::default();
            l.set_name(name.into());
            l.set_value(value.into());
            m.set_label(vec![l]);
        }
        if counter {
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
}

impl prometheus::core::Collector for TierCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let tiers = (self.read)();
        let mut out: Vec<_> = TIER_METRICS
            .iter()
            .enumerate()
            .map(|(i, (name, help, counter))| {
                let samples = tiers.iter().map(|t| {
                    let v = [t.bytes, t.objects, t.budget, t.evictions, t.evicted_bytes][i];
                    (Some(("tier", t.tier)), v as f64)
                });
                family(name, help, *counter, samples)
            })
            .collect();
        let stats = self.details.as_ref().map(|read| read());
        if let Some((t, d)) = stats.as_ref().and_then(|t| Some((t, t.disk.as_ref()?))) {
            out.extend(DISK_METRICS.iter().map(|m| {
                let label = m.per_tier.then_some(("tier", "disk"));
                family(m.name, m.help, m.counter, [(label, (m.value)(t, d))])
            }));
        }
        out
    }
}

fn tier_collector(
    read: Box<dyn Fn() -> Vec<TierStats> + Send + Sync>,
    details: Option<Box<dyn Fn() -> TieredStats + Send + Sync>>,
) -> TierCollector {
    let desc = |name: &str, help: &str, labels: Vec<String>| {
        prometheus::core::Desc::new(
            name.to_string(),
            help.to_string(),
            labels,
            Default::default(),
        )
        .ok()
    };
    let mut descs: Vec<_> = TIER_METRICS
        .iter()
        .filter_map(|(name, help, _)| desc(name, help, vec!["tier".into()]))
        .collect();
    if details.is_some() {
        descs.extend(DISK_METRICS.iter().filter_map(|m| {
            let labels = if m.per_tier {
                vec!["tier".into()]
            } else {
                Vec::new()
            };
            desc(m.name, m.help, labels)
        }));
    }
    TierCollector {
        read,
        details,
        descs,
    }
}

fn register_collector(collector: TierCollector) {
    if let Err(e) = prometheus::register(Box::new(collector)) {
        tracing::error!("cache tier metrics not registered: {e}");
    }
}

/// Registers the function that reads the cache tiers' numbers at scrape time.
pub fn register_tiers(read: impl Fn() -> Vec<TierStats> + Send + Sync + 'static) {
    register_collector(tier_collector(Box::new(read), None));
}

/// [`register_tiers`], plus the tiered store's numbers (`TieredStorage::stats`): with a
/// disk tier, its error, corruption, adoption and rebuild counters are exported too.
pub fn register_tiers_with_details(
    read: impl Fn() -> Vec<TierStats> + Send + Sync + 'static,
    details: impl Fn() -> TieredStats + Send + Sync + 'static,
) {
    register_collector(tier_collector(Box::new(read), Some(Box::new(details))));
}
