//! `make run` as a newcomer meets it: scripts/run.sh on the embedded default config,
//! which reads the SQLite Shimmie database the script creates. The lines the script
//! prints are run as printed: the first curl line twice (MISS, then HIT), then the
//! sqlite3 weight change (the mirror answers 307) and the ban (404).
//!
//! The embedded default listens on fixed ports (8080, 8081, 9090), so this test runs
//! the script in a scratch copy of the checkout (scripts/ copied, conf/ linked) and
//! fails at once, naming the port, if another process holds one of them.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;

use common::script::{sh, Script};
use common::*;

const PORTS: [u16; 3] = [8080, 8081, 9090];

fn checkout() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A throwaway tree that looks like the checkout to scripts/run.sh.
fn scratch_checkout() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("shimmer-newcomer-")
        .tempdir()
        .expect("temp dir");
    std::fs::create_dir(dir.path().join("scripts")).expect("mkdir scripts");
    std::fs::copy(
        checkout().join("scripts/run.sh"),
        dir.path().join("scripts/run.sh"),
    )
    .expect("copy run.sh");
    std::os::unix::fs::symlink(checkout().join("conf"), dir.path().join("conf"))
        .expect("link conf");
    dir
}

fn status_line(headers: &str) -> &str {
    headers.lines().next().unwrap_or_default().trim()
}

fn header<'a>(headers: &'a str, name: &str) -> Option<&'a str> {
    headers.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_run_serves_hits_and_follows_weights_and_bans_in_sqlite() {
    for port in PORTS {
        if let Err(e) = TcpListener::bind(("127.0.0.1", port)) {
            panic!("make run's embedded default needs 127.0.0.1:{port}, which is taken: {e}");
        }
    }
    let tree = scratch_checkout();
    let root = tree.path();
    let mut script = Script::start(
        &root.join("scripts/run.sh"),
        root,
        &[],
        root.join("run.log"),
    );
    script.wait_for_line("Start over:");
    let admin: SocketAddr = "127.0.0.1:9090".parse().expect("addr");
    wait_until("the mirror's /readyz", || {
        http_get(admin, "/readyz").ok().filter(|r| r.status == 200)
    });
    let db = root.join("target/run/shimmie.db");
    assert!(db.is_file(), "run.sh did not create {}", db.display());

    // The first curl line, as printed: a MISS from the origin, then a HIT.
    let curls = script.printed("curl ");
    let curl = curls.first().expect("run.sh prints a curl line").clone();
    let first = sh(&curl, root);
    assert_eq!(status_line(&first), "HTTP/1.1 200 OK", "{first}");
    assert_eq!(header(&first, "x-cache"), Some("MISS"), "{first}");
    let second = sh(&curl, root);
    assert_eq!(header(&second, "x-cache"), Some("HIT"), "{second}");
    // The printed name says PNG, and so does the mirror.
    assert!(curl.ends_with(".png"), "{curl}");
    assert_eq!(header(&second, "content-type"), Some("image/png"));

    // Every sample post is of the type its name and its row say, image and thumbnail.
    let rows = sh(
        &format!(
            "sqlite3 {} \"SELECT hash, ext, mime FROM images ORDER BY id\"",
            db.display()
        ),
        root,
    );
    let c = client();
    let mut checked = 0;
    for row in rows.lines() {
        let [hash, ext, mime] = row.split('|').collect::<Vec<_>>()[..] else {
            panic!("bad row {row:?}");
        };
        for silo in ["_images", "_thumbs"] {
            let url = format!("http://127.0.0.1:8080/{silo}/{hash}/x.{ext}");
            let r = c.get(&url).send().await.expect("request");
            assert_eq!(r.status(), 200, "{url}");
            let ct = r
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok());
            assert_eq!(ct, Some(mime), "{url}");
            checked += 1;
        }
    }
    assert!(checked >= 60, "only {checked} sample files");

    // The weight change, as printed: node 8080 no longer owns the image.
    let sqls = script.printed("sqlite3 ");
    assert_eq!(sqls.len(), 2, "a weight change and a ban: {sqls:?}");
    sh(&sqls[0], root);
    let moved = eventually(DEADLINE, || {
        let r = sh(&curl, root);
        (status_line(&r).starts_with("HTTP/1.1 307")).then_some(r)
    });
    let moved = moved.unwrap_or_else(|| panic!("no 307 after {}", sqls[0]));
    let location = header(&moved, "location").unwrap_or_default();
    assert!(
        location.starts_with("http://127.0.0.1:8090/_images/"),
        "{location}"
    );

    // The ban, as printed: 404 from then on (a ban wins over placement).
    sh(&sqls[1], root);
    let banned = eventually(DEADLINE, || {
        let r = sh(&curl, root);
        status_line(&r).starts_with("HTTP/1.1 404").then_some(())
    });
    assert!(banned.is_some(), "no 404 after {}", sqls[1]);
    drop(script);
}
