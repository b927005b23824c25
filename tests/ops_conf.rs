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

/// `shimmer -t` on a config text: (exit ok, stdout, stderr).
fn check(dir: &Path, name: &str, yaml: &str) -> (bool, String, String) {
    let conf = dir.join(name);
    std::fs::write(&conf, yaml).expect("write config");
    let out = Command::new(BIN)
        .args(["-t", "-c", path_str(&conf)])
        .output()
        .expect("run shimmer -t");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Nothing has to listen on the origin for `-t`.
fn unused_origin() -> std::net::SocketAddr {
    "127.0.0.1:9".parse().expect("addr")
}

#[test]
fn an_unusable_cache_dir_is_a_warning_and_the_check_still_passes() {
    let work = tempfile::tempdir().expect("tempdir");
    // Root ignores permission bits: a regular file where a directory should be is
    // unusable for anyone.
    let blocker = work.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").expect("blocker file");
    let dir = blocker.join("cache");
    let mut spec = OpsSpec::new(unused_origin());
    spec.cache_extra = format!("    dir: \"{}\"\n    disk_bytes: 1G\n", path_str(&dir));
    let (ok, out, err) = check(work.path(), "bad-dir.yaml", &spec.yaml(work.path()));
    // The mirror would start (memory only), so the check passes, but says so.
    assert!(ok, "{out}{err}");
    assert!(
        err.contains("shimmer: warning:")
            && err.contains("shimmer.cache.dir")
            && err.contains(path_str(&dir))
            && err.contains("memory tier only"),
        "no clear warning on stderr:\n{err}"
    );
    assert!(
        out.contains("config ok") && out.contains("1 warning"),
        "{out}"
    );

    // A directory that does not exist yet but can be made: no warning, nothing made.
    let later = work.path().join("var/cache/shimmer");
    let mut spec = OpsSpec::new(unused_origin());
    spec.cache_extra = format!("    dir: \"{}\"\n    disk_bytes: 1G\n", path_str(&later));
    let (ok, out, err) = check(work.path(), "good-dir.yaml", &spec.yaml(work.path()));
    assert!(
        ok && !err.contains("warning") && !out.contains("warning"),
        "{out}{err}"
    );
    assert!(!later.exists(), "-t must not create the cache directory");
}

/// Pingora gives a second listener on an address the first one's socket, so the two
/// services would take turns accepting: refused before it can start.
#[test]
fn one_address_for_two_listeners_is_refused() {
    let work = tempfile::tempdir().expect("tempdir");
    let cert = make_cert(work.path(), "a", &["a.test"]);
    let spec = OpsSpec::new(unused_origin());
    let tls_on = |port: u16| {
        format!(
            "  tls:\n    listen: [\"127.0.0.1:{port}\"]\n    certs: [{{cert: \"{}\", key: \"{}\"}}]\n",
            path_str(&cert.cert),
            path_str(&cert.key)
        )
    };
    for (port, other) in [
        (spec.admin_port, "shimmer.admin.listen"),
        (spec.port, "shimmer.listen"),
    ] {
        let mut s = OpsSpec::new(unused_origin());
        s.port = spec.port;
        s.admin_port = spec.admin_port;
        s.shimmer_extra = tls_on(port);
        let (ok, out, err) = check(work.path(), "clash.yaml", &s.yaml(work.path()));
        assert!(!ok, "accepted a TLS listener on {other}'s address:\n{out}");
        assert!(
            err.contains(&format!("127.0.0.1:{port}")) && err.contains(other),
            "{err}"
        );
    }
    let mut s = OpsSpec::new(unused_origin());
    s.shimmer_extra = tls_on(free_port());
    let (ok, out, err) = check(work.path(), "distinct.yaml", &s.yaml(work.path()));
    assert!(ok, "{out}{err}");
}
