use super::*;

const GOOD: &str = r#"
pid_file: /tmp/x.pid
shimmer:
  node: a
  listen: ["127.0.0.1:8080"]
  static:
    image_ilink: "http://m-{a=5,b=5,c=10}.example.com/_images/$hash/$id.$ext"
  origin:
    servers: ["http://127.0.0.1:8081", "127.0.0.1:8082", "https://127.0.0.1"]
"#;

fn parse_str(text: &str) -> Result<Config, ConfigError> {
    parse(Path::new("test.yaml"), text)
}

/// `GOOD` with one line replaced; the test names what it breaks.
fn broken(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from:?} not in the good config");
    GOOD.replacen(from, to, 1)
}

fn error_of(text: &str) -> String {
    parse_str(text)
        .expect_err("config should be refused")
        .to_string()
}

#[test]
fn embedded_default_is_valid() {
    let l = parse_str(include_str!("../../conf/shimmer.yaml")).unwrap();
    assert_eq!(l.live.settings.node, "8080");
    assert_eq!(l.server.grace_period_seconds, Some(10));
}

#[test]
fn good_config_gets_defaults_and_resolved_origins() {
    let l = parse_str(GOOD).unwrap();
    let s = &l.live.settings;
    assert_eq!(s.mode, Mode::Redirect);
    assert_eq!(s.origins.len(), 3);
    assert_eq!(s.origins[0].addr.to_string(), "127.0.0.1:8081");
    assert!(!s.origins[1].tls);
    assert_eq!(s.origins[2].addr.port(), 443);
    assert!(s.origins[2].tls);
    assert_eq!(s.origins[0].host, "127.0.0.1");
    assert_eq!(s.connect_timeout, Duration::from_secs(2));
    assert_eq!(l.fixed.memory_bytes, 256 << 20);
    assert_eq!(s.range_passthrough_ahead, 2 << 20);
    assert_eq!(s.cache_control, "public, max-age=31536000, immutable");
    // Pingora's 300 s grace period is replaced when the file does not set one.
    assert_eq!(l.server.grace_period_seconds, Some(10));
    assert_eq!(l.server.pid_file, "/tmp/x.pid");
}

#[test]
fn grace_period_from_the_file_is_kept() {
    let l = parse_str(&format!("grace_period_seconds: 42\n{GOOD}")).unwrap();
    assert_eq!(l.server.grace_period_seconds, Some(42));
}

#[test]
fn malformed_yaml_is_refused_with_the_file_name() {
    let e = error_of("shimmer: [unclosed");
    assert!(e.starts_with("test.yaml:"), "{e}");
}

#[test]
fn missing_shimmer_section_is_refused() {
    assert!(error_of("threads: 2\n").contains("missing the `shimmer:` section"));
}

#[test]
fn unknown_key_is_refused_by_name() {
    let e = error_of(&broken("  node: a", "  node: a\n  nod: b"));
    assert!(e.contains("nod"), "{e}");
}

#[test]
fn missing_node_is_refused() {
    let e = error_of(&broken("  node: a\n", ""));
    assert!(e.contains("node"), "{e}");
}

#[test]
fn node_name_with_template_syntax_is_refused() {
    for bad in ["\"\"", "\"a=5\"", "\"{a}\"", "\"a,b\""] {
        let e = error_of(&broken("node: a", &format!("node: {bad}")));
        assert!(e.contains("shimmer.node"), "{bad}: {e}");
    }
}

#[test]
fn node_name_that_cannot_be_a_header_value_is_refused() {
    // Every answer names its node in x-shimmer-node; a control character cannot go there.
    let e = error_of(&broken("node: a", "node: \"a\\u0007b\""));
    assert!(e.contains("shimmer.node"), "{e}");
    assert!(e.contains("x-shimmer-node"), "{e}");
}

