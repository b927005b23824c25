//! Reconfiguring a running mirror: SIGHUP reloads (good, broken, and with settings that
//! cannot change live), the log level, Pingora's graceful upgrade (SIGQUIT + `-u`)
//! under a steady request loop, and SIGTERM's graceful stop.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use common::*;
use tempfile::TempDir;

struct World {
    work: TempDir,
    data: DataDir,
    origin: Origin,
}

fn world() -> World {
    let work = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(work.path().join("data"));
    let origin = Origin::start(&data.dir, work.path());
    World { work, data, origin }
}

/// Puts image number `i` in `data` and returns its path on a mirror.
fn image(data: &DataDir, i: u64) -> String {
    let hash = test_hash(i);
    data.put("_images", &hash, &jpeg_bytes(4096, i));
    format!("/_images/{hash}/{i}.jpg")
}

fn origin_requests(o: &Origin) -> u64 {
    let r = http_get(o.addr, "/_origin/stats").expect("origin stats");
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("stats JSON");
    v["requests"].as_u64().expect("requests")
}

#[test]
fn a_broken_config_changes_nothing_and_counts_the_failure() {
    let w = world();
    let spec = OpsSpec::new(w.origin.addr);
    let m = OpsMirror::start(w.work.path(), &spec);
    let path = image(&w.data, 1);
    assert_eq!(m.get(&path).header("x-cache"), Some("MISS"));
    assert_eq!(m.get(&path).header("x-cache"), Some("HIT"));
    let good = spec.yaml(w.work.path());

    // Not YAML at all.
    m.rewrite("shimmer: [this is not\n  - valid: yaml");
    m.reload_expecting("failed");
    // YAML, but a value that does not validate.
    m.rewrite(&good.replace(
        &format!("servers: [\"http://{}\"]", w.origin.addr),
        "servers: []",
    ));
    m.reload_expecting("failed");
    // A typo in a key.
    m.rewrite(&good.replace("connect_timeout:", "conect_timeout:"));
    m.reload_expecting("failed");
    // A file that cannot be read.
    std::fs::remove_file(&m.conf).expect("remove config");
    m.reload_expecting("failed");

    assert_eq!(
        m.metric("shimmer_config_reloads_total", &[("result", "failed")]),
        4.0
    );
    assert_eq!(
        m.metric("shimmer_config_reloads_total", &[("result", "ok")]),
        0.0
    );
    let log = m.proc.log_text();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("reload refused, the running config stays"))
        .collect();
    assert_eq!(
        refusals.len(),
        4,
        "one clear line per refused reload:\n{log}"
    );
    assert!(
        refusals[1].contains("shimmer.origin.servers"),
        "{}",
        refusals[1]
    );
    assert!(refusals[2].contains("conect_timeout"), "{}", refusals[2]);
    assert!(refusals.iter().all(|l| l.contains(path_str(&m.conf))));

    // Still serving, from the same cache, with the same settings.
    let r = m.get(&path);
    assert_eq!((r.status, r.header("x-cache")), (200, Some("HIT")));
    assert_eq!(m.get(&image(&w.data, 2)).status, 200);
    assert_eq!(origin_requests(&w.origin), 2);
    let status = http_get(m.admin, "/status").expect("status");
    assert_eq!(status.status, 200);
}

#[test]
fn a_good_reload_swaps_origins_and_fleet_and_keeps_the_cache() {
    let w = world();
    let data2 = DataDir::new(w.work.path().join("data2"));
    let origin2 = Origin::start(&data2.dir, w.work.path());
    let mut spec = OpsSpec::new(w.origin.addr);
    let m = OpsMirror::start(w.work.path(), &spec);

    // Cache some images from the first origin.
    let cached: Vec<String> = (100..130).map(|i| image(&w.data, i)).collect();
    for p in &cached {
        assert_eq!(m.get(p).header("x-cache"), Some("MISS"));
    }
    assert_eq!(origin_requests(&w.origin), cached.len() as u64);

    // New origin, and a fleet of three where this node owns about two thirds.
    spec.origins = vec![format!("http://{}", origin2.addr)];
    spec.image_ilink = "http://m-{a=1,b=1,c=1}.test/_images/$hash/$id.$ext".into();
    m.rewrite(&spec.yaml(w.work.path()));
    let version = m.metric("shimmer_fleet_view_version", &[]);
    m.reload_expecting("ok");
    assert_eq!(m.metric("shimmer_fleet_view_version", &[]), version + 1.0);

    let (mut hits, mut redirects) = (0, 0);
    for p in &cached {
        let r = m.get(p);
        match r.status {
            200 => {
                assert_eq!(
                    r.header("x-cache"),
                    Some("HIT"),
                    "the cache survives a reload"
                );
                hits += 1;
            }
            307 => {
                let to = r.header("location").unwrap_or_default();
                assert!(
                    to.starts_with("http://m-b.test/") || to.starts_with("http://m-c.test/"),
                    "{to}"
                );
                redirects += 1;
            }
            s => panic!("{p}: unexpected {s}"),
        }
    }
    assert!(
        hits > 0 && redirects > 0,
        "hits {hits}, redirects {redirects}"
    );
    assert_eq!(origin_requests(&w.origin), cached.len() as u64);

    // Misses now go to the new origin (only it has these files).
    let mut served = 0;
    for i in 200..230 {
        let r = m.get(&image(&data2, i));
        if r.status == 200 {
            assert_eq!(r.header("x-cache"), Some("MISS"));
            served += 1;
        }
    }
    assert!(served > 0);
    assert_eq!(origin_requests(&origin2), served);
    assert_eq!(origin_requests(&w.origin), cached.len() as u64);

    let status: serde_json::Value =
        serde_json::from_slice(&http_get(m.admin, "/status").expect("status").body)
            .expect("status JSON");
    assert_eq!(status["silos"]["_images"]["balanced"], true);
}

