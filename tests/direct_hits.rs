//! Hits answered on the socket directly (src/proxy/direct.rs), end to end on the real
//! binary: disk hits sent with `sendfile` and memory hits in one `writev` of a head
//! kept with the object. The same bytes and head as the full path, a reload that
//! changes the head, one connection kept alive across every kind of answer (pipelined
//! too), a client that stops reading or leaves, a client that asks to close, TLS never
//! taking the path, and a file found corrupt at restart never sent.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use tempfile::TempDir;

/// The memory tier takes objects up to 64 KiB, so anything larger is a disk-only hit.
const CACHE: &str = "    max_object_bytes: 64K\n";
const SENT: &str = "shimmer_cache_sendfile_hits_total";

struct World {
    work: TempDir,
    data: DataDir,
    origin: Origin,
    cache: PathBuf,
}

impl World {
    fn new() -> World {
        let work = tempfile::tempdir().expect("tempdir");
        let data = DataDir::new(work.path().join("data"));
        let origin = Origin::start(&data.dir, work.path());
        let cache = work.path().join("cache");
        World {
            work,
            data,
            origin,
            cache,
        }
    }

    fn spec(&self, port: u16) -> String {
        let extra = format!(
            "    dir: {}\n    disk_bytes: 1G\n{CACHE}",
            path_str(&self.cache)
        );
        let origin = format!("http://{}", self.origin.addr);
        let spec = MirrorSpec {
            node: "a",
            port,
            origins: vec![origin],
            image_ilink: format!("http://127.0.0.1:{port}/_images/$hash/$id.$ext"),
            image_tlink: format!("http://127.0.0.1:{port}/_thumbs/$hash/thumb.$ext"),
            extra_cache: &extra,
            extra_origin: "",
        };
        mirror_yaml(self.work.path(), &spec)
    }

    fn mirror(&self, port: u16) -> Mirror {
        Mirror::start_yaml(self.work.path(), port, &self.spec(port))
    }

    /// An image of `len` bytes at the origin; its path on the mirror.
    fn image(&self, n: u64, len: usize) -> (String, Vec<u8>) {
        let hash = test_hash(n);
        let bytes = whole_jpeg(len, n);
        self.data.put("_images", &hash, &bytes);
        (format!("/_images/{hash}/x.jpg"), bytes)
    }
}

fn scrape(m: &Mirror) -> String {
    http_get(m.admin_addr(), "/metrics")
        .expect("GET /metrics")
        .text()
}

fn metric(m: &Mirror, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(&scrape(m), name, labels).unwrap_or(0.0)
}

fn sent(m: &Mirror) -> f64 {
    metric(m, SENT, &[("tier", "disk")])
}

fn get(m: &Mirror, path: &str) -> HttpResponse {
    http_get(m.addr, path).expect("GET from the mirror")
}

fn conn(m: &Mirror) -> HttpConn<std::net::TcpStream> {
    HttpConn::new(tcp_connect(m.addr).expect("connect"))
}

/// The head without the fields that differ from one answer to the next.
fn stable_head(r: &HttpResponse) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .filter(|(k, _)| k != "date" && k != "age")
        .collect();
    h.sort();
    h
}

