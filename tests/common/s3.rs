//! An S3-compatible server for the tests: moto's server mode (`make test-deps`
//! installs it) on a free 127.0.0.1 port, filled by tests/s3_fixture.py the way
//! Shimmie's ext/s3 fills its bucket. With `auth`, moto checks every request's SigV4
//! signature against the IAM keys it issued (after the fixture's three setup calls).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::*;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/s3_fixture.py");

/// A moto S3 server; `auth`: signatures checked (after the fixture's 3 setup calls).
pub fn moto(work: &Path, auth: bool) -> (Proc, SocketAddr) {
    let port = free_port();
    let log = work.join(format!("moto-{port}.log"));
    let out = std::fs::File::create(&log).expect("log");
    let err = out.try_clone().expect("log");
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "moto.server",
        "-H",
        "127.0.0.1",
        "-p",
        &port.to_string(),
    ])
    .stdin(Stdio::null())
    .stdout(out)
    .stderr(err);
    if auth {
        cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", "3");
    }
    let child = cmd
        .spawn()
        .expect("start moto (python3 -m moto.server; `make test-deps` installs it)");
    let mut proc = Proc { child, log };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_until("moto to listen", || {
        assert!(proc.is_running(), "moto exited: {}", proc.log_text());
        TcpStream::connect(addr).ok()
    });
    (proc, addr)
}

/// One post as Shimmie's ext/s3 uploads it.
pub struct Post {
    pub hash: String,
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
    pub disposition: String,
}

pub fn post(i: u64, len: usize, content_type: &'static str, ext: &str) -> Post {
    Post {
        hash: test_hash(100 + i),
        bytes: whole_jpeg(len, 100 + i),
        content_type,
        disposition: format!("inline; filename=\"{i} - tag_a tag_b.{ext}\""),
    }
}

/// Creates the bucket and puts the posts; returns the credentials directory.
pub fn fill(work: &Path, moto: SocketAddr, bucket: &str, private: bool, posts: &[Post]) -> PathBuf {
    let creds = work.join(format!("creds-{bucket}"));
    fill_with_creds(work, moto, bucket, private, posts, &creds);
    creds
}

/// [`fill`] with the credentials directory given: a private bucket on a server that
/// already issued keys into `creds` is created and filled with those keys.
pub fn fill_with_creds(
    work: &Path,
    moto: SocketAddr,
    bucket: &str,
    private: bool,
    posts: &[Post],
    creds: &Path,
) {
    std::fs::create_dir_all(creds).expect("creds dir");
    let manifest: Vec<serde_json::Value> = posts
        .iter()
        .map(|p| {
            let file = work.join(&p.hash);
            std::fs::write(&file, &p.bytes).expect("object file");
            serde_json::json!({
                "key": format!("{}/{}/{}", &p.hash[..2], &p.hash[2..4], p.hash),
                "file": path_str(&file),
                "content_type": p.content_type,
                "disposition": p.disposition,
            })
        })
        .collect();
    let m = work.join(format!("manifest-{bucket}.json"));
    std::fs::write(&m, serde_json::to_vec(&manifest).expect("json")).expect("manifest");
    let out = Command::new("python3")
        .arg(FIXTURE)
        .arg(format!("http://{moto}"))
        .arg(bucket)
        .arg(if private { "private" } else { "public" })
        .arg(&m)
        .arg(creds)
        .output()
        .expect("run tests/s3_fixture.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ready"),
        "fixture failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
