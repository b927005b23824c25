//! kill -9 in the middle of writing a 50 MB object to the disk tier: after a restart
//! the object is never served truncated, the temp file is gone and the next request
//! fetches it again.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use reqwest::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LEN: usize = 50 << 20;
const CHUNK: usize = 256 << 10;

/// An origin that trickles `body` (about 5 s for 50 MB) and counts requests.
async fn trickling_origin(body: Arc<Vec<u8>>) -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let count = Arc::new(AtomicU64::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let (body, seen) = (body.clone(), seen.clone());
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                seen.fetch_add(1, Ordering::SeqCst);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n",
                    body.len()
                );
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for chunk in body.chunks(CHUNK) {
                    if s.write_all(chunk).await.is_err() {
                        return;
                    }
                    // Part of what is tested: a slow origin, so the kill lands mid-fill.
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            });
        }
    });
    (addr, count)
}

fn temp_files(cache: &std::path::Path) -> Vec<(std::path::PathBuf, u64)> {
    files_under(&cache.join(".tmp"))
        .into_iter()
        .map(|p| {
            let len = std::fs::metadata(&p).map_or(0, |m| m.len());
            (p, len)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_write_never_serves_a_truncated_object() {
    let work = tempfile::tempdir().expect("tempdir");
    let cache = work.path().join("cache");
    let body = Arc::new(whole_jpeg(LEN, 42));
    let (origin, requests) = trickling_origin(body.clone()).await;
    let port = free_port();
    let lines = format!("    dir: {}\n    disk_bytes: 1G\n", path_str(&cache));
    let origin_url = format!("http://{origin}");
    let hash = test_hash(900);
    let final_path = cache_path(&cache, "_images", &hash);
    let client = Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");

    let mut mirror = owner_mirror(work.path(), &origin_url, port, &lines);
    let url = mirror.url(&format!("/_images/{hash}/video.mp4"));
    let first = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move {
            let Ok(resp) = client.get(&url).send().await else {
                return 0;
            };
            resp.bytes().await.map_or(0, |b| b.len())
        }
    });
    // Kill once a good part, but not all, of the body is in the temp file.
    let big = || {
        let temps = temp_files(&cache);
        std::future::ready(
            temps
                .iter()
                .map(|(_, len)| *len)
                .find(|len| *len >= 10 << 20),
        )
    };
    let Some(written) = eventually_async(DEADLINE, big).await else {
        panic!("the fill never reached 10 MB: {:?}", temp_files(&cache));
    };
    mirror.proc.signal(libc::SIGKILL);
    let _ = mirror.proc.child.wait();
    assert!(written < LEN as u64, "the kill came too late");
    assert!(
        !final_path.exists(),
        "a partial object reached its final path"
    );
    assert_eq!(
        temp_files(&cache).len(),
        1,
        "the crash leaves its temp file"
    );
    let got = first.await.expect("first client");
    assert!(got < LEN, "the killed request cannot have got it all");
    println!("killed with {written} of {LEN} bytes written");

    // Restart: the temp file goes at once, the object is a miss and comes whole.
    let mirror = owner_mirror(work.path(), &origin_url, port, &lines);
    assert!(
        temp_files(&cache).is_empty(),
        "temp file survived the restart"
    );
    assert!(!final_path.exists());
    let resp = client.get(&url).send().await.expect("second request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-cache"], "MISS");
    let got = resp.bytes().await.expect("second body");
    assert_eq!(got.len(), LEN);
    assert_eq!(sha256(&got), sha256(&body));
    assert_eq!(
        requests.load(Ordering::SeqCst),
        2,
        "the object was refetched once"
    );
    assert!(temp_files(&cache).is_empty());
    let on_disk = std::fs::metadata(&final_path).expect("now on disk").len();
    assert!(on_disk > LEN as u64);

    // And from now on it is a hit, with no origin request.
    let resp = client.get(&url).send().await.expect("third request");
    assert_eq!(resp.headers()["x-cache"], "HIT");
    let got = resp.bytes().await.expect("third body");
    assert_eq!(sha256(&got), sha256(&body));
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    drop(mirror);
}
