//! Mirror processes: the generated config, the ops mirror (admin listener, TLS,
//! reloads) and what the tests read off a running one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::*;

/// A mirror process running a generated config file.
pub struct Mirror {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub conf: PathBuf,
}

/// What a test wants of a mirror's config; the rest is the harness's default.
pub struct MirrorSpec<'a> {
    pub node: &'a str,
    pub port: u16,
    pub origins: Vec<String>,
    pub image_ilink: String,
    pub image_tlink: String,
    pub extra_cache: &'a str,
    pub extra_origin: &'a str,
}

/// `shimmer -t` on a config text written to `work/<name>`: (exit 0, stdout + stderr).
pub fn config_check(work: &Path, name: &str, yaml: &str) -> (bool, String) {
    let conf = work.join(name);
    std::fs::write(&conf, yaml).expect("write config");
    let out = std::process::Command::new(BIN)
        .args(["-t", "-c", path_str(&conf)])
        .output()
        .expect("run shimmer -t");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The config text of `s`. A `memory_bytes:` line in `extra_cache` replaces the default
/// budget (256M): a fleet test can give one mirror a smaller cache than the others.
pub fn mirror_yaml(work: &Path, s: &MirrorSpec) -> String {
    let memory = if s.extra_cache.contains("memory_bytes:") {
        ""
    } else {
        "    memory_bytes: 256M\n"
    };
    let origins = s
        .origins
        .iter()
        .map(|o| format!("\"{o}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
threads: 2
pid_file: {work}/shimmer-{port}.pid
upgrade_sock: {work}/shimmer-{port}.sock
grace_period_seconds: 1
graceful_shutdown_timeout_seconds: 1
shimmer:
  node: "{node}"
  listen: ["127.0.0.1:{port}"]
  static:
    image_ilink: "{ilink}"
    image_tlink: "{tlink}"
  origin:
    servers: [{origins}]
    connect_timeout: 1s
    read_timeout: 3s
{extra_origin}
  cache:
{memory}    lock_timeout: 20s
{extra_cache}
  admin:
    listen: "127.0.0.1:{admin_port}"
  log_level: info
"#,
        admin_port = free_port(),
        work = path_str(work),
        port = s.port,
        node = s.node,
        ilink = s.image_ilink,
        tlink = s.image_tlink,
        extra_cache = s.extra_cache,
        extra_origin = s.extra_origin,
    )
}

impl Mirror {
    pub fn start(work: &Path, spec: &MirrorSpec) -> Mirror {
        Mirror::start_yaml(work, spec.port, &mirror_yaml(work, spec))
    }

    /// Starts a mirror on a config text (e.g. `mirror_yaml` with lines added).
    pub fn start_yaml(work: &Path, port: u16, yaml: &str) -> Mirror {
        Mirror::start_yaml_with(work, port, yaml, Proc::spawn)
    }

    /// [`Mirror::start_yaml`] with a chosen spawner.
    pub fn start_yaml_with(
        work: &Path,
        port: u16,
        yaml: &str,
        spawn: impl FnOnce(&[&str], PathBuf) -> Proc,
    ) -> Mirror {
        let conf = work.join(format!("mirror-{port}.yaml"));
        std::fs::write(&conf, yaml).expect("write config");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let log = work.join(format!("mirror-{port}.log"));
        let mut proc = spawn(&["-c", path_str(&conf)], log);
        wait_for_port(&mut proc, addr, "mirror");
        Mirror { proc, addr, conf }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The admin listener (`/status`, `/metrics`) its config names.
    pub fn admin_addr(&self) -> SocketAddr {
        let yaml = std::fs::read_to_string(&self.conf).expect("read config");
        let after = yaml.split("admin:").nth(1).expect("an admin section");
        let listen = after
            .lines()
            .find_map(|l| l.trim().strip_prefix("listen:"))
            .expect("admin listen");
        listen.trim().trim_matches('"').parse().expect("admin addr")
    }
}

/// A mirror for the ops tests: node `a` owning everything, the admin listener on its
/// own free port, and whatever else the test adds under `shimmer:`.
pub struct OpsSpec {
    pub port: u16,
    /// Shimmie's `image_ilink` (default: this mirror alone, at its own port).
    pub image_ilink: String,
    pub admin_port: u16,
    pub origins: Vec<String>,
    /// The keys under `shimmer.origin:`, each line indented four spaces, instead of
    /// `servers: <origins>` with short timeouts (e.g. an `s3:` section).
    pub origin_yaml: Option<String>,
    /// Whether `shimmer.static` carries the templates (off: a database source's
    /// `config` table is the only one).
    pub static_templates: bool,
    /// `log_level` under `shimmer:`.
    pub log_level: String,
    /// More keys under `shimmer.admin:`, each line indented four spaces.
    pub admin_extra: String,
    /// More keys under `shimmer.cache:`, each line indented four spaces.
    pub cache_extra: String,
    /// More keys under `shimmer:`, each line indented two spaces (e.g. a `tls:` block).
    pub shimmer_extra: String,
    /// More top-level (Pingora) keys.
    pub top_extra: String,
    /// Pingora's SIGTERM grace period (short by default, for tests that stop mirrors).
    pub grace_period_seconds: u64,
}

impl OpsSpec {
    pub fn new(origin: SocketAddr) -> OpsSpec {
        let port = free_port();
        OpsSpec {
            port,
            image_ilink: format!("http://127.0.0.1:{port}/_images/$hash/$id.$ext"),
            admin_port: free_port(),
            origins: vec![format!("http://{origin}")],
            origin_yaml: None,
            static_templates: true,
            log_level: "info".into(),
            admin_extra: String::new(),
            cache_extra: String::new(),
            shimmer_extra: String::new(),
            top_extra: String::new(),
            grace_period_seconds: 1,
        }
    }

    pub fn yaml(&self, work: &Path) -> String {
        let origins = self
            .origins
            .iter()
            .map(|o| format!("\"{o}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let origin = self.origin_yaml.clone().unwrap_or_else(|| {
            format!("    servers: [{origins}]\n    connect_timeout: 1s\n    read_timeout: 5s\n")
        });
        let templates = if self.static_templates {
            format!(
                "  static:\n    image_ilink: \"{}\"\n    image_tlink: \"http://127.0.0.1:{}/_thumbs/$hash/thumb.$ext\"\n",
                self.image_ilink, self.port
            )
        } else {
            String::new()
        };
        format!(
            r#"# written by an ops test
threads: 2
pid_file: {work}/shimmer-{port}.pid
upgrade_sock: {work}/shimmer-{port}.sock
grace_period_seconds: {grace}
graceful_shutdown_timeout_seconds: 1
{top_extra}
shimmer:
  node: "a"
  listen: ["127.0.0.1:{port}"]
{templates}  origin:
{origin}  cache:
    memory_bytes: 64M
    lock_timeout: 20s
{cache_extra}
  admin:
    listen: "127.0.0.1:{admin}"
{admin_extra}
{shimmer_extra}
  log_level: "{log_level}"
"#,
            work = path_str(work),
            port = self.port,
            admin = self.admin_port,
            top_extra = self.top_extra,
            grace = self.grace_period_seconds,
            admin_extra = self.admin_extra,
            cache_extra = self.cache_extra,
            shimmer_extra = self.shimmer_extra,
            log_level = self.log_level,
        )
    }
}

/// A running ops mirror.
pub struct OpsMirror {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub conf: PathBuf,
}

impl OpsMirror {
    pub fn start(work: &Path, spec: &OpsSpec) -> OpsMirror {
        Self::start_with(work, spec, Proc::spawn)
    }

    /// Starts with a chosen spawner (e.g. [`Proc::spawn_without_rust_log`]).
    pub fn start_with(
        work: &Path,
        spec: &OpsSpec,
        spawn: fn(&[&str], PathBuf) -> Proc,
    ) -> OpsMirror {
        let conf = work.join(format!("ops-{}.yaml", spec.port));
        std::fs::write(&conf, spec.yaml(work)).expect("write config");
        let addr: SocketAddr = format!("127.0.0.1:{}", spec.port).parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", spec.admin_port)
            .parse()
            .expect("addr");
        let log = work.join(format!("ops-{}.log", spec.port));
        let mut proc = spawn(&["-c", path_str(&conf)], log);
        wait_for_port(&mut proc, addr, "mirror");
        wait_for_port(&mut proc, admin, "mirror admin");
        // And every TLS listener, by a handshake that presents the default certificate.
        let (tls, der) = tls_listeners(&std::fs::read_to_string(&conf).expect("read config"));
        for a in tls {
            wait_for_tls(&mut proc, a, der.as_deref(), "mirror TLS listener");
        }
        OpsMirror {
            proc,
            addr,
            admin,
            conf,
        }
    }

    /// Rewrites the config file (the next SIGHUP reads it).
    pub fn rewrite(&self, yaml: &str) {
        std::fs::write(&self.conf, yaml).expect("rewrite config");
    }

    /// Sends SIGHUP and waits until the reload counter for `result` ("ok" or
    /// "failed") has gone up by one.
    pub fn reload_expecting(&self, result: &str) {
        let before = self.metric("shimmer_config_reloads_total", &[("result", result)]);
        self.proc.signal(libc::SIGHUP);
        wait_until(&format!("a reload with result {result}"), || {
            (self.metric("shimmer_config_reloads_total", &[("result", result)]) > before)
                .then_some(())
        });
    }

    /// The admin listener's `/metrics` text.
    pub fn scrape(&self) -> String {
        let r = http_get(self.admin, "/metrics").expect("scrape /metrics");
        assert_eq!(r.status, 200, "/metrics answered {}", r.status);
        String::from_utf8(r.body).expect("metrics are UTF-8")
    }

    /// One sample from `/metrics` (0 when the series is absent).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.scrape(), name, labels).unwrap_or(0.0)
    }

    pub fn get(&self, path: &str) -> HttpResponse {
        http_get(self.addr, path).expect("GET from the mirror")
    }
}

/// The TLS listeners a config names (`shimmer.tls.listen`), and the DER of its first
/// (default) certificate when the file can be read.
pub fn tls_listeners(yaml: &str) -> (Vec<SocketAddr>, Option<Vec<u8>>) {
    let v: serde_yaml::Value = serde_yaml::from_str(yaml).expect("config is YAML");
    let tls = &v["shimmer"]["tls"];
    let addrs = tls["listen"]
        .as_sequence()
        .map(|l| l.iter().filter_map(|a| a.as_str()?.parse().ok()).collect())
        .unwrap_or_default();
    let der = tls["certs"][0]["cert"]
        .as_str()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|pem| pingora::tls::x509::X509::from_pem(&pem).ok())
        .and_then(|c| c.to_der().ok());
    (addrs, der)
}

/// The value of the sample `name{labels...}` in a Prometheus text exposition: the
/// first series whose labels include all of `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, l) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        let have: Vec<(&str, &str)> = l
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        if labels.iter().all(|want| have.contains(want)) {
            return value.parse().ok();
        }
    }
    None
}

/// One mirror that owns everything, in front of `origin`, with `extra_cache` lines.
pub fn owner_mirror(work: &Path, origin: &str, port: u16, extra_cache: &str) -> Mirror {
    Mirror::start(
        work,
        &MirrorSpec {
            node: "a",
            port,
            origins: vec![origin.to_owned()],
            image_ilink: format!("http://127.0.0.1:{port}/_images/$hash/$id.$ext"),
            image_tlink: format!("http://127.0.0.1:{port}/_thumbs/$hash/thumb.$ext"),
            extra_cache,
            extra_origin: "",
        },
    )
}

/// The `shimmer_*` metric names a PromQL expression mentions, in order.
pub fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("shimmer_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}
