//! `shimmer.origin.s3` against a real S3-compatible server: moto's server mode
//! (`make test-deps` installs it), started here on a free 127.0.0.1 port. Objects are
//! put the way Shimmie's ext/s3 puts them (`<ab>/<cd>/<hash>`, Content-Type,
//! `Content-Disposition: inline; filename="<id> - <tags>.<ext>"`) by
//! tests/s3_fixture.py. With INITIAL_NO_AUTH_ACTION_COUNT set, moto checks every
//! request's SigV4 signature against the IAM keys it issued, so a wrong secret is
//! refused (SignatureDoesNotMatch).

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::s3::{fill, moto, post, Post};
use common::*;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;

/// A mirror owning everything on `port` (admin on `admin`), its origin the bucket;
/// with credentials from `creds`.
fn s3_spec(port: u16, admin: u16, moto: SocketAddr, bucket: &str, creds: Option<&Path>) -> OpsSpec {
    let cred_lines = creds.map_or(String::new(), |d| {
        format!(
            "      access_key_id_file: {}\n      secret_access_key_file: {}\n",
            path_str(&d.join("access_key_id")),
            path_str(&d.join("secret_access_key"))
        )
    });
    let mut spec = OpsSpec::new(moto);
    spec.port = port;
    spec.admin_port = admin;
    spec.image_ilink = format!("http://127.0.0.1:{port}/_images/$hash/$id.$ext");
    spec.origin_yaml = Some(format!(
        "    s3:\n      endpoint: \"http://{moto}\"\n      bucket: \"{bucket}\"\n      path_style: true\n\
         {cred_lines}    connect_timeout: 2s\n    read_timeout: 10s\n"
    ));
    spec
}

fn s3_yaml(
    work: &Path,
    port: u16,
    admin: u16,
    moto: SocketAddr,
    bucket: &str,
    creds: Option<&Path>,
) -> String {
    s3_spec(port, admin, moto, bucket, creds).yaml(work)
}

fn start_mirror(work: &Path, moto: SocketAddr, bucket: &str, creds: Option<&Path>) -> OpsMirror {
    let (port, admin) = (free_port(), free_port());
    let m = Mirror::start_yaml(work, port, &s3_yaml(work, port, admin, moto, bucket, creds));
    OpsMirror {
        proc: m.proc,
        addr: m.addr,
        admin: format!("127.0.0.1:{admin}").parse().expect("addr"),
        conf: m.conf,
    }
}

async fn get(m: &OpsMirror, path: &str, range: Option<&str>) -> (StatusCode, HeaderMap, Vec<u8>) {
    let mut req = client().get(format!("http://{}{path}", m.addr));
    if let Some(r) = range {
        req = req.header("range", r);
    }
    let resp = req.send().await.expect("request");
    let (status, headers) = (resp.status(), resp.headers().clone());
    (status, headers, resp.bytes().await.expect("body").to_vec())
}

