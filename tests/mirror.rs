//! The mirror end to end: the real `shimmer` binary in front of the real built-in
//! origin, on 127.0.0.1 ports, spoken to over HTTP.

mod common;

use std::time::Duration;

use common::*;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Client, StatusCode};
use tempfile::TempDir;

/// One origin with some files and one mirror that owns everything.
struct Setup {
    _work: TempDir,
    data: DataDir,
    origin: Origin,
    mirror: Mirror,
}

fn single_node(extra_cache: &str, extra_origin: &str) -> Setup {
    let work = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(work.path().join("data"));
    let origin = Origin::start(&data.dir, work.path());
    let port = free_port();
    let mirror = Mirror::start(
        work.path(),
        &MirrorSpec {
            node: "a",
            port,
            origins: vec![format!("http://{}", origin.addr)],
            image_ilink: format!("http://127.0.0.1:{port}/_images/$hash/$id.$ext"),
            image_tlink: format!("http://127.0.0.1:{port}/_thumbs/$hash/thumb.$ext"),
            extra_cache,
            extra_origin,
        },
    );
    Setup {
        _work: work,
        data,
        origin,
        mirror,
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

async fn get(c: &Client, url: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, Vec<u8>) {
    let mut req = c.get(url);
    for (k, v) in headers {
        req = req.header(*k, HeaderValue::from_str(v).expect("header value"));
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let h = resp.headers().clone();
    let body = resp.bytes().await.expect("body").to_vec();
    (status, h, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_serves_exact_bytes_image_and_video() {
    let s = single_node("", "");
    let c = client();
    let image = jpeg_bytes(20 * 1024, 1);
    let video = jpeg_bytes(50 * 1024 * 1024, 2);
    let (hi, hv) = (test_hash(1), test_hash(2));
    s.data.put("_images", &hi, &image);
    s.data.put("_images", &hv, &video);

    for (hash, bytes) in [(&hi, &image), (&hv, &video)] {
        let url = s.mirror.url(&format!("/_images/{hash}/1%20-%20tag.jpg"));
        let (st, h, body) = get(&c, &url, &[]).await;
        assert_eq!(st, 200);
        assert_eq!(header(&h, "x-cache"), "MISS");
        assert_eq!(sha256(&body), sha256(bytes), "miss body differs for {hash}");
        assert_eq!(header(&h, "etag"), format!("\"{hash}\""));
        assert_eq!(
            header(&h, "cache-control"),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(header(&h, "x-shimmer-node"), "a");
        assert_eq!(header(&h, "content-type"), "image/jpeg");
        // The name does not matter: content is addressed by the hash.
        let other = s.mirror.url(&format!("/_images/{hash}/other-name.jpg?x=1"));
        let (st, h, body) = get(&c, &other, &[]).await;
        assert_eq!(st, 200);
        assert_eq!(header(&h, "x-cache"), "HIT");
        assert_eq!(sha256(&body), sha256(bytes), "hit body differs for {hash}");
    }
    assert_eq!(s.origin.requests().await, 2);
}

/// A plain GET hit is answered by the memory fast path; a HEAD or a conditional GET that
/// does not match goes through pingora-cache's full hit path. Both must say the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_fast_path_answers_like_the_full_hit_path() {
    let s = single_node("", "");
    let c = client();
    let bytes = jpeg_bytes(30_000, 9);
    let hash = test_hash(9);
    s.data.put("_images", &hash, &bytes);
    let url = s.mirror.url(&format!("/_images/{hash}/9.jpg"));
    let (st, _, _) = get(&c, &url, &[]).await;
    assert_eq!(st, 200);

    let comparable = |h: &HeaderMap| {
        let mut v: Vec<(String, String)> = h
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "date" | "age"))
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_owned()))
            .collect();
        v.sort();
        v
    };
    let (st, fast, body) = get(&c, &url, &[]).await;
    assert_eq!(st, 200);
    assert_eq!(header(&fast, "x-cache"), "HIT");
    assert_eq!(sha256(&body), sha256(&bytes));
    assert!(header(&fast, "age").parse::<u64>().is_ok(), "an Age header");

    let (st, full, body) = get(&c, &url, &[("if-none-match", "\"other\"")]).await;
    assert_eq!(st, 200);
    assert_eq!(sha256(&body), sha256(&bytes));
    assert_eq!(comparable(&fast), comparable(&full));

    let resp = c.head(&url).send().await.expect("HEAD");
    assert_eq!(resp.status(), 200);
    assert_eq!(comparable(&fast), comparable(resp.headers()));
    assert_eq!(s.origin.requests().await, 1);
}

/// Three mirrors named by their ports (so the template's links are real URLs) with
/// equal weights, one origin, and the view Shimmie would compute for them.
struct Fleet {
    _work: TempDir,
    data: DataDir,
    origin: Origin,
    mirrors: Vec<(String, Mirror)>,
    view: shimmer::fleet::FleetView,
}

fn three_nodes() -> Fleet {
    let work = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(work.path().join("data"));
    let origin = Origin::start(&data.dir, work.path());
    let ports = [free_port(), free_port(), free_port()];
    let opts = ports.map(|p| format!("{p}=1")).join(",");
    let ilink = format!("http://127.0.0.1:{{{opts}}}/_images/$hash/$id%20-%20$tags.$ext");
    let tlink = format!("http://127.0.0.1:{{{opts}}}/_thumbs/$hash/thumb.$ext");
    let names: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
    let mirrors = ports
        .iter()
        .zip(&names)
        .map(|(port, name)| {
            let m = Mirror::start(
                work.path(),
                &MirrorSpec {
                    node: name,
                    port: *port,
                    origins: vec![format!("http://{}", origin.addr)],
                    image_ilink: ilink.clone(),
                    image_tlink: tlink.clone(),
                    extra_cache: "",
                    extra_origin: "",
                },
            );
            (name.clone(), m)
        })
        .collect();
    let view = shimmer::fleet::FleetView::build(&shimmer::fleet::FleetSpec {
        image_ilink: Some(ilink),
        image_tlink: Some(tlink),
        algorithm: shimmer::fleet::Algorithm::Rendezvous,
    })
    .expect("the test template parses");
    Fleet {
        _work: work,
        data,
        origin,
        mirrors,
        view,
    }
}

impl Fleet {
    /// (primary, a node that owns nothing of this image) for a hash.
    fn primary_and_stranger(&self, hash: &str) -> (&Mirror, &str, &Mirror, &str) {
        let owners = self.view.owners(shimmer::fleet::Silo::Images, hash);
        let primary = owners.primary().expect("balanced template has a primary");
        let p = self
            .mirrors
            .iter()
            .find(|(n, _)| n == primary)
            .expect("primary is one of ours");
        let stranger = self
            .mirrors
            .iter()
            .find(|(n, _)| !owners.is_owner(n))
            .expect("three nodes: one is neither primary nor secondary");
        (&p.1, &p.0, &stranger.1, &stranger.0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_owner_redirects_to_the_primary_which_then_hits() {
    let f = three_nodes();
    let c = client();
    for i in 0..5u64 {
        let hash = test_hash(1000 + i);
        f.data.put("_images", &hash, &jpeg_bytes(4096, i));
        let (owner, _, stranger, stranger_name) = f.primary_and_stranger(&hash);
        let path = format!("/_images/{hash}/77%20-%20cat.jpg");
        let before = f.origin.requests().await;

        let (st, h, body) = get(&c, &stranger.url(&path), &[]).await;
        assert_eq!(st, 307);
        assert!(body.is_empty());
        let location = header(&h, "location").to_owned();
        assert_eq!(
            location,
            format!("{}?shimmer_hop={stranger_name}", owner.url(&path))
        );
        assert_eq!(header(&h, "cache-control"), "no-store");
        assert_eq!(
            f.origin.requests().await,
            before,
            "a redirect touched the origin"
        );

        let (st, h, _) = get(&c, &location, &[]).await;
        assert_eq!((st, header(&h, "x-cache")), (StatusCode::OK, "MISS"));
        let (st, h, _) = get(&c, &owner.url(&path), &[]).await;
        assert_eq!((st, header(&h, "x-cache")), (StatusCode::OK, "HIT"));
        assert_eq!(
            f.origin.requests().await,
            before + 1,
            "the hit went to the origin"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hopped_request_is_served_never_redirected_again() {
    let f = three_nodes();
    let c = client();
    let hash = test_hash(2000);
    f.data.put("_images", &hash, &jpeg_bytes(1000, 9));
    let (_, _, stranger, _) = f.primary_and_stranger(&hash);
    // As if another mirror with a different view had sent the client here.
    let url = stranger.url(&format!("/_images/{hash}/x.jpg?shimmer_hop=zz"));
    let (st, h, body) = get(&c, &url, &[]).await;
    assert_eq!(st, 200);
    assert_eq!(header(&h, "x-cache"), "MISS");
    assert_eq!(body.len(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thumbs_are_placed_by_their_own_template() {
    let f = three_nodes();
    let c = client();
    let hash = test_hash(3000);
    f.data.put("_thumbs", &hash, &jpeg_bytes(900, 3));
    let owners = f.view.owners(shimmer::fleet::Silo::Thumbs, &hash);
    for (name, m) in &f.mirrors {
        let (st, h, _) = get(&c, &m.url(&format!("/_thumbs/{hash}/thumb.jpg")), &[]).await;
        if owners.is_owner(name) {
            assert_eq!(st, 200, "owner {name}");
        } else {
            assert_eq!(st, 307, "stranger {name}");
            assert!(header(&h, "location").contains("/_thumbs/"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_requests_make_one_origin_request() {
    let s = single_node("", "");
    let hash = test_hash(4000);
    let bytes = jpeg_bytes(2 * 1024 * 1024, 4);
    s.data.put("_images", &hash, &bytes);
    let c = client();
    let url = s.mirror.url(&format!("/_images/{hash}/x.jpg"));
    let want = sha256(&bytes);
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (c, url) = (c.clone(), url.clone());
        tasks.push(tokio::spawn(async move { get(&c, &url, &[]).await }));
    }
    for t in tasks {
        let (st, _, body) = t.await.expect("task");
        assert_eq!(st, 200);
        assert_eq!(sha256(&body), want);
    }
    assert_eq!(s.origin.requests().await, 1);
}

/// Range, conditional and HEAD requests, asked once on a miss and once on a hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_conditional_and_head_on_miss_and_hit() {
    let s = single_node("", "");
    let c = client();
    let bytes = jpeg_bytes(10_000, 5);
    for (n, phase) in [(0u64, "MISS"), (1, "HIT")] {
        // A fresh hash per case so every "MISS" case really is a miss.
        let mut case = 0u64;
        let mut fresh = |warm: bool| {
            case += 1;
            let hash = test_hash(5000 + n * 100 + case);
            s.data.put("_images", &hash, &bytes);
            (hash, warm)
        };
        let warm = phase == "HIT";
        let prepare = |hash: String, warm: bool| {
            let c = c.clone();
            let url = s.mirror.url(&format!("/_images/{hash}/v.jpg"));
            async move {
                if warm {
                    let (st, _, _) = get(&c, &url, &[]).await;
                    assert_eq!(st, 200);
                }
                url
            }
        };

        let (hash, w) = fresh(warm);
        let url = prepare(hash, w).await;
        let (st, h, body) = get(&c, &url, &[("range", "bytes=100-199")]).await;
        assert_eq!(st, 206, "{phase} single range");
        assert_eq!(header(&h, "content-range"), "bytes 100-199/10000");
        assert_eq!(body, &bytes[100..200]);
        assert_eq!(header(&h, "x-cache"), phase);

        let (hash, w) = fresh(warm);
        let url = prepare(hash, w).await;
        let (st, _, body) = get(&c, &url, &[("range", "bytes=-500")]).await;
        assert_eq!(st, 206, "{phase} suffix range");
        assert_eq!(body, &bytes[9500..]);

        let (hash, w) = fresh(warm);
        let url = prepare(hash, w).await;
        let (st, h, body) = get(&c, &url, &[("range", "bytes=0-9,20-29")]).await;
        assert_eq!(st, 206, "{phase} multi range");
        assert!(header(&h, "content-type").starts_with("multipart/byteranges; boundary="));
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains("Content-Range: bytes 0-9/10000"),
            "{phase}: {text:.300}"
        );
        assert!(text.contains("Content-Range: bytes 20-29/10000"));

        let (hash, w) = fresh(warm);
        let url = prepare(hash, w).await;
        let (st, h, _) = get(&c, &url, &[("range", "bytes=20000-30000")]).await;
        assert_eq!(st, 416, "{phase} unsatisfiable range");
        assert_eq!(header(&h, "content-range"), "bytes */10000");

        let (hash, w) = fresh(warm);
        let url = prepare(hash.clone(), w).await;
        let etag = format!("\"{hash}\"");
        let (st, h, body) = get(&c, &url, &[("if-none-match", &etag)]).await;
        assert_eq!(st, 304, "{phase} if-none-match");
        assert!(body.is_empty());
        assert_eq!(header(&h, "etag"), etag);

        let (hash, w) = fresh(warm);
        let url = prepare(hash, w).await;
        let future =
            httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3600));
        let (st, _, _) = get(&c, &url, &[("if-modified-since", &future)]).await;
        assert_eq!(st, 304, "{phase} if-modified-since");
        let past = "Mon, 01 Jan 2001 00:00:00 GMT";
        let (st, _, body) = get(&c, &url, &[("if-modified-since", past)]).await;
        assert_eq!(
            (st, body.len()),
            (StatusCode::OK, 10_000),
            "{phase} modified since 2001"
        );

        let (hash, w) = fresh(warm);
        let url = prepare(hash, w).await;
        let resp = c.head(&url).send().await.expect("head");
        assert_eq!(resp.status(), 200, "{phase} HEAD");
        assert_eq!(header(resp.headers(), "content-length"), "10000");
        assert_eq!(header(resp.headers(), "x-cache"), phase);
        assert!(resp.bytes().await.expect("head body").is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_404_is_a_404_remembered_briefly() {
    let s = single_node("    not_found_ttl: 60s\n", "");
    let c = client();
    let hash = test_hash(6000);
    let url = s.mirror.url(&format!("/_images/{hash}/gone.jpg"));
    let (st, h, _) = get(&c, &url, &[]).await;
    assert_eq!(st, 404);
    assert_eq!(header(&h, "cache-control"), "public, max-age=60");
    let (st, _, _) = get(&c, &url, &[]).await;
    assert_eq!(st, 404);
    assert_eq!(
        s.origin.requests().await,
        1,
        "the second 404 went to the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_over_the_size_limit_pass_through_uncached() {
    let s = single_node("    max_object_bytes: 100K\n", "");
    let c = client();
    let hash = test_hash(7000);
    let bytes = jpeg_bytes(300 * 1024, 7);
    s.data.put("_images", &hash, &bytes);
    let url = s.mirror.url(&format!("/_images/{hash}/big.jpg"));
    for _ in 0..2 {
        let (st, h, body) = get(&c, &url, &[]).await;
        assert_eq!(st, 200);
        assert_ne!(header(&h, "x-cache"), "HIT");
        assert_eq!(sha256(&body), sha256(&bytes));
    }
    assert_eq!(s.origin.requests().await, 2);
}
