//! The event tables: node loss and weight change, each variant played by
//! [`super::events`] for both algorithms and two cache sizes, printed and recorded
//! for the JSON.

use super::events::{Features, Scenario, Tally, View};
use crate::{
    pct, placement, Corpus, ALGORITHMS, CACHE_SHARE, REBALANCED_NODE, REBALANCED_TEMPLATE, TEMPLATE,
};
use serde_json::Value;

/// The node that dies in the node-loss event: the first one, as good as any.
const DEAD_NODE: &str = "a";
/// The share of the request stream played before the event; the rest is counted.
const WARM_UP_SHARE: f64 = 0.5;
/// Each node's cache for the events, as a share of the corpus bytes: the rest of the
/// simulation's 25% (the fleet holds the corpus once), and twice that, the seed's
/// sizing ("primary for 25GB and secondary for 25GB"), where copies have room.
const EVENT_CACHE_SHARES: [f64; 2] = [CACHE_SHARE, 2.0 * CACHE_SHARE];

struct Row {
    label: String,
    slug: String,
    tally: Tally,
}

/// Plays every event and variant, prints the tables and records their numbers.
pub fn report(
    corpus: &Corpus,
    requests: &[usize],
    corpus_bytes: u64,
    record: &mut dyn FnMut(String, Value),
) {
    let warm_up = (requests.len() as f64 * WARM_UP_SHARE) as usize;
    let first_request = first_requests(requests);
    let counted = requests.len() - warm_up;
    let first_after = first_request[warm_up..].iter().filter(|&&f| f).count();
    let ideal = 1.0 - first_after as f64 / counted as f64;
    record("events_warm_up_requests".into(), warm_up.into());
    record("events_counted_requests".into(), counted.into());
    record("events_first_requests".into(), first_after.into());
    record("events_ideal_hit_ratio".into(), ideal.into());

    let before_placements: Vec<_> = ALGORITHMS.iter().map(|&a| placement(TEMPLATE, a)).collect();
    let after_placements: Vec<_> = ALGORITHMS
        .iter()
        .map(|&a| placement(REBALANCED_TEMPLATE, a))
        .collect();
    let names: Vec<String> = before_placements[0]
        .template()
        .nodes()
        .iter()
        .map(|n| n.name.clone())
        .collect();
    let dead = names
        .iter()
        .position(|n| n == DEAD_NODE)
        .expect("the dead node is one of the template's nodes");

    println!(
        "\nevents: {warm_up} requests of warm-up, then the event; counted: the next {counted}, \
         {first_after} of them first requests (at best {} hit)",
        pct(ideal)
    );
    println!(
        "peer fills: misses answered by a peer (owner-first, handoff); warm copies: \
         primary -> secondary; peer asks: only-if-cached lookups, answered or not"
    );

    for share in EVENT_CACHE_SHARES {
        let capacity = (corpus_bytes as f64 * share) as u64;
        let size = format!("cache {:.0}%", share * 100.0);
        let size_slug = format!("cache{:.0}", share * 100.0);
        let mut loss_rows = Vec::new();
        let mut change_rows = Vec::new();
        for (i, &algorithm) in ALGORITHMS.iter().enumerate() {
            let before = View::new(&before_placements[i], &corpus.keys, &names);
            let after = View::new(&after_placements[i], &corpus.keys, &names);
            // Sanity, not a target: both templates name the same nodes in the same order.
            assert!(after_placements[i]
                .template()
                .nodes()
                .iter()
                .map(|n| &n.name)
                .eq(names.iter()));
            let keys = corpus.keys.len();
            let dead_keys: Vec<bool> = (0..keys).map(|k| before.primary(k) == dead).collect();
            let moved_keys: Vec<bool> = (0..keys)
                .map(|k| before.primary(k) != after.primary(k))
                .collect();
            let run = |after: Option<&View>, dies, features, tracked: &[bool]| {
                Scenario {
                    corpus,
                    requests,
                    warm_up,
                    capacity,
                    names: &names,
                    before: &before,
                    after,
                    dies,
                    features,
                    tracked,
                }
                .run()
            };
            let loss_variants: [(&str, &str, Option<usize>, Features); 5] = [
                ("no loss, plain", "no_loss_plain", None, Features::PLAIN),
                (
                    "no loss, (b)'s features",
                    "no_loss_warm",
                    None,
                    Features::WARM,
                ),
                (
                    "(a) no warm secondary",
                    "a_no_warm_secondary",
                    Some(dead),
                    Features::PLAIN,
                ),
                (
                    "(b) warm secondary + owner-first",
                    "b_warm_secondary",
                    Some(dead),
                    Features::WARM,
                ),
                (
                    "(b) with copies as most recent",
                    "b_copies_most_recent",
                    Some(dead),
                    Features::WARM_MOST_RECENT,
                ),
            ];
            for (label, slug, dies, features) in loss_variants {
                loss_rows.push(Row {
                    label: format!("{algorithm} {label}"),
                    slug: format!("node_loss_{size_slug}_{algorithm}_{slug}"),
                    tally: run(None, dies, features, &dead_keys),
                });
            }
            let change_variants: [(&str, &str, Option<&View>, Features); 5] = [
                ("no change, plain", "no_change_plain", None, Features::PLAIN),
                ("(a) plain", "a_plain", Some(&after), Features::PLAIN),
                (
                    "(a) + owner-first only",
                    "a_owner_first",
                    Some(&after),
                    Features::OWNER_FIRST,
                ),
                (
                    "(b) warm + owner-first",
                    "b_warm_owner_first",
                    Some(&after),
                    Features::WARM,
                ),
                (
                    "(c) (b) + handoff",
                    "c_handoff",
                    Some(&after),
                    Features::WARM_HANDOFF,
                ),
            ];
            for (label, slug, view, features) in change_variants {
                change_rows.push(Row {
                    label: format!("{algorithm} {label}"),
                    slug: format!("weight_change_{size_slug}_{algorithm}_{slug}"),
                    tally: run(view, None, features, &moved_keys),
                });
            }
        }
        print_table(
            &format!("node loss: {DEAD_NODE} dies, {size}"),
            &format!("{DEAD_NODE}'s"),
            &loss_rows,
            record,
        );
        print_table(
            &format!("weight {REBALANCED_NODE}=5 -> 10, {size}"),
            "moved",
            &change_rows,
            record,
        );
    }
}

