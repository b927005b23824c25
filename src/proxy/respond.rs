//! Step 7 and the refusals: the headers every answer carries, and the short answers
//! the mirror writes itself.

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, StatusCode};
use pingora::prelude::*;
use pingora_cache::CachePhase;
use pingora_http::{RequestHeader, ResponseHeader};

use super::RequestCtx;
use crate::config::Settings;
use crate::request::Reject;

/// Whether a request asks for `Cache-Control: only-if-cached`.
pub(super) fn only_if_cached(req: &RequestHeader) -> bool {
    req.headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("only-if-cached"))
}

/// What an object fetched from upstream (origin or a peer's copy) is stored with:
/// no cookies or caching headers of the upstream's, and the ETag is the md5, so
/// If-None-Match works on hits as on misses.
pub(super) fn object_headers(resp: &mut ResponseHeader, ctx: &RequestCtx) -> Result<()> {
    for h in [
        header::SET_COOKIE,
        header::CACHE_CONTROL,
        header::EXPIRES,
        header::PRAGMA,
        header::VARY,
    ] {
        resp.remove_header(&h);
    }
    // 206: a Range pass-through's answer, which carries the object's ETag too.
    if matches!(resp.status.as_u16(), 200 | 206) {
        if let Some(media) = &ctx.media {
            resp.insert_header(header::ETAG, format!("\"{}\"", media.hash))?;
        }
    }
    Ok(())
}

/// `x-shimmer-node`: which mirror answered.
pub(super) const X_SHIMMER_NODE: HeaderName = HeaderName::from_static("x-shimmer-node");
/// `x-cache`: HIT, MISS, ... ([`cache_status`]).
const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// The headers every served image carries, whichever path served it: values made once
/// per config ([`crate::config::AnswerHeaders`]), so an answer only clones them.
pub(super) fn answer_headers(
    status: StatusCode,
    s: &Settings,
    x_cache: &'static str,
) -> [(HeaderName, HeaderValue); 3] {
    let cache_control = match status.as_u16() {
        200 | 206 | 304 => s.answer.cache_control.clone(),
        404 => s.answer.not_found_cache_control.clone(),
        _ => HeaderValue::from_static("no-store"),
    };
    [
        (header::CACHE_CONTROL, cache_control),
        (X_SHIMMER_NODE, s.answer.node.clone()),
        (X_CACHE, HeaderValue::from_static(x_cache)),
    ]
}

/// A stored header as a hit answers it, but for `Age`: HTTP/1.1 and the mirror's
/// answer headers, for the fast paths (`memory_hit.rs`, `disk_hit.rs`). Stored headers
/// keep no name case (src/cache/memory/meta.rs), so nothing is lost by editing the map
/// directly, which skips Pingora's per-insert name parsing.
pub(super) fn hit_parts(stored: ResponseHeader, s: &Settings) -> http::response::Parts {
    let mut parts = http::response::Parts::from(stored);
    parts.version = http::Version::HTTP_11;
    for (name, value) in answer_headers(parts.status, s, "HIT") {
        parts.headers.insert(name, value);
    }
    parts
}

/// [`answer_headers`] into a header of the full path.
pub(super) fn decorate(
    resp: &mut ResponseHeader,
    s: &Settings,
    x_cache: &'static str,
) -> Result<()> {
    for (name, value) in answer_headers(resp.status, s, x_cache) {
        resp.insert_header(name, value)?;
    }
    Ok(())
}

/// The value of the `x-cache` response header for a cache phase.
pub(super) fn cache_status(phase: CachePhase) -> &'static str {
    match phase {
        CachePhase::Hit => "HIT",
        CachePhase::Miss => "MISS",
        CachePhase::Stale | CachePhase::StaleUpdating => "STALE",
        CachePhase::Expired => "EXPIRED",
        CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => "REVALIDATED",
        _ => "PASS",
    }
}

/// Where a plain-HTTP request goes when TLS is configured with `redirect_http`.
pub(super) fn https_redirect(session: &Session, settings: &Settings) -> Option<String> {
    let tls = settings.tls.as_ref().filter(|t| t.redirect_http)?;
    let over_tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    if over_tls {
        return None;
    }
    let req = session.req_header();
    let host = req
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name))
        .filter(|h| !h.is_empty() && !h.contains(['/', '@', ' ']))?;
    let port = tls
        .listen
        .first()
        .and_then(|l| l.rsplit_once(':'))
        .map(|(_, p)| p)
        .filter(|p| *p != "443")
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    Some(format!("https://{host}{port}{path}"))
}

/// A short plain-text response for refusals and failures; never cached.
pub(super) async fn respond_text(
    session: &mut Session,
    settings: &Settings,
    reject: Reject,
) -> Result<()> {
    let body = Bytes::from(format!("{}\n", reject.reason));
    let mut resp = ResponseHeader::build(reject.status, Some(6))?;
    resp.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(header::CONTENT_LENGTH, body.len())?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    resp.insert_header(X_SHIMMER_NODE, settings.answer.node.clone())?;
    if reject.status == 405 {
        resp.insert_header(header::ALLOW, "GET, HEAD")?;
    }
    if reject.status == 405 {
        // The request may carry a body nobody read: do not reuse the connection.
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}
