//! End-to-end tests of `shimmer origin`: the real binary on a real port, serving a
//! temporary copy of conf/sample-data plus files made here.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// conf/sample-data, by image md5.
const PNG: &str = "76b38aee70875b2c64d6345713694bd6";
const GIF: &str = "4286619c31d809ee983d49886c6495d4";
const SVG: &str = "48b0aa4793c378b734b269d7c080c96d";
/// Made by the tests: a two-split-level file and a 5 MB one.
const TWO_LEVEL: &str = "abcdef0123456789abcdef0123456789";
const BIG: &str = "b16b16b16b16b16b16b16b16b16b16b1";
const BIG_LEN: usize = 5 * 1024 * 1024 + 12_345;

/// A running origin; killed (and reaped) on drop, also when a test panics.
struct Origin {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Origin {
    fn start() -> Origin {
        let dir = tempfile::tempdir().unwrap();
        let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/sample-data");
        for silo in ["images", "thumbs"] {
            copy_tree(&samples.join(silo), &dir.path().join(silo));
        }
        write(
            dir.path(),
            &format!("images/ab/cd/{TWO_LEVEL}"),
            b"two split levels",
        );
        write(dir.path(), &format!("images/b1/{BIG}"), &big_file());

        // Reserve a free port, then hand it to the child; the tiny race is fine
        // on a test machine.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let log = std::fs::File::create(dir.path().join("origin.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_shimmer"))
            .arg("origin")
            .arg("--dir")
            .arg(dir.path())
            .arg("--listen")
            .arg(addr.to_string())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut origin = Origin { child, addr, dir };
        origin.wait_ready();
        origin
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("origin exited early ({status}):\n{}", self.log());
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("origin did not listen on {}:\n{}", self.addr, self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("origin.log")).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn file(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.dir.path().join(rel)).unwrap()
    }

    fn last_modified(&self, rel: &str) -> String {
        let meta = std::fs::metadata(self.dir.path().join(rel)).unwrap();
        httpdate::fmt_http_date(meta.modified().unwrap())
    }

