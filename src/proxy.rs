//! The mirror's `ProxyHttp`: DESIGN.md section 1, steps 1 to 7. It composes request
//! parsing, placement, the cache and the origins, and owns no state: everything it
//! reads comes from one snapshot of [`Shared`] taken when the request starts.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use pingora_cache::eviction::EvictionManager;
use pingora_cache::{
    CacheKey, CacheMeta, CacheOptionOverrides, CachePhase, NoCacheReason, RespCacheable,
};
use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};

mod fill;
mod http1;
pub use http1::listener;
mod direct;
mod disk_hit;
mod memory_hit;
mod range;
mod respond;
mod route;
mod upstream;
mod warm_notice;

use crate::cache::IMMUTABLE_TTL;
use crate::config::Settings;
use crate::fleet::FillReason;
use crate::metrics;
use crate::peers::warm::WARM_PATH;
use crate::peers::{HEALTH_PATH, HOP_HEADER};
use crate::request::{self, MediaRequest, Reject};
use crate::state::Shared;
use respond::{
    cache_status, decorate, https_redirect, object_headers, only_if_cached, respond_text,
};
use route::Route;
use upstream::{observe_origin, origin_error_result};

/// The Pingora application of one mirror.
pub struct Mirror {
    shared: Arc<Shared>,
}

impl Mirror {
    pub fn new(shared: Arc<Shared>) -> Mirror {
        Mirror { shared }
    }
}

/// What happened to a request, for the response headers, the log and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pending,
    Rejected,
    /// The hash is banned in Shimmie: 404 whatever any cache or origin holds.
    Banned,
    Redirect,
    Served,
    Error,
}

/// How a fast path (`proxy/memory_hit.rs`, `proxy/disk_hit.rs`) answered a hit before
/// pingora-cache ran.
#[derive(Debug, Clone, Copy)]
enum FastHit {
    /// Through Pingora's writer (TLS, HTTP/2).
    Pingora,
    /// Written on the socket directly (`proxy/direct.rs`): Pingora saw no response.
    Direct(direct::Sent),
}

/// Per-request state: the snapshot of the settings and what was learned on the way.
pub struct RequestCtx {
    settings: Arc<Settings>,
    media: Option<MediaRequest>,
    outcome: Outcome,
    /// Origins tried so far for this request (the next one is `origins[tries % n]`).
    origin_tries: usize,
    origin_started: Option<Instant>,
    /// Answered by a fast path (pingora-cache never ran).
    fast_hit: Option<FastHit>,
    /// Where the request is served (a peer in proxy mode, or here).
    route: Route,
    /// The peer the current upstream attempt goes to; `None`: an origin.
    peer: Option<String>,
    peer_started: Option<Instant>,
    /// Peers tried so far, so a retry moves on to the next acting owner.
    peers_tried: Vec<String>,
    /// Retries on a fresh connection after a pooled one turned out closed.
    stale_retries: u8,
    /// What replaces an origin's error body (S3's XML), see `origin::upstream`.
    origin_error_body: Option<Bytes>,
    /// The request says `Cache-Control: only-if-cached`: a miss is a 504, never a fill.
    only_if_cached: bool,
    /// Whether this miss's peers to ask (owner-first fill, handoff) were worked out.
    fill_planned: bool,
    /// Peers still to ask only-if-cached before the origin, in order.
    fill_asks: Vec<(String, FillReason)>,
    /// The current upstream attempt is such an ask (to `peer`).
    fill_ask: Option<FillReason>,
    /// The peer whose copy this miss is filled from.
    filled_from: Option<String>,
    /// The current upstream is an origin (so a finished fill notices the other owner).
    from_origin: bool,
    /// A Range far ahead of a fill in progress, fetched from the origin uncached.
    range_pass: Option<range::RangePass>,
    started: Instant,
}

impl RequestCtx {
    fn silo_label(&self) -> &'static str {
        self.media.as_ref().map_or("none", |m| m.silo.as_str())
    }
}

