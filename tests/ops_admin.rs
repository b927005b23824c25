//! The admin listener end to end: `/metrics` checked by `promtool` (Debian's prometheus
//! package), the Grafana dashboard checked against a live scrape, health and status,
//! and the bearer-token purge.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use tempfile::TempDir;

const TOKEN: &str = "0123456789abcdef-test-token";

struct World {
    work: TempDir,
    data: DataDir,
    origin: Origin,
}

fn world() -> World {
    let work = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(work.path().join("data"));
    let origin = Origin::start(&data.dir, work.path());
    World { work, data, origin }
}

fn image(data: &DataDir, i: u64) -> (String, String) {
    let hash = test_hash(i);
    data.put("_images", &hash, &jpeg_bytes(2048, i));
    let path = format!("/_images/{hash}/{i}.jpg");
    (hash, path)
}

fn origin_requests(o: &Origin) -> u64 {
    let r = http_get(o.addr, "/_origin/stats").expect("origin stats");
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("stats JSON");
    v["requests"].as_u64().expect("requests")
}

fn token_file(dir: &Path, token: &str) -> String {
    let p = dir.join("purge.token");
    std::fs::write(&p, format!("{token}\n")).expect("write token");
    format!("    token_file: \"{}\"\n", path_str(&p))
}

fn purge(m: &OpsMirror, auth: Option<&str>, body: &str) -> HttpResponse {
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = auth {
        headers.push(("Authorization", a));
    }
    http_request(m.admin, "POST", "/purge", &headers, body.as_bytes()).expect("POST /purge")
}

/// A disk tier for `OpsSpec::cache_extra`, its directory holding what a restart scan
/// has to deal with: one shm-cached file it adopts and one cut short that it deletes.
/// Returns the lines and the adopted file's request path.
fn disk_tier_with_leftovers(w: &World) -> (String, String) {
    let dir = w.work.path().join("cache");
    let (adopted, cut) = (test_hash(700), test_hash(701));
    for (hash, bytes) in [
        (&adopted, whole_jpeg(20_000, 700)),
        (&cut, whole_jpeg(20_000, 701)[..15_000].to_vec()),
    ] {
        let path = cache_path(&dir, "_images", hash);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, bytes).expect("leftover file");
    }
    let lines = format!("    dir: \"{}\"\n    disk_bytes: 64M\n", path_str(&dir));
    (lines, format!("/_images/{adopted}/700.jpg"))
}

/// A mirror with TLS, a token, a disk tier and a fleet of three (so some requests
/// redirect), after traffic of every kind: hits, misses, redirects, 404s, rejections,
/// TLS handshakes, reloads that worked and failed, a purge, and a disk index rebuilt.
fn busy_mirror(w: &World) -> OpsMirror {
    let cert = make_cert(w.work.path(), "a", &["a.test"]);
    let tls_port = free_port();
    let mut spec = OpsSpec::new(w.origin.addr);
    spec.image_ilink = "http://m-{a=1,b=1,c=1}.test/_images/$hash/$id.$ext".into();
    spec.admin_extra = token_file(w.work.path(), TOKEN);
    spec.cache_extra = disk_tier_with_leftovers(w).0;
    spec.shimmer_extra = format!(
        "  tls:\n    listen: [\"127.0.0.1:{tls_port}\"]\n    certs: [{{cert: \"{}\", key: \"{}\"}}]\n",
        path_str(&cert.cert),
        path_str(&cert.key)
    );
    let mut m = OpsMirror::start(w.work.path(), &spec);
    let tls = format!("127.0.0.1:{tls_port}").parse().expect("addr");
    wait_for_port(&mut m.proc, tls, "TLS listener");

    let mut outcomes = BTreeSet::new();
    for i in 0..30 {
        let (_, path) = image(&w.data, 800 + i);
        for _ in 0..2 {
            let r = m.get(&path);
            outcomes.insert((r.status, r.header("x-cache").map(str::to_owned)));
        }
    }
    assert!(outcomes.contains(&(307, None)), "{outcomes:?}");
    assert!(
        outcomes.contains(&(200, Some("HIT".into()))),
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&(200, Some("MISS".into()))),
        "{outcomes:?}"
    );
    // A missing image is a 404 from an owner; try until one owns it.
    let not_found = (0..20).any(|i| {
        m.get(&format!("/_images/{}/x.jpg", test_hash(900 + i)))
            .status
            == 404
    });
    assert!(not_found);
    assert_eq!(m.get("/etc/passwd").status, 404);
    assert_eq!(m.get("/_images/NOTAHASH/x.jpg").status, 400);
    let s = tls_connect(tls, Some("a.test"), None).expect("TLS");
    drop(s);
    m.reload_expecting("ok");
    let good = std::fs::read_to_string(&m.conf).expect("config");
    m.rewrite("shimmer: {");
    m.reload_expecting("failed");
    m.rewrite(&good);
    let (hash, _) = image(&w.data, 800);
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(
        purge(&m, Some(&bearer), &format!("[\"{hash}\"]")).status,
        200
    );
    wait_for_disk_rebuild(&m);
    m
}

