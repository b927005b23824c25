//! Range pass-through (issue 13, item 3): a Range far ahead of a fill in progress is
//! answered at once by a ranged request to the origin, while the fill goes on; one the
//! fill is close to waits for it. Real processes: the mirror and the built-in origin
//! sending every body at 3 MB/s (`shimmer origin --rate`), so a 24 MiB fill takes
//! about 8 s and the fill is far behind the middle of the object for most of it.
//!
//! Times are printed (`-- --nocapture`), never asserted.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::header::HeaderMap;
use reqwest::{Client, StatusCode};
use tempfile::TempDir;

const MIB: usize = 1 << 20;
const LEN: usize = 24 * MIB;
/// The origin's pace, bytes per second.
const RATE: u64 = 3_000_000;

struct World {
    work: TempDir,
    origin: Origin,
    body: Vec<u8>,
    path: String,
    hash: String,
}

fn world(seed: u64) -> World {
    let work = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(work.path().join("data"));
    let hash = test_hash(seed);
    let body = whole_jpeg(LEN, seed);
    data.put("_images", &hash, &body);
    let origin = Origin::start_slow(&data.dir, work.path(), RATE);
    World {
        path: format!("/_images/{hash}/video.jpg"),
        work,
        origin,
        body,
        hash,
    }
}

impl World {
    /// The mirror owning everything, with `cache` lines under `shimmer.cache`.
    fn mirror(&self, cache: &str) -> Mirror {
        let origin = format!("http://{}", self.origin.addr);
        owner_mirror(self.work.path(), &origin, free_port(), cache)
    }
}

/// One answer, with the time from sending the request to the first body byte.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
    first_byte: Duration,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Request headers, owned (so requests can be joined without temporaries).
