//! Warm secondary, owner-first fill and handoff (issue 12), end to end: four real
//! mirrors and the real origin on 127.0.0.1, origin requests counted at the origin, a
//! primary killed with SIGKILL and restarted empty, a peer frozen with SIGSTOP, and a
//! weight changed in a real (SQLite) Shimmie database.

mod common;

use std::time::{Duration, Instant};

use common::db::Shimmie;
use common::fleet::*;
use common::*;
use reqwest::Client;
use shimmer::fleet::Algorithm;

const WARM: &str =
    "  fleet:\n    fill_timeout: 300ms\n    warm_secondary:\n      batch_wait: 50ms\n";

/// `n` images put at the origin, each with its (primary, secondary).
fn images(f: &TestFleet, n: usize, seed: u64) -> Vec<(String, String, String)> {
    (0..n as u64)
        .map(|i| {
            let hash = test_hash(seed + i);
            f.data.put(
                "_images",
                &hash,
                &jpeg_bytes(800 + (i as usize % 5) * 200, i),
            );
            let (p, s) = f.owners(&hash);
            (hash, p, s)
        })
        .collect()
}

async fn get_ok(c: &Client, url: &str) -> reqwest::header::HeaderMap {
    let resp = c.get(url).send().await.expect("request");
    assert_eq!(resp.status(), 200, "{url}");
    let h = resp.headers().clone();
    resp.bytes().await.expect("body");
    h
}

/// Fetches every image at its primary.
async fn fetch_through_primaries(f: &TestFleet, c: &Client, imgs: &[(String, String, String)]) {
    for (hash, primary, _) in imgs {
        get_ok(c, &f.node(primary).url(&format!("/_images/{hash}/1.jpg"))).await;
    }
}

