//! `make demo` in a real browser: scripts/demo.sh (three mirrors, one SQLite Shimmie
//! database, one origin, the gallery page) on free ports, and Debian's headless
//! Chromium loading the gallery page. The page's own script writes into
//! `#load-report` how many images decoded (naturalWidth > 0); `--dump-dom` prints the
//! DOM after the load event, so the test reads what the browser saw. The mirrors'
//! redirect counters show that some images were reached through a 307.
//!
//! SHIMMER_UPDATE_SCREENSHOT=1 also writes the screenshot to docs/demo.png.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::script::Script;
use common::*;

const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs headless Chromium with `args` and a fresh profile; its stdout. Killed if it
/// has not finished within the deadline (a hung browser fails the test, not CI).
fn chromium(profile: &Path, args: &[&str]) -> String {
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            // Virtual time: the dump waits for the page's loads, not a wall clock.
            "--virtual-time-budget=20000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{CHROMIUM} (make test-deps installs it): {e}"));
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let status = eventually(Duration::from_secs(90), || child.try_wait().ok().flatten());
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("chromium did not finish: {args:?}");
    }
    reader.join().expect("reader thread")
}

/// The value of `attr="..."` in the first tag with `id="id"`.
fn attr(dom: &str, id: &str, attr: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let start = dom[..at].rfind('<')?;
    let end = start + dom[start..].find('>')?;
    let tag = &dom[start..end];
    let key = format!("{attr}=\"");
    let v = tag.find(&key)? + key.len();
    Some(tag[v..].split('"').next()?.to_owned())
}

#[test]
fn the_demo_gallery_loads_every_image_through_the_fleet_with_redirects() {
    let work = tempfile::Builder::new()
        .prefix("shimmer-demo-")
        .tempdir()
        .expect("temp dir");
    let mirrors = [free_port(), free_port(), free_port()];
    let admins = [free_port(), free_port(), free_port()];
    let join = |p: &[u16]| p.iter().map(u16::to_string).collect::<Vec<_>>().join(" ");
    let env = [
        ("DEMO_ORIGIN", free_port().to_string()),
        ("DEMO_PAGE", free_port().to_string()),
        ("DEMO_MIRRORS", join(&mirrors)),
        ("DEMO_ADMINS", join(&admins)),
        ("DEMO_DIR", path_str(work.path()).to_owned()),
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut demo = Script::start(
        &root.join("scripts/demo.sh"),
        root,
        &env,
        work.path().join("demo.log"),
    );
    let line = demo.wait_for_line("gallery:");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("the gallery URL")
        .to_owned();

    let redirects = || -> f64 {
        admins
            .iter()
            .map(|a| {
                let addr = format!("127.0.0.1:{a}").parse().expect("addr");
                let text = http_get(addr, "/metrics").expect("metrics").text();
                ["_images", "_thumbs"]
                    .iter()
                    .map(|silo| {
                        metric_value(
                            &text,
                            "shimmer_requests_total",
                            &[("silo", silo), ("outcome", "redirect")],
                        )
                        .unwrap_or(0.0)
                    })
                    .sum::<f64>()
            })
            .sum()
    };
    assert_eq!(
        redirects(),
        0.0,
        "nothing but the browser talks to the mirrors"
    );

    let dom = chromium(&work.path().join("profile"), &["--dump-dom", &url]);
    let posts = files_under(&root.join("conf/sample-data/images")).len();
    assert!(posts >= 30, "{posts} sample posts");
    // Shimmie's post list: one thumbnail per post, each linking to the full image.
    assert_eq!(dom.matches("class=\"thumb shm-thumb\"").count(), posts);
    assert_eq!(dom.matches("class=\"shm-main-image\"").count(), posts);
    let report = |a| attr(&dom, "load-report", a);
    assert_eq!(
        (report("data-total"), report("data-loaded")),
        (Some((2 * posts).to_string()), Some((2 * posts).to_string())),
        "broken images: {:?}; demo output:\n{}",
        report("data-broken"),
        demo.output()
    );
    // The page was rendered before the demo drained its third node: the links to it
    // were answered 307 and still loaded (counted above).
    assert!(redirects() >= 1.0, "no image came through a 307");

    let shot = work.path().join("demo.png");
    chromium(
        &work.path().join("profile-shot"),
        &[
            "--window-size=1000,760",
            &format!("--screenshot={}", shot.display()),
            &url,
        ],
    );
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000);
    if std::env::var_os("SHIMMER_UPDATE_SCREENSHOT").is_some() {
        std::fs::write(root.join("docs/demo.png"), &png).expect("write docs/demo.png");
    }
    drop(demo);
}
