//! The shipped operations files stay true: conf/production.yaml passes `shimmer -t` (with
//! its file paths and host names pointed at real ones) and conf/shimmer.service runs
//! the binary the way it is meant to be run.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_production_example_config_is_valid() {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let text = std::fs::read_to_string(root().join("conf/production.yaml")).expect("read");
    let m = make_cert(dir, "m", &["m.example.com", "*.m.example.com"]);
    let legacy = make_cert(dir, "legacy", &["legacy.example.net"]);
    let token = dir.join("purge.token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").expect("token");
    let cache = dir.join("cache");
    let mut yaml = text.clone();
    for (from, to) in [
        ("/etc/shimmer/tls/m.example.com.crt", path_str(&m.cert)),
        ("/etc/shimmer/tls/m.example.com.key", path_str(&m.key)),
        (
            "/etc/shimmer/tls/legacy.example.net.crt",
            path_str(&legacy.cert),
        ),
        (
            "/etc/shimmer/tls/legacy.example.net.key",
            path_str(&legacy.key),
        ),
        ("/etc/shimmer/purge.token", path_str(&token)),
        ("/var/cache/shimmer", path_str(&cache)),
        ("shimmie-1.internal", "127.0.0.1"),
        ("shimmie-2.internal", "127.0.0.2"),
    ] {
        assert!(
            yaml.contains(from),
            "conf/production.yaml no longer names {from}"
        );
        yaml = yaml.replace(from, to);
    }
    let conf = dir.join("production.yaml");
    std::fs::write(&conf, yaml).expect("write");
    let out = Command::new(BIN)
        .args(["-t", "-c", path_str(&conf)])
        .output()
        .expect("run shimmer -t");
    assert!(
        out.status.success(),
        "conf/production.yaml does not check out:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every key is explained: a comment right above it, or above the run of keys it
    // belongs to (a blank line or a new block starts a new run).
    let mut explained = false;
    for line in text.lines().skip_while(|l| !l.starts_with("---")).skip(1) {
        let t = line.trim_start();
        if t.is_empty() || t.ends_with(':') {
            explained = false;
        } else if t.starts_with('#') || t.starts_with('-') {
            explained = true;
        } else {
            assert!(explained, "conf/production.yaml: no comment for {t:?}");
        }
    }
}

#[test]
fn the_systemd_unit_checks_before_it_starts_or_reloads() {
    let unit = std::fs::read_to_string(root().join("conf/shimmer.service")).expect("read");
    let service: Vec<&str> = unit
        .lines()
        .skip_while(|l| *l != "[Service]")
        .take_while(|l| *l != "[Install]")
        .collect();
    let has = |line: &str| service.contains(&line);
    assert!(has(
        "ExecStartPre=/usr/local/bin/shimmer -t -c /etc/shimmer/shimmer.yaml"
    ));
    assert!(has(
        "ExecStart=/usr/local/bin/shimmer -c /etc/shimmer/shimmer.yaml"
    ));
    assert!(has(
        "ExecReload=/usr/local/bin/shimmer -t -c /etc/shimmer/shimmer.yaml"
    ));
    assert!(has("ExecReload=/bin/kill -HUP $MAINPID"));
    assert!(has("User=shimmer") && has("AmbientCapabilities=CAP_NET_BIND_SERVICE"));
    // The flags the unit uses are the binary's.
    let help = Command::new(BIN)
        .arg("--help")
        .output()
        .expect("shimmer --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in ["-t", "-c", "-u", "-d"] {
        assert!(
            help.contains(&format!("{flag},")),
            "shimmer --help lacks {flag}"
        );
    }
}