#[test]
fn a_disk_hit_is_sent_whole_with_the_head_the_full_path_writes() {
    let w = World::new();
    let m = w.mirror(free_port());
    let (path, bytes) = w.image(1, 300_000);
    let mut c = conn(&m);
    let host = m.addr.to_string();
    let miss = c.request("GET", &host, &path, &[], &[]).expect("miss");
    assert_eq!((miss.status, miss.header("x-cache")), (200, Some("MISS")));
    assert_eq!(sent(&m), 0.0);

    let hit = c.request("GET", &host, &path, &[], &[]).expect("hit");
    assert_eq!((hit.status, hit.header("x-cache")), (200, Some("HIT")));
    assert_eq!(sha256(&hit.body), sha256(&bytes));
    assert_eq!(sent(&m), 1.0, "sent with sendfile");

    // A conditional that does not match takes the full path to the same 200.
    let full = c
        .request("GET", &host, &path, &[("If-None-Match", "\"other\"")], &[])
        .expect("full path");
    assert_eq!(sent(&m), 1.0, "a conditional is the full path's");
    assert_eq!((full.status, full.header("x-cache")), (200, Some("HIT")));
    assert_eq!(full.body, hit.body);
    assert_eq!(stable_head(&hit), stable_head(&full));
    for name in ["date", "age", "etag", "content-type", "cache-control"] {
        assert!(hit.header(name).is_some(), "no {name}: {:?}", hit.headers);
    }
    assert_eq!(hit.header("connection"), Some("keep-alive"));

    // Counted like any hit, with its bytes.
    let scrape = scrape(&m);
    let hits = metric_value(
        &scrape,
        "shimmer_requests_total",
        &[("silo", "_images"), ("outcome", "hit")],
    );
    assert_eq!(hits, Some(2.0), "{scrape}");
}

/// Method, path, an extra request header, the body expected.
type Case<'a> = (&'a str, &'a str, Option<(&'a str, &'a str)>, Vec<u8>);

#[test]
fn one_connection_keeps_alive_across_sent_hits_memory_hits_misses_and_pipelining() {
    let w = World::new();
    let m = w.mirror(free_port());
    let host = m.addr.to_string();
    let (d1, b1) = w.image(10, 200_000);
    let (d2, b2) = w.image(11, 90_000);
    let (small, bs) = w.image(12, 20_000);
    let (fresh, bf) = w.image(13, 150_000);
    let mut c = conn(&m);
    for p in [&d1, &d2, &small] {
        assert_eq!(
            c.request("GET", &host, p, &[], &[]).expect("fill").status,
            200
        );
    }
    let before = sent(&m);
    let cases: Vec<Case> = vec![
        ("GET", &d1, None, b1.clone()),
        ("GET", &small, None, bs.clone()),
        ("GET", &d2, None, b2.clone()),
        ("GET", &fresh, None, bf.clone()),
        ("HEAD", &d2, None, Vec::new()),
        (
            "GET",
            &d1,
            Some(("Range", "bytes=10-19")),
            b1[10..20].to_vec(),
        ),
        ("GET", &d2, None, b2.clone()),
        ("GET", &d1, None, b1.clone()),
    ];
    // Once one at a time, then all pipelined in one write.
    for (method, path, extra, want) in &cases {
        let headers: Vec<(&str, &str)> = extra.iter().copied().collect();
        let r = c.request(method, &host, path, &headers, &[]).expect(path);
        assert_ne!(r.header("connection"), Some("close"), "{method} {path}");
        assert_eq!(&r.body, want, "{method} {path} {extra:?}");
    }
    for (method, path, extra, _) in &cases {
        let headers: Vec<(&str, &str)> = extra.iter().copied().collect();
        c.send(method, &host, path, &headers, &[]).expect("send");
    }
    for (method, path, extra, want) in &cases {
        let r = c.read_response(*method == "HEAD").expect(path);
        assert_eq!(&r.body, want, "pipelined {method} {path} {extra:?}");
    }
    // d1 and d2 whole, twice each per round (4 a round), and the second round's GET of
    // the object the first round filled.
    assert_eq!(sent(&m) - before, 9.0);
}

