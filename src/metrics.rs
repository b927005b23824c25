//! Every Prometheus metric shimmer exports, defined once, in the default registry.
//! Labels are low-cardinality by rule: never a hash, a path or a client address.

use once_cell::sync::Lazy;
use prometheus::{
    register_gauge, register_gauge_vec, register_histogram_vec, register_int_counter,
    register_int_counter_vec, register_int_gauge, register_int_gauge_vec, Gauge, GaugeVec,
    Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

mod tiers;

pub use tiers::{register_tiers, register_tiers_with_details, TierStats};

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
    "Warm copies pulled from the other owner, by result (copied; held: already here; gone: the owner no longer had it; too_large: more than this cache takes; not_admitted: copied whole but kept by no tier, as the memory tier's admission refused it; failed).",
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

/// `silo` labels of [`REQUESTS`]: the two silos, and "none" for a request that named
/// neither (refused before parsing).
const SILOS: [&str; 3] = ["_images", "_thumbs", "none"];

/// The series of [`REQUESTS`] and [`REQUEST_SECONDS`] resolved once: ending a request is
/// two array lookups, not a label hash under each vector's lock per request
/// (`with_label_values` twice was ~1% of a 20 KB hit's CPU in perf).
struct RequestSeries {
    counts: [[IntCounter; OUTCOMES.len()]; SILOS.len()],
    seconds: [Histogram; OUTCOMES.len()],
}

static REQUEST_SERIES: Lazy<RequestSeries> = Lazy::new(|| RequestSeries {
    counts: SILOS.map(|silo| OUTCOMES.map(|outcome| REQUESTS.with_label_values(&[silo, outcome]))),
    seconds: OUTCOMES.map(|outcome| REQUEST_SECONDS.with_label_values(&[outcome])),
});

/// Counts one answered request and its duration.
pub fn request_done(silo: &str, outcome: &str, seconds: f64) {
    let series = &*REQUEST_SERIES;
    let silo_at = SILOS.iter().position(|s| *s == silo);
    match (silo_at, OUTCOMES.iter().position(|o| *o == outcome)) {
        (Some(s), Some(o)) => {
            series.counts[s][o].inc();
            series.seconds[o].observe(seconds);
        }
        // A label outside the lists above: still counted, the slow way.
        _ => {
            REQUESTS.with_label_values(&[silo, outcome]).inc();
            REQUEST_SECONDS
                .with_label_values(&[outcome])
                .observe(seconds);
        }
    }
}

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
    for result in [
        "copied",
        "held",
        "gone",
        "too_large",
        "not_admitted",
        "failed",
    ] {
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
    // Every silo and outcome, "none" included (refusals before parsing have no silo).
    Lazy::force(&REQUEST_SERIES);
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
    fn request_done_counts_into_the_labelled_series() {
        let hits = || REQUESTS.with_label_values(&["_thumbs", "not_found"]).get();
        let timed = || {
            REQUEST_SECONDS
                .with_label_values(&["not_found"])
                .get_sample_count()
        };
        let (h0, t0) = (hits(), timed());
        request_done("_thumbs", "not_found", 0.002);
        assert_eq!((hits(), timed()), (h0 + 1, t0 + 1));
        // A label outside the known lists is still counted, under its own series.
        let odd = || REQUESTS.with_label_values(&["none", "odd-outcome"]).get();
        let o0 = odd();
        request_done("none", "odd-outcome", 0.0);
        assert_eq!(odd(), o0 + 1);
    }

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
}
