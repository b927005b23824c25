//! HTTP/1.1 as a server speaks it: one keep-alive connection survives every kind of
//! miss and hit (issue 13 item 2), pipelined requests are answered in order,
//! oversized request heads get 431 (item 4), and a client that stops reading is cut
//! off after `shimmer.http.send_timeout` on every path.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tempfile::TempDir;

fn mirror_for(work: &TempDir, origin: SocketAddr, extra_origin: &str) -> Mirror {
    let port = free_port();
    Mirror::start(
        work.path(),
        &MirrorSpec {
            node: "a",
            port,
            origins: vec![format!("http://{origin}")],
            image_ilink: format!("http://127.0.0.1:{port}/_images/$hash/$id.$ext"),
            image_tlink: format!("http://127.0.0.1:{port}/_thumbs/$hash/thumb.$ext"),
            extra_cache: "",
            extra_origin,
        },
    )
}

/// An origin whose bodies stop halfway until the test lets each one go on, so a fill
/// is certainly still reading the origin when the client's next request arrives.
struct GatedOrigin {
    addr: SocketAddr,
    release: Sender<()>,
    /// "METHOD hash" of every request it received, in order.
    seen: Arc<Mutex<Vec<String>>>,
}

impl GatedOrigin {
    fn start(bodies: HashMap<String, Vec<u8>>) -> GatedOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the gated origin");
        let addr = listener.local_addr().expect("origin addr");
        let (release, gate) = channel::<()>();
        let gate = Arc::new(Mutex::new(gate));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let bodies = Arc::new(bodies);
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (gate, seen, bodies) = (gate.clone(), seen2.clone(), bodies.clone());
                std::thread::spawn(move || serve_gated(conn, &gate, &seen, &bodies));
            }
        });
        GatedOrigin {
            addr,
            release,
            seen,
        }
    }

    /// Lets the oldest held body finish.
    fn release(&self) {
        self.release.send(()).expect("the origin is running");
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn serve_gated(
    mut conn: TcpStream,
    gate: &Mutex<Receiver<()>>,
    seen: &Mutex<Vec<String>>,
    bodies: &HashMap<String, Vec<u8>>,
) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut line = head.split(' ');
    let method = line.next().unwrap_or("").to_owned();
    // /_images/<hash>/<name>
    let hash = line
        .next()
        .and_then(|p| p.split('/').nth(2))
        .unwrap_or("")
        .to_owned();
    seen.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(format!("{method} {hash}"));
    let Some(body) = bodies.get(&hash) else {
        let _ = conn
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let header = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if conn.write_all(header.as_bytes()).is_err() || method == "HEAD" {
        return;
    }
    let (first, rest) = body.split_at(body.len() / 2);
    if conn.write_all(first).is_err() || conn.flush().is_err() {
        return;
    }
    // A test that fails early must not leave this thread behind for ever.
    let released = gate
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .recv_timeout(Duration::from_secs(60));
    if released.is_ok() {
        let _ = conn.write_all(rest);
    }
}

/// The answer to a request on `conn`, which must stay usable after it.
fn answer(r: std::io::Result<HttpResponse>, what: &str) -> HttpResponse {
    let r = r.unwrap_or_else(|e| panic!("{what}: no answer on the shared connection: {e}"));
    assert_ne!(
        r.header("connection").map(str::to_ascii_lowercase),
        Some("close".to_owned()),
        "{what}: the mirror closes the connection"
    );
    r
}

/// Method, object, an extra request header, the status both answers have.
type Case = (
    &'static str,
    &'static str,
    Option<(&'static str, String)>,
    u16,
);

#[test]
fn one_connection_survives_every_kind_of_miss_and_hit() {
    let work = tempfile::tempdir().expect("tempdir");
    let names = ["get", "head", "304", "416", "range", "missing"];
    let hashes: HashMap<&str, String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (*n, test_hash(100 + i as u64)))
        .collect();
    let bodies: HashMap<&str, Vec<u8>> = names[..5]
        .iter()
        .enumerate()
        .map(|(i, n)| (*n, jpeg_bytes(300_000 + i * 1000, 100 + i as u64)))
        .collect();
    let origin = GatedOrigin::start(
        bodies
            .iter()
            .map(|(n, b)| (hashes[n].clone(), b.clone()))
            .collect(),
    );
    let mirror = mirror_for(&work, origin.addr, "");
    let host = mirror.addr.to_string();
    let path = |n: &str| format!("/_images/{}/1.jpg", hashes[n]);
    let etag = |n: &str| format!("\"{}\"", hashes[n]);
    let mut conn = HttpConn::new(tcp_connect(mirror.addr).expect("connect"));

    // GET miss (the body needs the whole fill) and GET hit.
    conn.send("GET", &host, &path("get"), &[], &[])
        .expect("send");
    origin.release();
    let r = answer(conn.read_response(false), "GET miss");
    assert_eq!((r.status, r.header("x-cache")), (200, Some("MISS")));
    assert_eq!(sha256(&r.body), sha256(&bodies["get"]));
    let r = answer(
        conn.request("GET", &host, &path("get"), &[], &[]),
        "GET hit",
    );
    assert_eq!((r.status, r.header("x-cache")), (200, Some("HIT")));
    assert_eq!(sha256(&r.body), sha256(&bodies["get"]));

    // Each answer below is complete while its fill is held at half the body; the next
    // request goes out on the same connection before the fill may go on.
    let cases: [Case; 4] = [
        ("HEAD", "head", None, 200),
        ("GET", "304", Some(("If-None-Match", etag("304"))), 304),
        (
            "GET",
            "416",
            Some(("Range", "bytes=999999999-".into())),
            416,
        ),
        ("GET", "range", Some(("Range", "bytes=0-99".into())), 206),
    ];
    for (method, name, headers, status) in &cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let head = *method == "HEAD";
        let what = format!("{method} {name} miss");
        conn.send(method, &host, &path(name), &headers, &[])
            .expect("send");
        let r = answer(conn.read_response(head), &what);
        assert_eq!(
            (r.status, r.header("x-cache")),
            (*status, Some("MISS")),
            "{what}"
        );
        // Sent while the fill still reads the origin: the bug this test is for.
        conn.send(method, &host, &path(name), &headers, &[])
            .expect("send");
        origin.release();
        let what = format!("{method} {name} hit");
        let r = answer(conn.read_response(head), &what);
        assert_eq!(
            (r.status, r.header("x-cache")),
            (*status, Some("HIT")),
            "{what}"
        );
        if *status == 206 {
            assert_eq!(r.body, bodies[name][..100], "{what}");
        } else {
            assert!(r.body.is_empty(), "{what}: a body on a bodiless answer");
        }
    }
    // Every miss above was a GET to the origin, so each did have a body to fill.
    let fetched: Vec<String> = names[..5]
        .iter()
        .map(|n| format!("GET {}", hashes[n]))
        .collect();
    assert_eq!(origin.seen(), fetched);

    // A range of a hit, and a 404 (miss, then remembered).
    let range = [("Range", "bytes=1000-1999")];
    let r = answer(
        conn.request("GET", &host, &path("range"), &range, &[]),
        "range hit",
    );
    assert_eq!((r.status, r.header("x-cache")), (206, Some("HIT")));
    assert_eq!(r.body, bodies["range"][1000..2000]);
    for what in ["404 miss", "404 hit"] {
        let r = answer(conn.request("GET", &host, &path("missing"), &[], &[]), what);
        assert_eq!(r.status, 404, "{what}");
    }
    let r = answer(
        conn.request("HEAD", &host, &path("head"), &[], &[]),
        "HEAD hit",
    );
    assert_eq!((r.status, r.header("x-cache")), (200, Some("HIT")));
}

