//! Every Prometheus metric shimmer exports, defined once, in the default registry.
//! Labels are low-cardinality by rule: never a hash, a path or a client address.

use once_cell::sync::Lazy;
use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, HistogramVec,
    IntCounter, IntCounterVec,
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

/// Touches every metric so it is registered (and exported) before its first use.
pub fn init() {
    Lazy::force(&REQUESTS);
    Lazy::force(&REQUEST_SECONDS);
    Lazy::force(&SENT_BYTES);
    Lazy::force(&ORIGIN_REQUESTS);
    Lazy::force(&ORIGIN_SECONDS);
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
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
    }
}