/// Waits until every secondary holds at least `share` of its images (or the deadline);
/// returns how many they hold and how long it took.
async fn wait_warm(
    f: &TestFleet,
    imgs: &[(String, String, String)],
    share: f64,
) -> (usize, Duration) {
    let started = Instant::now();
    let want = (imgs.len() as f64 * share).ceil() as usize;
    loop {
        let mut held = 0;
        for (name, m) in &f.mirrors {
            if m.is_none() {
                continue;
            }
            let theirs: Vec<String> = imgs
                .iter()
                .filter(|(_, _, s)| s == name)
                .map(|(h, _, _)| h.clone())
                .collect();
            held += f.held(name, &theirs).await.len();
        }
        if held >= want || started.elapsed() > DEADLINE {
            return (held, started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondaries_are_warm_and_a_killed_or_emptied_primary_costs_no_origin_request() {
    let mut f = TestFleet::start(&[5, 5, 5, 5], WARM, None);
    let c = client();
    let imgs = images(&f, 2000, 100_000);
    let before = f.origin.requests().await;
    fetch_through_primaries(&f, &c, &imgs).await;
    assert_eq!(f.origin.requests().await - before, 2000, "one fill each");

    let (held, took) = wait_warm(&f, &imgs, 1.0).await;
    println!(
        "warm secondary: {held} of {} images held by their secondaries after {:.2} s",
        imgs.len(),
        took.as_secs_f64()
    );
    assert!(
        held * 100 >= imgs.len() * 99,
        "secondaries hold {held} of {}",
        imgs.len()
    );
    assert_eq!(
        f.origin.requests().await - before,
        2000,
        "copies come from the primaries, never the origin"
    );

    // SIGKILL one primary: its images are served by the secondaries, already warm.
    let victim = f.mirrors[1].0.clone();
    let theirs: Vec<_> = imgs.iter().filter(|(_, p, _)| *p == victim).collect();
    assert!(theirs.len() > 300, "the victim was primary for a share");
    f.kill(&victim);
    f.wait_all_peers();
    let follow = Client::builder()
        .redirect(reqwest::redirect::Policy::limited(2))
        .build()
        .expect("client");
    let before_kill = f.origin.requests().await;
    for (hash, _, secondary) in &theirs {
        // Straight at the secondary, and through a node that owns neither (a 307,
        // followed).
        get_ok(
            &c,
            &f.node(secondary).url(&format!("/_images/{hash}/1.jpg")),
        )
        .await;
        let stranger = f
            .mirrors
            .iter()
            .find(|(n, m)| m.is_some() && n != secondary && *n != victim)
            .map(|(n, _)| n.clone())
            .expect("a third node");
        let resp = follow
            .get(f.node(&stranger).url(&format!("/_images/{hash}/1.jpg")))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()
                .get("x-shimmer-node")
                .and_then(|v| v.to_str().ok()),
            Some(secondary.as_str()),
            "redirected to the acting owner"
        );
    }
    assert_eq!(
        f.origin.requests().await - before_kill,
        0,
        "a dead primary's share costs the origin nothing"
    );

    // Back with an empty cache: it refills from its secondaries, not the origin.
    f.restart(&victim);
    f.wait_all_peers();
    let before_restart = f.origin.requests().await;
    let mut from_peer = 0;
    for (hash, _, secondary) in &theirs {
        let h = get_ok(&c, &f.node(&victim).url(&format!("/_images/{hash}/1.jpg"))).await;
        let fill = h.get("x-shimmer-fill").and_then(|v| v.to_str().ok());
        if fill == Some(secondary.as_str()) {
            from_peer += 1;
        }
    }
    assert_eq!(
        f.origin.requests().await - before_restart,
        0,
        "the restarted primary refilled from its secondaries"
    );
    assert_eq!(
        from_peer,
        theirs.len(),
        "every fill came from the secondary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_if_cached_never_reaches_the_origin_and_a_frozen_peer_costs_the_fill_timeout() {
    // Probes never take a peer out here (fall 1000): only the timed-out ask does, so
    // the frozen peer is surely asked once.
    let health =
        "  health:\n    interval: 200ms\n    timeout: 300ms\n    rise: 2\n    fall: 1000\n";
    let f = TestFleet::start(&[5, 5, 5, 5], &format!("{WARM}{health}"), None);
    let c = client();
    let imgs = images(&f, 40, 200_000);
    let before = f.origin.requests().await;
    for (hash, primary, secondary) in &imgs[..20] {
        for node in [primary, secondary] {
            let resp = c
                .get(f.node(node).url(&format!("/_images/{hash}/1.jpg")))
                .header("cache-control", "only-if-cached")
                .send()
                .await
                .expect("request");
            assert_eq!(resp.status(), 504, "not cached at {node}");
        }
    }
    assert_eq!(
        f.origin.requests().await,
        before,
        "only-if-cached reached the origin"
    );
    // Once filled, only-if-cached is a hit.
    let (hash, primary, _) = &imgs[0];
    get_ok(&c, &f.node(primary).url(&format!("/_images/{hash}/1.jpg"))).await;
    let resp = c
        .get(f.node(primary).url(&format!("/_images/{hash}/1.jpg")))
        .header("cache-control", "max-age=0, only-if-cached")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);

    // Freeze one node: it accepts connections and never answers. A miss at the other
    // owner of its images waits for the fill timeout, then goes to the origin.
    let frozen = f.mirrors[2].0.clone();
    f.node(&frozen).proc.signal(libc::SIGSTOP);
    let mine: Vec<_> = imgs[20..]
        .iter()
        .filter(|(_, p, s)| *s == frozen && *p != frozen)
        .collect();
    let (hash, primary, _) = mine
        .first()
        .expect("an image the frozen node is secondary for");
    let timeouts = f.metric(primary, "shimmer_fill_asks_total", &[("result", "timeout")]);
    let started = Instant::now();
    let slow = Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    get_ok(
        &slow,
        &f.node(primary).url(&format!("/_images/{hash}/1.jpg")),
    )
    .await;
    println!(
        "miss with a frozen other owner: {:.0} ms (fill_timeout 300 ms)",
        started.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!(
        f.metric(primary, "shimmer_fill_asks_total", &[("result", "timeout")]),
        timeouts + 1.0,
        "the ask to the frozen peer timed out once"
    );
    f.node(&frozen).proc.signal(libc::SIGCONT);
}

/// Warms a 4-node fleet on a SQLite Shimmie database with `n` images (fetched through
/// their primaries; `warm`: with warm secondary), changes the first node's weight from 5
/// to `weight` in the database, and fetches every image whose primary moved at its new
/// primary. Returns (moved images, origin requests for them).
async fn weight_change(
    algorithm: Algorithm,
    warm: bool,
    weight: i64,
    handoff: &str,
    n: usize,
) -> (usize, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, dsn) = Shimmie::sqlite(&dir.path().join("shimmie.db")).await;
    let extra = format!("{WARM}      enabled: {warm}\n    handoff: {handoff}\n");
    // Templates are read from the database; start with weights 5 everywhere.
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    db.set_config(
        "image_ilink",
        Some(&fleet_template(&ports, &[5, 5, 5, 5], "_images")),
    )
    .await;
    db.set_config(
        "image_tlink",
        Some(&fleet_template(&ports, &[5, 5, 5, 5], "_thumbs")),
    )
    .await;
    let opts = FleetOpts {
        extra: &extra,
        source: Some(&dsn),
        algorithm,
        ..FleetOpts::default()
    };
    let f = TestFleet::start_on(&ports, &[5, 5, 5, 5], &opts);
    let c = client();
    let imgs = images(&f, n, 300_000);
    fetch_through_primaries(&f, &c, &imgs).await;
    if warm {
        let (held, took) = wait_warm(&f, &imgs, 1.0).await;
        println!(
            "{algorithm} handoff {handoff}: {held} of {n} warm after {:.2} s",
            took.as_secs_f64()
        );
    }

    let raised = fleet_template(&ports, &[weight, 5, 5, 5], "_images");
    db.set_config("image_ilink", Some(&raised)).await;
    let after = shimmer::fleet::FleetView::build(&shimmer::fleet::FleetSpec {
        image_ilink: Some(raised.clone()),
        image_tlink: None,
        algorithm,
    })
    .expect("view");
    for (name, m) in &f.mirrors {
        let m = m.as_ref().expect("running");
        wait_until(&format!("{name} follows the new weight"), || {
            let r = http_get(m.admin_addr(), "/status").ok()?;
            r.text().contains(&format!("={weight},")).then_some(())
        });
    }
    let moved: Vec<_> = imgs
        .iter()
        .filter_map(|(hash, p, _)| {
            let now = after.owners(shimmer::fleet::Silo::Images, hash);
            let np = now.primary()?.to_owned();
            (np != *p).then(|| (hash.clone(), np))
        })
        .collect();
    let before = f.origin.requests().await;
    for (hash, new_primary) in &moved {
        get_ok(
            &c,
            &f.node(new_primary).url(&format!("/_images/{hash}/1.jpg")),
        )
        .await;
    }
    (moved.len(), f.origin.requests().await - before)
}

/// Rendezvous and Flexihash both make the old primary of an image moved to a node
/// whose weight went up its new secondary, so the owner-first ask finds it with or
/// without handoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_change_moves_images_from_their_old_owners_not_the_origin() {
    for algorithm in [Algorithm::Rendezvous, Algorithm::Flexihash] {
        let (moved, origin) = weight_change(algorithm, true, 10, "10m", 5000).await;
        let (moved_plain, origin_plain) = weight_change(algorithm, true, 10, "0s", 5000).await;
        println!(
            "{algorithm}: weight 5 -> 10 on a warm 4-node fleet of 5000 images: {moved} moved; \
             origin requests {origin} with handoff, {origin_plain} of {moved_plain} without"
        );
        assert!(moved > 500, "a weight change moves images");
        assert!(
            origin * 100 <= moved as u64,
            "{algorithm}: with handoff, {origin} origin requests for {moved} moved images"
        );
    }
}

/// Without warm copies, images moved off a node whose weight went down land on a new
/// primary that never held them and whose new secondary never did either: only the
/// previous owner has them, and handoff is what asks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_asks_the_previous_owner_when_nobody_else_holds_the_image() {
    let (moved, origin) = weight_change(Algorithm::Rendezvous, false, 1, "10m", 3000).await;
    let (moved_plain, origin_plain) =
        weight_change(Algorithm::Rendezvous, false, 1, "0s", 3000).await;
    println!(
        "rendezvous, warm secondary off: weight 5 -> 1 on a 4-node fleet of 3000 images: \
         {moved} moved; origin requests {origin} with handoff, {origin_plain} of \
         {moved_plain} without"
    );
    assert!(moved > 300, "a weight change moves images");
    assert!(
        origin * 100 <= moved as u64,
        "with handoff, {origin} origin requests for {moved} moved images"
    );
    assert!(
        origin_plain * 2 >= moved_plain as u64,
        "without handoff most moved images come from the origin ({origin_plain} of {moved_plain})"
    );
}

/// With a disk tier, copies land on disk (the memory tier's admission decides the rest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_disk_tier_copies_are_written_to_disk() {
    let disk = tempfile::tempdir().expect("tempdir");
    let cache = format!(
        "    dir: {}/{{node}}\n    disk_bytes: 64M\n",
        path_str(disk.path())
    );
    let opts = FleetOpts {
        extra: WARM,
        cache_extra: &cache,
        ..FleetOpts::default()
    };
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let f = TestFleet::start_on(&ports, &[5, 5, 5], &opts);
    let c = client();
    let imgs = images(&f, 200, 400_000);
    fetch_through_primaries(&f, &c, &imgs).await;
    let (held, _) = wait_warm(&f, &imgs, 1.0).await;
    assert_eq!(held, imgs.len(), "every secondary holds its copies");
    for (name, _) in &f.mirrors {
        let theirs: Vec<String> = imgs
            .iter()
            .filter(|(_, _, s)| s == name)
            .map(|(h, _, _)| h.clone())
            .collect();
        let on_disk = wait_until(&format!("{name}'s copies on disk"), || {
            let n = theirs
                .iter()
                .filter(|h| cache_path(&disk.path().join(name), "_images", h).exists())
                .count();
            (n == theirs.len()).then_some(n)
        });
        assert_eq!(on_disk, theirs.len());
    }
}

