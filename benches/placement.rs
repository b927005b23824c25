//! Primary + secondary lookup cost (`FleetView::owners`) for 5, 20 and 100 nodes,
//! both algorithms, with two weight layouts: `tiered` (two weights, 5 and 10, as real
//! fleets have a few tiers) and `varied` (up to 25 distinct weights, the worst case
//! for rendezvous' per-weight shortcut). Target: under 300 ns for 20 nodes with
//! rendezvous.
//!
//! `cargo bench --bench placement`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use shimmer::fleet::{Algorithm, FleetSpec, FleetView, Silo};
use std::hint::black_box;

/// A template with node names like `m12`.
fn spec(nodes: usize, layout: &str, algorithm: Algorithm) -> FleetSpec {
    let weight = |i: usize| match layout {
        "tiered" => 5 + 5 * (i % 2),
        _ => 1 + (i * 7) % 25,
    };
    let opts: Vec<String> = (0..nodes).map(|i| format!("m{i}={}", weight(i))).collect();
    FleetSpec {
        image_ilink: Some(format!(
            "https://{{{}}}.example.com/_images/$hash/$id%20-%20$tags.$ext",
            opts.join(",")
        )),
        image_tlink: None,
        algorithm,
    }
}

/// 1024 md5-like hashes, so lookups do not all hit one cache line pattern.
fn hashes() -> Vec<String> {
    let mut x = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..1024)
        .map(|_| format!("{:016x}{:016x}", next(), next()))
        .collect()
}

fn owners(c: &mut Criterion) {
    let hashes = hashes();
    for (algorithm, layout) in [
        (Algorithm::Rendezvous, "tiered"),
        (Algorithm::Rendezvous, "varied"),
        (Algorithm::Flexihash, "tiered"),
        (Algorithm::Flexihash, "varied"),
    ] {
        let mut group = c.benchmark_group(format!("owners/{algorithm}/{layout}"));
        for nodes in [5usize, 20, 100] {
            let view = match FleetView::build(&spec(nodes, layout, algorithm)) {
                Ok(view) => view,
                Err(e) => panic!("bench spec is valid: {e}"),
            };
            group.bench_with_input(BenchmarkId::from_parameter(nodes), &view, |b, view| {
                let mut i = 0usize;
                b.iter(|| {
                    i = (i + 1) & 1023;
                    let o = view.owners(Silo::Images, black_box(&hashes[i]));
                    black_box((o.primary(), o.secondary()))
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, owners);
criterion_main!(benches);
