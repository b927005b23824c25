//! Bad input and failing origins: clear 4xx/5xx, never a panic, never a cached error.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn start_mirror(work: &TempDir, origins: Vec<String>, extra_origin: &str) -> Mirror {
    start_mirror_with(work, origins, extra_origin, Proc::spawn)
}

/// [`start_mirror`] with a chosen spawner.
fn start_mirror_with(
    work: &TempDir,
    origins: Vec<String>,
    extra_origin: &str,
    spawn: impl FnOnce(&[&str], std::path::PathBuf) -> Proc,
) -> Mirror {
    let port = free_port();
    let spec = MirrorSpec {
        node: "a",
        port,
        origins,
        image_ilink: format!("http://127.0.0.1:{port}/_images/$hash/$id.$ext"),
        image_tlink: format!("http://127.0.0.1:{port}/_thumbs/$hash/thumb.$ext"),
        extra_cache: "",
        extra_origin,
    };
    Mirror::start_yaml_with(work.path(), port, &mirror_yaml(work.path(), &spec), spawn)
}

/// Sends raw bytes and returns the status code of the answer (0 when the connection
/// was closed without one).
fn raw_status(addr: std::net::SocketAddr, request: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // The server may answer and close before it read everything we send.
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx_and_the_mirror_keeps_serving() {
    let work = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(work.path().join("data"));
    let origin = Origin::start(&data.dir, work.path());
    let mirror = start_mirror(&work, vec![format!("http://{}", origin.addr)], "");
    let good = test_hash(1);
    data.put("_images", &good, &jpeg_bytes(500, 1));
    let upper = good.to_uppercase();
    let long_name = "a".repeat(5000);
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let with = |method: &str| {
        format!("{method} /_images/{good}/x.jpg HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    };
    let cases: Vec<(String, Vec<u8>)> = vec![
        ("root".into(), get("/").into_bytes()),
        ("favicon".into(), get("/favicon.ico").into_bytes()),
        ("unknown silo".into(), get(&format!("/_videos/{good}/x")).into_bytes()),
        ("silo without underscore".into(), get(&format!("/images/{good}/x")).into_bytes()),
        ("silo only".into(), get("/_images/").into_bytes()),
        ("uppercase hash".into(), get(&format!("/_images/{upper}/x.jpg")).into_bytes()),
        ("short hash".into(), get(&format!("/_images/{}/x", &good[..20])).into_bytes()),
        ("long hash".into(), get(&format!("/_images/{good}ab/x")).into_bytes()),
        ("non-hex hash".into(), get("/_images/zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz/x").into_bytes()),
        ("traversal".into(), get(&format!("/_images/{good}/../../../etc/passwd")).into_bytes()),
        ("encoded traversal".into(), get(&format!("/_images/{good}/%2e%2e/%2e%2e/etc/passwd")).into_bytes()),
        ("encoded slash".into(), get(&format!("/_images/{good}/a%2fb")).into_bytes()),
        ("encoded backslash".into(), get(&format!("/_images/{good}/a%5C..%5Cb")).into_bytes()),
        ("encoded NUL".into(), get(&format!("/_images/{good}/a%00.jpg")).into_bytes()),
        ("encoded newline".into(), get(&format!("/_images/{good}/a%0d%0aX-Evil:%201")).into_bytes()),
        ("broken percent".into(), get(&format!("/_images/{good}/a%g1")).into_bytes()),
        ("truncated percent".into(), get(&format!("/_images/{good}/a%")).into_bytes()),
        ("raw NUL in path".into(), format!("GET /_images/{good}/a\0b HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()),
        ("overlong path".into(), get(&format!("/_images/{good}/{long_name}")).into_bytes()),
        ("overlong header".into(), format!("GET /_images/{good}/x HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(1 << 20)).into_bytes()),
        ("POST".into(), with("POST").into_bytes()),
        ("PUT".into(), with("PUT").into_bytes()),
        ("DELETE".into(), with("DELETE").into_bytes()),
        ("OPTIONS".into(), with("OPTIONS").into_bytes()),
        ("PATCH".into(), with("PATCH").into_bytes()),
        ("PURGE".into(), with("PURGE").into_bytes()),
        ("garbage request line".into(), b"HELLO THERE\r\n\r\n".to_vec()),
        ("bad HTTP version".into(), format!("GET /_images/{good}/x HTTP/9.9\r\nHost: x\r\n\r\n").into_bytes()),
        // (A raw space in the path is not here: Pingora percent-encodes it, as nginx
        // accepts it, and the request is then well-formed.)
        ("conflicting content-lengths".into(), format!("GET /_images/{good}/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab").into_bytes()),
        ("CONNECT".into(), b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n".to_vec()),
        ("absolute-form to another host".into(), get(&format!("http://evil.example/_images/{upper}/x")).into_bytes()),
        ("relative path".into(), get(&format!("_images/{good}/x")).into_bytes()),
        ("header without colon".into(), format!("GET /_images/{good}/x HTTP/1.1\r\nHost x\r\n\r\n").into_bytes()),
    ];
    assert!(cases.len() >= 30);
    for (name, req) in &cases {
        let status = raw_status(mirror.addr, req);
        assert!(
            (400..500).contains(&status),
            "{name}: got {status}, want a 4xx"
        );
    }
    let mut m = mirror;
    assert!(
        m.proc.is_running(),
        "the mirror died:\n{}",
        m.proc.log_text()
    );
    let (st, body) = {
        let r = client()
            .get(m.url(&format!("/_images/{good}/x.jpg")))
            .send()
            .await
            .expect("good request after the bad ones");
        (r.status(), r.bytes().await.expect("body"))
    };
    assert_eq!((st, body.len()), (StatusCode::OK, 500));
    assert!(
        !m.proc.log_text().contains("panicked"),
        "a panic was logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_down_is_502_uncached_and_recovers() {
    let work = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(work.path().join("data"));
    let hash = test_hash(2);
    data.put("_images", &hash, &jpeg_bytes(700, 2));
    let origin_port = free_port();
    let origin = Origin::start_on(&data.dir, work.path(), origin_port);
    let mirror = start_mirror(&work, vec![format!("http://{}", origin.addr)], "");
    drop(origin);
    let c = client();
    let url = mirror.url(&format!("/_images/{hash}/x.jpg"));
    let started = std::time::Instant::now();
    let r = c.get(&url).send().await.expect("request");
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.text().await.expect("body"), "origin unreachable\n");
    // "Quickly": a refused connection is not waited out. Not a timing assertion on
    // performance, a bound far above any machine's connect-refused time.
    assert!(started.elapsed() < Duration::from_secs(5));

    let _origin = Origin::start_on(&data.dir, work.path(), origin_port);
    let r = c.get(&url).send().await.expect("request");
    assert_eq!(r.status(), 200, "the 502 was cached");
    assert_eq!(r.bytes().await.expect("body").len(), 700);
}

/// A fake origin that answers every request with `response` (or never, when None).
async fn fake_origin(response: Option<&'static str>) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                match response {
                    Some(r) => {
                        let _ = s.write_all(r.as_bytes()).await;
                    }
                    None => tokio::time::sleep(Duration::from_secs(60)).await,
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_5xx_is_502_and_never_cached() {
    let work = tempfile::tempdir().expect("tempdir");
    let bad = fake_origin(Some(
        "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\nConnection: close\r\n\r\noops!",
    ))
    .await;
    let mirror = start_mirror(&work, vec![format!("http://{bad}")], "");
    let url = mirror.url(&format!("/_images/{}/x.jpg", test_hash(3)));
    for _ in 0..2 {
        let r = client().get(&url).send().await.expect("request");
        assert_eq!(r.status(), 502);
        assert_eq!(r.text().await.expect("body"), "origin failed\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_timeout_is_504() {
    let work = tempfile::tempdir().expect("tempdir");
    let silent = fake_origin(None).await;
    let mirror = start_mirror(&work, vec![format!("http://{silent}")], "");
    let url = mirror.url(&format!("/_images/{}/x.jpg", test_hash(4)));
    let r = client().get(&url).send().await.expect("request");
    assert_eq!(r.status(), 504);
    assert_eq!(r.text().await.expect("body"), "origin timed out\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_the_next_origin_on_refusal_5xx_and_timeout() {
    let work = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(work.path().join("data"));
    let hash = test_hash(5);
    data.put("_images", &hash, &jpeg_bytes(600, 5));
    let good = Origin::start(&data.dir, work.path());
    let refused = format!("http://127.0.0.1:{}", free_port());
    let failing = format!(
        "http://{}",
        fake_origin(Some(
            "HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ))
        .await
    );
    let silent = format!("http://{}", fake_origin(None).await);
    for bad in [refused, failing, silent] {
        let mirror = start_mirror(
            &work,
            vec![bad.clone(), format!("http://{}", good.addr)],
            "",
        );
        let r = client()
            .get(mirror.url(&format!("/_images/{hash}/x.jpg")))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200, "no failover from {bad}");
        assert_eq!(r.bytes().await.expect("body").len(), 600);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_host_header_reaches_the_origin() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let seen = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.expect("accept");
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.expect("read");
        let _ = s
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await;
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    let work = tempfile::tempdir().expect("tempdir");
    let mirror = start_mirror(
        &work,
        vec![format!("http://{addr}")],
        "    host: shimmie.internal\n",
    );
    let hash = test_hash(6);
    let r = client()
        .get(mirror.url(&format!("/_images/{hash}/1%20-%20a.jpg?q=1")))
        .header("cookie", "session=secret")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 404);
    let request = seen
        .await
        .expect("origin saw a request")
        .to_ascii_lowercase();
    assert!(
        request.starts_with(&format!("get /_images/{hash}/1%20-%20a.jpg http/1.1\r\n")),
        "{request}"
    );
    assert!(
        request.contains("\r\nhost: shimmie.internal\r\n"),
        "{request}"
    );
    assert!(
        !request.contains("secret"),
        "the visitor's cookie reached the origin"
    );
}

/// The soft and hard "Max open files" of a running process.
fn open_files_limits(pid: i32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut nums = line
        .split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok());
    (nums.next().expect("soft"), nums.next().expect("hard"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_started_under_a_low_soft_open_files_limit_serves_more_connections_than_it() {
    const SOFT: u64 = 128;
    const CONNECTIONS: usize = 300;
    let work = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(work.path().join("data"));
    let origin = Origin::start(&data.dir, work.path());
    let mirror = start_mirror_with(
        &work,
        vec![format!("http://{}", origin.addr)],
        "",
        |args, log| Proc::spawn_with_soft_open_files(SOFT, args, log),
    );
    let (soft, hard) = open_files_limits(mirror.proc.pid());
    assert_eq!(soft, hard, "the soft limit is raised to the hard one");
    assert!(
        hard >= CONNECTIONS as u64 * 2,
        "the test needs a hard limit of at least {}",
        CONNECTIONS * 2
    );

    let hash = test_hash(77);
    let body = jpeg_bytes(4_000, 77);
    data.put("_images", &hash, &body);
    let path = format!("/_images/{hash}/x.jpg");
    let addr = mirror.addr;
    // All connections open at once (a stampede), then each asks: with the soft limit
    // kept, accepts past it fail and those connections are never answered.
    let answered = tokio::task::spawn_blocking(move || {
        let mut conns: Vec<_> = (0..CONNECTIONS)
            .map(|_| HttpConn::new(TcpStream::connect(addr).expect("connect")))
            .collect();
        for c in &mut conns {
            c.send("GET", "x", &path, &[], b"").expect("send");
        }
        // One deadline for all: unanswered connections fail the test, not one by one.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        conns
            .iter_mut()
            .map(|c| {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                c.stream
                    .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                    .expect("timeout");
                c.read_response(false)
            })
            .filter(|r| r.as_ref().is_ok_and(|r| r.status == 200 && r.body == body))
            .count()
    })
    .await
    .expect("clients");
    assert_eq!(answered, CONNECTIONS, "every connection answered whole");
}
