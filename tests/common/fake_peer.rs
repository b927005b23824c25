//! A misbehaving peer: a plain TCP listener on 127.0.0.1 that a mirror takes for
//! another mirror of its fleet (its port is a node of the template). It answers the
//! health probe like a mirror, so it stays up, and every other request with whatever
//! the test's [`Reply`] says, including answers that stop half way and close.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the fake peer does with one request (not a health probe).
pub enum Reply {
    /// These bytes (a whole HTTP response), then the connection stays open.
    Send(Vec<u8>),
    /// These bytes, then the connection is closed (a peer dying mid-body).
    SendAndClose(Vec<u8>),
}

/// One request the fake peer saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

pub struct FakePeer {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakePeer {
    /// Listens on `port` and answers with `handler` until the test process ends.
    pub fn start(port: u16, handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the fake peer");
        let addr = listener.local_addr().expect("fake peer addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (handler, log) = (handler.clone(), log.clone());
                std::thread::spawn(move || serve(conn, &*handler, &log));
            }
        });
        FakePeer { addr, seen }
    }

    /// Every request but the health probes, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A response head with these header lines (each without its CRLF).
pub fn head(status: &str, headers: &[&str]) -> Vec<u8> {
    let mut h = format!("HTTP/1.1 {status}\r\n");
    for line in headers {
        h.push_str(line);
        h.push_str("\r\n");
    }
    h.push_str("\r\n");
    h.into_bytes()
}

fn serve(conn: TcpStream, handler: &Handler, log: &Mutex<Vec<Seen>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut input = BufReader::new(conn);
    loop {
        let Some(req) = read_request(&mut input) else {
            return;
        };
        if req.path == "/_shimmer/health" {
            if out
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                .is_err()
            {
                return;
            }
            continue;
        }
        log.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(req.clone());
        match handler(&req) {
            Reply::Send(bytes) => {
                if out.write_all(&bytes).is_err() {
                    return;
                }
            }
            Reply::SendAndClose(bytes) => {
                let _ = out.write_all(&bytes);
                let _ = out.flush();
                let _ = out.shutdown(std::net::Shutdown::Both);
                return;
            }
        }
    }
}

/// The request head, its body read and dropped; `None` at the end of the connection.
fn read_request(input: &mut BufReader<TcpStream>) -> Option<Seen> {
    let mut line = String::new();
    if input.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if input.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    input.read_exact(&mut body).ok()?;
    Some(Seen {
        method,
        path,
        headers,
    })
}
