//! Requests for an image another request is fetching (`cache.hold_for_fill`, see
//! src/cache/flights.rs), end to end on the real binary with a rate-limited origin:
//! held until the image is whole and answered as hits (large bodies with `sendfile`
//! from a sealed memfd), or, when the fill outlasts the hold, streamed from it; one
//! origin request either way, and every body whole.

mod common;

use std::net::SocketAddr;
use std::thread;

use common::*;
use tempfile::TempDir;

struct World {
    work: TempDir,
    data: DataDir,
    origin: Origin,
}

impl World {
    /// An origin sending every body at `rate` bytes per second.
    fn new(rate: u64) -> World {
        let work = tempfile::tempdir().expect("tempdir");
        let data = DataDir::new(work.path().join("data"));
        let origin = Origin::start_slow(&data.dir, work.path(), rate);
        World { work, data, origin }
    }

    /// A memory-only mirror holding followers of a fetch for `hold`.
    fn mirror(&self, hold: &str) -> Mirror {
        let port = free_port();
        let extra = format!("    hold_for_fill: {hold}\n");
        let spec = MirrorSpec {
            node: "a",
            port,
            origins: vec![format!("http://{}", self.origin.addr)],
            image_ilink: format!("http://127.0.0.1:{port}/_images/$hash/$id.$ext"),
            image_tlink: format!("http://127.0.0.1:{port}/_thumbs/$hash/thumb.$ext"),
            extra_cache: &extra,
            extra_origin: "",
        };
        Mirror::start_yaml(
            self.work.path(),
            port,
            &mirror_yaml(self.work.path(), &spec),
        )
    }

    fn image(&self, n: u64, len: usize) -> (String, Vec<u8>) {
        let hash = test_hash(n);
        let bytes = whole_jpeg(len, n);
        self.data.put("_images", &hash, &bytes);
        (format!("/_images/{hash}/x.jpg"), bytes)
    }

    fn origin_requests(&self) -> u64 {
        let r = http_get(self.origin.addr, "/_origin/stats").expect("origin stats");
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("stats JSON");
        v["requests"].as_u64().expect("requests")
    }
}

fn metric(m: &Mirror, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = http_get(m.admin_addr(), "/metrics")
        .expect("GET /metrics")
        .text();
    metric_value(&text, name, labels).unwrap_or(0.0)
}

fn held(m: &Mirror, answer: &str) -> f64 {
    metric(m, "shimmer_held_requests_total", &[("answer", answer)])
}

/// One request for `path`, then `followers` more once the origin is sending it; every
/// answer, the first one's first.
fn stampede(w: &World, m: &Mirror, path: &str, followers: usize) -> Vec<HttpResponse> {
    let get = |addr: SocketAddr, path: String| thread::spawn(move || http_get(addr, &path));
    let first = get(m.addr, path.to_string());
    wait_until("the first request at the origin", || {
        (w.origin_requests() == 1).then_some(())
    });
    let rest: Vec<_> = (0..followers)
        .map(|_| get(m.addr, path.to_string()))
        .collect();
    std::iter::once(first)
        .chain(rest)
        .map(|t| t.join().expect("client thread").expect("answer"))
        .collect()
}

#[test]
fn followers_of_a_fetch_are_held_until_it_is_whole_and_answered_as_hits() {
    // 1 MiB at 1 MB/s: a second to fill (followers arrive long before it is whole),
    // well inside the hold.
    let w = World::new(1 << 20);
    let m = w.mirror("30s");
    let (path, bytes) = w.image(1, 1 << 20);
    let answers = stampede(&w, &m, &path, 6);
    for (i, r) in answers.iter().enumerate() {
        assert_eq!(r.status, 200, "answer {i}");
        assert_eq!(sha256(&r.body), sha256(&bytes), "answer {i}");
    }
    assert_eq!(answers[0].header("x-cache"), Some("MISS"));
    for r in &answers[1..] {
        assert_eq!(r.header("x-cache"), Some("HIT"), "a held follower is a hit");
    }
    assert_eq!(w.origin_requests(), 1);
    assert_eq!(held(&m, "hit"), 6.0);
    assert_eq!(held(&m, "streamed"), 0.0);
    // Plain HTTP/1.1 and a body long enough to seal: sent from the memfd.
    let sent = metric(
        &m,
        "shimmer_cache_sendfile_hits_total",
        &[("tier", "memory")],
    );
    assert_eq!(sent, 6.0);
}

#[test]
fn a_fill_slower_than_the_hold_is_streamed_to_its_followers() {
    // 600 KB at 200 KB/s: three seconds to fill, against a hold of a fifth of one.
    let w = World::new(200_000);
    let m = w.mirror("200ms");
    let (path, bytes) = w.image(2, 600_000);
    let answers = stampede(&w, &m, &path, 3);
    for (i, r) in answers.iter().enumerate() {
        assert_eq!(r.status, 200, "answer {i}");
        assert_eq!(sha256(&r.body), sha256(&bytes), "answer {i}");
    }
    assert_eq!(w.origin_requests(), 1, "streamed from the one fill");
    assert_eq!(held(&m, "streamed"), 3.0);
    assert_eq!(held(&m, "hit"), 0.0);
}

#[test]
fn with_the_hold_off_followers_stream_the_fill_at_once() {
    let w = World::new(4 << 20);
    let m = w.mirror("0s");
    let (path, bytes) = w.image(3, 1 << 20);
    let answers = stampede(&w, &m, &path, 3);
    for r in &answers {
        assert_eq!(sha256(&r.body), sha256(&bytes));
    }
    assert_eq!(w.origin_requests(), 1);
    for answer in ["hit", "streamed", "missed"] {
        assert_eq!(held(&m, answer), 0.0, "{answer}");
    }
}