#[test]
fn answer_headers_are_rendered_from_the_config() {
    let l = parse_str(&format!(
        "{GOOD}  http:\n    cache_control: \"public, max-age=60\"\n"
    ))
    .expect("config");
    let a = &l.live.settings.answer;
    assert_eq!(a.cache_control, "public, max-age=60");
    assert_eq!(a.node, "a");
    let ttl = l.live.settings.not_found_ttl.as_secs();
    assert_eq!(
        a.not_found_cache_control,
        format!("public, max-age={ttl}").as_str()
    );
}

#[test]
fn bad_listen_address_is_refused() {
    let e = error_of(&broken("[\"127.0.0.1:8080\"]", "[\"localhost:http\"]"));
    assert!(e.contains("shimmer.listen"), "{e}");
    let e = error_of(&broken("[\"127.0.0.1:8080\"]", "[]"));
    assert!(e.contains("shimmer.listen"), "{e}");
}

#[test]
fn empty_origin_list_is_refused() {
    let e = error_of(&broken(
        r#"["http://127.0.0.1:8081", "127.0.0.1:8082", "https://127.0.0.1"]"#,
        "[]",
    ));
    assert!(e.contains("shimmer.origin.servers"), "{e}");
}

#[test]
fn origin_with_a_path_or_strange_scheme_is_refused() {
    for bad in ["http://127.0.0.1:8081/data", "ftp://127.0.0.1", "http://"] {
        let e = error_of(&broken("http://127.0.0.1:8081", bad));
        assert!(e.contains("shimmer.origin.servers"), "{bad}: {e}");
    }
}

#[test]
fn zero_timeouts_are_refused() {
    let text = broken("    servers:", "    connect_timeout: 0s\n    servers:");
    assert!(error_of(&text).contains("connect_timeout"));
    // A send that may never wait would cut every answer larger than a socket buffer.
    let text = format!("{GOOD}  http:\n    send_timeout: 0s\n");
    assert!(error_of(&text).contains("shimmer.http.send_timeout"));
}

#[test]
fn bad_sizes_and_durations_are_refused_with_the_value() {
    let text = format!("{GOOD}  cache:\n    memory_bytes: 12X\n");
    assert!(error_of(&text).contains("12X"));
    let text = format!("{GOOD}  cache:\n    lock_timeout: soon\n");
    assert!(error_of(&text).contains("soon"));
    let text = format!("{GOOD}  cache:\n    memory_bytes: 1K\n");
    assert!(error_of(&text).contains("memory_bytes"));
}

#[test]
fn broken_template_is_refused_naming_the_entry() {
    let e = error_of(&broken("{a=5,b=5,c=10}", "{a=5,b=5=1,c=10}"));
    assert!(e.contains("b=5=1"), "{e}");
}

#[test]
fn unavailable_mode_and_source_are_refused_clearly() {
    let e = error_of(&broken("  node: a", "  node: a\n  mode: teleport"));
    assert!(e.contains("teleport"), "{e}");
    let e = error_of(&broken("  node: a", "  node: a\n  source: \"oracle://db\""));
    assert!(e.contains("shimmer.source"), "{e}");
}

#[test]
fn proxy_mode_and_peers_parse() {
    let text = broken(
        "  node: a",
        "  node: a\n  mode: proxy\n  peers:\n    b: \"http://10.0.0.2:8080\"\n  health:\n    interval: 500ms\n    rise: 3\n  proxy:\n    timeout: 1s",
    );
    let l = parse_str(&text).unwrap();
    let s = &l.live.settings;
    assert_eq!(s.mode, Mode::Proxy);
    assert_eq!(s.peers.peers["b"].port, 8080);
    assert_eq!(s.peers.health.interval, Duration::from_millis(500));
    assert_eq!((s.peers.health.rise, s.peers.health.fall), (3, 2));
    assert_eq!(s.peers.timeout, Duration::from_secs(1));
    let e = error_of(&broken(
        "  node: a",
        "  node: a\n  peers:\n    b: \"10.0.0.2\"",
    ));
    assert!(e.contains("shimmer.peers"), "{e}");
    let e = error_of(&broken("  node: a", "  node: a\n  health:\n    fall: 0"));
    assert!(e.contains("shimmer.health.fall"), "{e}");
    let e = error_of(&broken(
        "  node: a",
        "  node: a\n  fleet_token_file: /nonexistent/t",
    ));
    assert!(e.contains("shimmer.fleet_token_file"), "{e}");
}

