//! The cache tiers' numbers, read from the tiers themselves at scrape time (a collector)
//! instead of mirrored into separate metrics on every change.

use crate::cache::disk::DiskStats;
use crate::cache::tiered::TieredStats;

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

const DISK_METRICS: [DiskMetric; 16] = [
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
        name: "shimmer_cache_sendfile_hits_total",
        help: "Disk hits sent from the page cache with sendfile, the body never read into the mirror (plain HTTP/1.1; TLS and HTTP/2 hits are read).",
        counter: true,
        per_tier: true,
        value: |_, d| d.sendable_hits as f64,
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

#[cfg(test)]
mod tests {
    use super::*;

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
            sendable_hits: 12,
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
            "shimmer_cache_sendfile_hits_total{tier=\"disk\"} 12",
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
