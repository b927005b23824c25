//! Placement pinned to Shimmie's own PHP, the way pingora-ketama pins nginx: every
//! row of tests/golden/placement.csv was written by tests/golden/gen_placement.php
//! running Shimmie's real `load_balance_url` (main's `LoadBalancer` for rendezvous,
//! 2.11's `core/util.php` on flexihash-php 2.0.2 for flexihash). No PHP needed here.
//!
//! How PHP's answers map to shimmer's:
//! - a link or node name: shimmer picks the same node and renders the same link;
//! - `!TypeError`: Shimmie main returns an int array key from a `string` function
//!   (a node named like `10`), so it cannot render; shimmer must have picked a node
//!   whose name PHP turns into an int key there;
//! - `!warning` (flexihash `$choices[$n]` undefined): shimmer has no node there
//!   either (no secondary), or refuses the whole template when `n = 0` has none;
//! - any other `!<exception>`: shimmer refuses the template.

use shimmer::fleet::{Algorithm, Owners, Placement, Template};
use std::collections::HashMap;

const CSV: &str = include_str!("golden/placement.csv");

/// Templates PHP accepts and shimmer refuses on purpose, with why. Each must really
/// be accepted by PHP in the CSV, so the list cannot go stale silently.
const REFUSED_ON_PURPOSE: &[(&str, &str, &str)] = &[(
    "flexihash",
    "{a=1=2,b}",
    "Shimmie 2.11 turns a 3-part entry into a weight-0 node named \"\"; >= 2.12 throws; \
     shimmer rejects it for both so a typo is reported, not silently unweighted",
)];

struct Row<'a> {
    algorithm: &'a str,
    template: &'a str,
    key: &'a str,
    link0: &'a str,
    link1: &'a str,
    order: &'a str,
}

/// RFC 4180 fields of one line (PHP's fputcsv with no escape character); no field
/// holds a newline.
fn fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            (true, '"') => quoted = false,
            (false, '"') => quoted = true,
            (false, ',') => out.push(std::mem::take(&mut cur)),
            (_, c) => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Whether a PHP array makes this name an int key (`"10"`, `"-1"`; not `"010"`,
/// `"+1"`, `" 1"`, `"-0"`), which Shimmie main then fails to return as a string.
fn php_int_key(name: &str) -> bool {
    let digits = name.strip_prefix('-').unwrap_or(name);
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !(digits.starts_with('0') && name.len() > 1)
        && name.parse::<i64>().is_ok()
}

/// Checks shimmer's node at one position against PHP's answer there.
fn same_node(php: &str, ours: Option<&str>, link: impl Fn(&str) -> String) -> bool {
    match (php, ours) {
        ("!TypeError", Some(node)) => php_int_key(node),
        ("!warning", None) => true,
        (php, Some(node)) if !php.starts_with('!') => link(node) == php,
        _ => false,
    }
}

#[test]
fn matches_shimmie_php_on_every_golden_row() {
    let mut lines = CSV.lines();
    assert_eq!(
        lines.next(),
        Some("algorithm,template,key,link0,link1,order")
    );
    let owned: Vec<Vec<String>> = lines.map(fields).collect();
    let mut placements: HashMap<(&str, &str), Option<Placement>> = HashMap::new();
    let mut failures = Vec::new();
    let mut refused_rows = 0;
    let mut checked = 0;
    for f in &owned {
        assert_eq!(f.len(), 6, "bad row {f:?}");
        let row = Row {
            algorithm: &f[0],
            template: &f[1],
            key: &f[2],
            link0: &f[3],
            link1: &f[4],
            order: &f[5],
        };
        let algorithm: Algorithm = row.algorithm.parse().expect("algorithm");
        let placement = placements
            .entry((row.algorithm, row.template))
            .or_insert_with(|| {
                Template::parse(row.template)
                    .and_then(|t| Placement::new(t, algorithm))
                    .ok()
            });
        let on_purpose = REFUSED_ON_PURPOSE
            .iter()
            .any(|&(a, t, _)| a == row.algorithm && t == row.template);
        let php_refuses = row.link0.starts_with('!') && row.link0 != "!TypeError";
        let Some(p) = placement else {
            if php_refuses {
                checked += 1;
            } else if on_purpose {
                refused_rows += 1;
            } else {
                failures.push(format!(
                    "{} {:?} {}: PHP {:?}, shimmer refuses the template",
                    row.algorithm, row.template, row.key, row.link0
                ));
            }
            continue;
        };
        let ok = check(p, &row, php_refuses);
        if let Err(why) = ok {
            failures.push(format!(
                "{} {:?} {}: {why}",
                row.algorithm, row.template, row.key
            ));
        }
        checked += 1;
    }
    for &(a, t, why) in REFUSED_ON_PURPOSE {
        assert!(
            owned
                .iter()
                .any(|f| f[0] == a && f[1] == t && !f[3].starts_with('!')),
            "{a} {t:?} is listed as refused on purpose ({why}) but PHP refuses it too"
        );
    }
    let shown: Vec<&String> = failures.iter().take(20).collect();
    assert!(
        failures.is_empty(),
        "{} of {} rows disagree with Shimmie's PHP:\n{shown:#?}",
        failures.len(),
        checked
    );
    // The CSV really is a few thousand keys over many templates, both algorithms.
    assert!(checked > 9000, "only {checked} rows checked");
    assert!(placements.len() >= 40, "{} templates", placements.len());
    assert!(refused_rows > 0);
}

fn check(p: &Placement, row: &Row<'_>, php_refuses: bool) -> Result<(), String> {
    if php_refuses {
        return Err(format!("PHP {:?}, shimmer places it", row.link0));
    }
    let template = p.template();
    let link = |node: &str| template.link(Some(node), row.key);
    let (primary, secondary) = match p.owners(row.key) {
        Owners::Unbalanced => {
            // PHP returns the template untouched (after $hash substitution).
            let ours = template.link(None, row.key);
            return if ours == row.link0 && ours == row.link1 {
                Ok(())
            } else {
                Err(format!("unbalanced: PHP {:?}, shimmer {ours:?}", row.link0))
            };
        }
        Owners::Nodes { primary, secondary } => (primary, secondary),
    };
    if !same_node(row.link0, Some(primary), link) {
        return Err(format!(
            "n=0: PHP {:?}, shimmer {:?}",
            row.link0,
            link(primary)
        ));
    }
    // With a single node rendezvous answers n=1 with it again (n % count);
    // shimmer reports no secondary.
    let single = template.nodes().len() == 1 && p.algorithm() == Algorithm::Rendezvous;
    let second_ok = match secondary {
        None if single => row.link1 == row.link0,
        ours => same_node(row.link1, ours, link),
    };
    if !second_ok {
        return Err(format!(
            "n=1: PHP {:?}, shimmer {:?}",
            row.link1,
            secondary.map(link)
        ));
    }
    if !row.order.is_empty() {
        // PHP's names for n = 0, 1, ...; flexihash's `!warning`s mark the nodes its
        // lookupList never returns, which shimmer lists last.
        let order = p.order(row.key);
        for (i, php) in row.order.split('|').enumerate() {
            if php == "!warning" {
                break;
            }
            if !same_node(php, order.get(i).copied(), |n| n.to_owned()) {
                return Err(format!("order: PHP {:?}, shimmer {order:?}", row.order));
            }
        }
    }
    Ok(())
}