fn h<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// What a visitor must get for `p`: bytes, type, name, our ETag, no S3 headers.
fn assert_post(p: &Post, status: StatusCode, headers: &HeaderMap, body: &[u8], x_cache: &str) {
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sha256(body), sha256(&p.bytes));
    assert_eq!(h(headers, "content-type"), p.content_type);
    assert_eq!(h(headers, "content-disposition"), p.disposition);
    assert_eq!(h(headers, "etag"), format!("\"{}\"", p.hash));
    assert_eq!(h(headers, "x-cache"), x_cache);
    assert!(!h(headers, "last-modified").is_empty(), "{headers:?}");
    let amz: Vec<_> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-amz-"))
        .collect();
    assert!(amz.is_empty(), "S3 headers reached the visitor: {amz:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_bucket_filled_like_shimmie_ext_s3() {
    let work = tempfile::tempdir().expect("tempdir");
    let (_moto, addr) = moto(work.path(), false);
    let posts = [
        post(1, 120_000, "image/jpeg", "jpg"),
        post(2, 30_000, "image/png", "png"),
    ];
    fill(work.path(), addr, "shimmie-public", false, &posts);
    let m = start_mirror(work.path(), addr, "shimmie-public", None);

    let p = &posts[0];
    let path = format!("/_images/{}/1%20-%20tag_a%20tag_b.jpg", p.hash);
    let (st, hd, body) = get(&m, &path, None).await;
    assert_post(p, st, &hd, &body, "MISS");
    let (st, hd, body) = get(&m, &path, None).await;
    assert_post(p, st, &hd, &body, "HIT");
    let (st, hd, body) = get(&m, &path, Some("bytes=1000-1999")).await;
    assert_eq!(st, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, &p.bytes[1000..2000]);
    assert_eq!(h(&hd, "content-type"), p.content_type);

    // Range on a miss: the right slice, and the whole object cached behind it.
    let q = &posts[1];
    let qpath = format!("/_images/{}/2.png", q.hash);
    let (st, hd, body) = get(&m, &qpath, Some("bytes=-500")).await;
    assert_eq!(st, StatusCode::PARTIAL_CONTENT, "{hd:?}");
    assert_eq!(body, &q.bytes[q.bytes.len() - 500..]);
    assert_eq!(h(&hd, "content-disposition"), q.disposition);
    let (st, hd, body) = get(&m, &qpath, None).await;
    assert_post(q, st, &hd, &body, "HIT");

    // Not in the bucket: 404, not S3's XML error as content.
    let missing = format!("/_images/{}/x.jpg", test_hash(999));
    for x_cache in ["MISS", "HIT"] {
        let (st, hd, body) = get(&m, &missing, None).await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        assert_eq!(String::from_utf8_lossy(&body), "not found\n", "{hd:?}");
        assert_eq!(h(&hd, "content-type"), "text/plain; charset=utf-8");
        assert_eq!(h(&hd, "x-cache"), x_cache);
        assert!(
            hd.keys().all(|k| !k.as_str().starts_with("x-amz-")),
            "{hd:?}"
        );
    }
    let head = client()
        .head(format!(
            "http://{}/_images/{}/y.jpg",
            m.addr,
            test_hash(998)
        ))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(head.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_bucket_needs_the_right_credentials_and_follows_sighup() {
    let work = tempfile::tempdir().expect("tempdir");
    let (_moto, addr) = moto(work.path(), true);
    let posts = [
        post(3, 40_000, "image/jpeg", "jpg"),
        post(4, 50_000, "image/webp", "webp"),
    ];
    let creds = fill(work.path(), addr, "shimmie-private", true, &posts);
    let m = start_mirror(work.path(), addr, "shimmie-private", Some(&creds));
    let (a, b) = (&posts[0], &posts[1]);
    let path_a = format!("/_images/{}/3.jpg", a.hash);
    let path_b = format!("/_images/{}/4.webp", b.hash);
    let (st, hd, body) = get(&m, &path_a, None).await;
    assert_post(a, st, &hd, &body, "MISS");
    // Signed and allowed to list: a missing key is S3's 404, and ours.
    let missing = format!("/_images/{}/x.jpg", test_hash(997));
    let (st, _, body) = get(&m, &missing, None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(String::from_utf8_lossy(&body), "not found\n");

    // A wrong secret, re-read on SIGHUP: S3 refuses the signature, the visitor gets a
    // short 502, and nothing is cached (the second try goes to S3 again).
    let secret = creds.join("secret_access_key");
    let good = std::fs::read_to_string(&secret).expect("secret");
    std::fs::write(&secret, "not-the-secret\n").expect("write secret");
    m.reload_expecting("ok");
    for _ in 0..2 {
        let (st, hd, body) = get(&m, &path_b, None).await;
        assert_eq!(st, StatusCode::BAD_GATEWAY, "{hd:?}");
        assert_eq!(String::from_utf8_lossy(&body), "origin failed\n");
        assert!(!h(&hd, "content-type").starts_with("image/"));
    }
    assert!(
        m.proc.log_text().contains("refused a signed request"),
        "{}",
        m.proc.log_text()
    );
    // What was cached with the good key is still served.
    let (st, hd, body) = get(&m, &path_a, None).await;
    assert_post(a, st, &hd, &body, "HIT");

    // The right secret again: served, from S3 (the 502 was never stored).
    std::fs::write(&secret, good).expect("restore secret");
    m.reload_expecting("ok");
    let (st, hd, body) = get(&m, &path_b, None).await;
    assert_post(b, st, &hd, &body, "MISS");
    let (st, _, body) = get(&m, &path_b, Some("bytes=0-99")).await;
    assert_eq!(st, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, &b.bytes[..100]);
}

#[test]
fn t_checks_the_s3_section() {
    let work = tempfile::tempdir().expect("tempdir");
    let moto: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let check = |yaml: String| config_check(work.path(), "check.yaml", &yaml);
    let good = s3_yaml(work.path(), 1, 2, moto, "shimmie", None);
    let (ok, out) = check(good.clone());
    assert!(ok, "{out}");
    let both = good.replace(
        "    s3:\n",
        "    servers: [\"http://127.0.0.1:9\"]\n    s3:\n",
    );
    let (ok, out) = check(both);
    assert!(!ok && out.contains("either servers or s3"), "{out}");
    let half = good.replace(
        "      path_style: true\n",
        "      path_style: true\n      access_key_id_file: /nonexistent/id\n",
    );
    let (ok, out) = check(half);
    assert!(!ok && out.contains("secret_access_key_file"), "{out}");
    let missing = s3_yaml(
        work.path(),
        1,
        2,
        moto,
        "shimmie",
        Some(Path::new("/nonexistent")),
    );
    let (ok, out) = check(missing);
    assert!(
        !ok && out.contains("cannot read /nonexistent/access_key_id"),
        "{out}"
    );
}
