//! The disk tier end to end: the real binary and the built-in origin, a cache directory
//! that outlives the mirror process.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use reqwest::header::HeaderMap;
use reqwest::{Client, StatusCode};
use tempfile::TempDir;

struct Setup {
    work: TempDir,
    data: DataDir,
    origin: Origin,
    port: u16,
    cache: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let work = tempfile::tempdir().expect("tempdir");
        let data = DataDir::new(work.path().join("data"));
        let origin = Origin::start(&data.dir, work.path());
        let cache = work.path().join("cache");
        Setup {
            work,
            data,
            origin,
            port: free_port(),
            cache,
        }
    }

    fn mirror(&self, extra: &str) -> Mirror {
        let lines = format!(
            "    dir: {}\n    disk_bytes: 1G\n{extra}",
            path_str(&self.cache)
        );
        owner_mirror(
            self.work.path(),
            &format!("http://{}", self.origin.addr),
            self.port,
            &lines,
        )
    }
}

async fn get(c: &Client, url: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, Vec<u8>) {
    let mut req = c.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    let (status, h) = (resp.status(), resp.headers().clone());
    (status, h, resp.bytes().await.expect("body").to_vec())
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn stop(mut m: Mirror) {
    m.proc.signal(libc::SIGKILL);
    let _ = m.proc.child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_survive_a_restart_and_are_served_from_disk() {
    let s = Setup::new();
    let c = client();
    let (small, big) = (whole_jpeg(30_000, 1), whole_jpeg(3 << 20, 2));
    let (hs, hb) = (test_hash(100), test_hash(101));
    s.data.put("_images", &hs, &small);
    s.data.put("_thumbs", &hb, &big);
    let m = s.mirror("");
    for (silo, hash, bytes) in [("_images", &hs, &small), ("_thumbs", &hb, &big)] {
        let (st, h, body) = get(&c, &m.url(&format!("/{silo}/{hash}/x.jpg")), &[]).await;
        assert_eq!((st, header(&h, "x-cache")), (StatusCode::OK, "MISS"));
        assert_eq!(sha256(&body), sha256(bytes));
        assert!(
            cache_path(&s.cache, silo, hash).is_file(),
            "{silo} not on disk"
        );
    }
    stop(m);
    let m = s.mirror("");
    for (silo, hash, bytes) in [("_images", &hs, &small), ("_thumbs", &hb, &big)] {
        let url = m.url(&format!("/{silo}/{hash}/y.jpg"));
        let (st, h, body) = get(&c, &url, &[]).await;
        assert_eq!(
            (st, header(&h, "x-cache")),
            (StatusCode::OK, "HIT"),
            "{silo}"
        );
        assert_eq!(sha256(&body), sha256(bytes));
        assert_eq!(header(&h, "etag"), format!("\"{hash}\""));
        assert_eq!(header(&h, "content-type"), "image/jpeg");
        // Range and HEAD on a disk hit.
        let (st, h, body) = get(&c, &url, &[("range", "bytes=1000-1999")]).await;
        assert_eq!(st, 206);
        assert_eq!(
            header(&h, "content-range"),
            format!("bytes 1000-1999/{}", bytes.len())
        );
        assert_eq!(body, &bytes[1000..2000]);
        let resp = c.head(&url).send().await.expect("head");
        assert_eq!(resp.status(), 200);
        assert_eq!(
            header(resp.headers(), "content-length"),
            bytes.len().to_string()
        );
    }
    assert_eq!(
        s.origin.requests().await,
        2,
        "the restart refetched something"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_requests_make_one_origin_request_with_the_disk_tier() {
    let s = Setup::new();
    let c = client();
    // One that fits the memory tier and one that does not (disk only).
    let small = whole_jpeg(2 << 20, 3);
    let big = whole_jpeg(6 << 20, 4);
    let (hs, hb) = (test_hash(200), test_hash(201));
    s.data.put("_images", &hs, &small);
    s.data.put("_images", &hb, &big);
    let m = s.mirror("    max_object_bytes: 4M\n");
    for (hash, bytes) in [(&hs, &small), (&hb, &big)] {
        let url = m.url(&format!("/_images/{hash}/x.jpg"));
        let want = sha256(bytes);
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (c, url) = (c.clone(), url.clone());
            tasks.push(tokio::spawn(async move { get(&c, &url, &[]).await }));
        }
        for t in tasks {
            let (st, _, body) = t.await.expect("task");
            assert_eq!(st, 200);
            assert_eq!(sha256(&body), want);
        }
    }
    let log = m.proc.log_text();
    let odd: Vec<&str> = log.lines().filter(|l| !l.contains("INFO")).collect();
    assert_eq!(s.origin.requests().await, 2, "{}", odd.join("\n"));
}

/// Sum of the cache files' sizes, each rounded up to 4 KiB (how the tier charges them).
fn charged(files: &[PathBuf]) -> u64 {
    files
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()).div_ceil(4096) * 4096)
        .sum()
}

fn objects_in(cache: &Path) -> Vec<PathBuf> {
    files_under(cache)
        .into_iter()
        .filter(|p| !p.starts_with(cache.join(".tmp")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twice_the_budget_stays_within_budget_and_keeps_the_most_recently_used() {
    let s = Setup::new();
    let c = client();
    // 16 MiB of disk, 512 KiB objects (disk only: the memory tier takes up to 64 KiB).
    let budget: u64 = 16 << 20;
    let extra = "    max_object_bytes: 64K\n";
    let lines = format!(
        "    dir: {}\n    disk_bytes: 16M\n{extra}",
        path_str(&s.cache)
    );
    let m = owner_mirror(
        s.work.path(),
        &format!("http://{}", s.origin.addr),
        s.port,
        &lines,
    );
    let len = 512 << 10;
    let n = 64; // 32 MiB: twice the budget
    let hashes: Vec<String> = (0..n).map(|i| test_hash(300 + i)).collect();
    for (i, h) in hashes.iter().enumerate() {
        s.data.put("_images", h, &whole_jpeg(len, i as u64));
    }
    let fetch = |i: usize| {
        let (c, url) = (c.clone(), m.url(&format!("/_images/{}/x.jpg", hashes[i])));
        async move {
            let (st, h, body) = get(&c, &url, &[]).await;
            assert_eq!((st, body.len()), (StatusCode::OK, len));
            header(&h, "x-cache").to_owned()
        }
    };
    // A hot set of six is used again after every ten new objects; everything else is
    // used once. 31 objects fit the budget.
    let hot = 0..6usize;
    for i in 0..n as usize {
        fetch(i).await;
        if i >= 6 && i % 10 == 0 {
            for h in hot.clone() {
                assert_eq!(fetch(h).await, "HIT", "hot object {h} was evicted at {i}");
            }
        }
        let files = objects_in(&s.cache);
        assert!(
            charged(&files) <= budget + len as u64 + 4096,
            "over budget after {i}: {} bytes",
            charged(&files)
        );
    }
    let files = objects_in(&s.cache);
    let on_disk = |i: usize| cache_path(&s.cache, "_images", &hashes[i]).exists();
    println!(
        "{} objects, {} bytes on disk for a {budget}-byte budget after {} bytes were cached",
        files.len(),
        charged(&files),
        n * len as u64
    );
    for i in hot.chain(41..n as usize) {
        assert!(on_disk(i), "recently used object {i} was evicted");
    }
    for i in 6..=36 {
        assert!(!on_disk(i), "least recently used object {i} was kept");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_shm_cached_directory_is_adopted_and_served_as_hits() {
    let s = Setup::new();
    let c = client();
    let jpeg = whole_jpeg(40_000, 5);
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    png.extend(jpeg_bytes(5000, 6).iter().skip(4));
    png.extend_from_slice(b"\0\0\0\0IEND\xAE\x42\x60\x82");
    let cut = &whole_jpeg(40_000, 7)[..30_000]; // shm-cached crashed mid-write
    let (hj, hp, hc) = (test_hash(400), test_hash(401), test_hash(402));
    let lm = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    for (silo, hash, bytes) in [
        ("_images", &hj, &jpeg[..]),
        ("_thumbs", &hp, &png[..]),
        ("_images", &hc, cut),
    ] {
        let path = cache_path(&s.cache, silo, hash);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, bytes).expect("legacy file");
        let f = std::fs::File::options()
            .write(true)
            .open(&path)
            .expect("open");
        f.set_modified(lm).expect("mtime");
    }
    s.data.put("_images", &hc, &whole_jpeg(40_000, 7));
    let m = s.mirror("");
    for (silo, hash, bytes, ctype) in [
        ("_images", &hj, &jpeg, "image/jpeg"),
        ("_thumbs", &hp, &png, "image/png"),
    ] {
        let (st, h, body) = get(&c, &m.url(&format!("/{silo}/{hash}/old.x")), &[]).await;
        assert_eq!((st, header(&h, "x-cache")), (StatusCode::OK, "HIT"));
        assert_eq!(header(&h, "content-type"), ctype);
        assert_eq!(header(&h, "last-modified"), "Fri, 14 Jul 2017 02:40:00 GMT");
        assert_eq!(body, *bytes);
    }
    assert_eq!(
        s.origin.requests().await,
        0,
        "adopted files went to the origin"
    );
    // The truncated one is not served: it is refetched and replaced.
    let (st, h, body) = get(&c, &m.url(&format!("/_images/{hc}/x.jpg")), &[]).await;
    assert_eq!((st, header(&h, "x-cache")), (StatusCode::OK, "MISS"));
    assert_eq!(body.len(), 40_000);
    assert_eq!(s.origin.requests().await, 1);
    let line = wait_for_log(&m.proc, "disk index rebuilt", Duration::from_secs(20));
    let line = line.expect("the index rebuild finishes");
    assert!(line.contains("2 adopted from shm-cached"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_cache_file_is_a_miss_refetched_and_replaced() {
    let s = Setup::new();
    let c = client();
    let bytes = whole_jpeg(100_000, 8);
    let hash = test_hash(500);
    s.data.put("_images", &hash, &bytes);
    let m = s.mirror("");
    let url = m.url(&format!("/_images/{hash}/x.jpg"));
    get(&c, &url, &[]).await;
    stop(m);
    let path = cache_path(&s.cache, "_images", &hash);
    let mut file = std::fs::read(&path).expect("cache file");
    file[30] ^= 0x10; // inside the header
    std::fs::write(&path, &file).expect("flip a byte");
    let m = s.mirror("");
    let (st, h, body) = get(&c, &url, &[]).await;
    assert_eq!((st, header(&h, "x-cache")), (StatusCode::OK, "MISS"));
    assert_eq!(sha256(&body), sha256(&bytes));
    stop(m);
    // Cut short this time.
    let file = std::fs::read(&path).expect("rewritten cache file");
    std::fs::write(&path, &file[..file.len() - 100]).expect("truncate");
    let _m = s.mirror("");
    let (st, h, body) = get(&c, &url, &[]).await;
    assert_eq!((st, header(&h, "x-cache")), (StatusCode::OK, "MISS"));
    assert_eq!(sha256(&body), sha256(&bytes));
    assert_eq!(s.origin.requests().await, 3);
    let replaced = std::fs::metadata(&path).expect("replaced").len();
    assert!(
        replaced > bytes.len() as u64,
        "a whole object is on disk again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_cache_directory_still_serves_from_the_origin() {
    // Root ignores permission bits (and CI runs as root), so the directory is made
    // unusable the way nothing can override: its parent is a regular file.
    let s = Setup::new();
    let blocker = s.work.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").expect("blocker file");
    let lines = format!(
        "    dir: {}/cache\n    disk_bytes: 1G\n",
        path_str(&blocker)
    );
    let origin = format!("http://{}", s.origin.addr);
    // `shimmer -t` accepts it: the directory is checked when the mirror starts.
    let conf = s.work.path().join("check.yaml");
    let spec = MirrorSpec {
        node: "a",
        port: s.port,
        origins: vec![origin.clone()],
        image_ilink: "http://x/_images/$hash/$id.$ext".into(),
        image_tlink: "http://x/_thumbs/$hash/t.$ext".into(),
        extra_cache: &lines,
        extra_origin: "",
    };
    std::fs::write(&conf, mirror_yaml(s.work.path(), &spec)).expect("config");
    let check = std::process::Command::new(BIN)
        .args(["-t", "-c", path_str(&conf)])
        .output()
        .expect("shimmer -t");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let m = owner_mirror(s.work.path(), &origin, s.port, &lines);
    let c = client();
    let bytes = whole_jpeg(50_000, 9);
    let big = whole_jpeg(5 << 20, 10);
    let (h1, h2) = (test_hash(600), test_hash(601));
    s.data.put("_images", &h1, &bytes);
    s.data.put("_images", &h2, &big);
    for (hash, b) in [(&h1, &bytes), (&h2, &big)] {
        let url = m.url(&format!("/_images/{hash}/x.jpg"));
        let (st, h, body) = get(&c, &url, &[]).await;
        assert_eq!((st, header(&h, "x-cache")), (StatusCode::OK, "MISS"));
        assert_eq!(sha256(&body), sha256(b));
        let (st, h, body) = get(&c, &url, &[]).await;
        assert_eq!((st, header(&h, "x-cache")), (StatusCode::OK, "HIT"));
        assert_eq!(sha256(&body), sha256(b));
    }
    assert!(
        m.proc.log_text().contains("disk cache write failed"),
        "the unusable directory is logged: {}",
        m.proc.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_and_head_on_a_miss_are_cut_from_the_fill() {
    let s = Setup::new();
    // A fresh connection per request: a partial answer to a miss ends while the fill
    // still reads the origin, and reusing that connection at once is the proxy's race
    // to handle (see response_filter), not the disk tier's.
    let c = Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    // The memory tier takes up to 64 KiB: the big one is streamed from the temp file.
    let m = s.mirror("    max_object_bytes: 64K\n");
    for (n, len) in [(0u64, 10_000usize), (1, 300_000)] {
        let bytes = whole_jpeg(len, 20 + n);
        let (h1, h2, h3) = (test_hash(700 + n), test_hash(710 + n), test_hash(720 + n));
        for h in [&h1, &h2, &h3] {
            s.data.put("_images", h, &bytes);
        }
        let url = |h: &str| m.url(&format!("/_images/{h}/r.jpg"));
        let (st, h, body) = get(&c, &url(&h1), &[("range", "bytes=100-199")]).await;
        assert_eq!(
            (st, header(&h, "x-cache")),
            (StatusCode::PARTIAL_CONTENT, "MISS")
        );
        assert_eq!(body, &bytes[100..200]);
        let (st, _, body) = get(&c, &url(&h2), &[("range", "bytes=-500")]).await;
        assert_eq!(st, 206);
        assert_eq!(body, &bytes[len - 500..]);
        let resp = c.head(url(&h3)).send().await.expect("head");
        assert_eq!(resp.status(), 200);
        assert_eq!(header(resp.headers(), "content-length"), len.to_string());
        // Each was cached whole all the same.
        for h in [&h1, &h2, &h3] {
            let (st, hd, body) = get(&c, &url(h), &[]).await;
            assert_eq!((st, header(&hd, "x-cache")), (StatusCode::OK, "HIT"));
            assert_eq!(sha256(&body), sha256(&bytes));
        }
    }
    assert_eq!(s.origin.requests().await, 6);
}
