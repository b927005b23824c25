//! Warm copies when something goes wrong, with real mirrors and the real origin on
//! 127.0.0.1: a copy cut half way through its body (a misbehaving peer that closes
//! mid-body, `common::fake_peer`), a copy larger than the receiver's cache, and a
//! notice to a peer that is frozen (SIGSTOP) or killed (SIGKILL) while the sender still
//! counts it up.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use common::fake_peer::{head, FakePeer, Reply};
use common::fleet::*;
use common::*;
use shimmer::object::{Md5, ObjectRef, Silo};
use shimmer::peers::hop::FleetToken;

/// Fast probes that never take a peer out (fall 1000): a peer is down in these tests
/// only when the test says so, so the notices are surely sent, not dropped as
/// `peer_down`.
const HEALTH: &str =
    "  health:\n    interval: 200ms\n    timeout: 300ms\n    rise: 1\n    fall: 1000\n";

const COPY_RESULTS: [&str; 6] = [
    "copied",
    "held",
    "gone",
    "too_large",
    "not_admitted",
    "failed",
];

/// The config lines under `shimmer:` every mirror here gets (beyond `mirror_yaml`).
fn fleet_lines(work: &Path, warm: &str) -> String {
    format!(
        "  fleet_token_file: {}/fleet.token\n{HEALTH}  fleet:\n    fill_timeout: 300ms\n    warm_secondary:\n{warm}",
        path_str(work)
    )
}

/// A mirror named by its port in a fleet of `ports` (weights 5 each), with
/// `cache` lines under `shimmer.cache:` and `warm` lines under `warm_secondary:`.
fn start_member(
    work: &Path,
    origin: SocketAddr,
    port: u16,
    ports: &[u16],
    cache: &str,
    warm: &str,
) -> Mirror {
    let yaml = member_yaml(work, origin, port, ports, cache, warm);
    Mirror::start_yaml(work, port, &yaml)
}

fn member_yaml(
    work: &Path,
    origin: SocketAddr,
    port: u16,
    ports: &[u16],
    cache: &str,
    warm: &str,
) -> String {
    let weights = vec![5; ports.len()];
    let yaml = mirror_yaml(
        work,
        &MirrorSpec {
            node: &port.to_string(),
            port,
            origins: vec![format!("http://{origin}")],
            image_ilink: fleet_template(ports, &weights, "_images"),
            image_tlink: fleet_template(ports, &weights, "_thumbs"),
            extra_cache: cache,
            extra_origin: "",
        },
    );
    format!("{yaml}{}", fleet_lines(work, warm))
}

fn metric(m: &Mirror, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = http_get(m.admin_addr(), "/metrics")
        .map(|r| r.text())
        .unwrap_or_default();
    metric_value(&text, name, labels).unwrap_or(0.0)
}

fn copies(m: &Mirror) -> HashMap<&'static str, f64> {
    COPY_RESULTS
        .iter()
        .map(|r| (*r, metric(m, "shimmer_warm_copies_total", &[("result", r)])))
        .collect()
}

/// Waits until `m` has finished `n` more pulls than `before` counted; returns the counts.
fn wait_pulls(
    m: &Mirror,
    before: &HashMap<&'static str, f64>,
    n: f64,
) -> HashMap<&'static str, f64> {
    wait_until("the pull to end", || {
        let now = copies(m);
        let done: f64 = COPY_RESULTS.iter().map(|r| now[r] - before[r]).sum();
        (done >= n).then_some(now)
    })
}

/// Whether `m` holds the image in any tier (admin `/lookup`).
fn held(m: &Mirror, hash: &str) -> bool {
    let r = http_request(m.admin_addr(), "POST", "/lookup", &[], hash.as_bytes()).expect("lookup");
    assert_eq!(r.status, 200, "lookup answered");
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("lookup JSON");
    let missing = v["_images"]["missing"].as_array().expect("missing list");
    !missing.iter().any(|h| h == hash)
}

/// GET of the image at `m`: (status, x-cache, body).
fn get_image(m: &Mirror, hash: &str) -> (u16, String, Vec<u8>) {
    let r = http_get(m.addr, &format!("/_images/{hash}/1.jpg")).expect("GET");
    let x_cache = r.header("x-cache").unwrap_or("").to_owned();
    (r.status, x_cache, r.body)
}