#[test]
fn a_large_hit_to_a_client_that_reads_late_arrives_whole_and_the_connection_lives_on() {
    let w = World::new();
    let m = w.mirror(free_port());
    let host = m.addr.to_string();
    let (path, bytes) = w.image(20, 24 << 20);
    let mut c = conn(&m);
    assert_eq!(
        c.request("GET", &host, &path, &[], &[])
            .expect("fill")
            .status,
        200
    );
    // The socket buffers fill long before 24 MiB: the mirror must wait for room.
    c.send("GET", &host, &path, &[], &[]).expect("send");
    std::thread::sleep(Duration::from_millis(300));
    let r = c.read_response(false).expect("the large hit");
    assert_eq!(r.header("x-cache"), Some("HIT"));
    assert_eq!(sha256(&r.body), sha256(&bytes));
    assert_eq!(sent(&m), 1.0);
    let again = c.request("GET", &host, &path, &[], &[]).expect("again");
    assert_eq!(sha256(&again.body), sha256(&bytes));
}

#[test]
fn a_client_that_leaves_mid_body_is_counted_and_the_mirror_serves_on() {
    let w = World::new();
    let m = w.mirror(free_port());
    let (path, bytes) = w.image(30, 24 << 20);
    assert_eq!(get(&m, &path).status, 200);
    let errors = || {
        metric(
            &m,
            "shimmer_requests_total",
            &[("silo", "_images"), ("outcome", "error")],
        )
    };
    let before = errors();
    let mut s = tcp_connect(m.addr).expect("connect");
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
    let mut some = vec![0u8; 100_000];
    s.read_exact(&mut some).expect("the first bytes");
    drop(s); // with most of 24 MiB unread: the mirror's next send fails
    wait_until("the cut answer counted as an error", || {
        (errors() > before).then_some(())
    });
    let r = get(&m, &path);
    assert_eq!(sha256(&r.body), sha256(&bytes));
}

#[test]
fn a_client_that_asks_to_close_gets_connection_close_and_the_end_of_the_stream() {
    let w = World::new();
    let m = w.mirror(free_port());
    let (path, bytes) = w.image(40, 100_000);
    assert_eq!(get(&m, &path).status, 200);
    for (version, ask) in [("HTTP/1.1", "Connection: close\r\n"), ("HTTP/1.0", "")] {
        let mut s = tcp_connect(m.addr).expect("connect");
        write!(s, "GET {path} {version}\r\nHost: x\r\n{ask}\r\n").expect("request");
        let mut all = Vec::new();
        s.read_to_end(&mut all).expect("until the mirror closes");
        let end = all
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a whole head");
        let text = String::from_utf8_lossy(&all[..end]).to_ascii_lowercase();
        assert!(text.contains("connection: close"), "{version}: {text}");
        assert!(
            all.ends_with(&bytes),
            "{version}: the whole body, then the end"
        );
    }
    assert_eq!(sent(&m), 2.0);
}

#[test]
fn a_disk_hit_over_tls_is_read_and_encrypted_never_sent_as_is() {
    let w = World::new();
    let cert = make_cert(w.work.path(), "tls", &["localhost"]);
    let (port, tls_port) = (free_port(), free_port());
    let tls = format!(
        "  tls:\n    listen: [\"127.0.0.1:{tls_port}\"]\n    certs:\n      - {{cert: \"{}\", key: \"{}\"}}\n",
        path_str(&cert.cert),
        path_str(&cert.key)
    );
    let yaml = w
        .spec(port)
        .replacen("shimmer:\n", &format!("shimmer:\n{tls}"), 1);
    let mut m = Mirror::start_yaml(w.work.path(), port, &yaml);
    let tls_addr: SocketAddr = format!("127.0.0.1:{tls_port}").parse().expect("addr");
    wait_for_port(&mut m.proc, tls_addr, "TLS listener");
    let (path, bytes) = w.image(50, 300_000);
    let stream = tls_connect(tls_addr, Some("localhost"), Some(b"\x08http/1.1")).expect("TLS");
    let mut c = HttpConn::new(stream);
    for want in ["MISS", "HIT", "HIT"] {
        let r = c
            .request("GET", "localhost", &path, &[], &[])
            .expect("TLS GET");
        assert_eq!((r.status, r.header("x-cache")), (200, Some(want)));
        assert_eq!(sha256(&r.body), sha256(&bytes));
    }
    assert_eq!(sent(&m), 0.0, "TLS hits are read and encrypted");
    // The plain listener of the same mirror sends it.
    assert_eq!(sha256(&get(&m, &path).body), sha256(&bytes));
    assert_eq!(sent(&m), 1.0);
}