#[test]
fn fifty_pipelined_requests_are_answered_in_order() {
    let work = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(work.path().join("data"));
    let origin = Origin::start(&data.dir, work.path());
    let mirror = mirror_for(&work, origin.addr, "");
    let objects: Vec<(String, Vec<u8>)> = (0..10u64)
        .map(|i| {
            (
                test_hash(200 + i),
                jpeg_bytes(5_000 + 777 * i as usize, 200 + i),
            )
        })
        .collect();
    for (hash, body) in &objects {
        data.put("_images", hash, body);
    }
    let missing = test_hash(299);
    // Misses, hits, HEADs and a 404, all in one write.
    let plan: Vec<(&str, usize)> = (0..50)
        .map(|i| (if i % 7 == 3 { "HEAD" } else { "GET" }, i))
        .collect();
    let path_of = |i: usize| match i {
        25 => format!("/_images/{missing}/x.jpg"),
        _ => format!("/_images/{}/{i}.jpg", objects[i % 10].0),
    };
    let host = mirror.addr.to_string();
    let mut burst = String::new();
    for (method, i) in &plan {
        burst.push_str(&format!(
            "{method} {} HTTP/1.1\r\nHost: {host}\r\n\r\n",
            path_of(*i)
        ));
    }
    let mut conn = HttpConn::new(tcp_connect(mirror.addr).expect("connect"));
    conn.stream
        .write_all(burst.as_bytes())
        .expect("send the burst");
    for (method, i) in &plan {
        let what = format!("pipelined request {i} ({method})");
        let r = conn
            .read_response(*method == "HEAD")
            .unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
        if *i == 25 {
            assert_eq!(r.status, 404, "{what}");
            continue;
        }
        let body = &objects[i % 10].1;
        assert_eq!(r.status, 200, "{what}");
        assert_eq!(
            r.header("content-length"),
            Some(body.len().to_string().as_str()),
            "{what}"
        );
        if *method == "GET" {
            assert_eq!(
                sha256(&r.body),
                sha256(body),
                "{what}: another request's body"
            );
        }
    }
    // And the connection is still good for a plain request after the burst.
    let r = conn
        .request("GET", &host, &path_of(1), &[], &[])
        .expect("a request after the burst");
    assert_eq!(sha256(&r.body), sha256(&objects[1].1));
}

