//! Shared harness for the integration tests: real `shimmer` processes (mirrors and the
//! built-in origin) on 127.0.0.1 ports, in private temp directories, killed on drop.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_shimmer");

/// A port nobody listens on right now (the OS picks it), and never one this test
/// process handed out before. The port is free again as soon as this returns, so the
/// OS can pick it again for the next caller; the tests of one binary run in parallel,
/// and two of them (or one config's plain, TLS and admin listeners) getting the same
/// port is what made `ops_tls::h2_can_be_turned_off` flaky: a TLS listener on the
/// admin listener's port shared its socket, and handshakes the admin API accepted
/// ended in "unexpected EOF".
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = l.local_addr().expect("local addr").port();
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// Waits until something accepts on `addr`, or panics with the process's log (at once
/// when the process has exited, or has logged that another process holds `addr`).
pub fn wait_for_port(proc: &mut Proc, addr: SocketAddr, what: &str) {
    wait_for_listener(proc, addr, what, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    })
}

/// Waits until a TLS handshake on `addr` completes (with the certificate `der` when
/// given, so the listener is known to be this process's): a listening socket alone
/// does not say the TLS acceptor behind it is the one the test configured.
pub fn wait_for_tls(proc: &mut Proc, addr: SocketAddr, der: Option<&[u8]>, what: &str) {
    wait_for_listener(proc, addr, what, || {
        tls_connect(addr, None, None).is_ok_and(|s| der.is_none_or(|d| peer_der(&s) == d))
    })
}