#[test]
fn a_file_corrupted_while_the_mirror_was_down_is_never_sent() {
    let w = World::new();
    let port = free_port();
    let mut m = w.mirror(port);
    let (good, bg) = w.image(60, 200_000);
    let (bad, bb) = w.image(61, 200_000);
    for p in [&good, &bad] {
        assert_eq!(get(&m, p).status, 200);
    }
    m.proc.signal(libc::SIGKILL);
    let _ = m.proc.child.wait();
    let file = cache_path(&w.cache, "_images", &test_hash(61));
    let mut on_disk = std::fs::read(&file).expect("cache file");
    let at = on_disk.len() - 5;
    on_disk[at] ^= 0x40;
    std::fs::write(&file, on_disk).expect("corrupt it");
    drop(m);

    let m = w.mirror(port);
    // Found at restart: read and checked once, then sent.
    assert_eq!(sha256(&get(&m, &good).body), sha256(&bg));
    assert_eq!(sent(&m), 0.0, "the first hit after a restart is read");
    assert_eq!(sha256(&get(&m, &good).body), sha256(&bg));
    assert_eq!(sent(&m), 1.0);
    // The corrupt one fails its check (the answer is cut, never a clean end) and is
    // removed; the next request fetches it again from the origin.
    let cut = http_get(m.addr, &bad);
    assert!(
        cut.as_ref().map_or(true, |r| r.body != bb),
        "corrupt bytes were served whole"
    );
    wait_until("the corrupt file removed", || {
        (!file.exists()).then_some(())
    });
    let r = get(&m, &bad);
    assert_eq!(
        (r.header("x-cache"), sha256(&r.body)),
        (Some("MISS"), sha256(&bb))
    );
    assert_eq!(sent(&m), 1.0);
}

#[test]
fn a_memory_hit_has_the_full_paths_head_and_a_reload_remakes_it() {
    let w = World::new();
    let port = free_port();
    let with_cache_control = |cc: &str| {
        w.spec(port).replacen(
            "shimmer:\n",
            &format!("shimmer:\n  http:\n    cache_control: \"{cc}\"\n"),
            1,
        )
    };
    let m = Mirror::start_yaml(
        w.work.path(),
        port,
        &with_cache_control("public, max-age=111"),
    );
    let (path, bytes) = w.image(70, 20_000); // fits the memory tier
    let (on_disk, disk_bytes) = w.image(71, 200_000); // does not
    let mut c = conn(&m);
    let host = m.addr.to_string();
    for p in [&on_disk, &on_disk] {
        let r = c
            .request("GET", &host, p, &[], &[])
            .expect("disk fill and hit");
        assert_eq!(r.header("cache-control"), Some("public, max-age=111"));
    }
    assert_eq!(sent(&m), 1.0, "the disk hit was sent, its head kept");
    assert_eq!(
        c.request("GET", &host, &path, &[], &[])
            .expect("miss")
            .status,
        200
    );
    let hit = c.request("GET", &host, &path, &[], &[]).expect("hit");
    let full = c
        .request("GET", &host, &path, &[("If-None-Match", "\"other\"")], &[])
        .expect("full path");
    assert_eq!(
        (hit.header("x-cache"), full.header("x-cache")),
        (Some("HIT"), Some("HIT"))
    );
    assert_eq!(hit.body, bytes);
    assert_eq!(stable_head(&hit), stable_head(&full));
    assert_eq!(hit.header("cache-control"), Some("public, max-age=111"));
    for name in ["date", "age", "connection"] {
        let n = hit
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .count();
        assert_eq!(n, 1, "{name} once: {:?}", hit.headers);
    }
    assert_eq!(sent(&m), 1.0, "a memory hit is no sendfile");

    // A reload changes the answer headers: the head kept with the object is made again.
    let yaml = std::fs::read_to_string(&m.conf).expect("config");
    let yaml = yaml.replace("public, max-age=111", "public, max-age=222");
    std::fs::write(&m.conf, yaml).expect("new config");
    m.proc.signal(libc::SIGHUP);
    wait_until("the reloaded cache-control on a memory hit", || {
        let r = c.request("GET", &host, &path, &[], &[]).ok()?;
        assert_eq!(r.body, bytes);
        (r.header("cache-control") == Some("public, max-age=222")).then_some(())
    });
    // The disk file's kept head too.
    let r = c
        .request("GET", &host, &on_disk, &[], &[])
        .expect("disk hit");
    assert_eq!(r.header("cache-control"), Some("public, max-age=222"));
    assert_eq!(sha256(&r.body), sha256(&disk_bytes));
    assert_eq!(sent(&m), 2.0);
}