#[test]
fn oversized_request_heads_get_431_and_the_mirror_keeps_serving() {
    let work = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(work.path().join("data"));
    let origin = Origin::start(&data.dir, work.path());
    let mirror = mirror_for(&work, origin.addr, "");
    let hash = test_hash(300);
    let body = jpeg_bytes(4_000, 300);
    data.put("_images", &hash, &body);
    let path = format!("/_images/{hash}/1.jpg");
    let host = mirror.addr.to_string();
    let mut other = HttpConn::new(tcp_connect(mirror.addr).expect("connect"));
    let r = other
        .request("GET", &host, &path, &[], &[])
        .expect("before");
    assert_eq!(r.status, 200);

    // Under the default 8 KiB: served.
    let cookie = "c".repeat(7 * 1024);
    let r = http_request(mirror.addr, "GET", &path, &[("Cookie", &cookie)], &[]).expect("7 KB");
    assert_eq!(r.status, 200);

    let line = "a".repeat(100 * 1024);
    for (name, value) in [("X-Big", line.as_str()), ("Cookie", &line[..9 * 1024])] {
        let mut conn = HttpConn::new(tcp_connect(mirror.addr).expect("connect"));
        let r = conn
            .request("GET", &host, &path, &[(name, value)], &[])
            .expect("an answer to an oversized head");
        assert_eq!(r.status, 431, "{} bytes of {name}", value.len());
        assert_eq!(r.text(), "request header fields too large\n");
        assert_eq!(r.header("connection"), Some("close"));
    }

    let r = other.request("GET", &host, &path, &[], &[]).expect("after");
    assert_eq!((r.status, sha256(&r.body)), (200, sha256(&body)));
    let r = http_get(mirror.addr, &path).expect("a new connection");
    assert_eq!(r.status, 200);
}

#[test]
fn max_header_bytes_is_configurable() {
    let work = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(work.path().join("data"));
    let origin = Origin::start(&data.dir, work.path());
    // `extra_origin` lines land under `shimmer:` at two spaces of indent.
    let mirror = mirror_for(&work, origin.addr, "  http:\n    max_header_bytes: 32K\n");
    let hash = test_hash(400);
    data.put("_images", &hash, &jpeg_bytes(1_000, 400));
    let path = format!("/_images/{hash}/1.jpg");
    let cookie = "c".repeat(20 * 1024);
    let r = http_request(mirror.addr, "GET", &path, &[("Cookie", &cookie)], &[]).expect("20 KB");
    assert_eq!(r.status, 200);
    let cookie = "c".repeat(40 * 1024);
    let r = http_request(mirror.addr, "GET", &path, &[("Cookie", &cookie)], &[]).expect("40 KB");
    assert_eq!(r.status, 431);
}