#[test]
fn bad_header_value_and_log_level_are_refused() {
    let e = error_of(&format!("{GOOD}  http:\n    cache_control: \"a\\nb\"\n"));
    assert!(e.contains("cache_control"), "{e}");
    let e = error_of(&format!("{GOOD}  log_level: \"shimmer=loud\"\n"));
    assert!(e.contains("log_level"), "{e}");
}

#[test]
fn byte_sizes_parse() {
    assert_eq!(ByteSize::parse("512").unwrap().0, 512);
    assert_eq!(ByteSize::parse("64K").unwrap().0, 64 << 10);
    assert_eq!(ByteSize::parse("512M").unwrap().0, 512 << 20);
    assert_eq!(ByteSize::parse("16GiB").unwrap().0, 16 << 30);
    assert_eq!(ByteSize::parse("2 TB").unwrap().0, 2 << 40);
    assert!(ByteSize::parse("M").is_err());
    assert!(ByteSize::parse("-5M").is_err());
    assert!(ByteSize::parse("99999999999T").is_err());
}

#[test]
fn durations_parse() {
    assert_eq!(
        Seconds::parse("500ms").unwrap().0,
        Duration::from_millis(500)
    );
    assert_eq!(Seconds::parse("2s").unwrap().0, Duration::from_secs(2));
    assert_eq!(
        Seconds::parse("1.5").unwrap().0,
        Duration::from_millis(1500)
    );
    assert_eq!(Seconds::parse("5m").unwrap().0, Duration::from_secs(300));
    assert_eq!(Seconds::parse("1h").unwrap().0, Duration::from_secs(3600));
    assert!(Seconds::parse("1d").is_err());
    assert!(Seconds::parse("").is_err());
    assert!(Seconds::parse("1e999").is_err());
}

#[test]
fn disk_tier_is_off_by_default_and_configured_with_dir_and_disk_bytes() {
    assert!(parse_str(GOOD).unwrap().fixed.disk.is_none());
    let text = format!("{GOOD}  cache:\n    dir: /var/cache/shimmer\n    disk_bytes: 400G\n");
    let disk = parse_str(&text).unwrap().fixed.disk.unwrap();
    assert_eq!(disk.dir, Path::new("/var/cache/shimmer"));
    assert_eq!(disk.budget_bytes, 400 << 30);
    assert_eq!(disk.max_object_bytes, 1 << 30);
    assert!(!disk.fsync);
    let text = format!("{GOOD}  cache:\n    dir: /c\n    disk_bytes: 64M\n    fsync: true\n");
    let disk = parse_str(&text).unwrap().fixed.disk.unwrap();
    assert_eq!(
        disk.max_object_bytes,
        8 << 20,
        "default: an eighth of a small tier"
    );
    assert!(disk.fsync);
    let text = format!(
        "{GOOD}  cache:\n    dir: /c\n    disk_bytes: 1G\n    disk_max_object_bytes: 300M\n"
    );
    let disk = parse_str(&text).unwrap().fixed.disk.unwrap();
    assert_eq!(disk.max_object_bytes, 300 << 20);
}

#[test]
fn disk_tier_needs_disk_bytes_and_an_absolute_dir() {
    let e = error_of(&format!("{GOOD}  cache:\n    dir: /c\n"));
    assert!(
        e.contains("shimmer.cache.disk_bytes") && e.contains("required"),
        "{e}"
    );
    let e = error_of(&format!(
        "{GOOD}  cache:\n    dir: cache\n    disk_bytes: 1G\n"
    ));
    assert!(
        e.contains("shimmer.cache.dir") && e.contains("absolute"),
        "{e}"
    );
    let e = error_of(&format!(
        "{GOOD}  cache:\n    dir: /c\n    disk_bytes: 1M\n"
    ));
    assert!(e.contains("shimmer.cache.disk_bytes"), "{e}");
    let e = error_of(&format!(
        "{GOOD}  cache:\n    dir: /c\n    disk_bytes: 1G\n    disk_max_object_bytes: 2G\n"
    ));
    assert!(e.contains("shimmer.cache.disk_max_object_bytes"), "{e}");
}