fn wait_for_listener(proc: &mut Proc, addr: SocketAddr, what: &str, up: impl Fn() -> bool) {
    let log = proc.log.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if !proc.is_running() {
            panic!(
                "{what} exited before listening on {addr}; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        // Pingora retries a bind that finds the address taken; meanwhile whatever holds
        // it would answer this test.
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(&format!("{addr} is in use")) {
            panic!("{what}: another process holds {addr}; its log:\n{text}");
        }
        if up() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{what} did not listen on {addr}; its log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// A child process that is killed when dropped, with its output in a log file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(args: &[&str], log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).expect("create log file");
        let err = out.try_clone().expect("clone log file");
        let child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start shimmer");
        Proc { child, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The built-in origin serving a data directory.
pub struct Origin {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Origin {
    pub fn start(dir: &Path, work: &Path) -> Origin {
        Self::start_on(dir, work, free_port())
    }

    pub fn start_on(dir: &Path, work: &Path, port: u16) -> Origin {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let log = work.join(format!("origin-{port}.log"));
        let mut proc = Proc::spawn(
            &[
                "origin",
                "--dir",
                path_str(dir),
                "--listen",
                &addr.to_string(),
            ],
            log,
        );
        wait_for_port(&mut proc, addr, "origin");
        Origin { proc, addr }
    }

    /// Media requests the origin has answered since it started.
    pub async fn requests(&self) -> u64 {
        let url = format!("http://{}/_origin/stats", self.addr);
        let body = reqwest::get(&url)
            .await
            .expect("origin stats")
            .text()
            .await
            .expect("stats body");
        let v: serde_json::Value = serde_json::from_str(&body).expect("stats JSON");
        v["requests"].as_u64().expect("requests count")
    }
}

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

pub fn mirror_yaml(work: &Path, s: &MirrorSpec) -> String {
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
    memory_bytes: 256M
    lock_timeout: 20s
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
        let conf = work.join(format!("mirror-{port}.yaml"));
        std::fs::write(&conf, yaml).expect("write config");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let log = work.join(format!("mirror-{port}.log"));
        let mut proc = Proc::spawn(&["-c", path_str(&conf)], log);
        wait_for_port(&mut proc, addr, "mirror");
        Mirror { proc, addr, conf }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// A Shimmie data directory with files at `images/<ab>/<hash>` and `thumbs/<ab>/<hash>`.
pub struct DataDir {
    pub dir: PathBuf,
}

impl DataDir {
    pub fn new(dir: PathBuf) -> DataDir {
        std::fs::create_dir_all(&dir).expect("data dir");
        DataDir { dir }
    }

    /// Writes `bytes` as the image (or thumb) with this hash; returns the hash.
    pub fn put(&self, silo: &str, hash: &str, bytes: &[u8]) {
        let sub = match silo {
            "_images" => "images",
            "_thumbs" => "thumbs",
            other => panic!("no silo {other}"),
        };
        let d = self.dir.join(sub).join(&hash[..2]);
        std::fs::create_dir_all(&d).expect("silo dir");
        std::fs::write(d.join(hash), bytes).expect("write media file");
    }
}

/// A deterministic 32-hex "hash" for test number `i` (the origin serves by name only).
pub fn test_hash(i: u64) -> String {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut out = String::with_capacity(32);
    for _ in 0..2 {
        x ^= x >> 31;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 29;
        out.push_str(&format!("{x:016x}"));
    }
    out
}

/// Bytes that look like a JPEG and differ for every seed.
pub fn jpeg_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&[0xFF, 0xD8, 0xFF, 0xE0]);
    let mut x = seed.wrapping_add(1);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

pub fn sha256(b: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(b))
}

// ---------------------------------------------------------------------------------
// Edge operations (tests/ops_*.rs): mirrors with an admin listener, TLS and reloads,
// spoken to with a small blocking HTTP/1.1 client that works over plain TCP and TLS.
// ---------------------------------------------------------------------------------

impl Proc {
    /// Like [`Proc::spawn`], but without RUST_LOG, so the config's `log_level` rules.
    pub fn spawn_without_rust_log(args: &[&str], log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).expect("create log file");
        let err = out.try_clone().expect("clone log file");
        let child = Command::new(BIN)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start shimmer");
        Proc { child, log }
    }

    /// Waits (bounded) for the process to exit; its exit status, or `None` if it runs on.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

/// Polls `f` until it gives `Some` (every 50 ms, at most 30 s), then returns it; panics
/// naming `what` otherwise. For waiting on behaviour (a reload done, a log line
/// written), never for asserting on time.
pub fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("gave up waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
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
  static:
    image_ilink: "{ilink}"
    image_tlink: "http://127.0.0.1:{port}/_thumbs/$hash/thumb.$ext"
  origin:
    servers: [{origins}]
    connect_timeout: 1s
    read_timeout: 5s
  cache:
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
            ilink = self.image_ilink,
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

/// An HTTP/1.1 response as read off the wire.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A blocking HTTP/1.1 client connection over any stream (TCP or TLS), keep-alive.
pub struct HttpConn<S> {
    pub stream: S,
    buf: Vec<u8>,
}

impl<S: std::io::Read + std::io::Write> HttpConn<S> {
    pub fn new(stream: S) -> HttpConn<S> {
        HttpConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends one request and reads its response; the connection stays open.
    pub fn request(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<HttpResponse> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.stream.write_all(&bytes)?;
        self.stream.flush()?;
        self.read_response(method == "HEAD")
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    fn take(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        while self.buf.len() < n {
            self.fill()?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    fn line(&mut self) -> std::io::Result<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf.drain(..i + 2).collect::<Vec<u8>>();
                return Ok(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            self.fill()?;
        }
    }

    fn read_response(&mut self, head: bool) -> std::io::Result<HttpResponse> {
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
        let status_line = self.line()?;
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(&format!("bad status line {status_line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let l = self.line()?;
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').ok_or_else(|| bad("bad header line"))?;
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        let mut resp = HttpResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if head || status == 204 || status == 304 || (100..200).contains(&status) {
            return Ok(resp);
        }
        if resp
            .header("transfer-encoding")
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let size_line = self.line()?;
                let size =
                    usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| bad("bad chunk size"))?;
                if size == 0 {
                    while !self.line()?.is_empty() {}
                    break;
                }
                let data = self.take(size)?;
                resp.body.extend_from_slice(&data);
                self.take(2)?;
            }
        } else if let Some(len) = resp.header("content-length") {
            let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
            resp.body = self.take(len)?;
        } else {
            loop {
                match self.fill() {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e),
                }
            }
            resp.body = std::mem::take(&mut self.buf);
        }
        Ok(resp)
    }
}

/// A TCP connection with generous timeouts, so a broken server fails a test instead of
/// hanging it.
pub fn tcp_connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    Ok(s)
}

/// One request on a fresh plain connection (`Connection: close`).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut all = vec![("Connection", "close")];
    all.extend_from_slice(headers);
    HttpConn::new(tcp_connect(addr)?).request(method, &addr.to_string(), path, &all, body)
}

pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<HttpResponse> {
    http_request(addr, "GET", path, &[], &[])
}

/// A self-signed certificate and key made by the `openssl` command (Debian's openssl
/// package), P-256, for the given DNS names (the first is also the CN).
pub struct TestCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The certificate in DER, to compare with what a handshake presents.
    pub der: Vec<u8>,
}

pub fn make_cert(dir: &Path, stem: &str, names: &[&str]) -> TestCert {
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    let san = names
        .iter()
        .map(|n| format!("DNS:{n}"))
        .collect::<Vec<_>>()
        .join(",");
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "30"])
        .arg("-subj")
        .arg(format!("/CN={}", names[0]))
        .arg("-addext")
        .arg(format!("subjectAltName={san}"))
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
    let pem = std::fs::read(&cert).expect("read the new certificate");
    let der = pingora::tls::x509::X509::from_pem(&pem)
        .and_then(|c| c.to_der())
        .expect("parse the new certificate");
    TestCert { cert, key, der }
}

pub type TlsStream = pingora::tls::ssl::SslStream<TcpStream>;

/// A TLS client handshake that trusts anything (the test compares the certificate
/// itself), sending `sni` when given and offering `alpn` (wire format, e.g.
/// `b"\x02h2\x08http/1.1"`) when given.
pub fn tls_connect(
    addr: SocketAddr,
    sni: Option<&str>,
    alpn: Option<&[u8]>,
) -> Result<TlsStream, String> {
    use pingora::tls::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
    b.set_verify(SslVerifyMode::NONE);
    if let Some(protos) = alpn {
        b.set_alpn_protos(protos).map_err(|e| e.to_string())?;
    }
    let connector = b.build();
    let tcp = tcp_connect(addr).map_err(|e| e.to_string())?;
    let mut cfg = connector.configure().map_err(|e| e.to_string())?;
    cfg.set_use_server_name_indication(sni.is_some());
    cfg.set_verify_hostname(false);
    cfg.connect(sni.unwrap_or("no-sni.invalid"), tcp)
        .map_err(|e| e.to_string())
}

/// The DER of the certificate the server presented.
pub fn peer_der(s: &TlsStream) -> Vec<u8> {
    s.ssl()
        .peer_certificate()
        .expect("the server presented a certificate")
        .to_der()
        .expect("DER")
}

/// A loopback port below 1024 that is free now (needs root to bind).
pub fn free_privileged_port() -> Option<u16> {
    (700..1000).find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
}

/// True when the tests run as root (binding privileged ports, dropping to `nobody`).
pub fn running_as_root() -> bool {
    // SAFETY: geteuid(2) cannot fail.
    unsafe { libc::geteuid() == 0 }
}

// ---- Disk tier helpers (tests/disk_*.rs) ----

/// Waits up to `timeout` for a line containing `needle` in the process's log.
pub fn wait_for_log(proc: &Proc, needle: &str, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(line) = proc.log_text().lines().find(|l| l.contains(needle)) {
            return Some(line.to_owned());
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every regular file under `dir`, recursively (empty when it does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => out.push(e.path()),
                _ => {}
            }
        }
    }
    out
}

/// Where the disk tier keeps an object: `<dir>/<silo>/<ab>/<cd>/<hash>`.
pub fn cache_path(dir: &Path, silo: &str, hash: &str) -> PathBuf {
    dir.join(silo)
        .join(&hash[0..2])
        .join(&hash[2..4])
        .join(hash)
}

/// A JPEG-looking body that also ends with the end-of-image marker (as real ones do).
pub fn whole_jpeg(len: usize, seed: u64) -> Vec<u8> {
    let mut v = jpeg_bytes(len - 2, seed);
    v.extend_from_slice(&[0xFF, 0xD9]);
    v
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