#[test]
fn a_get_with_a_body_takes_the_full_path_which_closes_after_it() {
    let w = World::new();
    let m = w.mirror(free_port());
    let host = m.addr.to_string();
    let (path, bytes) = w.image(80, 200_000);
    let mut c = conn(&m);
    let fill = c.request("GET", &host, &path, &[], &[]).expect("fill");
    assert_eq!(fill.status, 200);
    // Its body is not read when request_filter runs, so it is not answered around
    // Pingora: the full path answers and, its body unread, closes (Pingora's choice).
    let r = c
        .request("GET", &host, &path, &[], b"hello")
        .expect("GET with a body");
    assert_eq!((r.status, r.header("x-cache")), (200, Some("HIT")));
    assert_eq!(sha256(&r.body), sha256(&bytes));
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(sent(&m), 0.0, "not sent around Pingora");
    let mut rest = Vec::new();
    c.stream.read_to_end(&mut rest).expect("the mirror closes");
    assert!(rest.is_empty(), "nothing after the answer: {rest:?}");
    let r = get(&m, &path);
    assert_eq!(sha256(&r.body), sha256(&bytes));
    assert_eq!(sent(&m), 1.0);
}

/// On a kernel without `cachestat` (before Linux 6.5) the mirror cannot tell whether a
/// file's pages are cached, so it never sends one from the event loop: every disk hit is
/// read and arrives whole. The mirror runs under a seccomp filter that answers
/// `cachestat` with ENOSYS, as such a kernel does; the same cache under a mirror without
/// the filter is sent.
#[test]
fn without_cachestat_disk_hits_are_read_never_sent_and_arrive_whole() {
    const SYS_CACHESTAT: u32 = 451; // the same number on every architecture
    let w = World::new();
    let (path, bytes) = w.image(90, 200_000);
    let port = free_port();
    let spawn = |args: &[&str], log| Proc::spawn_without_syscall(SYS_CACHESTAT, args, log);
    let m = Mirror::start_yaml_with(w.work.path(), port, &w.spec(port), spawn);
    for what in ["the fill", "a disk hit", "another"] {
        let r = get(&m, &path);
        assert_eq!(r.status, 200, "{what}");
        assert_eq!(sha256(&r.body), sha256(&bytes), "{what}");
    }
    assert_eq!(
        metric(
            &m,
            "shimmer_requests_total",
            &[("silo", "_images"), ("outcome", "hit")]
        ),
        2.0,
        "two hits, from the disk tier"
    );
    assert_eq!(
        sent(&m),
        0.0,
        "nothing sent without knowing its pages are cached"
    );
    drop(m);

    let port = free_port();
    let m = w.mirror(port);
    wait_until(
        "the hit sent, once the restart scan has indexed and a read checked it",
        || {
            let r = get(&m, &path);
            assert_eq!(sha256(&r.body), sha256(&bytes));
            (sent(&m) >= 1.0).then_some(())
        },
    );
}