fn hdrs(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

async fn get(c: &Client, url: &str, headers: Vec<(&'static str, String)>) -> Answer {
    let mut req = c.get(url);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let started = Instant::now();
    let mut resp = req.send().await.expect("request");
    let (status, headers) = (resp.status(), resp.headers().clone());
    let mut body = Vec::new();
    let mut first_byte = None;
    while let Some(chunk) = resp.chunk().await.expect("body") {
        first_byte.get_or_insert_with(|| started.elapsed());
        body.extend_from_slice(&chunk);
    }
    Answer {
        status,
        headers,
        body,
        first_byte: first_byte.unwrap_or_else(|| started.elapsed()),
    }
}

/// Only the response header (the body is dropped unread).
async fn head_of(c: &Client, url: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap) {
    let mut req = c.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    (resp.status(), resp.headers().clone())
}

fn x_cache(h: &HeaderMap) -> &str {
    h.get("x-cache").and_then(|v| v.to_str().ok()).unwrap_or("")
}

async fn metric(m: &Mirror, name: &str, labels: &[(&str, &str)]) -> f64 {
    let url = format!("http://{}/metrics", m.admin_addr());
    let text = reqwest::get(&url)
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text");
    metric_value(&text, name, labels).unwrap_or(0.0)
}

async fn passed_through(m: &Mirror) -> f64 {
    metric(
        m,
        "shimmer_range_passthrough_total",
        &[("answer", "partial")],
    )
    .await
}

/// Waits until a metric reads `want` (a request is counted when it is logged, which
/// can be just after its client has read the last byte), panicking with the last value.
async fn wait_metric(m: &Mirror, name: &str, labels: &[(&str, &str)], want: f64) {
    let got = eventually_async(DEADLINE, || async {
        let v = metric(m, name, labels).await;
        (v == want).then_some(v)
    })
    .await;
    if got.is_none() {
        let last = metric(m, name, labels).await;
        panic!("{name}{labels:?} is {last}, never {want}");
    }
}

async fn wait_passed_through(m: &Mirror, want: f64) {
    let labels = [("answer", "partial")];
    wait_metric(m, "shimmer_range_passthrough_total", &labels, want).await;
}

/// Starts the fill with a request for the first byte and checks that byte; the fill
/// goes on after it is answered. On a connection of its own: the writer's connection
/// takes its next request only once the fill has ended (src/proxy/http1.rs), as a
/// browser's is busy with the first `bytes=0-` when it seeks.
async fn start_fill(m: &Mirror, w: &World) {
    let a = get(&client(), &m.url(&w.path), hdrs(&[("range", "bytes=0-0")])).await;
    assert_eq!(a.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(a.header("x-cache"), "MISS");
    assert_eq!(a.body, w.body[..1]);
}

/// Checks a 206 for `first..=last` of the body, by its bytes' sha256.
fn assert_slice(a: &Answer, w: &World, first: usize, last: usize, what: &str) {
    assert_eq!(a.status, StatusCode::PARTIAL_CONTENT, "{what}");
    let range = format!("bytes {first}-{last}/{LEN}");
    assert_eq!(a.header("content-range"), range, "{what}");
    assert_eq!(a.body.len(), last + 1 - first, "{what}");
    assert_eq!(
        sha256(&a.body),
        sha256(&w.body[first..=last]),
        "{what}: wrong bytes"
    );
}

/// The origin's counters once `key` reads `want` (a response is counted when it has
/// been sent in full), panicking with the last ones.
async fn origin_stats_at(w: &World, key: &str, want: u64) -> serde_json::Value {
    let got = eventually_async(DEADLINE, || async {
        let v = w.origin.stats().await;
        (v[key].as_u64() == Some(want)).then_some(v)
    })
    .await;
    match got {
        Some(v) => v,
        None => panic!("origin {key} never {want}: {}", w.origin.stats().await),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_far_ahead_of_a_fill_is_passed_through_and_hits_once_filled() {
    let w = world(1);
    let cache = format!(
        "    dir: {}\n    disk_bytes: 1G\n    range_passthrough_ahead: 4M\n",
        path_str(&w.work.path().join("cache"))
    );
    let m = w.mirror(&cache);
    let c = client();
    let fill_started = Instant::now();
    start_fill(&m, &w).await;

    let (first, last) = (LEN / 2, LEN / 2 + MIB - 1);
    let far = format!("bytes={first}-{last}");
    // Within 4 MiB of the fill's position (it is at least at 0): served by the fill.
    let (near_first, near_last) = (2 * MIB, 3 * MIB - 1);
    let near = format!("bytes={near_first}-{near_last}");
    let url = m.url(&w.path);
    let (a, n) = tokio::join!(
        get(&c, &url, hdrs(&[("range", &far)])),
        get(&c, &url, hdrs(&[("range", &near)]))
    );
    println!(
        "50% range with pass-through: first byte after {:?} ({:?} into the fill)",
        a.first_byte,
        fill_started.elapsed()
    );
    assert_eq!(a.header("x-cache"), "PASS-RANGE");
    assert_eq!(a.header("etag"), format!("\"{}\"", w.hash));
    assert!(a.header("cache-control").contains("immutable"));
    assert_slice(&a, &w, first, last, "the pass-through");
    assert_eq!(
        n.header("x-cache"),
        "HIT",
        "a near range waits for the fill"
    );
    assert_slice(&n, &w, near_first, near_last, "the near range");
    wait_passed_through(&m, 1.0).await;
    wait_metric(&m, "shimmer_range_passthrough_bytes_total", &[], MIB as f64).await;

    // The fill goes on to the end and is stored; then the same range is a hit.
    wait_until_async("the fill to be stored on disk", || async {
        let objects = metric(&m, "shimmer_cache_objects", &[("tier", "disk")]).await;
        (objects == 1.0).then_some(())
    })
    .await;
    println!("fill complete after {:?}", fill_started.elapsed());
    let again = get(&c, &url, hdrs(&[("range", &far)])).await;
    assert_eq!(again.header("x-cache"), "HIT");
    assert_slice(&again, &w, first, last, "the same range after the fill");
    assert_eq!(passed_through(&m).await, 1.0, "a hit is not passed through");

    // The origin saw the fill's full request and the one ranged request, nothing else.
    let v = origin_stats_at(&w, "bytes", (LEN + MIB) as u64).await;
    assert_eq!(v["requests"].as_u64(), Some(2), "{v}");
    assert_eq!(v["ranged"].as_u64(), Some(1), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_bytes_are_exact_for_every_kind_of_single_range() {
    // Memory tier only (the other test fills through the disk tier), default threshold.
    let w = world(2);
    let m = w.mirror("");
    let c = client();
    start_fill(&m, &w).await;
    let url = m.url(&w.path);
    let etag = format!("\"{}\"", w.hash);

    let open_first = LEN - 3 * MIB + 7;
    let (odd_first, odd_last) = (10_000_019, 10_500_000);
    let (tag_first, tag_last) = (15 * MIB, 15 * MIB + 65_535);
    let (open, odd, tagged) = (
        format!("bytes={open_first}-"),
        format!("bytes={odd_first}-{odd_last}"),
        format!("bytes={tag_first}-{tag_last}"),
    );
    let (suffix, open, odd, tagged) = tokio::join!(
        get(&c, &url, hdrs(&[("range", "bytes=-100000")])),
        get(&c, &url, hdrs(&[("range", &open)])),
        get(&c, &url, hdrs(&[("range", &odd)])),
        get(&c, &url, hdrs(&[("range", &tagged), ("if-range", &etag)])),
    );
    println!(
        "suffix range: first byte after {:?}; open-ended: {:?}",
        suffix.first_byte, open.first_byte
    );
    for (a, first, last, what) in [
        (&suffix, LEN - 100_000, LEN - 1, "suffix"),
        (&open, open_first, LEN - 1, "open-ended"),
        (&odd, odd_first, odd_last, "odd offsets"),
        (&tagged, tag_first, tag_last, "If-Range with our ETag"),
    ] {
        assert_eq!(a.header("x-cache"), "PASS-RANGE", "{what}");
        assert_slice(a, &w, first, last, what);
    }
    wait_passed_through(&m, 4.0).await;

    // Left to the cache: HEAD, several ranges, an If-Range that is not our ETag, a
    // conditional. Only their headers are looked at: their bodies wait for the fill.
    let far = format!("bytes={}-", LEN / 2);
    let head = c
        .head(&url)
        .header("range", &far)
        .send()
        .await
        .expect("HEAD");
    assert_eq!(x_cache(head.headers()), "HIT", "HEAD");
    let multi = format!("bytes={}-{},{}-", LEN / 2, LEN / 2 + 9, LEN - 10);
    let other_tag = [("range", far.as_str()), ("if-range", "\"other\"")];
    let conditional = [("range", far.as_str()), ("if-none-match", etag.as_str())];
    for (headers, what) in [
        (&[("range", multi.as_str())][..], "multipart"),
        (&other_tag[..], "If-Range with another tag"),
        (&conditional[..], "If-None-Match"),
    ] {
        let (status, h) = head_of(&c, &url, headers).await;
        assert_eq!(x_cache(&h), "HIT", "{what}");
        assert_ne!(status, StatusCode::BAD_GATEWAY, "{what}");
    }
    assert_eq!(passed_through(&m).await, 4.0);
    // One ranged origin request per pass-through, besides the fill's.
    let v = origin_stats_at(&w, "ranged", 4).await;
    assert_eq!(v["requests"].as_u64(), Some(5), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_pass_through_off_a_far_range_waits_for_the_fill() {
    let w = world(3);
    let m = w.mirror("    range_passthrough_ahead: 0\n");
    let c = client();
    let fill_started = Instant::now();
    start_fill(&m, &w).await;
    let (first, last) = (LEN / 2, LEN / 2 + MIB - 1);
    let a = get(
        &c,
        &m.url(&w.path),
        hdrs(&[("range", &format!("bytes={first}-{last}"))]),
    )
    .await;
    println!(
        "50% range without pass-through: first byte after {:?} ({:?} into the fill)",
        a.first_byte,
        fill_started.elapsed()
    );
    assert_eq!(a.header("x-cache"), "HIT");
    assert_slice(&a, &w, first, last, "the range from the fill");
    assert_eq!(passed_through(&m).await, 0.0);
    let v = w.origin.stats().await;
    assert_eq!(v["requests"].as_u64(), Some(1), "{v}");
    assert_eq!(v["ranged"].as_u64(), Some(0), "{v}");
}

/// An origin that ignores Range (always a 200 with the whole body, at about 3 MB/s)
/// and remembers the Range header of each request.
struct RangeBlindOrigin {
    addr: std::net::SocketAddr,
    ranges: std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>,
}

impl RangeBlindOrigin {
    fn start(body: Vec<u8>) -> RangeBlindOrigin {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let ranges = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (seen, body) = (ranges.clone(), std::sync::Arc::new(body));
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (seen, body) = (seen.clone(), body.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                    let mut range = None;
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                        if let Some((name, value)) = line.split_once(':') {
                            if name.eq_ignore_ascii_case("range") {
                                range = Some(value.trim().to_owned());
                            }
                        }
                        line.clear();
                    }
                    seen.lock().expect("lock").push(range);
                    let mut conn = conn;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\
                         Connection: close\r\n\r\n",
                        body.len()
                    );
                    if conn.write_all(head.as_bytes()).is_err() {
                        return;
                    }
                    for chunk in body.chunks(64 << 10) {
                        if conn.write_all(chunk).is_err() {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                });
            }
        });
        RangeBlindOrigin { addr, ranges }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_the_origin_ignores_is_cut_here() {
    let work = tempfile::tempdir().expect("tempdir");
    let hash = test_hash(4);
    let len = 8 * MIB;
    let body = whole_jpeg(len, 4);
    let origin = RangeBlindOrigin::start(body.clone());
    let origin_url = format!("http://{}", origin.addr);
    let m = owner_mirror(
        work.path(),
        &origin_url,
        free_port(),
        "    range_passthrough_ahead: 1M\n",
    );
    let url = m.url(&format!("/_images/{hash}/x.jpg"));
    let first_byte = get(&client(), &url, hdrs(&[("range", "bytes=0-0")])).await;
    assert_eq!(first_byte.header("x-cache"), "MISS");

    let (first, last) = (3 * MIB, 3 * MIB + 65_535);
    let range = format!("bytes={first}-{last}");
    let a = get(&client(), &url, hdrs(&[("range", &range)])).await;
    assert_eq!(a.header("x-cache"), "PASS-RANGE");
    assert_eq!(a.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        a.header("content-range"),
        format!("bytes {first}-{last}/{len}")
    );
    assert_eq!(sha256(&a.body), sha256(&body[first..=last]), "wrong bytes");
    let whole = [("answer", "whole")];
    wait_metric(&m, "shimmer_range_passthrough_total", &whole, 1.0).await;
    let seen = origin.ranges.lock().expect("lock").clone();
    assert_eq!(
        seen,
        [None, Some(range)],
        "the fill's request, then the ranged one"
    );
}