#[test]
fn settings_that_cannot_change_live_are_named_with_the_upgrade_advice() {
    let w = world();
    let mut spec = OpsSpec::new(w.origin.addr);
    let disk = |name: &str| {
        let dir = w.work.path().join(name);
        format!("    dir: \"{}\"\n    disk_bytes: 64M\n", path_str(&dir))
    };
    spec.cache_extra = disk("disk1");
    let m = OpsMirror::start(w.work.path(), &spec);
    let path = image(&w.data, 300);
    assert_eq!(m.get(&path).status, 200);

    let old_port = spec.port;
    let new_port = free_port();
    let mut yaml = spec.yaml(w.work.path());
    yaml = yaml.replace(
        &format!("listen: [\"127.0.0.1:{old_port}\"]"),
        &format!("listen: [\"127.0.0.1:{new_port}\"]"),
    );
    yaml = yaml.replace("memory_bytes: 64M", "memory_bytes: 128M");
    yaml = yaml.replace("threads: 2", "threads: 3");
    yaml = yaml.replace(&disk("disk1"), &disk("disk2"));
    spec.admin_port = free_port();
    let admin_line = |p: u16| format!("listen: \"127.0.0.1:{p}\"");
    yaml = yaml.replace(&admin_line(m.admin.port()), &admin_line(spec.admin_port));
    m.rewrite(&yaml);
    m.reload_expecting("ok");

    let log = m.proc.log_text();
    for key in [
        "shimmer.listen",
        "shimmer.admin.listen",
        "shimmer.cache.memory_bytes",
        "shimmer.cache.dir",
        "threads",
    ] {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("reload: {key} cannot change")))
            .unwrap_or_else(|| panic!("no line names {key}:\n{log}"));
        assert!(
            line.contains("graceful upgrade") && line.contains("SIGQUIT"),
            "{line}"
        );
    }
    // The old listeners keep serving; nothing listens on the new addresses.
    assert_eq!(m.get(&path).header("x-cache"), Some("HIT"));
    assert!(tcp_connect(format!("127.0.0.1:{new_port}").parse().expect("addr")).is_err());
    let status: serde_json::Value =
        serde_json::from_slice(&http_get(m.admin, "/status").expect("status").body)
            .expect("status JSON");
    let memory = status["cache"]
        .as_array()
        .and_then(|tiers| tiers.iter().find(|t| t["tier"] == "memory"))
        .expect("the memory tier in /status");
    let budget = memory["budget"].as_u64().expect("budget");
    assert_eq!(budget, 64 << 20, "the memory budget cannot change live");
}

#[test]
fn the_log_level_changes_on_reload() {
    let w = world();
    let mut spec = OpsSpec::new(w.origin.addr);
    spec.log_level = "warn".into();
    let m = OpsMirror::start_with(w.work.path(), &spec, Proc::spawn_without_rust_log);
    let set_level = |level: &str| {
        let mut s = OpsSpec::new(w.origin.addr);
        s.port = spec.port;
        s.admin_port = spec.admin_port;
        s.image_ilink = spec.image_ilink.clone();
        s.log_level = level.into();
        m.rewrite(&s.yaml(w.work.path()));
        m.reload_expecting("ok");
    };
    let (quiet1, loud1, quiet2, loud2) = (
        test_hash(401),
        test_hash(402),
        test_hash(403),
        test_hash(404),
    );
    let get = |hash: &str| {
        w.data.put("_images", hash, &jpeg_bytes(1000, 1));
        assert_eq!(m.get(&format!("/_images/{hash}/x.jpg")).status, 200);
    };
    let logged = |hash: &str| m.proc.log_text().contains(hash);

    get(&quiet1);
    set_level("info");
    get(&loud1);
    wait_until("the access line at info", || logged(&loud1).then_some(()));
    set_level("warn");
    get(&quiet2);
    set_level("info");
    get(&loud2);
    wait_until("the access line at info", || logged(&loud2).then_some(()));
    assert!(
        !logged(&quiet1) && !logged(&quiet2),
        "{}",
        m.proc.log_text()
    );
}