/// A warm notice for `hash`, signed as node `from` with the fleet token, POSTed to `m`.
fn notice(m: &Mirror, from: &str, hash: &str) {
    let token = FleetToken::new(FLEET_TOKEN.as_bytes()).expect("token");
    let obj = ObjectRef::new(Silo::Images, Md5::parse(hash).expect("md5"));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let body = format!("_images/{hash} {}\n", token.sign(from, obj, now));
    let r = http_request(m.addr, "POST", "/_shimmer/warm", &[], body.as_bytes()).expect("notice");
    assert_eq!(r.status, 202, "the notice was taken: {}", r.text());
}

/// How the fake peer frames the copy it cuts half way.
#[derive(Clone, Copy, Debug)]
enum Framing {
    ContentLength,
    Chunked,
    /// Neither: the body runs to the close, so a cut looks like an end.
    Unframed,
}

fn cut_copy(framing: Framing, whole: &[u8]) -> Vec<u8> {
    let half = &whole[..whole.len() / 2];
    let mut out = match framing {
        Framing::ContentLength => head(
            "200 OK",
            &[
                "Content-Type: image/jpeg",
                &format!("Content-Length: {}", whole.len()),
            ],
        ),
        Framing::Chunked => {
            let mut h = head(
                "200 OK",
                &["Content-Type: image/jpeg", "Transfer-Encoding: chunked"],
            );
            h.extend_from_slice(format!("{:x}\r\n", half.len()).as_bytes());
            h
        }
        Framing::Unframed => head("200 OK", &["Content-Type: image/jpeg", "Connection: close"]),
    };
    out.extend_from_slice(half);
    if let Framing::Chunked = framing {
        // The chunk is complete; the next one (and the terminal one) never come.
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Every file under the disk tier's temp directory.
fn temp_files(cache: &Path) -> Vec<PathBuf> {
    files_under(&cache.join(".tmp"))
}

/// A copy that stops half way, whatever its framing, stores nothing in memory or on
/// disk: the pull is counted failed, the image is not held, and the next request for
/// it is a miss filled whole from the origin, then a hit with the same bytes.
#[test]
fn a_warm_copy_cut_mid_body_stores_nothing_and_the_next_request_is_filled_whole() {
    for disk in [false, true] {
        let work = tempfile::tempdir().expect("tempdir");
        std::fs::write(work.path().join("fleet.token"), FLEET_TOKEN).expect("token file");
        let data = DataDir::new(work.path().join("data"));
        let origin = Origin::start(&data.dir, work.path());
        let cases: Vec<(Framing, String, Vec<u8>)> =
            [Framing::ContentLength, Framing::Chunked, Framing::Unframed]
                .into_iter()
                .enumerate()
                .map(|(i, framing)| {
                    let hash = test_hash(700 + i as u64 + if disk { 10 } else { 0 });
                    let whole = jpeg_bytes(200_000 + i * 1000, i as u64);
                    data.put("_images", &hash, &whole);
                    (framing, hash, whole)
                })
                .collect();
        // The fake peer cuts every copy; asked only-if-cached for a miss, it has nothing.
        let replies: HashMap<String, Vec<u8>> = cases
            .iter()
            .map(|(f, h, w)| (format!("/_images/{h}/warm"), cut_copy(*f, w)))
            .collect();
        let (peer_port, port) = (free_port(), free_port());
        let peer = FakePeer::start(peer_port, move |req| match replies.get(&req.path) {
            Some(cut) => Reply::SendAndClose(cut.clone()),
            None => Reply::Send(head("504 Gateway Timeout", &["Content-Length: 0"])),
        });
        let cache_dir = work.path().join("cache");
        let cache = if disk {
            format!("    dir: {}\n    disk_bytes: 64M\n", path_str(&cache_dir))
        } else {
            String::new()
        };
        let m = start_member(
            work.path(),
            origin.addr,
            port,
            &[peer_port, port],
            &cache,
            "      batch_wait: 50ms\n",
        );
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        for (framing, hash, whole) in &cases {
            let what = format!("{framing:?}, disk tier {disk}");
            let before = copies(&m);
            notice(&m, &peer_port.to_string(), hash);
            let after = wait_pulls(&m, &before, 1.0);
            assert_eq!(
                after["failed"] - before["failed"],
                1.0,
                "{what}: the cut copy failed ({after:?})"
            );
            assert_eq!(after["copied"], before["copied"], "{what}: copied");
            let warm_path = format!("/_images/{hash}/warm");
            assert_eq!(
                peer.seen().iter().filter(|r| r.path == warm_path).count(),
                1,
                "{what}: one pull reached the peer"
            );
            assert!(!held(&m, hash), "{what}: the cut copy is held");
            if disk {
                assert!(
                    !cache_path(&cache_dir, "_images", hash).exists(),
                    "{what}: a cut copy on disk"
                );
                wait_until(&format!("{what}: the temp file removed"), || {
                    temp_files(&cache_dir).is_empty().then_some(())
                });
            }

            let origin_before = rt.block_on(origin.requests());
            let (status, x_cache, body) = get_image(&m, hash);
            assert_eq!(status, 200, "{what}");
            assert_eq!(
                x_cache, "MISS",
                "{what}: nothing of the cut copy was served"
            );
            assert_eq!(sha256(&body), sha256(whole), "{what}: the fill's bytes");
            assert_eq!(
                rt.block_on(origin.requests()) - origin_before,
                1,
                "{what}: filled from the origin"
            );
            let (status, x_cache, body) = get_image(&m, hash);
            assert_eq!((status, x_cache.as_str()), (200, "HIT"), "{what}");
            assert_eq!(sha256(&body), sha256(whole), "{what}: the hit's bytes");
            if disk {
                wait_until(&format!("{what}: the fill on disk"), || {
                    cache_path(&cache_dir, "_images", hash)
                        .exists()
                        .then_some(())
                });
            }
        }
    }
}

/// A copy larger than what the receiver's cache takes (a 1M memory tier, no disk) is
/// refused at its header: counted `too_large`, no body bytes pulled, not held, nothing
/// evicted for it, and the image is still served through the normal path.
#[test]
fn a_warm_copy_larger_than_the_receivers_cache_is_refused_and_evicts_nothing() {
    let work = tempfile::tempdir().expect("tempdir");
    std::fs::write(work.path().join("fleet.token"), FLEET_TOKEN).expect("token file");
    let data = DataDir::new(work.path().join("data"));
    let origin = Origin::start(&data.dir, work.path());
    let (big_port, small_port) = (free_port(), free_port());
    let ports = [big_port, small_port];
    let warm = "      batch_wait: 50ms\n";
    let big = start_member(work.path(), origin.addr, big_port, &ports, "", warm);
    let small = start_member(
        work.path(),
        origin.addr,
        small_port,
        &ports,
        "    memory_bytes: 1M\n",
        warm,
    );
    // Both own every image (two nodes). The small mirror holds a few images of its own.
    let mine: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| {
            let hash = test_hash(800 + i);
            let bytes = jpeg_bytes(60_000, 800 + i);
            data.put("_images", &hash, &bytes);
            (hash, bytes)
        })
        .collect();
    for (hash, bytes) in &mine {
        let (status, _, body) = get_image(&small, hash);
        assert_eq!(status, 200);
        assert_eq!(sha256(&body), sha256(bytes));
    }
    let evictions = || {
        metric(
            &small,
            "shimmer_cache_evictions_total",
            &[("tier", "memory")],
        )
    };
    let evicted_before = evictions();
    // 2 MiB filled at the other owner: its notice makes the small mirror pull it.
    let (hash, pulled) = refused_pull(&data, &big, &small, 899, 2 << 20, "too_large");
    assert_eq!(pulled, 0.0, "no body bytes were pulled for it");
    assert_eq!(evictions(), evicted_before, "something was evicted for it");
    assert_still_held(&small, &mine);

    // The normal path still serves it, whole, and the mirror stays healthy.
    let whole = jpeg_bytes(2 << 20, 899);
    for _ in 0..2 {
        let (status, _, body) = get_image(&small, &hash);
        assert_eq!(status, 200);
        assert_eq!(sha256(&body), sha256(&whole), "served whole");
    }
    assert_eq!(evictions(), evicted_before, "serving it evicted something");
    let health = http_get(small.admin_addr(), "/healthz").expect("healthz");
    assert_eq!(health.status, 200);
}

/// A copy that fits the cache but that the memory tier's admission refuses (its hot
/// set was admitted more often than a newcomer, and there is no disk tier) is pulled
/// whole, kept by no tier, and counted as `not_admitted`, never as `copied`; the hot
/// set stays.
#[test]
fn a_warm_copy_no_tier_admits_is_counted_not_admitted_and_the_hot_set_stays() {
    let work = tempfile::tempdir().expect("tempdir");
    std::fs::write(work.path().join("fleet.token"), FLEET_TOKEN).expect("token file");
    let data = DataDir::new(work.path().join("data"));
    let origin = Origin::start(&data.dir, work.path());
    let (big_port, small_port) = (free_port(), free_port());
    let ports = [big_port, small_port];
    let warm = "      batch_wait: 50ms\n";
    let big = start_member(work.path(), origin.addr, big_port, &ports, "", warm);
    let token = work.path().join("purge.token");
    std::fs::write(&token, "purge-token-for-the-warm-test\n").expect("token file");
    let yaml = member_yaml(
        work.path(),
        origin.addr,
        small_port,
        &ports,
        "    memory_bytes: 1M\n",
        warm,
    )
    .replacen(
        "  admin:\n",
        &format!("  admin:\n    token_file: \"{}\"\n", path_str(&token)),
        1,
    );
    let small = Mirror::start_yaml(work.path(), small_port, &yaml);
    // The small mirror's own hot set fills its memory. TinyUFO's TinyLFU counts
    // admissions (not reads), so each image is filled twice (filled, purged, filled):
    // more popular than any newcomer, which its admission then refuses.
    let mine: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| {
            let hash = test_hash(700 + i);
            let bytes = jpeg_bytes(220_000, 700 + i);
            data.put("_images", &hash, &bytes);
            (hash, bytes)
        })
        .collect();
    for (hash, _) in &mine {
        assert_eq!(get_image(&small, hash).0, 200);
        let body = format!("{{\"hashes\": [\"{hash}\"]}}");
        let headers = [
            ("Content-Type", "application/json"),
            ("Authorization", "Bearer purge-token-for-the-warm-test"),
        ];
        let r = http_request(
            small.admin_addr(),
            "POST",
            "/purge",
            &headers,
            body.as_bytes(),
        )
        .expect("POST /purge");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for _ in 0..6 {
        for (hash, bytes) in &mine {
            let (status, _, body) = get_image(&small, hash);
            assert_eq!(status, 200);
            assert_eq!(sha256(&body), sha256(bytes));
        }
    }
    // A newcomer filled at the other owner; its notice makes the small mirror pull it.
    let (_, pulled) = refused_pull(&data, &big, &small, 799, 300_000, "not_admitted");
    assert_eq!(pulled, 300_000.0, "the body was pulled whole");
    assert_still_held(&small, &mine);
}

/// A newcomer of `len` bytes filled at `big`, whose notice makes `small` pull it: waits
/// for the pull, checks that it counted as `result`, never as `copied`, and that
/// `small` does not hold it. Its hash, and the warm bytes `small` pulled for it.
fn refused_pull(
    data: &DataDir,
    big: &Mirror,
    small: &Mirror,
    seed: u64,
    len: usize,
    result: &str,
) -> (String, f64) {
    let copies_before = copies(small);
    let bytes_before = metric(small, "shimmer_warm_bytes_total", &[]);
    let hash = test_hash(seed);
    let whole = jpeg_bytes(len, seed);
    data.put("_images", &hash, &whole);
    let (status, _, body) = get_image(big, &hash);
    assert_eq!(status, 200);
    assert_eq!(sha256(&body), sha256(&whole));
    let after = wait_pulls(small, &copies_before, 1.0);
    assert_eq!(
        after[result] - copies_before[result],
        1.0,
        "counted as {result}: {after:?}"
    );
    assert_eq!(
        after["copied"], copies_before["copied"],
        "counted as copied"
    );
    assert!(!held(small, &hash), "the refused copy is held");
    let pulled = metric(small, "shimmer_warm_bytes_total", &[]) - bytes_before;
    (hash, pulled)
}

/// Every image of `mine` is still a hit at `small`, whole.
fn assert_still_held(small: &Mirror, mine: &[(String, Vec<u8>)]) {
    for (hash, bytes) in mine {
        let (status, x_cache, body) = get_image(small, hash);
        assert_eq!(
            (status, x_cache.as_str()),
            (200, "HIT"),
            "{hash} still held"
        );
        assert_eq!(sha256(&body), sha256(bytes));
    }
}

/// Three mirrors whose notices go out only when a peer's batch of 3 is full (the batch
/// wait is a minute), so the test decides when a notice is sent: two fills noticed to
/// B wait while B is healthy, then B is lost (`lose`), then three fills noticed to C
/// fill C's batch and send both. The notice to B fails and is counted; the sender keeps
/// serving and its send loop goes on (C's notices, then more).
async fn a_notice_to_a_lost_peer(lose: impl FnOnce(&mut TestFleet, &str)) {
    let extra = format!(
        "{HEALTH}  fleet:\n    fill_timeout: 300ms\n    warm_secondary:\n      batch: 3\n      batch_wait: 60s\n"
    );
    let mut f = TestFleet::start(&[5, 5, 5], &extra, None);
    let [a, b, c] = [0, 1, 2].map(|i| f.mirrors[i].0.clone());
    let shared_with = |peer: &str, n: usize, seed: u64| -> Vec<String> {
        (seed..)
            .map(test_hash)
            .filter(|h| {
                let (p, s) = f.owners(h);
                (p == a && s == peer) || (p == peer && s == a)
            })
            .take(n)
            .collect()
    };
    let to_b = shared_with(&b, 2, 10_000);
    let to_c = shared_with(&c, 6, 20_000);
    for (i, h) in to_b.iter().chain(&to_c).enumerate() {
        f.data.put("_images", h, &jpeg_bytes(5000, i as u64));
    }
    let sent = |f: &TestFleet| f.metric(&a, "shimmer_warm_notices_total", &[("direction", "sent")]);
    let failed = |f: &TestFleet| {
        f.metric(
            &a,
            "shimmer_warm_dropped_total",
            &[("reason", "send_failed")],
        )
    };
    let fetch = |f: &TestFleet, h: &str| {
        let (status, _, _) = get_image(f.node(&a), h);
        assert_eq!(status, 200, "{h} at the sender");
    };
    for h in &to_b {
        fetch(&f, h);
    }
    assert_eq!(sent(&f), 0.0, "B's batch is not full: nothing sent yet");

    lose(&mut f, &b);
    for h in &to_c[..3] {
        fetch(&f, h);
    }
    // The sender serves while its notice to B is stuck or refused.
    let (status, x_cache, _) = get_image(f.node(&a), &to_b[0]);
    assert_eq!((status, x_cache.as_str()), (200, "HIT"));
    let settled = eventually(DEADLINE, || {
        (failed(&f) == 2.0 && sent(&f) == 3.0).then_some(())
    });
    assert!(
        settled.is_some(),
        "the notices to B failed and C's were sent: send_failed {}, sent {}\n{}",
        failed(&f),
        sent(&f),
        f.node(&a).proc.log_text()
    );
    assert_eq!(
        f.metric(&a, "shimmer_warm_dropped_total", &[("reason", "peer_down")]),
        0.0,
        "B was still up to the sender: the notice was sent and failed"
    );

    // The send loop is not stuck on B: the next batch for C goes out.
    for h in &to_c[3..] {
        fetch(&f, h);
    }
    wait_until("the next batch to C sent", || {
        (sent(&f) == 6.0).then_some(())
    });
    assert_eq!(failed(&f), 2.0);
    let health = http_get(f.node(&a).admin_addr(), "/healthz").expect("healthz");
    assert_eq!(health.status, 200);
    let sender = f.mirrors[0].1.as_mut().expect("the sender");
    assert!(sender.proc.is_running(), "the sender is still running");
    if let Some(Some(m)) = f.mirrors.iter().find(|(n, _)| *n == b).map(|(_, m)| m) {
        m.proc.signal(libc::SIGCONT);
    }
}

/// A frozen peer (SIGSTOP) accepts the connection and never answers: the notice times
/// out after `fill_timeout` and is counted `send_failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_notice_to_a_frozen_peer_times_out_is_counted_and_the_sender_keeps_serving() {
    a_notice_to_a_lost_peer(|f, b| f.node(b).proc.signal(libc::SIGSTOP)).await;
}

/// A killed peer (SIGKILL) refuses the connection: the notice is counted `send_failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_notice_to_a_killed_peer_is_refused_counted_and_the_sender_keeps_serving() {
    a_notice_to_a_lost_peer(|f, b| f.kill(b)).await;
}