#[test]
fn disk_keys_without_dir_are_refused() {
    for line in ["disk_bytes: 1G", "disk_max_object_bytes: 1G", "fsync: true"] {
        let e = error_of(&format!("{GOOD}  cache:\n    {line}\n"));
        let key = line.split(':').next().unwrap();
        assert!(
            e.contains(&format!("shimmer.cache.{key}")) && e.contains("dir"),
            "{e}"
        );
    }
}

#[test]
fn an_unusable_cache_dir_is_not_a_config_error() {
    // Checked when the mirror starts (logged, counted, served from memory), not here.
    let text = format!("{GOOD}  cache:\n    dir: /proc/nope/cache\n    disk_bytes: 1G\n");
    assert!(parse_str(&text).is_ok());
}

#[test]
fn database_sources_are_accepted_by_dsn_without_connecting() {
    for dsn in [
        "postgres://shimmie@127.0.0.1:1/shimmie",
        "mysql://shimmie@127.0.0.1:1/shimmie",
        "sqlite:///nonexistent/dir/shimmie.db",
    ] {
        let l = parse_str(&broken(
            "  node: a",
            &format!("  node: a\n  source: \"{dsn}\""),
        ))
        .unwrap();
        assert_eq!(l.fixed.source.as_deref(), Some(dsn));
    }
    assert_eq!(parse_str(GOOD).unwrap().fixed.source, None);
}

#[test]
fn zero_sync_interval_is_refused() {
    let e = error_of(&format!("{GOOD}  sync:\n    interval: 0s\n"));
    assert!(e.contains("shimmer.sync.interval"), "{e}");
}

#[test]
fn one_address_for_two_listeners_is_refused() {
    // The admin listener defaults to 127.0.0.1:9090.
    let e = error_of(&broken(
        "listen: [\"127.0.0.1:8080\"]",
        "listen: [\"127.0.0.1:9090\"]",
    ));
    assert!(
        e.contains("shimmer.admin.listen")
            && e.contains("127.0.0.1:9090 is also in shimmer.listen"),
        "{e}"
    );
    let e = error_of(&broken(
        "listen: [\"127.0.0.1:8080\"]",
        "listen: [\"127.0.0.1:8080\", \"127.0.0.1:8080\"]",
    ));
    assert!(e.contains("shimmer.listen"), "{e}");
    // A wildcard address takes its port on every address.
    let e = error_of(&broken(
        "listen: [\"127.0.0.1:8080\"]",
        "listen: [\"0.0.0.0:9090\"]",
    ));
    assert!(
        e.contains("shimmer.admin.listen") && e.contains("overlaps 0.0.0.0:9090"),
        "{e}"
    );
    // Other ports, or other addresses on one port, are fine.
    assert!(parse_str(&broken(
        "listen: [\"127.0.0.1:8080\"]",
        "listen: [\"127.0.0.1:8080\", \"127.0.0.2:9090\", \"0.0.0.0:8081\"]",
    ))
    .is_ok());
}

#[test]
fn an_unusable_cache_dir_is_a_warning() {
    let work = tempfile::tempdir().expect("tempdir");
    let blocker = work.path().join("a-file");
    std::fs::write(&blocker, b"x").expect("blocker");
    let with_dir = |dir: &Path| {
        let text = format!(
            "{GOOD}  cache:\n    dir: {}\n    disk_bytes: 1G\n",
            dir.display()
        );
        warnings(Path::new("test.yaml"), &parse_str(&text).unwrap().fixed)
    };
    let w = with_dir(&blocker.join("cache"));
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("test.yaml: shimmer.cache.dir: ") && w[0].contains("memory tier only"),
        "{w:?}"
    );
    // Not there yet but creatable: no warning, and nothing created.
    let later = work.path().join("not/yet");
    assert!(with_dir(&later).is_empty());
    assert!(!later.exists());
    assert!(warnings(Path::new("test.yaml"), &parse_str(GOOD).unwrap().fixed).is_empty());
}

