//! HTTP/1.1 connection behaviour: pipelining (and with it, keep-alive after a bodiless
//! answer to a miss) and the bound on request heads.
//!
//! Why pipelining must be on, even for clients that never pipeline: while a cache fill
//! is still reading the origin's body, pingora-proxy 0.9.1 keeps polling the downstream
//! with `read_body_or_idle` (pingora-proxy-0.9.1/src/proxy_h1.rs:557). A bodiless answer
//! to a miss (HEAD, 304, 416) is complete long before the fill, so the client sends its
//! next request on the connection, and that poll reads it. With pipelining off, those
//! bytes are an error, "Sent data after end of body" (pingora-core-0.9.1
//! src/protocols/http/v1/server.rs:1294); the proxy ignores it to let the fill finish
//! (proxy_h1.rs:559-583, `downstream_state.to_errored()`), then refuses to reuse the
//! connection (proxy_h1.rs:836) and drops it with the next request's bytes already
//! consumed. With pipelining on, the same poll stashes the bytes as the start of the
//! next request (server.rs:1266-1291) and `reuse()` hands them to the next session
//! (server.rs:1450-1470), so the next request is answered, in order, once the fill ends.
//! The same switch makes a pipelined burst (request N+1 bytes arriving with request N)
//! reusable instead of "bytes overread on request, disallowing reuse".

use http::header;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::prelude::*;
use pingora_http::RequestHeader;

use crate::config::Settings;
use crate::request::Reject;

/// Socket read buffer per downstream connection. Requests to a mirror are small GET
/// heads; Pingora's default (64 KiB) is zeroed at every accept, which was 6% of the CPU
/// of a 1,000-connection cold stampede (perf, `make bench` cold).
const READ_BUFFER: usize = 4 << 10;
// The write buffer stays Pingora's (1,460 bytes), so a head and its body leave in two
// `send`s. A 64 KiB buffer made it one, but copying each body into the buffer cost more
// than the `send` saved: hot20k 60k against 70k req/s, https-hot20k 22k against 27k
// (`bench.py --servers shimmer --scenarios hot20k,https-hot20k`, interleaved runs).

/// A downstream listening endpoint, plain or TLS, with the read buffer above.
pub fn listener(addr: &str, tls: Option<TlsSettings>) -> ListenerConfig {
    let endpoint =
        ListenerConfig::tcp(addr).l4_buffer(L4BufferSettings::default().read(READ_BUFFER));
    match tls {
        Some(settings) => endpoint.tls(settings),
        None => endpoint,
    }
}

/// Called first for every request; the settings are also carried over to the next
/// request on the connection by Pingora, but setting them each time is free, covers
/// the first request of a connection and follows a reload.
///
/// The send timeout: Pingora's downstream writes have none by default, so a client
/// that stops reading (or reads a byte a minute) held its connection, its task and
/// whatever the answer pinned (a fill's reader, a TLS session) for as long as it liked.
/// Each write, HTTP/1 or HTTP/2, now gives up after `shimmer.http.send_timeout`, as
/// the direct writes do ([`super::direct::Socket::of`]).
pub(super) fn start(session: &mut Session, settings: &Settings) {
    session.downstream_session.set_pipelining_enabled(true);
    session.set_write_timeout(Some(settings.send_timeout));
}

/// The refusal for a request head larger than `shimmer.http.max_header_bytes`.
/// Pingora itself reads heads up to about 1 MiB; this is the limit a mirror wants.
pub(super) fn refuse_oversized(session: &mut Session, settings: &Settings) -> Option<Reject> {
    if head_bytes(session.req_header()) <= settings.max_header_bytes {
        return None;
    }
    // A client that sends such heads is not worth a second request on this connection.
    session.set_keepalive(None);
    Some(Reject {
        status: 431,
        reason: "request header fields too large",
    })
}

/// The size of the request line and header fields as an HTTP/1.1 client writes them
/// (`name: value\r\n`); the same measure for HTTP/2, whose HPACK form differs.
fn head_bytes(req: &RequestHeader) -> usize {
    // "METHOD SP target SP HTTP/1.1 CRLF" and the final CRLF.
    let line = req.method.as_str().len() + 1 + req.raw_path().len() + 11;
    let fields: usize = req
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
        .sum();
    // Host lives in the URI for HTTP/2; count it where it is not a header.
    let authority = match req.headers.contains_key(header::HOST) {
        true => 0,
        false => req.uri.authority().map_or(0, |a| a.as_str().len() + 8),
    };
    line + fields + authority + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_bytes_counts_the_wire_form() {
        let mut req = RequestHeader::build("GET", b"/_images/ab/x.jpg", None).expect("header");
        req.insert_header("Host", "m").expect("host");
        // "GET /_images/ab/x.jpg HTTP/1.1\r\n" + "host: m\r\n" + "\r\n"
        assert_eq!(head_bytes(&req), 32 + 9 + 2);
        req.insert_header("Cookie", "a".repeat(100_000))
            .expect("cookie");
        assert_eq!(head_bytes(&req), 32 + 9 + 2 + 6 + 2 + 100_000 + 2);
    }
}