/// Opens the FIFO at `path` for writing once the mirror has opened it for reading
/// (without blocking: the mirror might never get there).
fn fifo_writer(path: &std::path::Path, proc: &mut Proc) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    wait_until("the mirror reading its config", || {
        assert!(proc.is_running(), "the mirror exited:\n{}", proc.log_text());
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .ok()
    })
}

/// SIGHUP's default action is to end the process, and the reload service only listens
/// once Pingora runs its services. A SIGHUP before that (here: while the mirror reads
/// its config, held up by a FIFO) must not kill it, and is not lost: the mirror
/// starts, serves, and reloads for it once it can.
#[test]
fn a_sighup_while_starting_is_not_fatal_and_is_acted_on() {
    let w = world();
    let spec = OpsSpec::new(w.origin.addr);
    let yaml = spec.yaml(w.work.path());
    let conf = w.work.path().join("fifo.yaml");
    let c = std::ffi::CString::new(path_str(&conf)).expect("path");
    // SAFETY: mkfifo(3) with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let mut proc = Proc::spawn(&["-c", path_str(&conf)], w.work.path().join("fifo.log"));
    // The mirror is in main, reading its config: long before the reload service.
    let mut fifo = fifo_writer(&conf, &mut proc);
    proc.signal(libc::SIGHUP);
    if let Err(e) = fifo.write_all(yaml.as_bytes()) {
        // EPIPE: the reader is gone.
        proc.wait_exit(Duration::from_secs(10));
        panic!(
            "could not hand the config over ({e}); the mirror is {}:\n{}",
            if proc.is_running() { "running" } else { "gone" },
            proc.log_text()
        );
    }
    drop(fifo);
    let addr: SocketAddr = format!("127.0.0.1:{}", spec.port).parse().expect("addr");
    let admin: SocketAddr = format!("127.0.0.1:{}", spec.admin_port)
        .parse()
        .expect("addr");
    wait_for_port(&mut proc, addr, "mirror");
    wait_for_port(&mut proc, admin, "mirror admin");

    // The reload it owes reads the file again: the FIFO gets the same config once more.
    let mut fifo = fifo_writer(&conf, &mut proc);
    fifo.write_all(yaml.as_bytes()).expect("config again");
    drop(fifo);
    let reloads = || {
        let text = http_get(admin, "/metrics").expect("scrape").text();
        metric_value(&text, "shimmer_config_reloads_total", &[("result", "ok")])
    };
    wait_until("the reload for the early SIGHUP", || {
        (reloads() == Some(1.0)).then_some(())
    });
    assert!(
        proc.log_text()
            .contains("SIGHUP arrived while the mirror was starting"),
        "{}",
        proc.log_text()
    );
    let path = image(&w.data, 600);
    let r = http_get(addr, &path).expect("GET after the early SIGHUP");
    assert_eq!((r.status, r.header("x-cache")), (200, Some("MISS")));
    assert!(proc.is_running());
}