#[async_trait]
impl ProxyHttp for Mirror {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            settings: self.shared.settings.load_full(),
            media: None,
            outcome: Outcome::Pending,
            origin_tries: 0,
            origin_started: None,
            fast_hit: None,
            route: Route::Here,
            peer: None,
            peer_started: None,
            peers_tried: Vec::new(),
            stale_retries: 0,
            origin_error_body: None,
            only_if_cached: false,
            fill_planned: false,
            fill_asks: Vec::new(),
            fill_ask: None,
            filled_from: None,
            from_origin: false,
            range_pass: None,
            started: Instant::now(),
        }
    }

    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {
        // No response compression: images and videos are already compressed.
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Pipelining on, which also keeps a connection alive after a bodiless answer
        // to a miss (why: src/proxy/http1.rs), and the send timeout.
        http1::start(session, &ctx.settings);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if let Some(reject) = http1::refuse_oversized(session, &ctx.settings) {
            ctx.outcome = Outcome::Rejected;
            respond_text(session, &ctx.settings, reject).await?;
            return Ok(true);
        }
        if let Some(location) = https_redirect(session, &ctx.settings) {
            ctx.outcome = Outcome::Redirect;
            let mut resp = ResponseHeader::build(308, Some(3))?;
            resp.insert_header(header::LOCATION, location)?;
            resp.insert_header(header::CONTENT_LENGTH, 0)?;
            resp.insert_header(respond::X_SHIMMER_NODE, ctx.settings.answer.node.clone())?;
            session.write_response_header(Box::new(resp), true).await?;
            return Ok(true);
        }
        if session.req_header().uri.path() == WARM_PATH {
            ctx.outcome = Outcome::Rejected;
            let answer = warm_notice::receive(session, &self.shared).await;
            respond_text(session, &ctx.settings, answer).await?;
            return Ok(true);
        }
        if session.req_header().uri.path() == HEALTH_PATH {
            ctx.outcome = Outcome::Rejected;
            let ok = Reject {
                status: 200,
                reason: "ok",
            };
            respond_text(session, &ctx.settings, ok).await?;
            return Ok(true);
        }
        let req = session.req_header();
        let parsed = request::parse(
            &req.method,
            req.uri.path(),
            req.uri.query(),
            ctx.settings.max_path_bytes,
        );
        let media = match parsed {
            Ok(m) => m,
            Err(reject) => {
                ctx.outcome = Outcome::Rejected;
                respond_text(session, &ctx.settings, reject).await?;
                return Ok(true);
            }
        };
        if self.shared.bans.contains(media.hash) {
            ctx.outcome = Outcome::Banned;
            ctx.media = Some(media);
            let reject = Reject {
                status: 404,
                reason: "not found",
            };
            respond_text(session, &ctx.settings, reject).await?;
            return Ok(true);
        }
        let fleet = self.shared.fleet.load();
        let peers = &self.shared.peers;
        // A request another mirror of the fleet sent here is served whatever our view
        // says (two mirrors that briefly disagree must not bounce it forever); only a
        // verified marker counts, so a visitor cannot steer a non-owner to the origin.
        let marker = media.hop.as_deref().or_else(|| {
            let req = session.req_header();
            req.headers.get(HOP_HEADER).and_then(|v| v.to_str().ok())
        });
        let client_ip = || {
            session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip())
        };
        let hopped = route::hop_trusted(peers, marker, media.object(), client_ip);
        let (way, failover) = route::decide(&fleet, peers, ctx.settings.mode, &media, hopped);
        if let Some(to) = failover {
            metrics::FAILOVERS.with_label_values(&[to]).inc();
        }
        match way {
            Route::Redirect { location } => {
                ctx.outcome = Outcome::Redirect;
                ctx.media = Some(media);
                let mut resp = ResponseHeader::build(307, Some(4))?;
                resp.insert_header(header::LOCATION, location)?;
                resp.insert_header(header::CONTENT_LENGTH, 0)?;
                // Placement follows the live weights: a browser must not remember it.
                resp.insert_header(header::CACHE_CONTROL, "no-store")?;
                resp.insert_header(respond::X_SHIMMER_NODE, ctx.settings.answer.node.clone())?;
                session.write_response_header(Box::new(resp), true).await?;
                return Ok(true);
            }
            Route::Proxy { .. } => {
                // Not stored here: the owner holds it, and one copy per object per
                // owner is what makes the fleet one cache.
                ctx.route = way;
                ctx.media = Some(media);
                return Ok(false);
            }
            Route::Here => {}
        }
        ctx.only_if_cached = only_if_cached(session.req_header());
        // Kept before anything is written, so that an answer that fails (a client gone,
        // a send timeout) is still counted under its silo.
        let media = &*ctx.media.insert(media);
        let storage = &self.shared.cache.storage;
        let mut fast = None;
        // A plain GET: the fast paths answer it exactly as the full path would.
        if memory_hit::eligible(session.req_header()) {
            fast = memory_hit::serve(session, storage, media, &ctx.settings).await?;
            if fast.is_none() {
                // Boxed: its future (the sendfile loop) would otherwise grow every
                // request's, and memory hits would move it around for nothing.
                fast = Box::pin(disk_hit::serve(session, storage, media, &ctx.settings))
                    .await
                    .map(FastHit::Direct);
            }
        }
        if fast.is_some() {
            ctx.outcome = Outcome::Served;
            ctx.fast_hit = fast;
            return Ok(true);
        }
        if !ctx.only_if_cached {
            let ahead = ctx.settings.range_passthrough_ahead;
            ctx.range_pass = range::plan(session.req_header(), storage, media, ahead);
        }
        Ok(false)
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let parts = self.shared.cache;
        if ctx.range_pass.is_some() {
            // From the origin for this request alone, never stored (src/proxy/range.rs).
            return Ok(());
        }
        if matches!(ctx.route, Route::Proxy { .. }) {
            // Not stored here, except in the hot cache when there is one.
            if let Some(hot) = parts.hot {
                session.cache.enable(
                    hot,
                    None::<&'static (dyn EvictionManager + Sync)>,
                    Some(&parts.hot_predictor),
                    Some(parts.lock.as_ref()),
                    None,
                );
                let max = hot.max_object_bytes();
                session.cache.set_max_file_size_bytes(max);
            }
            return Ok(());
        }
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = Some(ctx.settings.lock_timeout);
        // An only-if-cached request never fills, so it never waits for (or takes) the
        // lock: a fill in progress is found and streamed without it.
        let lock = (!ctx.only_if_cached).then_some(parts.lock.as_ref());
        session.cache.enable(
            &parts.storage,
            None::<&'static (dyn EvictionManager + Sync)>,
            Some(&parts.predictor),
            lock,
            Some(overrides),
        );
        let max = parts
            .storage
            .max_file_size_bytes(ctx.settings.max_object_bytes);
        session
            .cache
            .set_max_file_size_bytes(usize::try_from(max).unwrap_or(usize::MAX));
        Ok(())
    }

    fn cache_key_callback(&self, _session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        let media = ctx.media.as_ref().ok_or_else(|| {
            Error::explain(
                ErrorType::InternalError,
                "cache key without a media request",
            )
        })?;
        Ok(media.object().cache_key())
    }

    async fn proxy_upstream_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        if ctx.only_if_cached && ctx.route == Route::Here {
            // RFC 9111 5.2.1.7: not held here, and never fetched for this request.
            let reject = Reject {
                status: 504,
                reason: "not cached",
            };
            respond_text(session, &ctx.settings, reject).await?;
            return Ok(false);
        }
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        if let Some(peer) = upstream::peer_for(&self.shared, ctx) {
            return Ok(peer);
        }
        if let Some(peer) = fill::ask_peer(&self.shared, session, ctx) {
            return Ok(peer);
        }
        ctx.from_origin = true;
        let s = &ctx.settings;
        let origin = s
            .origins
            .get(ctx.origin_tries % s.origins.len().max(1))
            // Only `origin: shimmie` before its bucket was read: the origin fails.
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(502), "no origin known yet"))?;
        ctx.origin_tries += 1;
        ctx.origin_started = Some(Instant::now());
        let mut peer = HttpPeer::new(origin.addr, origin.tls, origin.host.clone());
        peer.options.connection_timeout = Some(s.connect_timeout);
        peer.options.total_connection_timeout = Some(s.connect_timeout);
        peer.options.read_timeout = Some(s.read_timeout);
        peer.options.write_timeout = Some(s.read_timeout);
        peer.options.idle_timeout = Some(s.idle_timeout);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let media = ctx.media.as_ref().ok_or_else(|| {
            Error::explain(
                ErrorType::InternalError,
                "upstream request without a media request",
            )
        })?;
        // A peer is asked for the visitor's path; an origin for its own layout.
        let path = match ctx.peer {
            Some(_) => media.origin_path(),
            None => crate::origin::upstream::origin_uri(media, &ctx.settings),
        };
        let uri = path
            .parse::<http::Uri>()
            .or_err(ErrorType::InternalError, "origin path is not a URI")?;
        upstream.set_uri(uri);
        // Cookies and credentials of the visitor are nobody's business upstream.
        upstream.remove_header(&header::COOKIE);
        upstream.remove_header(&header::AUTHORIZATION);
        upstream.remove_header(HOP_HEADER);
        if let Some(node) = &ctx.peer {
            // Range and conditionals go to the owner unchanged; the signed marker
            // makes the owner serve it, never pass it on.
            let peers = &self.shared.peers;
            upstream.insert_header(HOP_HEADER, peers.hop_marker(media.object()))?;
            upstream.insert_header(header::HOST, peers.host(node))?;
            if ctx.fill_ask.is_some() {
                // Never to the origin on the peer's side: one origin request per object.
                upstream.insert_header(header::CACHE_CONTROL, "only-if-cached")?;
            }
            return Ok(());
        }
        let s = &ctx.settings;
        let host = match &s.origin_host {
            Some(h) => h.clone(),
            None => {
                let i = (ctx.origin_tries.max(1) - 1) % s.origins.len().max(1);
                s.origins.get(i).map(|o| o.host.clone()).unwrap_or_default()
            }
        };
        upstream.insert_header(header::HOST, host)?;
        if ctx.range_pass.is_some() {
            range::upstream_request(session, upstream);
        }
        crate::origin::upstream::finish_request(upstream, s)
            .map_err(|m| Error::explain(ErrorType::InternalError, m))?;
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.fill_ask.is_some() {
            fill::answered(ctx, resp)?;
            return object_headers(resp, ctx);
        }
        let status = match ctx.peer {
            Some(_) => resp.status.as_u16(),
            None => {
                let answer = crate::origin::upstream::response(resp, &ctx.settings);
                ctx.origin_error_body = answer.replace_body;
                answer.status
            }
        };
        let result = match status {
            200..=299 => "ok",
            404 | 410 => "not_found",
            500..=599 => "server_error",
            _ => "other",
        };
        if ctx.peer.is_some() {
            // The owner's answer is the answer: status, headers and bytes unchanged.
            upstream::observe_peer(ctx, result);
            return Ok(());
        }
        observe_origin(ctx, result);
        range::answered(ctx, status);
        if status >= 500 {
            // Never pass an origin's error on as content. Another origin may have it.
            let mut e = Error::explain(
                ErrorType::HTTPStatus(502),
                format!("origin answered {status}"),
            );
            e.set_retry(
                ctx.origin_tries < ctx.settings.origins.len()
                    && session.response_written().is_none(),
            );
            return Err(e);
        }
        object_headers(resp, ctx)
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let Some(text) = &ctx.origin_error_body {
            crate::origin::upstream::replace_body(body, end_of_stream, text);
        }
        Ok(None)
    }

    fn response_cache_filter(
        &self,
        _session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        let now = SystemTime::now();
        let ttl = match resp.status.as_u16() {
            200 => IMMUTABLE_TTL,
            // Remembered briefly so a missing image cannot hammer the origin, and
            // forgotten soon so an upload shows up.
            404 if !ctx.settings.not_found_ttl.is_zero() => ctx.settings.not_found_ttl,
            _ => return Ok(RespCacheable::Uncacheable(NoCacheReason::OriginNotCache)),
        };
        Ok(RespCacheable::Cacheable(CacheMeta::new(
            now + ttl,
            now,
            0,
            0,
            resp.clone(),
        )))
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.outcome = Outcome::Served;
        if ctx.peer.is_some() {
            resp.insert_header("x-shimmer-via", ctx.settings.node.as_str())?;
            return Ok(());
        }
        if let Some(node) = &ctx.filled_from {
            // Filled from that peer's copy, not the origin.
            resp.insert_header("x-shimmer-fill", node.as_str())?;
        }
        let x_cache = match ctx.range_pass {
            Some(_) => range::X_CACHE,
            None => cache_status(session.cache.phase()),
        };
        decorate(resp, &ctx.settings, x_cache)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if ctx.fill_ask.is_some() {
            fill::failed(&self.shared, ctx, &e, false);
            e.set_retry(session.response_written().is_none());
            return e;
        }
        if ctx.peer.is_some() {
            upstream::peer_failed(&self.shared, ctx, &e);
            e.set_retry(session.response_written().is_none());
            return e;
        }
        observe_origin(ctx, origin_error_result(&e));
        e.set_retry(
            ctx.origin_tries < ctx.settings.origins.len() && session.response_written().is_none(),
        );
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        if ctx.fill_ask.is_some() {
            let mut e = e.more_context(format!("asking peer {peer}"));
            let stale = client_reused && ctx.stale_retries < 2;
            ctx.stale_retries += u8::from(stale);
            fill::failed(&self.shared, ctx, &e, stale);
            e.set_retry(session.response_written().is_none());
            return e;
        }
        if ctx.peer.is_some() {
            let mut e = e.more_context(format!("peer {peer}"));
            if client_reused && session.response_written().is_none() && ctx.stale_retries < 2 {
                // A pooled connection the peer had closed: not the peer's fault, try it
                // again on a fresh one.
                ctx.stale_retries += 1;
                ctx.peer = None;
                e.set_retry(true);
                return e;
            }
            if session.response_written().is_none() {
                // Nothing reached the client yet: the next acting owner, then the origin.
                upstream::peer_failed(&self.shared, ctx, &e);
                e.set_retry(true);
            }
            return e;
        }
        let mut e = e.more_context(format!("origin {peer}"));
        if !matches!(e.etype(), ErrorType::HTTPStatus(_)) {
            if ctx.origin_started.is_some() {
                observe_origin(ctx, origin_error_result(&e));
            }
            // Fail over only while nothing has reached the client: after that a retry
            // would splice two responses together.
            e.set_retry(
                ctx.origin_tries < ctx.settings.origins.len()
                    && session.response_written().is_none(),
            );
        }
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        ctx.outcome = Outcome::Error;
        let reject = match (e.esource(), e.etype()) {
            (_, ErrorType::HTTPStatus(502)) => Reject {
                status: 502,
                reason: "origin failed",
            },
            (
                ErrorSource::Upstream,
                ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout,
            ) => Reject {
                status: 504,
                reason: "origin timed out",
            },
            (ErrorSource::Upstream, _) => Reject {
                status: 502,
                reason: "origin unreachable",
            },
            (
                ErrorSource::Downstream,
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed,
            ) => {
                return FailToProxy {
                    error_code: 0,
                    can_reuse_downstream: false,
                };
            }
            (ErrorSource::Downstream, _) => Reject {
                status: 400,
                reason: "bad request",
            },
            _ => Reject {
                status: 500,
                reason: "internal error",
            },
        };
        if session.response_written().is_none() {
            if let Err(err) = respond_text(session, &ctx.settings, reject).await {
                tracing::debug!("could not send the error response: {err}");
            }
        }
        FailToProxy {
            error_code: reject.status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let (status, body_bytes) = match ctx.fast_hit {
            Some(FastHit::Direct(sent)) => (200, sent.body_bytes),
            _ => (
                session.response_written().map_or(0, |r| r.status.as_u16()),
                session.body_bytes_sent() as u64,
            ),
        };
        range::observe(ctx, session.body_bytes_sent());
        if e.is_none() && ctx.from_origin && status == 200 {
            if let (CachePhase::Miss, Some(media)) = (session.cache.phase(), &ctx.media) {
                warm_notice::filled_from_origin(&self.shared, media);
            }
        }
        let outcome = match ctx.outcome {
            Outcome::Rejected => "rejected",
            Outcome::Banned => "banned",
            Outcome::Redirect => "redirect",
            Outcome::Error | Outcome::Pending => "error",
            Outcome::Served if ctx.peer.is_some() => "proxy",
            Outcome::Served if status == 404 => "not_found",
            Outcome::Served if status >= 500 => "error",
            // An answer cut short (the client left, or stopped reading past the send
            // timeout) is an error on either path, whatever its status line said.
            Outcome::Served if matches!(ctx.fast_hit, Some(FastHit::Direct(s)) if !s.complete) => {
                "error"
            }
            Outcome::Served if e.is_some_and(|e| e.esource() == &ErrorSource::Downstream) => {
                "error"
            }
            Outcome::Served if ctx.fast_hit.is_some() => "hit",
            Outcome::Served => match session.cache.phase() {
                CachePhase::Hit | CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => {
                    "hit"
                }
                CachePhase::Miss
                | CachePhase::Expired
                | CachePhase::Stale
                | CachePhase::StaleUpdating => "miss",
                _ => "pass",
            },
        };
        let seconds = ctx.started.elapsed().as_secs_f64();
        metrics::request_done(ctx.silo_label(), outcome, seconds);
        metrics::SENT_BYTES.inc_by(body_bytes);
        let req = session.req_header();
        tracing::info!(
            target: "shimmer::access",
            "{} {} {} {} {}B {:.1}ms",
            session.client_addr().map(|a| a.to_string()).unwrap_or_default(),
            req.method,
            req.uri.path(),
            status,
            body_bytes,
            ctx.started.elapsed().as_secs_f64() * 1000.0,
        );
    }
}