/// A self-signed certificate and its key, written as PEM under `dir` by the `openssl`
/// command, as the integration tests' harness makes them.
pub(crate) fn test_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "30"])
        .arg("-subj")
        .arg(format!("/CN={name}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// A config with every fixed setting written out, and its certificate directory.
pub(crate) fn full_config(dir: &Path) -> String {
    let (cert, key) = test_cert(dir, "a.example");
    let token = dir.join("token");
    std::fs::write(&token, "0123456789abcdef-token\n").expect("token");
    format!(
        r#"threads: 2
shimmer:
  node: a
  listen: ["127.0.0.1:8080"]
  source: "sqlite:///nonexistent/shimmie.db"
  log_level: info
  static:
    image_ilink: "http://m-{{a=5,b=5}}.example.com/_images/$hash/$id.$ext"
  origin:
    servers: ["http://127.0.0.1:8081"]
    connect_timeout: 2s
  admin:
    listen: "127.0.0.1:9090"
    token_file: "{token}"
  tls:
    listen: ["127.0.0.1:8443"]
    certs: [{{cert: "{cert}", key: "{key}"}}]
    h2: true
    redirect_http: false
  cache:
    memory_bytes: 64M
    max_object_bytes: 8M
    lock_timeout: 10s
    not_found_ttl: 10s
    range_passthrough_ahead: 2M
    dir: /var/cache/shimmer
    disk_bytes: 1G
    fsync: false
  http:
    cache_control: "public, max-age=60"
    send_timeout: 60s
  sync:
    interval: 5s
"#,
        token = token.display(),
        cert = cert.display(),
        key = key.display(),
    )
}

fn replaced(text: &str, from: &str, to: &str) -> Config {
    assert!(text.contains(from), "{from:?} not in the config");
    parse_str(&text.replacen(from, to, 1)).expect("the changed config is valid")
}

#[test]
fn each_fixed_setting_that_changes_is_named() {
    let work = tempfile::tempdir().expect("tempdir");
    let text = full_config(work.path());
    let base = parse_str(&text).expect("full config");
    assert!(base
        .fixed
        .changed_keys(&parse_str(&text).unwrap().fixed)
        .is_empty());
    let disk_tier = "shimmer.cache disk tier (disk_bytes, disk_max_object_bytes, fsync)";
    for (from, to, key) in [
        ("\"127.0.0.1:8080\"", "\"127.0.0.1:8088\"", "shimmer.listen"),
        (
            "\"127.0.0.1:9090\"",
            "\"127.0.0.1:9099\"",
            "shimmer.admin.listen",
        ),
        (
            "\"127.0.0.1:8443\"",
            "\"127.0.0.1:8444\"",
            "shimmer.tls (listeners added, removed or moved)",
        ),
        ("h2: true", "h2: false", "shimmer.tls.h2"),
        (
            "memory_bytes: 64M",
            "memory_bytes: 128M",
            "shimmer.cache.memory_bytes",
        ),
        (
            "dir: /var/cache/shimmer",
            "dir: /srv/cache",
            "shimmer.cache.dir",
        ),
        ("disk_bytes: 1G", "disk_bytes: 2G", disk_tier),
        ("fsync: false", "fsync: true", disk_tier),
        (
            "/nonexistent/shimmie.db",
            "/nonexistent/other.db",
            "shimmer.source",
        ),
        ("interval: 5s", "interval: 7s", "shimmer.sync"),
        ("threads: 2", "threads: 3", "threads"),
        (
            "threads: 2",
            "threads: 2\npid_file: /tmp/other.pid",
            "pid_file",
        ),
    ] {
        let new = replaced(&text, from, to);
        assert_eq!(
            base.fixed.changed_keys(&new.fixed),
            vec![key],
            "{from} -> {to}"
        );
    }
}

#[test]
fn reloadable_settings_change_nothing_fixed() {
    let work = tempfile::tempdir().expect("tempdir");
    let text = full_config(work.path());
    let base = parse_str(&text).expect("full config");
    let (cert, _) = test_cert(work.path(), "b.example");
    let token = work.path().join("token2");
    std::fs::write(&token, "fedcba9876543210-other").expect("token");
    let mut new_text = text.clone();
    for (from, to) in [
        ("node: a", "node: b"),
        ("log_level: info", "log_level: debug"),
        ("{a=5,b=5}", "{a=5,b=5,c=5}"),
        ("\"http://127.0.0.1:8081\"", "\"http://127.0.0.1:8082\""),
        ("connect_timeout: 2s", "connect_timeout: 3s"),
        ("max_object_bytes: 8M", "max_object_bytes: 4M"),
        ("lock_timeout: 10s", "lock_timeout: 5s"),
        ("not_found_ttl: 10s", "not_found_ttl: 1s"),
        ("range_passthrough_ahead: 2M", "range_passthrough_ahead: 0"),
        ("max-age=60", "max-age=120"),
        ("send_timeout: 60s", "send_timeout: 5s"),
        ("redirect_http: false", "redirect_http: true"),
        ("a.example.crt", "b.example.crt"),
        ("a.example.key", "b.example.key"),
    ] {
        assert!(new_text.contains(from), "{from:?}");
        new_text = new_text.replacen(from, to, 1);
    }
    let new_text = new_text.replace(
        &work.path().join("token").display().to_string(),
        &token.display().to_string(),
    );
    let new = parse_str(&new_text).expect("changed config");
    assert!(base.fixed.changed_keys(&new.fixed).is_empty());
    let s = &new.live.settings;
    assert_eq!(s.node, "b");
    assert_eq!(s.log_level, "debug");
    assert_eq!(
        s.fleet.image_ilink.as_deref().map(|t| t.contains("c=5")),
        Some(true)
    );
    assert_eq!(s.origins[0].addr.port(), 8082);
    assert_eq!(s.connect_timeout, Duration::from_secs(3));
    assert_eq!(s.max_object_bytes, 4 << 20);
    assert_eq!(s.lock_timeout, Duration::from_secs(5));
    assert_eq!(s.not_found_ttl, Duration::from_secs(1));
    assert_eq!(base.live.settings.range_passthrough_ahead, 2 << 20);
    assert_eq!(s.range_passthrough_ahead, 0);
    assert_eq!(s.cache_control, "public, max-age=120");
    assert_eq!(base.live.settings.send_timeout, Duration::from_secs(60));
    assert_eq!(s.send_timeout, Duration::from_secs(5));
    assert_eq!(s.admin.token.as_deref(), Some("fedcba9876543210-other"));
    assert_eq!(s.tls.as_ref().map(|t| t.redirect_http), Some(true));
    let certs = new.live.certs.expect("certificates");
    assert_eq!(certs[0].source, cert);
}

#[test]
fn the_parsed_source_and_log_filter_are_carried() {
    let work = tempfile::tempdir().expect("tempdir");
    let l = parse_str(&full_config(work.path())).expect("full config");
    assert_eq!(l.database.as_ref().map(|d| d.engine()), Some("sqlite"));
    assert_eq!(l.live.log_filter.to_string(), "info");
    assert!(parse_str(GOOD).unwrap().database.is_none());
}

#[test]
fn units_are_binary_and_documented_in_errors() {
    // "MB" is MiB, as it always was in shimmer configs.
    assert_eq!(
        ByteSize::parse("1MB").unwrap(),
        ByteSize::parse("1MiB").unwrap()
    );
    assert_eq!(ByteSize::parse("1MB").unwrap().0, 1 << 20);
    assert_eq!(ByteSize::parse("1 kb").unwrap().0, 1024);
    let e = ByteSize::parse("1PB").unwrap_err();
    assert!(e.contains("binary"), "{e}");
    let e = error_of(&format!("{GOOD}  cache:\n    memory_bytes: 1K\n"));
    assert!(e.contains("1 MiB"), "{e}");
}