/// Whether each request is the first for its key: a miss nothing can avoid.
fn first_requests(requests: &[usize]) -> Vec<bool> {
    let mut seen = std::collections::HashSet::new();
    requests.iter().map(|&key| seen.insert(key)).collect()
}

fn print_table(title: &str, tracked: &str, rows: &[Row], record: &mut dyn FnMut(String, Value)) {
    println!(
        "\n{:<44} {:>9} {:>7} {:>10} {:>11} {:>9} {:>15} {:>9} {:>7}",
        title,
        "hit ratio",
        "origin",
        "peer fills",
        "warm copies",
        "peer asks",
        format!("{tracked} requests"),
        "hit ratio",
        "origin"
    );
    for row in rows {
        let t = &row.tally;
        println!(
            "{:<44} {:>9} {:>7} {:>10} {:>11} {:>9} {:>15} {:>9} {:>7}",
            row.label,
            pct(t.hit_ratio()),
            t.origin_requests,
            t.peer_fills,
            t.warm_copies,
            t.peer_asks,
            t.tracked_requests,
            pct(t.tracked_hit_ratio()),
            t.tracked_origin_requests
        );
        let slug = &row.slug;
        record(format!("{slug}_requests"), t.requests.into());
        record(format!("{slug}_hit_ratio"), t.hit_ratio().into());
        record(format!("{slug}_origin_requests"), t.origin_requests.into());
        record(format!("{slug}_peer_fills"), t.peer_fills.into());
        record(format!("{slug}_peer_asks"), t.peer_asks.into());
        record(format!("{slug}_warm_copies"), t.warm_copies.into());
        record(format!("{slug}_warm_copy_bytes"), t.warm_copy_bytes.into());
        record(
            format!("{slug}_tracked_requests"),
            t.tracked_requests.into(),
        );
        record(
            format!("{slug}_tracked_hit_ratio"),
            t.tracked_hit_ratio().into(),
        );
        record(
            format!("{slug}_tracked_origin_requests"),
            t.tracked_origin_requests.into(),
        );
    }
}
