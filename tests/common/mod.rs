//! Shared harness for the integration tests: real `shimmer` processes (mirrors and the
//! built-in origin) on 127.0.0.1 ports, in private temp directories, killed on drop.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_shimmer");

/// A port nobody listens on right now (the OS picks it).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Waits until something accepts on `addr`, or panics with the process's log (at once
/// when the process has exited).
pub fn wait_for_port(proc: &mut Proc, addr: SocketAddr, what: &str) {
    let log = proc.log.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if !proc.is_running() {
            panic!(
                "{what} exited before listening on {addr}; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
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
  log_level: info
"#,
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
        let conf = work.join(format!("mirror-{}.yaml", spec.port));
        std::fs::write(&conf, mirror_yaml(work, spec)).expect("write config");
        let addr: SocketAddr = format!("127.0.0.1:{}", spec.port).parse().expect("addr");
        let log = work.join(format!("mirror-{}.log", spec.port));
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