/// Pingora's graceful upgrade: a new process started with `-u` waits on the upgrade
/// socket, SIGQUIT makes the old one hand over its listening sockets and leave. A
/// client looping on fresh connections all along never sees a refused connection.
#[test]
fn sigquit_hands_the_listeners_to_a_new_process_without_refusing_a_connection() {
    let w = world();
    let cert = make_cert(w.work.path(), "a", &["a.test"]);
    let tls_port = free_port();
    let mut spec = OpsSpec::new(w.origin.addr);
    spec.shimmer_extra = format!(
        "  tls:\n    listen: [\"127.0.0.1:{tls_port}\"]\n    certs: [{{cert: \"{}\", key: \"{}\"}}]\n",
        path_str(&cert.cert),
        path_str(&cert.key)
    );
    let mut old = OpsMirror::start(w.work.path(), &spec);
    let path = image(&w.data, 500);
    let tls: SocketAddr = format!("127.0.0.1:{tls_port}").parse().expect("addr");
    wait_for_port(&mut old.proc, tls, "TLS listener");

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let looper = {
        let (stop, done, failures) = (stop.clone(), done.clone(), failures.clone());
        let (addr, path) = (old.addr, path.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match http_get(addr, &path) {
                    Ok(r) if r.status == 200 => {}
                    Ok(r) => failures
                        .lock()
                        .unwrap()
                        .push(format!("status {}", r.status)),
                    Err(e) => failures
                        .lock()
                        .unwrap()
                        .push(format!("{:?}: {e}", e.kind())),
                }
                done.fetch_add(1, Ordering::SeqCst);
                // Steady, not flat out: every request is a new connection, and the
                // ports in TIME_WAIT are shared with the tests running beside this one.
                std::thread::sleep(Duration::from_millis(3));
            }
        })
    };
    let wait_requests = |n: u64| {
        let target = done.load(Ordering::SeqCst) + n;
        wait_until("requests from the loop", || {
            (done.load(Ordering::SeqCst) >= target).then_some(())
        });
    };
    wait_requests(50);

    let sock = w.work.path().join(format!("shimmer-{}.sock", spec.port));
    assert!(!sock.exists());
    let mut new = Proc::spawn(
        &["-u", "-c", path_str(&old.conf)],
        w.work.path().join("upgraded.log"),
    );
    wait_until("the new process waiting on the upgrade socket", || {
        assert!(new.is_running(), "new process exited:\n{}", new.log_text());
        sock.exists().then_some(())
    });
    old.proc.signal(libc::SIGQUIT);
    let status = old
        .proc
        .wait_exit(Duration::from_secs(60))
        .expect("the old process leaves after the handover");
    assert!(status.success(), "old process: {status}");
    wait_requests(50);
    stop.store(true, Ordering::SeqCst);
    looper.join().expect("request loop");

    let failures = failures.lock().unwrap();
    eprintln!(
        "upgrade: {} requests on fresh connections, {} failed",
        done.load(Ordering::SeqCst),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the upgrade: {:?}",
        failures.len(),
        done.load(Ordering::SeqCst),
        &failures[..failures.len().min(5)]
    );
    assert!(new.is_running());
    // Every listener moved: plain, TLS and admin, all served by the new process.
    let admin_metrics = http_get(old.admin, "/metrics").expect("admin after upgrade");
    let served = metric_value(
        &String::from_utf8_lossy(&admin_metrics.body),
        "shimmer_requests_total",
        &[("silo", "_images"), ("outcome", "miss")],
    );
    assert_eq!(served, Some(1.0), "the new process's own counters");
    let s = tls_connect(tls, Some("a.test"), None).expect("TLS after upgrade");
    assert!(peer_der(&s) == cert.der);
    let r = HttpConn::new(s)
        .request("GET", "a.test", &path, &[], &[])
        .expect("GET over TLS after upgrade");
    assert_eq!(r.status, 200);
    let log = new.log_text();
    assert!(log.contains("Bootstrap done"), "{log}");
}

/// SIGTERM: stop accepting, let the request in flight finish within the grace
/// period, then exit 0.
#[test]
fn sigterm_lets_the_request_in_flight_finish_then_exits() {
    let work = tempfile::tempdir().expect("tempdir");
    let body = jpeg_bytes(64 * 1024, 9);
    let (origin, got_request, release) = held_origin(body.clone());
    let mut spec = OpsSpec::new(origin);
    // Pingora waits out the whole grace period, so keep it short, but far longer
    // than the rest of the response takes once released.
    spec.grace_period_seconds = 8;
    let mut m = OpsMirror::start(work.path(), &spec);
    let hash = test_hash(600);
    let addr = m.addr;
    let client = std::thread::spawn(move || http_get(addr, &format!("/_images/{hash}/x.jpg")));
    got_request
        .recv_timeout(Duration::from_secs(30))
        .expect("the mirror asks the origin");
    m.proc.signal(libc::SIGTERM);
    wait_until("the mirror to take the SIGTERM", || {
        m.proc.log_text().contains("SIGTERM received").then_some(())
    });
    release.send(()).expect("release the origin");
    let r = client
        .join()
        .expect("client thread")
        .expect("the request in flight completes");
    assert_eq!(r.status, 200);
    assert!(r.body == body, "the full body arrives");
    let status = m
        .proc
        .wait_exit(Duration::from_secs(120))
        .expect("the mirror exits after the grace period");
    assert!(status.success(), "{status}:\n{}", m.proc.log_text());
}

/// An origin that sends half of `body`, then waits for the test's word before the rest.
fn held_origin(body: Vec<u8>) -> (SocketAddr, mpsc::Receiver<()>, mpsc::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (got_tx, got_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let half = body.len() / 2;
        let _ = s.write_all(&body[..half]);
        let _ = s.flush();
        let _ = got_tx.send(());
        let _ = release_rx.recv_timeout(Duration::from_secs(60));
        let _ = s.write_all(&body[half..]);
        let _ = s.flush();
        // Not a wait for an assertion: the socket stays open a moment so the mirror
        // reads the whole body before it sees the close.
        std::thread::sleep(Duration::from_millis(200));
    });
    (addr, got_rx, release_tx)
}