    /// Send raw bytes (for requests a URL library would normalise) and return the
    /// status code of the response.
    fn raw_status(&self, request: &str) -> u16 {
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        let text = std::str::from_utf8(&head).unwrap();
        assert!(text.starts_with("HTTP/1."), "{text}");
        text[9..12].parse().unwrap()
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target: PathBuf = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn write(root: &Path, rel: &str, bytes: &[u8]) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// 5 MB of deterministic noise behind a WebM header, so the type is known and no
/// chunk looks like its neighbour.
fn big_file() -> Vec<u8> {
    let mut data = b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\xf2\x81\x04\x42\xf3\x81\x08\x42\x82\x84webm".to_vec();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while data.len() < BIG_LEN {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(BIG_LEN);
    data
}

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn serves_files_with_headers() {
    let o = Origin::start();
    let c = reqwest::Client::new();

    let rel = format!("images/76/{PNG}");
    let r = c
        .get(o.url(&format!("/_images/{PNG}/5424912%20-%20gradient%21.png")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "image/png");
    assert_eq!(header(&r, "content-length"), o.file(&rel).len().to_string());
    assert_eq!(header(&r, "last-modified"), o.last_modified(&rel));
    assert_eq!(header(&r, "accept-ranges"), "bytes");
    assert_eq!(r.bytes().await.unwrap(), o.file(&rel));

    let rel = format!("images/ab/cd/{TWO_LEVEL}");
    let r = c
        .get(o.url(&format!("/_images/{TWO_LEVEL}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "application/octet-stream");
    assert_eq!(header(&r, "content-length"), "16");
    assert_eq!(header(&r, "last-modified"), o.last_modified(&rel));
    assert_eq!(r.bytes().await.unwrap(), o.file(&rel));

    for (path, rel, ctype) in [
        (
            format!("/_thumbs/{GIF}/t.gif"),
            format!("thumbs/42/{GIF}"),
            "image/gif",
        ),
        (
            format!("/_images/{SVG}.svg"),
            format!("images/48/{SVG}"),
            "image/svg+xml",
        ),
        (
            format!("/_thumbs/{PNG}/"),
            format!("thumbs/76/{PNG}"),
            "image/png",
        ),
    ] {
        let r = c.get(o.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(header(&r, "content-type"), ctype, "{path}");
        assert_eq!(r.bytes().await.unwrap(), o.file(&rel), "{path}");
    }
}

#[tokio::test]
async fn head_has_headers_and_no_body() {
    let o = Origin::start();
    let r = reqwest::Client::new()
        .head(o.url(&format!("/_images/{GIF}/x.gif")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "image/gif");
    let len = o.file(&format!("images/42/{GIF}")).len();
    assert_eq!(header(&r, "content-length"), len.to_string());
    assert!(!header(&r, "last-modified").is_empty());
    assert!(r.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn ranges() {
    let o = Origin::start();
    let c = reqwest::Client::new();
    let body = o.file(&format!("images/76/{PNG}"));
    let len = body.len();
    let url = o.url(&format!("/_images/{PNG}/x.png"));
    for (range, first, last) in [
        ("bytes=0-9", 0, 9),
        ("bytes=-7", len - 7, len - 1),
        ("bytes=100-", 100, len - 1),
        ("bytes=50-50", 50, 50),
        ("bytes=10-999999", 10, len - 1),
    ] {
        let r = c.get(&url).header("range", range).send().await.unwrap();
        assert_eq!(r.status(), 206, "{range}");
        assert_eq!(
            header(&r, "content-range"),
            format!("bytes {first}-{last}/{len}"),
            "{range}"
        );
        assert_eq!(header(&r, "content-length"), (last - first + 1).to_string());
        assert_eq!(r.bytes().await.unwrap(), &body[first..=last], "{range}");
    }

    let r = c
        .get(&url)
        .header("range", format!("bytes={len}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(header(&r, "content-range"), format!("bytes */{len}"));

    // Multiple or unparsable ranges are ignored: the whole file.
    for range in ["bytes=0-1,5-9", "bytes=9-2", "lines=1-2"] {
        let r = c.get(&url).header("range", range).send().await.unwrap();
        assert_eq!(r.status(), 200, "{range}");
        assert_eq!(r.bytes().await.unwrap(), body, "{range}");
    }

    // A range across several 64 KiB chunks of the big file.
    let big = big_file();
    let r = c
        .get(o.url(&format!("/_images/{BIG}")))
        .header("range", "bytes=65530-300000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), &big[65530..=300000]);
}

#[tokio::test]
async fn errors() {
    let o = Origin::start();
    let c = reqwest::Client::new();
    let status = |path: String| {
        let c = c.clone();
        async move { c.get(path).send().await.unwrap().status().as_u16() }
    };
    let missing = "0".repeat(32);
    assert_eq!(
        status(o.url(&format!("/_images/{missing}/x.jpg"))).await,
        404
    );
    assert_eq!(status(o.url(&format!("/_videos/{PNG}/x.png"))).await, 404);
    assert_eq!(status(o.url("/")).await, 404);
    let upper = PNG.to_uppercase();
    assert_eq!(status(o.url(&format!("/_images/{upper}/x.png"))).await, 400);
    assert_eq!(status(o.url(&format!("/_images/{PNG}0/x.png"))).await, 400);
    assert_eq!(status(o.url("/_thumbs/short")).await, 400);

    // Traversal, sent raw because URL libraries remove dot segments.
    for path in [
        "/_images/../../../../../../etc/passwd",
        "/_images/..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/_thumbs/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let code = o.raw_status(&req);
        assert!((400..500).contains(&code), "{path}: {code}");
    }

    let r = c
        .post(o.url(&format!("/_images/{PNG}/x.png")))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(header(&r, "allow"), "GET, HEAD");
}

#[tokio::test]
async fn stats_count_media_requests() {
    let o = Origin::start();
    let c = reqwest::Client::new();
    let stats = || {
        let (c, url) = (c.clone(), o.url("/_origin/stats"));
        async move {
            let r = c.get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(header(&r, "content-type"), "application/json");
            serde_json::from_slice::<serde_json::Value>(&r.bytes().await.unwrap()).unwrap()
        }
    };
    let v = stats().await;
    assert_eq!(
        (v["requests"].as_u64(), v["bytes"].as_u64()),
        (Some(0), Some(0))
    );

    let png_len = o.file(&format!("images/76/{PNG}")).len() as u64;
    let get = |path: String| {
        let c = c.clone();
        async move { c.get(path).send().await.unwrap().bytes().await.unwrap() }
    };
    get(o.url(&format!("/_images/{PNG}/a.png"))).await; // 200
    get(o.url(&format!("/_images/{}/a.png", "1".repeat(32)))).await; // 404
    get(o.url("/_thumbs/nothex")).await; // 400
    c.head(o.url(&format!("/_images/{PNG}")))
        .send()
        .await
        .unwrap(); // HEAD
    get(o.url("/not-media")).await; // not counted
    c.post(o.url(&format!("/_images/{PNG}")))
        .send()
        .await
        .unwrap(); // not counted

    let v = stats().await;
    assert_eq!(v["requests"].as_u64(), Some(4));
    assert_eq!(v["bytes"].as_u64(), Some(png_len));
}

#[tokio::test]
async fn big_file_streams_intact() {
    let o = Origin::start();
    let want = Sha256::digest(big_file());
    let c = reqwest::Client::new();
    // Several at once, so chunks from different responses interleave on the server.
    let downloads = (0..4).map(|_| {
        let (c, url) = (c.clone(), o.url(&format!("/_images/{BIG}/clip.webm")));
        tokio::spawn(async move {
            let mut r = c.get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(header(&r, "content-type"), "video/webm");
            assert_eq!(header(&r, "content-length"), BIG_LEN.to_string());
            let (mut hasher, mut n) = (Sha256::new(), 0usize);
            while let Some(chunk) = r.chunk().await.unwrap() {
                n += chunk.len();
                hasher.update(&chunk);
            }
            (n, hasher.finalize())
        })
    });
    for d in downloads {
        let (n, got) = d.await.unwrap();
        assert_eq!(n, BIG_LEN);
        assert_eq!(got, want);
    }
}

#[test]
fn sigterm_stops_it_quickly() {
    let mut o = Origin::start();
    // An idle keepalive connection must not hold the process up.
    let mut idle = TcpStream::connect(o.addr).unwrap();
    idle.write_all(format!("GET /_images/{PNG} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let mut buf = [0u8; 64];
    let _ = idle.read(&mut buf).unwrap();

    let pid = i32::try_from(o.child.id()).unwrap();
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = o.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "origin still running 5 s after SIGTERM:\n{}",
            o.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}:\n{}", o.log());
}