/// Waits until the disk tier's restart scan is done (the first lookup starts it).
fn wait_for_disk_rebuild(m: &OpsMirror) {
    wait_until("the disk index rebuild", || {
        (m.metric("shimmer_cache_rebuild_done", &[("tier", "disk")]) == 1.0).then_some(())
    });
}

#[test]
fn metrics_pass_promtool_check_metrics() {
    let w = world();
    let m = busy_mirror(&w);
    let r = http_get(m.admin, "/metrics").expect("GET /metrics");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        r.header("content-type")
    );
    let text = r.text();
    for want in [
        "shimmer_requests_total",
        "shimmer_request_duration_seconds_bucket",
        "shimmer_origin_response_seconds_bucket",
        "shimmer_tls_handshakes_total",
        "shimmer_cache_bytes",
        // The disk tier's own numbers (busy_mirror has one).
        "shimmer_cache_write_errors_total{tier=\"disk\"}",
        "shimmer_cache_read_errors_total{tier=\"disk\"}",
        "shimmer_cache_corrupt_removed_total{tier=\"disk\"}",
        "shimmer_cache_adopted_total{tier=\"disk\"}",
        "shimmer_cache_rebuild_scanned_total{tier=\"disk\"}",
        "shimmer_cache_rebuild_done{tier=\"disk\"}",
        "shimmer_cache_promotions_total",
    ] {
        assert!(text.contains(want), "{want} missing");
    }
    let file = w.work.path().join("metrics.txt");
    std::fs::write(&file, &text).expect("write scrape");
    let out = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).expect("open scrape"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics ({}):\n{said}",
        out.status
    );
    // Low cardinality by rule: never a hash or a path in a label.
    let hash = test_hash(800);
    assert!(!text.contains(&hash) && !text.contains("/_images/"));
}

