//! In-process HTTP tests of the origin app: real TCP and Pingora's HTTP/1 code, no
//! Server (tests/origin.rs covers the binary end to end).

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use pingora_core::apps::ServerApp;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::serve::OriginApp;

const ONE: &str = "0123456789abcdef0123456789abcdef";
const TWO: &str = "fedcba9876543210fedcba9876543210";
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR0123456789abcdefghijklmnopqrstuvwxyz";

struct Origin {
    base: String,
    dir: tempfile::TempDir,
    _shutdown: watch::Sender<bool>,
}

fn put(root: &Path, rel: &str, bytes: &[u8]) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

async fn start() -> Origin {
    let dir = tempfile::tempdir().unwrap();
    put(dir.path(), &format!("images/01/{ONE}"), PNG);
    put(
        dir.path(),
        &format!("thumbs/fe/dc/{TWO}"),
        b"GIF89a two levels",
    );
    let app = Arc::new(OriginApp::new(dir.path().to_path_buf()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (app, rx) = (app.clone(), rx.clone());
            tokio::spawn(async move {
                let stream: pingora_core::protocols::Stream = Box::new(L4Stream::from(tcp));
                app.process_new(stream, &rx).await;
            });
        }
    });
    Origin {
        base,
        dir,
        _shutdown: tx,
    }
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

#[tokio::test]
async fn serves_one_and_two_level_files_with_headers() {
    let o = start().await;
    let c = reqwest::Client::new();
    let r = c
        .get(format!("{}/_images/{ONE}/any%20name.png", o.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "image/png");
    assert_eq!(header(&r, "content-length"), PNG.len().to_string());
    assert_eq!(header(&r, "accept-ranges"), "bytes");
    assert!(httpdate::parse_http_date(header(&r, "last-modified")).is_ok());
    assert_eq!(r.bytes().await.unwrap(), PNG);

    let r = c
        .get(format!("{}/_thumbs/{TWO}.gif", o.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "image/gif");
    assert_eq!(r.bytes().await.unwrap(), &b"GIF89a two levels"[..]);

    // The query string is not part of the path.
    let r = c
        .get(format!("{}/_images/{ONE}/x.png?v=2&x=/..", o.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Right hash, wrong silo.
    let r = c
        .get(format!("{}/_thumbs/{ONE}/x", o.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn head_ranges_and_errors() {
    let o = start().await;
    let c = reqwest::Client::new();
    let url = format!("{}/_images/{ONE}/x.png", o.base);

    let r = c.head(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), PNG.len().to_string());
    assert_eq!(header(&r, "content-type"), "image/png");
    assert!(r.bytes().await.unwrap().is_empty());

    let len = PNG.len();
    for (range, first, last) in [
        ("bytes=0-3", 0, 3),
        ("bytes=10-", 10, len - 1),
        ("bytes=-5", len - 5, len - 1),
        ("bytes=5-100000", 5, len - 1),
    ] {
        let r = c.get(&url).header("range", range).send().await.unwrap();
        assert_eq!(r.status(), 206, "{range}");
        assert_eq!(
            header(&r, "content-range"),
            format!("bytes {first}-{last}/{len}")
        );
        assert_eq!(r.bytes().await.unwrap(), &PNG[first..=last], "{range}");
    }
    let r = c
        .get(&url)
        .header("range", "bytes=999-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(header(&r, "content-range"), format!("bytes */{len}"));
    // Multiple ranges: ignored, whole file.
    let r = c
        .get(&url)
        .header("range", "bytes=0-1,3-4")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), PNG);
    // If-Range with a date that is not our Last-Modified: whole file.
    let r = c
        .get(&url)
        .header("range", "bytes=0-1")
        .header("if-range", "Sun, 06 Nov 1994 08:49:37 GMT")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let missing = format!("{}/_images/{}/x", o.base, "a".repeat(32));
    assert_eq!(c.get(&missing).send().await.unwrap().status(), 404);
    let upper = format!("{}/_images/{}/x", o.base, ONE.to_uppercase());
    assert_eq!(c.get(&upper).send().await.unwrap().status(), 400);
    assert_eq!(
        c.get(format!("{}/_videos/{ONE}", o.base))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let r = c.post(&url).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(header(&r, "allow"), "GET, HEAD");
}

#[tokio::test]
async fn not_modified_and_stats() {
    let o = start().await;
    let c = reqwest::Client::new();
    let url = format!("{}/_images/{ONE}/x.png", o.base);
    let r = c.get(&url).send().await.unwrap();
    let lm = header(&r, "last-modified").to_string();
    let r = c
        .get(&url)
        .header("if-modified-since", &lm)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert!(r.bytes().await.unwrap().is_empty());
    let r = c
        .get(&url)
        .header("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // 3 media GETs so far; add a 400, a 404 and a POST (not counted).
    c.get(format!("{}/_images/nope", o.base))
        .send()
        .await
        .unwrap();
    c.get(format!("{}/nope", o.base)).send().await.unwrap();
    c.post(&url).send().await.unwrap();
    // A response's bytes are counted once it is fully sent, which can be just after
    // the client has read it: look again until the count settles.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = c
            .get(format!("{}/_origin/stats", o.base))
            .send()
            .await
            .unwrap();
        assert_eq!(header(&r, "content-type"), "application/json");
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(v["requests"], 4);
        if v["bytes"] == PNG.len() * 2 || std::time::Instant::now() > deadline {
            assert_eq!(v["bytes"], PNG.len() * 2);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Two requests on one connection prove keepalive is handed back to Pingora.
#[tokio::test]
async fn keepalive_reuses_the_connection() {
    let o = start().await;
    let addr = o.base.trim_start_matches("http://").to_string();
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let req = format!("GET /_images/{ONE}/a HTTP/1.1\r\nHost: x\r\n\r\n");
        for _ in 0..2 {
            s.write_all(req.as_bytes()).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.ends_with(PNG) {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "connection closed early");
                got.extend_from_slice(&buf[..n]);
            }
            let text = String::from_utf8_lossy(&got);
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            assert!(text.to_ascii_lowercase().contains("connection: keep-alive"));
        }
    })
    .await
    .unwrap();
}

/// A file that shrinks while being sent must end in a broken connection, never in
/// a short body that looks complete.
#[tokio::test]
async fn truncated_file_aborts_the_response() {
    let o = start().await;
    let hash = "11111111111111111111111111111111";
    let rel = format!("images/11/{hash}");
    let big = vec![7u8; 32 * 1024 * 1024];
    put(o.dir.path(), &rel, &big);
    let path = o.dir.path().join(rel);
    let url = format!("{}/_images/{hash}", o.base);
    let mut r = reqwest::get(url).await.unwrap();
    assert_eq!(r.status(), 200);
    // The server is now blocked on a full socket well before the end; cut the file.
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1024 * 1024)
        .unwrap();
    let mut got = 0usize;
    let ended = loop {
        match r.chunk().await {
            Ok(Some(c)) => got += c.len(),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    assert!(ended.is_err(), "short body ({got} bytes) ended cleanly");
    assert!(got < big.len());
}
