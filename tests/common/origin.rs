//! The built-in origin (`shimmer origin`) and the Shimmie data directory it serves,
//! with deterministic test bodies.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::{free_port, path_str, wait_for_port, Proc};

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
        Self::start_with(dir, work, port, &[])
    }

    /// Sending every body at most `bytes_per_sec` fast (`shimmer origin --rate`).
    pub fn start_slow(dir: &Path, work: &Path, bytes_per_sec: u64) -> Origin {
        let rate = bytes_per_sec.to_string();
        Self::start_with(dir, work, free_port(), &["--rate", &rate])
    }

    pub fn start_with(dir: &Path, work: &Path, port: u16, extra: &[&str]) -> Origin {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let log = work.join(format!("origin-{port}.log"));
        let listen = addr.to_string();
        let mut args = vec!["origin", "--dir", path_str(dir), "--listen", &listen];
        args.extend_from_slice(extra);
        let mut proc = Proc::spawn(&args, log);
        wait_for_port(&mut proc, addr, "origin");
        Origin { proc, addr }
    }

    /// `/_origin/stats`: `requests` (media requests), `ranged` (of them, 206 answers)
    /// and `bytes` (body bytes of responses fully sent).
    pub async fn stats(&self) -> serde_json::Value {
        let url = format!("http://{}/_origin/stats", self.addr);
        let body = reqwest::get(&url)
            .await
            .expect("origin stats")
            .text()
            .await
            .expect("stats body");
        serde_json::from_str(&body).expect("stats JSON")
    }

    /// Media requests the origin has answered since it started.
    pub async fn requests(&self) -> u64 {
        self.stats().await["requests"]
            .as_u64()
            .expect("requests count")
    }
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

/// A JPEG-looking body that also ends with the end-of-image marker (as real ones do).
pub fn whole_jpeg(len: usize, seed: u64) -> Vec<u8> {
    let mut v = jpeg_bytes(len - 2, seed);
    v.extend_from_slice(&[0xFF, 0xD9]);
    v
}
