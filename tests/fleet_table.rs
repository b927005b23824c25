//! `shimmer fleet` against a real 3-node fleet on one SQLite Shimmie database, with
//! one node killed (SIGKILL): its row says DOWN, and the live nodes' cells are what
//! their own /status (weight, expected share, memory) and /metrics (served share, hit
//! ratio: /status has no request counts) say.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use common::script::sh;
use common::*;
use serde_json::Value;
use shimmer::fleet_table::{pct, usage};

fn admin_get(addr: SocketAddr, path: &str) -> Option<String> {
    http_get(addr, path)
        .ok()
        .filter(|r| r.status == 200)
        .map(|r| r.text())
}

fn count(metrics: &str, outcome: &str) -> f64 {
    ["_images", "_thumbs"]
        .iter()
        .map(|silo| {
            metric_value(
                metrics,
                "shimmer_requests_total",
                &[("silo", silo), ("outcome", outcome)],
            )
            .unwrap_or(0.0)
        })
        .sum()
}

#[test]
fn the_fleet_table_shows_a_killed_node_down_and_the_others_as_their_status_says() {
    let work = tempfile::Builder::new()
        .prefix("shimmer-fleet-")
        .tempdir()
        .expect("temp dir");
    let work = work.path();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let data = root.join("conf/sample-data");
    let origin = Origin::start(&data, work);

    let db = work.join("shimmie.db");
    sh(
        &format!(
            "sqlite3 {} < {}",
            db.display(),
            data.join("shimmie.sql").display()
        ),
        work,
    );
    let ports = [free_port(), free_port(), free_port()];
    let admins = [free_port(), free_port(), free_port()];
    let braces = format!("{{{}=5,{}=5,{}=10}}", ports[0], ports[1], ports[2]);
    sh(
        &format!(
            "sqlite3 {} \"INSERT INTO config (name, value) VALUES \
             ('image_ilink', 'http://127.0.0.1:{braces}/_images/\\$hash/x.\\$ext'), \
             ('image_tlink', 'http://127.0.0.1:{braces}/_thumbs/\\$hash/thumb.\\$ext')\"",
            db.display()
        ),
        work,
    );
    let mut mirrors: Vec<Mirror> = (0..3)
        .map(|i| {
            let yaml = format!(
                "pid_file: {w}/m{i}.pid\nupgrade_sock: {w}/m{i}.sock\n\
                 grace_period_seconds: 1\ngraceful_shutdown_timeout_seconds: 1\n\
                 shimmer:\n  node: \"{node}\"\n  listen: [\"127.0.0.1:{node}\"]\n  \
                 source: sqlite://{db}\n  sync:\n    interval: 200ms\n  \
                 admin:\n    listen: 127.0.0.1:{admin}\n  \
                 origin:\n    servers: [\"http://{origin}\"]\n",
                w = path_str(work),
                node = ports[i],
                db = db.display(),
                admin = admins[i],
                origin = origin.addr,
            );
            Mirror::start_yaml(work, ports[i], &yaml)
        })
        .collect();
    let admin_addrs: Vec<SocketAddr> = admins
        .iter()
        .map(|a| format!("127.0.0.1:{a}").parse().expect("addr"))
        .collect();
    for a in &admin_addrs {
        wait_until("a mirror's first sync", || {
            admin_get(*a, "/status").filter(|s| s.contains("\"weight\":10"))
        });
    }

    // Traffic: every image and thumbnail asked of every node, twice (misses, hits,
    // redirects), so the served shares and hit ratios are not all zero.
    for hash in files_under(&data.join("images"))
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
    {
        for m in &mirrors {
            for silo in ["_images", "_thumbs"] {
                for _ in 0..2 {
                    let r = http_get(m.addr, &format!("/{silo}/{hash}/x"));
                    let status = r.expect("request").status;
                    assert!(status == 200 || status == 307, "{status}");
                }
            }
        }
    }

    let killed = mirrors.pop().expect("three mirrors");
    killed.proc.signal(libc::SIGKILL);
    wait_until("the killed node's admin port to close", || {
        tcp_connect(admin_addrs[2]).is_err().then_some(())
    });
    drop(killed);

    let status: Vec<Value> = admin_addrs[..2]
        .iter()
        .map(|a| {
            let body = admin_get(*a, "/status").expect("status");
            serde_json::from_str(&body).expect("status JSON")
        })
        .collect();
    let metrics: Vec<String> = admin_addrs[..2]
        .iter()
        .map(|a| admin_get(*a, "/metrics").expect("metrics"))
        .collect();

    let mut args = vec!["fleet".to_owned(), "--timeout".into(), "2".into()];
    for i in 0..3 {
        args.push(format!("{}={}", ports[i], admin_addrs[i]));
    }
    let out = Command::new(BIN)
        .args(&args)
        .output()
        .expect("shimmer fleet");
    assert!(out.status.success(), "shimmer fleet failed: {out:?}");
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows: Vec<Vec<&str>> = table
        .lines()
        .skip(1)
        .take(3)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{table}");
    let served: Vec<f64> = metrics
        .iter()
        .map(|m| count(m, "hit") + count(m, "miss") + count(m, "pass"))
        .collect();
    for i in 0..2 {
        let (row, s, m) = (&rows[i], &status[i], &metrics[i]);
        let node = ports[i].to_string();
        assert_eq!(row[0], node, "{table}");
        assert_eq!(row[2], "up", "{table}");
        let weight = s["silos"]["_images"]["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["name"] == node.as_str()))
            .map(|n| n["weight"].to_string());
        assert_eq!(Some(row[3].to_owned()), weight, "{table}");
        let share = s["silos"]["_images"]["this_node_share"].as_f64();
        assert_eq!(row[4], pct(share), "{table}");
        assert!(served[i] > 0.0);
        assert_eq!(row[5], pct(Some(served[i] / served.iter().sum::<f64>())));
        let (hit, miss) = (count(m, "hit"), count(m, "miss"));
        assert_eq!(row[6], pct(Some(hit / (hit + miss))), "{table}");
        let memory = s["cache"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["tier"] == "memory"))
            .map(|t| {
                (
                    t["bytes"].as_u64().unwrap_or(0),
                    t["budget"].as_u64().unwrap_or(0),
                )
            });
        assert_eq!(row[7], usage(memory), "{table}");
        assert_eq!(
            row[9..].join(" "),
            format!("sqlite ok v{}", s["view_version"])
        );
    }
    let down = &rows[2];
    assert_eq!(
        &down[..4],
        &[
            ports[2].to_string().as_str(),
            &admin_addrs[2].to_string(),
            "DOWN",
            "10"
        ],
        "{table}"
    );
    // Its expected share comes from the live nodes' view: weight 10 of 20, about half.
    let share: f64 = down[4].trim_end_matches('%').parse().expect("a share");
    assert!((40.0..60.0).contains(&share), "{table}");
    assert!(table.contains("2 of 3 up"), "{table}");
    drop(origin);
}