#[test]
fn every_metric_in_the_grafana_dashboard_exists_and_every_expression_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana/shimmer.json")).expect("grafana/shimmer.json"),
    )
    .expect("the dashboard is JSON");

    // Importable, with the data source as a variable.
    let vars = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    assert!(vars.iter().any(|v| v["type"] == "datasource"
        && v["query"] == "prometheus"
        && v["name"] == "datasource"));
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    let mut panels = 0;
    walk(&dashboard["panels"], &mut |key, v| {
        if key == "datasource" && v.get("type").is_some_and(|t| t == "prometheus") {
            assert_eq!(
                v["uid"], "${datasource}",
                "a panel pins its data source: {v}"
            );
        }
        if key == "gridPos" {
            panels += 1;
        }
    });
    assert!(panels >= 10);
    let provisioning =
        std::fs::read_to_string(root.join("grafana/provisioning/dashboards/shimmer.yaml"))
            .expect("grafana/provisioning/dashboards/shimmer.yaml");
    assert!(provisioning.contains("apiVersion: 1") && provisioning.contains("type: file"));

    // Every PromQL expression, and the metric names in them.
    let mut exprs = Vec::new();
    walk(&dashboard, &mut |key, v| {
        if let (Some(s), true) = (v.as_str(), matches!(key, "expr" | "definition" | "query")) {
            exprs.push(s.to_owned());
        }
    });
    assert!(exprs.len() >= 20, "{exprs:?}");
    let mut names = BTreeSet::new();
    for e in &exprs {
        names.extend(metric_names(e));
    }
    for want in [
        "shimmer_requests_total",
        "shimmer_origin_response_seconds_bucket",
        "shimmer_sent_bytes_total",
        "shimmer_cache_bytes",
        "shimmer_cache_evictions_total",
        "shimmer_fleet_expected_share",
        "shimmer_config_reloads_total",
        "shimmer_sync_up",
    ] {
        assert!(names.contains(want), "the dashboard should show {want}");
    }

    let w = world();
    let m = busy_mirror(&w);
    let scrape = m.scrape();
    let types: Vec<(&str, &str)> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    let exported = |name: &str| {
        types.iter().any(|(n, _)| *n == name)
            || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .is_some_and(|base| types.contains(&(base, "histogram")))
            })
    };
    let missing: Vec<&String> = names.iter().filter(|n| !exported(n)).collect();
    assert!(
        missing.is_empty(),
        "in the dashboard, not in /metrics: {missing:?}"
    );
    // ... and each one has samples after that traffic (a family without any series
    // would draw an empty panel).
    for n in &names {
        assert!(
            scrape
                .lines()
                .any(|l| !l.starts_with('#') && l.starts_with(n.as_str())),
            "{n} has no samples"
        );
    }

    // The expressions parse: promtool checks them as recording rules, with Grafana's
    // variables filled in.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs
        .iter()
        .filter(|e| !e.starts_with("label_values("))
        .enumerate()
    {
        let promql = e
            .replace("$__rate_interval", "5m")
            .replace("$__range", "1h")
            .replace("$instance", ".*");
        rules.push_str(&format!(
            "      - record: shimmer:dashboard_{i}\n        expr: {}\n",
            serde_json::to_string(&promql).expect("quote")
        ));
    }
    let file = w.work.path().join("dashboard-rules.yaml");
    std::fs::write(&file, rules).expect("write rules");
    let out = Command::new(promtool())
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn walk(v: &serde_json::Value, f: &mut dyn FnMut(&str, &serde_json::Value)) {
    match v {
        serde_json::Value::Object(o) => {
            for (k, child) in o {
                f(k, child);
                walk(child, f);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|c| walk(c, f)),
        _ => {}
    }
}

fn promtool() -> &'static str {
    let p = "/usr/bin/promtool";
    assert!(
        Path::new(p).exists(),
        "promtool is missing: `make deps` installs it (apt-get install prometheus)"
    );
    p
}

