//! `shimmer.origin.path`: each template fetches the right file, from a plain static web
//! server over a Shimmie data directory (`images/<ab>/<hash>`, `images/<ab>/<cd>/<hash>`)
//! and from `shimmer origin`; a template with an unknown variable is refused by `-t`.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use reqwest::StatusCode;

/// `python3 -m http.server` over `dir`: files at their paths, nothing else.
fn static_server(dir: &Path, work: &Path) -> (Proc, SocketAddr) {
    let port = free_port();
    let log = work.join(format!("static-{port}.log"));
    let out = std::fs::File::create(&log).expect("log");
    let err = out.try_clone().expect("log");
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .arg("--directory")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("start python3 -m http.server");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut proc = Proc { child, log };
    wait_until("the static server to listen", || {
        assert!(
            proc.is_running(),
            "static server exited: {}",
            proc.log_text()
        );
        TcpStream::connect(addr).ok()
    });
    (proc, addr)
}

/// A mirror owning everything in front of `origin`, with `path` under `shimmer.origin`.
fn mirror_with_path(work: &Path, origin: SocketAddr, path: &str) -> Mirror {
    let port = free_port();
    let extra_origin = format!("    path: {path}");
    Mirror::start(
        work,
        &MirrorSpec {
            node: "a",
            port,
            origins: vec![format!("http://{origin}")],
            image_ilink: format!("http://127.0.0.1:{port}/_images/$hash/$id.$ext"),
            image_tlink: format!("http://127.0.0.1:{port}/_thumbs/$hash/thumb.$ext"),
            extra_cache: "",
            extra_origin: &extra_origin,
        },
    )
}

async fn fetch(url: &str) -> (StatusCode, Vec<u8>) {
    let resp = client().get(url).send().await.expect("request");
    let status = resp.status();
    (status, resp.bytes().await.expect("body").to_vec())
}

/// `shimmer -t` on a config whose origin has `path_line`: (ok, stderr).
fn check(work: &Path, path_line: &str) -> (bool, String) {
    let spec = MirrorSpec {
        node: "a",
        port: free_port(),
        origins: vec!["http://127.0.0.1:9".into()],
        image_ilink: "http://127.0.0.1:1/_images/$hash/$id.$ext".into(),
        image_tlink: "http://127.0.0.1:1/_thumbs/$hash/thumb.$ext".into(),
        extra_cache: "",
        extra_origin: path_line,
    };
    let name = format!("check-{}.yaml", spec.port);
    config_check(work, &name, &mirror_yaml(work, &spec))
}

#[test]
fn t_refuses_an_unknown_variable_and_accepts_good_templates() {
    let work = tempfile::tempdir().expect("tempdir");
    let (ok, out) = check(work.path(), "    path: \"/images/$hash_ab/$hash\"");
    assert!(!ok, "accepted: {out}");
    assert!(out.contains("shimmer.origin.path"), "{out}");
    assert!(out.contains("unknown variable $hash_ab"), "{out}");
    let (ok, out) = check(
        work.path(),
        "    path: {_images: \"/images/$ab/$hash\", _x: \"/$hash\"}",
    );
    assert!(!ok, "accepted an unknown silo: {out}");
    for good in [
        "    path: \"/_images/$hash/$name\"",
        "    path: \"/$ab/$cd/$hash\"",
        "    path: {_images: \"/images/$ab/$hash\", _thumbs: \"/thumbs/$ab/$hash\"}",
        "    path: {_thumbs: \"/$silo/$hash\"}",
    ] {
        let (ok, out) = check(work.path(), good);
        assert!(ok, "{good}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_directory_layouts_on_a_static_server() {
    let work = tempfile::tempdir().expect("tempdir");
    let root = work.path().join("www");
    let (one, two) = (test_hash(1), test_hash(2));
    let (img1, th1, img2) = (
        whole_jpeg(70_000, 1),
        whole_jpeg(3_000, 11),
        whole_jpeg(50_000, 2),
    );
    let put = |rel: String, bytes: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("dirs");
        std::fs::write(p, bytes).expect("write");
    };
    // Shimmie's data directory: one split level by default, two on some sites.
    put(format!("images/{}/{one}", &one[..2]), &img1);
    put(format!("thumbs/{}/{one}", &one[..2]), &th1);
    put(format!("images/{}/{}/{two}", &two[..2], &two[2..4]), &img2);
    let (_srv, addr) = static_server(&root, work.path());

    let m = mirror_with_path(
        work.path(),
        addr,
        "{_images: \"/images/$ab/$hash\", _thumbs: \"/thumbs/$ab/$hash\"}",
    );
    let (st, body) = fetch(&m.url(&format!("/_images/{one}/1%20-%20tag.jpg"))).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(sha256(&body), sha256(&img1));
    let (st, body) = fetch(&m.url(&format!("/_thumbs/{one}/thumb.jpg"))).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(sha256(&body), sha256(&th1));
    // The two-level file is not where this template looks.
    let (st, _) = fetch(&m.url(&format!("/_images/{two}/2.jpg"))).await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    let m2 = mirror_with_path(work.path(), addr, "\"/images/$ab/$cd/$hash\"");
    let (st, body) = fetch(&m2.url(&format!("/_images/{two}/2.jpg"))).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(sha256(&body), sha256(&img2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_against_shimmer_origin() {
    let work = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(work.path().join("data"));
    let h = test_hash(3);
    let img = whole_jpeg(40_000, 3);
    data.put("_images", &h, &img);
    let origin = Origin::start(&data.dir, work.path());
    // Today's default written out, and `$silo` with `$name`.
    for path in ["\"/_images/$hash/$name\"", "\"/$silo/$hash/$name\""] {
        let m = mirror_with_path(work.path(), origin.addr, path);
        let (st, body) = fetch(&m.url(&format!("/_images/{h}/3%20-%20a%20b.jpg"))).await;
        assert_eq!(st, StatusCode::OK, "{path}");
        assert_eq!(sha256(&body), sha256(&img), "{path}");
    }
    // A template that points elsewhere is really used: the origin has nothing there.
    let m = mirror_with_path(work.path(), origin.addr, "\"/_thumbs/$hash\"");
    let (st, _) = fetch(&m.url(&format!("/_images/{h}/3.jpg"))).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}