/// A notice is trusted line by line, like a hop: a visitor cannot make a mirror pull.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_or_malformed_notices_are_refused_and_queue_nothing() {
    let f = TestFleet::start(&[5, 5], WARM, None);
    let c = client();
    let node = &f.mirrors[0].0;
    let url = f.node(node).url("/_shimmer/warm");
    let hash = test_hash(1);
    for (body, want) in [
        (
            format!("_images/{hash} 9999999999.00112233445566778899aabbccddeeff.x\n"),
            403,
        ),
        (format!("_images/{hash}\n"), 400),
        ("_videos/abc m\n".to_owned(), 400),
        ("x".repeat(700_000), 413),
    ] {
        let resp = c.post(&url).body(body.clone()).send().await.expect("post");
        assert_eq!(resp.status(), want, "{}", &body[..body.len().min(60)]);
    }
    let resp = c.get(&url).send().await.expect("get");
    assert_eq!(resp.status(), 405);
    assert_eq!(
        f.metric(
            node,
            "shimmer_warm_notices_total",
            &[("direction", "received")]
        ),
        0.0
    );
    let status = http_get(f.node(node).admin_addr(), "/status").expect("status");
    let v: serde_json::Value = serde_json::from_slice(&status.body).expect("json");
    assert_eq!(v["fleet"]["warm_pull_queue"], 0);
}
