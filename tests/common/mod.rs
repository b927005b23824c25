//! Shared harness for the integration tests, split by concern like pingora-proxy's
//! tests/utils: real `shimmer` processes (mirrors and the built-in origin) on
//! 127.0.0.1 ports, in private temp directories, killed on drop.
//!
//! - [`proc`]: a child process and waits on its listeners and log;
//! - [`origin`]: the built-in origin and its data directory;
//! - [`mirror`]: mirror configs and processes (plain and ops);
//! - [`http`]: the raw HTTP/1.1 and TLS client, certificates, [`client`];
//! - [`wait`]: polling to a deadline instead of sleeping;
//! - [`fleet`]: several mirrors of one fleet, by port;
//! - [`fake_peer`]: a misbehaving peer (answers cut short, on purpose);
//! - [`db`]: private PostgreSQL/MariaDB servers and SQLite files (the sync tests);
//! - [`s3`]: moto's S3 server and buckets filled as Shimmie's ext/s3 fills them.
//!
//! Everything but `db`, `s3` and `fake_peer` is re-exported here, so tests `use common::*;`.
#![allow(dead_code)]

pub mod db;
pub mod fake_peer;
pub mod fleet;
pub mod http;
pub mod mirror;
pub mod origin;
pub mod proc;
pub mod s3;
pub mod script;
pub mod wait;

// Each test binary uses a different part of the harness.
#[allow(unused_imports)]
pub use http::*;
#[allow(unused_imports)]
pub use mirror::*;
#[allow(unused_imports)]
pub use origin::*;
#[allow(unused_imports)]
pub use proc::*;
#[allow(unused_imports)]
pub use wait::*;

use std::net::TcpListener;
use std::path::{Path, PathBuf};

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

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
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