/// A client that sends its request and never reads holds nothing for ever: after
/// `send_timeout` of a full socket the answer is given up and the connection closed,
/// on the direct path (a plain GET hit) and on Pingora's writer (a Range hit, 206),
/// counted as an error (as a client that leaves is).
#[test]
fn a_client_that_stops_reading_is_cut_off_after_send_timeout_on_every_path() {
    let work = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(work.path().join("data"));
    let origin = Origin::start(&data.dir, work.path());
    let mirror = mirror_for(&work, origin.addr, "  http:\n    send_timeout: 1s\n");
    let hash = test_hash(500);
    // Far more than loopback's socket buffers (a few MiB each way) can take.
    let body = jpeg_bytes(32 << 20, 500);
    data.put("_images", &hash, &body);
    let path = format!("/_images/{hash}/1.jpg");
    let r = http_get(mirror.addr, &path).expect("the fill");
    assert_eq!((r.status, r.body.len()), (200, body.len()));
    let errors = || {
        let scrape = http_get(mirror.admin_addr(), "/metrics").expect("GET /metrics");
        let labels = [("silo", "_images"), ("outcome", "error")];
        metric_value(&scrape.text(), "shimmer_requests_total", &labels).unwrap_or(0.0)
    };
    let before = errors();

    let stalled: Vec<(&str, TcpStream)> = [("GET", ""), ("Range", "Range: bytes=0-\r\n")]
        .into_iter()
        .map(|(what, extra)| {
            let mut s = tcp_connect(mirror.addr).expect("connect");
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").expect("request");
            (what, s)
        })
        .collect();
    wait_until("both stalled answers given up and counted", || {
        (errors() >= before + 2.0).then_some(())
    });
    for (what, mut s) in stalled {
        let mut all = Vec::new();
        s.read_to_end(&mut all)
            .unwrap_or_else(|e| panic!("{what}: the mirror closes the connection: {e}"));
        assert!(
            all.starts_with(b"HTTP/1.1 20") && all.len() < body.len(),
            "{what}: a head and part of the body, then the end ({} bytes)",
            all.len()
        );
    }
    // The mirror serves on.
    let r = http_get(mirror.addr, &path).expect("after");
    assert_eq!(sha256(&r.body), sha256(&body));
}

/// An image the origin sends without a length (chunked) is stored without one. The fast
/// paths answer only a body whose stored length is its own, so its hits take the full
/// path, which frames them: the same bytes, from the cache, on one connection.
#[test]
fn an_image_the_origin_sent_without_a_length_is_served_whole_from_the_cache() {
    let work = tempfile::tempdir().expect("tempdir");
    let hash = test_hash(510);
    let body = jpeg_bytes(300_000, 510);
    let mut reply = fake_peer::head(
        "200 OK",
        &["Content-Type: image/jpeg", "Transfer-Encoding: chunked"],
    );
    for chunk in body.chunks(65_536) {
        reply.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        reply.extend_from_slice(chunk);
        reply.extend_from_slice(b"\r\n");
    }
    reply.extend_from_slice(b"0\r\n\r\n");
    let origin =
        fake_peer::FakePeer::start(free_port(), move |_| fake_peer::Reply::Send(reply.clone()));
    let mirror = mirror_for(&work, origin.addr, "");
    let host = mirror.addr.to_string();
    let path = format!("/_images/{hash}/1.jpg");
    let mut conn = HttpConn::new(tcp_connect(mirror.addr).expect("connect"));
    for (i, cache) in ["MISS", "HIT", "HIT"].into_iter().enumerate() {
        let r = answer(conn.request("GET", &host, &path, &[], &[]), "GET");
        assert_eq!(
            (r.status, r.header("x-cache")),
            (200, Some(cache)),
            "answer {i}"
        );
        assert_eq!(sha256(&r.body), sha256(&body), "answer {i}");
    }
    assert_eq!(origin.seen().len(), 1, "one origin fetch, then hits");
}
