//! The memory-hit fast path. A plain GET for an image held whole and fresh in the memory
//! tier is answered straight from `request_filter`, skipping pingora-cache's lookup state
//! machine (cache-key hashing twice, meta decoding, the hit handler, range and
//! conditional filters). That machinery was about a third of the CPU of a 20 KB hit
//! (perf, `make bench` hot20k). Anything else, a Range, a conditional, a HEAD, an object
//! on disk or still being fetched, takes the full path, which handles them all.

use std::time::SystemTime;

use http::{header, HeaderValue, Method};
use pingora::prelude::*;
use pingora_http::{RequestHeader, ResponseHeader};

use super::direct::Socket;
use super::respond::hit_parts;
use super::FastHit;
use crate::cache::declared_body_len;
use crate::cache::tiered::TieredStorage;
use crate::config::Settings;
use crate::request::MediaRequest;

/// Whether the full path could answer this request differently from a plain 200: only a
/// GET with no `Range` and no `If-*` header may take the fast path.
pub(super) fn eligible(req: &RequestHeader) -> bool {
    req.method == Method::GET
        && !req.headers.keys().any(|name| {
            let name = name.as_str();
            name == "range" || name.starts_with("if-")
        })
}

/// Answers an [`eligible`] request from memory if it can: `Some` when the response
/// was written, on the socket directly over plain HTTP/1.1 (one `writev` of the head
/// kept with the object, see [`super::direct`]), through Pingora's writer otherwise.
pub(super) async fn serve(
    session: &mut Session,
    storage: &TieredStorage,
    media: &MediaRequest,
    settings: &Settings,
) -> Result<Option<FastHit>> {
    let key = media.object().key_hash();
    let Some(object) = storage.memory_fresh_object(&key, SystemTime::now()) else {
        return Ok(None);
    };
    // What pingora-proxy's hit path does to a stored header: an Age (RFC 9111 section 4),
    // HTTP/1.1, and chunked framing when there is no length; we leave that last case to
    // it, as the disk path does (the same rule: a declared length that is the body's).
    if declared_body_len(object.header()) != Some(object.body.len() as u64) {
        return Ok(None);
    }
    let parts = || hit_parts(object.header().clone(), settings);
    if let Some(socket) = Socket::of(session, settings.send_timeout) {
        let tag = settings.answer.generation;
        let head = object
            .prepared()
            .get_or_make(tag, || Socket::prepared_head(parts()));
        let sent = socket
            .send_prepared(session, &head, object.age_secs, &object.body)
            .await;
        return Ok(Some(FastHit::Direct(sent)));
    }
    let mut parts = parts();
    parts
        .headers
        .insert(header::AGE, HeaderValue::from(object.age_secs));
    let resp = ResponseHeader::from(parts);
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(object.body), true).await?;
    Ok(Some(FastHit::Pingora))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get_with(headers: &[(&'static str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/_images/abc/x.jpg", None).expect("request");
        for (name, value) in headers {
            req.insert_header(*name, *value).expect("header");
        }
        req
    }

    #[test]
    fn a_plain_get_is_eligible() {
        assert!(eligible(&get_with(&[
            ("user-agent", "x"),
            ("accept", "*/*")
        ])));
    }

    #[test]
    fn ranges_and_conditionals_take_the_full_path() {
        for name in [
            "range",
            "if-none-match",
            "if-modified-since",
            "if-range",
            "if-match",
            "if-unmodified-since",
        ] {
            assert!(!eligible(&get_with(&[(name, "x")])), "{name}");
        }
    }

    #[test]
    fn head_takes_the_full_path() {
        let req = RequestHeader::build("HEAD", b"/_images/abc/x.jpg", None).expect("request");
        assert!(!eligible(&req));
    }
}