#[test]
fn the_disk_tier_counters_are_in_a_live_scrape() {
    let w = world();
    let mut spec = OpsSpec::new(w.origin.addr);
    let (lines, adopted) = disk_tier_with_leftovers(&w);
    spec.cache_extra = lines;
    let m = OpsMirror::start(w.work.path(), &spec);
    // An adopted shm-cached file is a disk hit (and is offered to the memory tier).
    let r = m.get(&adopted);
    assert_eq!((r.status, r.header("x-cache")), (200, Some("HIT")));
    assert_eq!(origin_requests(&w.origin), 0);
    wait_for_disk_rebuild(&m);
    let scrape = m.scrape();
    let disk = |name: &str| {
        metric_value(&scrape, name, &[("tier", "disk")])
            .unwrap_or_else(|| panic!("no {name}{{tier=\"disk\"}} in:\n{scrape}"))
    };
    assert_eq!(disk("shimmer_cache_adopted_total"), 1.0);
    assert_eq!(disk("shimmer_cache_corrupt_removed_total"), 1.0);
    assert_eq!(disk("shimmer_cache_rebuild_scanned_total"), 2.0);
    assert_eq!(disk("shimmer_cache_rebuild_done"), 1.0);
    assert!(disk("shimmer_cache_rebuild_duration_seconds") >= 0.0);
    assert_eq!(disk("shimmer_cache_write_errors_total"), 0.0);
    assert_eq!(disk("shimmer_cache_read_errors_total"), 0.0);
    assert_eq!(disk("shimmer_cache_writable"), 1.0);
    assert_eq!(disk("shimmer_cache_reserved_bytes"), 0.0);
    let plain = |name: &str| {
        metric_value(&scrape, name, &[]).unwrap_or_else(|| panic!("no {name} in:\n{scrape}"))
    };
    // Counted when the hit's last chunk has been read, which may be just after the
    // client has every byte.
    wait_until("the disk hit's promotion", || {
        (m.metric("shimmer_cache_promotions_total", &[]) >= 1.0).then_some(())
    });
    for name in [
        "shimmer_cache_memory_only_fills_total",
        "shimmer_cache_disk_dropped_fills_total",
        "shimmer_cache_aborted_fills_total",
    ] {
        assert_eq!(plain(name), 0.0, "{name}");
    }
    assert_eq!(
        scrape
            .lines()
            .find(|l| l.starts_with("# TYPE shimmer_cache_write_errors_total ")),
        Some("# TYPE shimmer_cache_write_errors_total counter")
    );
}

