//! The cooperating fleet end to end: three real `shimmer` processes and the real origin
//! on 127.0.0.1, in proxy and redirect mode, with a mirror killed by a real SIGKILL, a
//! peer that accepts and never answers, and a visitor forging the hop marker.

mod common;

use std::net::TcpListener;

use common::fleet::*;
use common::*;
use reqwest::{Client, StatusCode};
use shimmer::fleet::{FleetSpec, FleetView, Silo};

/// Three mirrors of weights 5, 5 and 10 in `mode`, proxied requests timing out after
/// 500 ms; `extra_peers` adds config lines (e.g. `peers:`).
fn fleet(mode: &str, extra_peers: &str) -> TestFleet {
    let extra = format!("  mode: {mode}\n  proxy:\n    timeout: 500ms\n{extra_peers}");
    TestFleet::start(&[5, 5, 10], &extra, None)
}

async fn get(
    c: &Client,
    url: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = c.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    let (st, h) = (resp.status(), resp.headers().clone());
    (st, h, resp.bytes().await.expect("body").to_vec())
}

fn hv<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_mode_serves_every_image_from_every_node_with_one_origin_request_each() {
    let f = fleet("proxy", "");
    let c = client();
    let n = 300u64;
    let mut bodies = Vec::new();
    for i in 0..n {
        let hash = test_hash(10_000 + i);
        let bytes = jpeg_bytes(2000 + (i as usize % 7) * 300, i);
        f.data.put("_images", &hash, &bytes);
        bodies.push((hash, sha256(&bytes)));
    }
    let before = f.origin.requests().await;
    for (hash, want) in &bodies {
        for (name, m) in &f.mirrors {
            let m = m.as_ref().expect("running");
            let (st, h, body) = get(&c, &m.url(&format!("/_images/{hash}/1.jpg")), &[]).await;
            assert_eq!(st, 200, "{name} for {hash}");
            assert_eq!(&sha256(&body), want, "{name} for {hash}: bytes differ");
            assert_eq!(hv(&h, "etag"), format!("\"{hash}\""));
        }
    }
    let seen = f.origin.requests().await - before;
    assert_eq!(
        seen, n,
        "the origin must see one request per image for the whole fleet"
    );
    // Range and conditionals come back exactly as the owner answers them.
    for (hash, _) in bodies.iter().take(10) {
        let (primary, _) = f.owners(hash);
        let owner = f.node(&primary);
        let stranger = f
            .mirrors
            .iter()
            .filter_map(|(n, m)| {
                m.as_ref()
                    .filter(|_| !f.view.owners(Silo::Images, hash).is_owner(n))
            })
            .next()
            .expect("a stranger");
        let path = format!("/_images/{hash}/1.jpg");
        let etag = format!("\"{hash}\"");
        for headers in [
            vec![("range", "bytes=10-99")],
            vec![("range", "bytes=-50")],
            vec![("range", "bytes=0-9,20-29")],
            vec![("if-none-match", etag.as_str())],
            vec![("if-modified-since", "Tue, 01 Jan 2030 00:00:00 GMT")],
        ] {
            let (so, ho, bo) = get(&c, &owner.url(&path), &headers).await;
            let (ss, hs, bs) = get(&c, &stranger.url(&path), &headers).await;
            assert_eq!(ss, so, "{headers:?}");
            // A multipart answer's boundary is new in every response: compare the parts.
            let unbound = |h: &reqwest::header::HeaderMap, body: &[u8]| {
                let ct = hv(h, "content-type").to_owned();
                match ct.split_once("boundary=") {
                    Some((kind, b)) => (
                        kind.to_owned(),
                        String::from_utf8_lossy(body).replace(b, "BOUNDARY"),
                    ),
                    None => (ct, String::from_utf8_lossy(body).into_owned()),
                }
            };
            assert_eq!(unbound(&hs, &bs), unbound(&ho, &bo), "{headers:?}: body");
            for name in ["content-range", "content-length", "etag"] {
                assert_eq!(hv(&hs, name), hv(&ho, name), "{headers:?}: {name}");
            }
            assert!(!hv(&hs, "x-shimmer-via").is_empty(), "proxied: {headers:?}");
        }
    }
    assert_eq!(
        f.origin.requests().await - before,
        n,
        "ranges and 304s came from caches"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_served_by_its_secondary_in_proxy_mode() {
    let mut f = fleet("proxy", "");
    let c = client();
    let victim = f.mirrors[2].0.clone();
    // Images whose primary is the victim, warmed through the fleet.
    let mut theirs = Vec::new();
    for i in 0..400u64 {
        let hash = test_hash(20_000 + i);
        if f.owners(&hash).0 == victim {
            f.data.put("_images", &hash, &jpeg_bytes(1500, i));
            theirs.push(hash);
        }
        if theirs.len() == 30 {
            break;
        }
    }
    assert!(theirs.len() >= 10, "the victim owns a share");
    f.kill(&victim);
    // Every request keeps succeeding: a refused peer is passed over at once.
    for round in 0..3 {
        for hash in &theirs {
            for (name, m) in &f.mirrors {
                let Some(m) = m else { continue };
                let (st, _, body) = get(&c, &m.url(&format!("/_images/{hash}/x.jpg")), &[]).await;
                assert_eq!(
                    (st, body.len()),
                    (StatusCode::OK, 1500),
                    "round {round}, {name}"
                );
            }
        }
    }
    f.restart(&victim);
    // After `rise` good probes the primary takes its share back.
    let (other, _) = f
        .mirrors
        .iter()
        .find(|(n, m)| {
            m.is_some() && *n != victim && !f.view.owners(Silo::Images, &theirs[0]).is_owner(n)
        })
        .map(|(n, _)| (n.clone(), ()))
        .unwrap_or_else(|| (f.owners(&theirs[0]).1, ()));
    let url = f.node(&other).url(&format!("/_images/{}/x.jpg", theirs[0]));
    wait_until_async("the restarted primary serves again", || {
        let (c, url, victim) = (c.clone(), url.clone(), victim.clone());
        async move {
            let (st, h, _) = get(&c, &url, &[]).await;
            (st == 200 && hv(&h, "x-shimmer-node") == victim).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_mode_points_at_the_live_secondary_and_back() {
    let mut f = fleet("redirect", "");
    let c = client();
    let victim = f.mirrors[0].0.clone();
    let hash = (0..500u64)
        .map(|i| test_hash(30_000 + i))
        .find(|h| {
            let o = f.view.owners(Silo::Images, h);
            o.primary() == Some(victim.as_str())
        })
        .expect("an image of the victim");
    f.data.put("_images", &hash, &jpeg_bytes(700, 3));
    let (_, secondary) = f.owners(&hash);
    let stranger = f
        .mirrors
        .iter()
        .find(|(n, _)| *n != victim && *n != secondary)
        .map(|(n, _)| n.clone())
        .expect("a stranger");
    let url = f.node(&stranger).url(&format!("/_images/{hash}/x.jpg"));
    let location_host =
        |loc: &str, node: &str| loc.starts_with(&format!("http://127.0.0.1:{node}/"));
    let (st, h, _) = get(&c, &url, &[]).await;
    assert_eq!(st, 307);
    assert!(
        location_host(hv(&h, "location"), &victim),
        "{:?}",
        hv(&h, "location")
    );
    f.kill(&victim);
    wait_until_async("307s point at the live secondary", || {
        let (c, url, secondary) = (c.clone(), url.clone(), secondary.clone());
        async move {
            let (_, h, _) = get(&c, &url, &[]).await;
            location_host(hv(&h, "location"), &secondary).then_some(())
        }
    })
    .await;
    // Once detected, every 307 goes to the secondary, and following it serves.
    for _ in 0..20 {
        let (st, h, _) = get(&c, &url, &[]).await;
        assert_eq!(st, 307);
        let loc = hv(&h, "location").to_owned();
        assert!(location_host(&loc, &secondary), "{loc}");
        let (st, _, body) = get(&c, &loc, &[]).await;
        assert_eq!((st, body.is_empty()), (StatusCode::OK, false));
    }
    f.restart(&victim);
    wait_until_async("307s point at the primary again", || {
        let (c, url, victim) = (c.clone(), url.clone(), victim.clone());
        async move {
            let (_, h, _) = get(&c, &url, &[]).await;
            location_host(hv(&h, "location"), &victim).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_answers_is_passed_over_within_the_timeout() {
    // A "mirror" that accepts connections and says nothing, named in the template.
    let hung = TcpListener::bind("127.0.0.1:0").expect("bind");
    let hung_port = hung.local_addr().expect("addr").port();
    let _keep = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in hung.incoming().flatten() {
            held.push(s);
        }
    });
    let work = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(work.path().join("data"));
    let origin = Origin::start(&data.dir, work.path());
    let port = free_port();
    let ilink = format!("http://127.0.0.1:{{{hung_port}=10,{port}=1}}/_images/$hash/$id.$ext");
    let yaml = mirror_yaml(
        work.path(),
        &MirrorSpec {
            node: &port.to_string(),
            port,
            origins: vec![format!("http://{}", origin.addr)],
            image_ilink: ilink.clone(),
            image_tlink: ilink.replace("_images", "_thumbs"),
            extra_cache: "",
            extra_origin: "",
        },
    );
    let extra = "  mode: proxy\n  health:\n    interval: 1s\n    timeout: 300ms\n  proxy:\n    timeout: 400ms\n";
    let m = Mirror::start_yaml(work.path(), port, &format!("{yaml}{extra}"));
    let peer_state = || {
        let status = http_get(m.admin_addr(), "/status").ok()?;
        let v: serde_json::Value = serde_json::from_slice(&status.body).ok()?;
        v["peers"][0]["state"].as_str().map(str::to_owned)
    };
    wait_until("the hung peer is listed", peer_state);
    let view = FleetView::build(&FleetSpec {
        image_ilink: Some(ilink),
        image_tlink: None,
        algorithm: shimmer::fleet::Algorithm::Rendezvous,
    })
    .expect("view");
    let c = client();
    let mut served = 0;
    for i in 0..40u64 {
        let hash = test_hash(40_000 + i);
        if view.owners(Silo::Images, &hash).primary() != Some(hung_port.to_string().as_str()) {
            continue;
        }
        data.put("_images", &hash, &jpeg_bytes(800, i));
        let started = std::time::Instant::now();
        let (st, _, body) = get(&c, &m.url(&format!("/_images/{hash}/x.jpg")), &[]).await;
        assert_eq!((st, body.len()), (StatusCode::OK, 800), "{hash}");
        // A number for the log, not an assertion (tests never assert on timing).
        eprintln!("hung primary: answered in {:?}", started.elapsed());
        served += 1;
    }
    assert!(served >= 5, "the hung node owns most images");
    // The first request timed out on it and took it out at once (a passive check).
    assert_eq!(peer_state().as_deref(), Some("down"));
    let metrics = http_get(m.admin_addr(), "/metrics").expect("metrics");
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    let timeouts = metric_value(
        &text,
        "shimmer_peer_requests_total",
        &[("peer", &hung_port.to_string()), ("result", "timeout")],
    );
    assert_eq!(
        timeouts,
        Some(1.0),
        "one request waited for it, the rest did not"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_hop_marker_does_not_make_a_stranger_fetch_from_the_origin() {
    let f = fleet("redirect", "");
    let c = client();
    let hash = test_hash(50_000);
    f.data.put("_images", &hash, &jpeg_bytes(1200, 5));
    let stranger = f
        .mirrors
        .iter()
        .find(|(n, _)| !f.view.owners(Silo::Images, &hash).is_owner(n))
        .and_then(|(_, m)| m.as_ref())
        .expect("a stranger");
    let before = f.origin.requests().await;
    let path = format!("/_images/{hash}/x.jpg");
    let forged = format!("{}", 9_999_999_999u64);
    for (q, headers) in [
        ("?shimmer_hop=zz", vec![]),
        (
            &*format!("?shimmer_hop={forged}.00000000000000000000000000000000.zz"),
            vec![],
        ),
        ("", vec![("x-shimmer-hop", "zz")]),
    ] {
        let (st, h, _) = get(&c, &stranger.url(&format!("{path}{q}")), &headers).await;
        assert_eq!(st, 307, "{q} {headers:?}: a forged marker is ignored");
        assert!(hv(&h, "location").contains("shimmer_hop="));
    }
    assert_eq!(
        f.origin.requests().await,
        before,
        "a visitor steered the origin"
    );
    // The marker a real redirect carries is signed: the owner serves it.
    let (_, h, _) = get(&c, &stranger.url(&path), &[]).await;
    let (st, _, body) = get(&c, hv(&h, "location"), &[]).await;
    assert_eq!((st, body.len()), (StatusCode::OK, 1200));
    assert_eq!(f.origin.requests().await, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_metrics_are_exported_and_promtool_clean() {
    let f = fleet("proxy", "");
    let c = client();
    let hash = test_hash(60_000);
    f.data.put("_images", &hash, &jpeg_bytes(900, 6));
    for (_, m) in &f.mirrors {
        let m = m.as_ref().expect("running");
        let (st, _, _) = get(&c, &m.url(&format!("/_images/{hash}/x.jpg")), &[]).await;
        assert_eq!(st, 200);
    }
    let primary = f.owners(&hash).0;
    let m = f
        .mirrors
        .iter()
        .find(|(n, _)| *n != primary)
        .and_then(|(_, m)| m.as_ref())
        .expect("a node that proxied");
    let text = wait_until("two peers reported up", || {
        let r = http_get(m.admin_addr(), "/metrics").ok()?;
        let t = String::from_utf8_lossy(&r.body).into_owned();
        let up: Vec<&str> = t
            .lines()
            .filter(|l| l.starts_with("shimmer_peer_up{"))
            .collect();
        (up.len() == 2 && up.iter().all(|l| l.ends_with(" 1"))).then_some(t.clone())
    });
    for name in [
        "shimmer_peer_up",
        "shimmer_peer_requests_total",
        "shimmer_peer_response_seconds",
        "shimmer_failovers_total",
    ] {
        assert!(text.contains(name), "{name} missing from the scrape");
    }
    // Every query of the dashboard's Peers row names a metric this scrape has.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana/shimmer.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let row = panels
        .iter()
        .position(|p| p["type"] == "row" && p["title"] == "Peers")
        .expect("a Peers row");
    let mut names = Vec::new();
    for p in &panels[row + 1..] {
        if p["type"] == "row" {
            break;
        }
        for t in p["targets"].as_array().expect("targets") {
            names.extend(metric_names(t["expr"].as_str().expect("expr")));
        }
    }
    assert!(names.len() >= 5, "{names:?}");
    for name in &names {
        let base = name.strip_suffix("_bucket").unwrap_or(name);
        assert!(
            text.contains(&format!("# TYPE {base} ")),
            "the Peers row queries {name}, which a live scrape does not have"
        );
    }
    let file = f.work.path().join("scrape.txt");
    std::fs::write(&file, &text).expect("write scrape");
    let out = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).expect("open scrape"))
        .output()
        .expect("promtool runs");
    let lint =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool: {lint}");
}

/// `proxy.hot_bytes`: a non-owner keeps the hottest objects it fetched from their
/// owners, serves them itself (ranges too), and a ban purges them like any copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hot_cache_serves_repeat_requests_at_a_non_owner_and_a_ban_purges_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, dsn) = common::db::Shimmie::sqlite(&dir.path().join("shimmie.db")).await;
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let weights = [5, 5, 10];
    db.set_config(
        "image_ilink",
        Some(&fleet_template(&ports, &weights, "_images")),
    )
    .await;
    db.set_config(
        "image_tlink",
        Some(&fleet_template(&ports, &weights, "_thumbs")),
    )
    .await;
    let extra = "  mode: proxy\n  proxy:\n    timeout: 500ms\n    hot_bytes: 4M\n";
    let opts = FleetOpts {
        extra,
        source: Some(&dsn),
        ..FleetOpts::default()
    };
    let f = TestFleet::start_on(&ports, &weights, &opts);
    let c = client();
    let hash = test_hash(70_000);
    let bytes = jpeg_bytes(5000, 7);
    f.data.put("_images", &hash, &bytes);
    let stranger = f
        .mirrors
        .iter()
        .find(|(n, _)| !f.view.owners(Silo::Images, &hash).is_owner(n))
        .map(|(n, _)| n.clone())
        .expect("a node that owns neither copy");
    let url = f.node(&stranger).url(&format!("/_images/{hash}/1.jpg"));
    let (st, h, body) = get(&c, &url, &[]).await;
    assert_eq!((st.as_u16(), sha256(&body)), (200, sha256(&bytes)));
    assert_eq!(
        hv(&h, "x-shimmer-via"),
        stranger,
        "the first one is proxied"
    );
    let (st, h, body) = get(&c, &url, &[]).await;
    assert_eq!((st.as_u16(), sha256(&body)), (200, sha256(&bytes)));
    assert_eq!(hv(&h, "x-cache"), "HIT", "then served from the hot cache");
    assert_eq!(hv(&h, "x-shimmer-via"), "");
    assert_eq!(hv(&h, "x-shimmer-node"), stranger);
    let (st, _, body) = get(&c, &url, &[("range", "bytes=10-19")]).await;
    assert_eq!((st.as_u16(), body.as_slice()), (206, &bytes[10..20]));

    db.ban(&hash).await;
    wait_until_async("the ban reaches the non-owner", || {
        let (c, url) = (c.clone(), url.clone());
        async move { (get(&c, &url, &[]).await.0 == 404).then_some(()) }
    })
    .await;
    db.unban(&hash).await;
    let h = wait_until_async("the unban reaches the non-owner", || {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let (st, h, _) = get(&c, &url, &[]).await;
            (st == 200).then_some(h)
        }
    })
    .await;
    assert_eq!(
        hv(&h, "x-shimmer-via"),
        stranger,
        "the ban purged the hot copy: proxied again"
    );
}