#[test]
fn purge_needs_the_token_and_the_object_is_gone_from_every_tier() {
    let w = world();
    let mut spec = OpsSpec::new(w.origin.addr);
    spec.admin_extra = token_file(w.work.path(), TOKEN);
    let m = OpsMirror::start(w.work.path(), &spec);
    let (hash, path) = image(&w.data, 1);
    let (other_hash, other_path) = image(&w.data, 2);
    assert_eq!(m.get(&path).header("x-cache"), Some("MISS"));
    assert_eq!(m.get(&other_path).header("x-cache"), Some("MISS"));
    assert_eq!(m.get(&path).header("x-cache"), Some("HIT"));
    assert_eq!(origin_requests(&w.origin), 2);

    let body = format!("{{\"hashes\": [\"{hash}\"]}}");
    for auth in [
        None,
        Some("Bearer wrong-token-of-some-length".to_owned()),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Basic {TOKEN}")),
        Some(TOKEN.to_owned()),
        Some("Bearer ".to_owned()),
    ] {
        let r = purge(&m, auth.as_deref(), &body);
        assert_eq!(r.status, 401, "{auth:?}: {}", r.text());
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    assert_eq!(
        m.get(&path).header("x-cache"),
        Some("HIT"),
        "nothing purged yet"
    );

    let bearer = format!("Bearer {TOKEN}");
    let unknown = test_hash(3);
    let r = purge(
        &m,
        Some(&bearer),
        &format!("{{\"hashes\": [\"{hash}\", \"{unknown}\"]}}"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("purge JSON");
    assert_eq!(v["purged"], serde_json::json!([hash]));
    assert_eq!(v["not_cached"], serde_json::json!([unknown]));

    // Gone from every tier: the next request goes to the origin again.
    let r = m.get(&path);
    assert_eq!((r.status, r.header("x-cache")), (200, Some("MISS")));
    assert_eq!(origin_requests(&w.origin), 3);
    assert_eq!(m.get(&path).header("x-cache"), Some("HIT"));
    assert_eq!(
        m.get(&other_path).header("x-cache"),
        Some("HIT"),
        "only that hash"
    );
    let _ = other_hash;

    // One hash per line works too; a bad hash refuses the whole request.
    let r = purge(&m, Some(&bearer), &format!("{hash}\n"));
    assert_eq!(r.status, 200);
    let r = purge(&m, Some(&bearer), &format!("{hash}\n../../etc/passwd\n"));
    assert_eq!(r.status, 400);
    assert_eq!(http_get(m.admin, "/purge").expect("GET /purge").status, 405);
    assert!(m.metric("shimmer_purges_total", &[("cause", "admin")]) >= 2.0);

    // The token is read again on reload: a rotated token replaces the old one.
    let new_token = "fedcba9876543210-rotated";
    std::fs::write(w.work.path().join("purge.token"), new_token).expect("rotate token");
    m.reload_expecting("ok");
    assert_eq!(purge(&m, Some(&bearer), &body).status, 401);
    assert_eq!(
        purge(&m, Some(&format!("Bearer {new_token}")), &body).status,
        200
    );
}

#[test]
fn without_a_token_purge_is_disabled_not_open() {
    let w = world();
    let m = OpsMirror::start(w.work.path(), &OpsSpec::new(w.origin.addr));
    let (hash, path) = image(&w.data, 1);
    assert_eq!(m.get(&path).header("x-cache"), Some("MISS"));
    for auth in [None, Some("Bearer anything-at-all-here")] {
        let r = purge(&m, auth, &format!("[\"{hash}\"]"));
        assert_eq!(r.status, 403, "{}", r.text());
        assert!(r.text().contains("token_file"));
    }
    assert_eq!(m.get(&path).header("x-cache"), Some("HIT"));
}

#[test]
fn a_token_file_that_is_missing_or_weak_is_refused_at_start() {
    let w = world();
    for (content, why) in [(None, "token_file"), (Some("short"), "at least 16")] {
        let mut spec = OpsSpec::new(w.origin.addr);
        let p = w.work.path().join("weak.token");
        let _ = std::fs::remove_file(&p);
        if let Some(c) = content {
            std::fs::write(&p, c).expect("write");
        }
        spec.admin_extra = format!("    token_file: \"{}\"\n", path_str(&p));
        let conf = w.work.path().join("weak.yaml");
        std::fs::write(&conf, spec.yaml(w.work.path())).expect("write config");
        let out = Command::new(BIN)
            .args(["-t", "-c", path_str(&conf)])
            .output()
            .expect("run shimmer -t");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted: {content:?}");
        assert!(
            err.contains("shimmer.admin.token_file") && err.contains(why),
            "{err}"
        );
    }
}

#[test]
fn health_readiness_and_status() {
    let w = world();
    let m = OpsMirror::start(w.work.path(), &OpsSpec::new(w.origin.addr));
    let (_, path) = image(&w.data, 1);
    assert_eq!(m.get(&path).status, 200);

    let r = http_get(m.admin, "/healthz").expect("healthz");
    assert_eq!((r.status, r.text().trim()), (200, "ok"));
    let r = http_get(m.admin, "/readyz").expect("readyz");
    assert_eq!(r.status, 200);
    assert_eq!(http_get(m.admin, "/nope").expect("404").status, 404);

    let r = http_get(m.admin, "/status").expect("status");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("status JSON");
    assert_eq!(v["node"], "a");
    assert_eq!(v["mode"], "redirect");
    assert!(v["view_version"].as_u64().is_some_and(|n| n >= 1));
    for silo in ["_images", "_thumbs"] {
        assert!(v["silos"][silo]["template"].is_string(), "{v}");
        assert!(v["silos"][silo]["this_node_share"].is_number(), "{v}");
    }
    let tiers = v["cache"].as_array().expect("cache tiers");
    let memory = tiers
        .iter()
        .find(|t| t["tier"] == "memory")
        .expect("memory tier");
    assert!(memory["objects"].as_u64().is_some_and(|n| n >= 1), "{v}");
    assert!(memory["bytes"].as_u64().is_some_and(|n| n >= 2048), "{v}");

    // The admin port is not the mirror: media paths are not served there, and admin
    // paths are not served on the mirror.
    assert_eq!(
        http_get(m.admin, &path).expect("media on admin").status,
        404
    );
    assert_ne!(m.get("/metrics").status, 200);
}
