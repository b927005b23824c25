//! The warm copier: the background service behind `shimmer.fleet.warm_secondary`
//! (queues and wire format in `peers::warm`). It runs two loops:
//!
//! - **send**: batches of objects this node filled from the origin go to their other
//!   owner as one notice each (a POST of `WARM_PATH`); a notice for a peer that is
//!   down, or that fails, is dropped and counted;
//! - **pull**: each noticed object not already held here is fetched from the owner that
//!   noticed it, "only if cached" with a signed hop, and written through the cache's
//!   own `Storage` (disk tier when there is one; the memory tier's TinyLFU admission
//!   decides whether a copy also displaces anything in memory). At most `concurrency`
//!   pulls at once, at most `max_bytes_per_second` between them all.
//!
//! A copy never comes from the origin: the owner answers 504 when it no longer holds
//! the object, and the copy is given up.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora_cache::storage::MissFinishType;
use pingora_cache::trace::Span;
use pingora_cache::{CacheMeta, Storage};
use pingora_core::connectors::http::Connector;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_error::{Error, ErrorType, OkOrErr, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use tokio::task::JoinSet;

use crate::metrics;
use crate::object::ObjectRef;
use crate::peers::warm::{encode_notice, WARM_PATH};
use crate::peers::HOP_HEADER;
use crate::state::Shared;

/// The warm copier service.
pub struct WarmCopier {
    shared: Arc<Shared>,
    connector: Connector,
    /// When the byte budget is next free (the bandwidth bound shared by every pull).
    budget: Mutex<Instant>,
}

impl WarmCopier {
    pub fn new(shared: Arc<Shared>) -> Arc<WarmCopier> {
        Arc::new(WarmCopier {
            shared,
            connector: Connector::new(None),
            budget: Mutex::new(Instant::now()),
        })
    }

    fn peer(&self, node: &str) -> Option<HttpPeer> {
        let peers = &self.shared.peers;
        let s = peers.settings();
        peers.http_peer(node, s.fleet.fill_timeout, Duration::from_secs(60))
    }

    /// A session to `peer` with its read and write timeouts. Pingora's connector leaves
    /// them unset (pingora-proxy sets them on its own sessions): without them a frozen
    /// peer, which accepts and never answers, held the send loop (every notice to every
    /// peer) or a pull forever.
    async fn session(&self, peer: &HttpPeer) -> Result<HttpSession> {
        let (mut session, _) = self.connector.get_http_session(peer).await?;
        let (read, write) = (peer.options.read_timeout, peer.options.write_timeout);
        match &mut session {
            HttpSession::H1(s) => {
                s.read_timeout = read;
                s.write_timeout = write;
            }
            HttpSession::H2(s) => {
                s.read_timeout = read;
                s.write_timeout = write;
            }
            HttpSession::Custom(_) => {}
        }
        Ok(session)
    }

    /// The send loop: every `batch_wait`, or as soon as a batch is full.
    async fn send_loop(self: Arc<Self>, mut shutdown: ShutdownWatch) {
        loop {
            let s = self.shared.peers.settings().fleet.warm;
            tokio::select! {
                _ = self.shared.warm.outbox_full.notified() => {}
                _ = tokio::time::sleep(s.batch_wait) => {}
                _ = shutdown.changed() => return,
            }
            loop {
                let batches = self.shared.warm.take_batches(s.batch);
                if batches.is_empty() {
                    break;
                }
                for (node, objs) in batches {
                    self.send(&node, &objs).await;
                }
                if self.shared.warm.outbox_len() < s.batch {
                    break;
                }
            }
        }
    }

    async fn send(&self, node: &str, objs: &[ObjectRef]) {
        let peers = &self.shared.peers;
        let n = objs.len() as u64;
        if !peers.is_up(node) {
            metrics::WARM_DROPS
                .with_label_values(&["peer_down"])
                .inc_by(n);
            return;
        }
        let body = encode_notice(objs, |o| peers.hop_marker(o));
        match self.post_notice(node, Bytes::from(body)).await {
            Ok(()) => metrics::WARM_NOTICES.with_label_values(&["sent"]).inc_by(n),
            Err(e) => {
                tracing::warn!("warm notice to {node} dropped: {e}");
                metrics::WARM_DROPS
                    .with_label_values(&["send_failed"])
                    .inc_by(n);
            }
        }
    }

    async fn post_notice(&self, node: &str, body: Bytes) -> Result<()> {
        let peer = self
            .peer(node)
            .or_err(ErrorType::ConnectNoRoute, "peer not resolved")?;
        let mut req = RequestHeader::build("POST", WARM_PATH.as_bytes(), Some(3))?;
        req.insert_header(header::HOST, self.shared.peers.host(node))?;
        req.insert_header(header::CONTENT_LENGTH, body.len())?;
        req.insert_header(header::CONTENT_TYPE, "text/plain")?;
        let mut session = self.session(&peer).await?;
        session.write_request_header(Box::new(req)).await?;
        session.write_request_body(body, true).await?;
        session.finish_request_body().await?;
        session.read_response_header().await?;
        let status = session.response_header().map_or(0, |r| r.status.as_u16());
        while session.read_response_body().await?.is_some() {}
        self.connector
            .release_http_session(session, &peer, peer.idle_timeout())
            .await;
        if status != 202 {
            return Error::e_explain(
                ErrorType::HTTPStatus(status),
                format!("notice answered {status}"),
            );
        }
        Ok(())
    }

    /// The pull loop: at most `concurrency` copies at once (read on every round, so a
    /// reload changes it).
    async fn pull_loop(self: Arc<Self>, mut shutdown: ShutdownWatch) {
        let mut running = JoinSet::new();
        loop {
            let s = self.shared.peers.settings().fleet.warm;
            while running.len() < s.concurrency {
                let Some((from, obj)) = self.shared.warm.next_pull() else {
                    break;
                };
                let me = self.clone();
                running.spawn(async move { me.pull(&from, obj).await });
            }
            tokio::select! {
                Some(_) = running.join_next(), if !running.is_empty() => {}
                _ = self.shared.warm.inbox_ready.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn pull(&self, from: &str, obj: ObjectRef) {
        let _counted = self.shared.warm.pull_started();
        let storage = &self.shared.cache.storage;
        if storage.holds(obj).any() {
            metrics::WARM_COPIES.with_label_values(&["held"]).inc();
            return;
        }
        if self.shared.bans.contains(obj.md5) {
            metrics::WARM_DROPS.with_label_values(&["banned"]).inc();
            return;
        }
        if !self.shared.peers.is_up(from) {
            metrics::WARM_DROPS.with_label_values(&["peer_down"]).inc();
            return;
        }
        let result = match self.copy(from, obj).await {
            Ok(Copy::Stored) => "copied",
            Ok(Copy::Gone) => "gone",
            Ok(Copy::TooLarge) => "too_large",
            Ok(Copy::NotAdmitted) => "not_admitted",
            Err(e) => {
                tracing::debug!("warm copy of {}/{} from {from}: {e}", obj.silo, obj.hex());
                "failed"
            }
        };
        metrics::WARM_COPIES.with_label_values(&[result]).inc();
    }

    /// Copies `obj` from `from` into the cache. A copy whose body ends early is an
    /// error and stores nothing: the miss handler dropped unfinished aborts the fill.
    async fn copy(&self, from: &str, obj: ObjectRef) -> Result<Copy> {
        let peer = self
            .peer(from)
            .or_err(ErrorType::ConnectNoRoute, "peer not resolved")?;
        let path = format!("/{}/{}/warm", obj.silo.as_str(), obj.hex());
        let mut req = RequestHeader::build("GET", path.as_bytes(), Some(4))?;
        req.insert_header(header::HOST, self.shared.peers.host(from))?;
        req.insert_header(HOP_HEADER, self.shared.peers.hop_marker(obj))?;
        req.insert_header(header::CACHE_CONTROL, "only-if-cached")?;
        let mut session = self.session(&peer).await?;
        session.write_request_header(Box::new(req)).await?;
        session.finish_request_body().await?;
        session.read_response_header().await?;
        let mut resp: ResponseHeader = session
            .response_header()
            .cloned()
            .or_err(ErrorType::InvalidHTTPHeader, "no response header")?;
        if resp.status.as_u16() != 200 {
            while session.read_response_body().await?.is_some() {}
            self.connector
                .release_http_session(session, &peer, peer.idle_timeout())
                .await;
            return Ok(Copy::Gone);
        }
        for h in crate::peers::MIRROR_HEADERS {
            resp.remove_header(h);
        }
        let declared = resp
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_none() && !is_chunked(&resp) {
            // Read to the close, a body cut short looks whole: never store one.
            return Error::e_explain(
                ErrorType::InvalidHTTPHeader,
                "copy without Content-Length or chunked framing",
            );
        }
        let storage = &self.shared.cache.storage;
        let max = self.max_copy_bytes();
        if declared.is_some_and(|l| l > max) {
            // Too large to keep: the connection is dropped before the body comes.
            return Ok(Copy::TooLarge);
        }
        let now = SystemTime::now();
        let meta = CacheMeta::new(now + crate::cache::IMMUTABLE_TTL, now, 0, 0, resp);
        let key = obj.cache_key();
        let trace = Span::inactive().handle();
        let mut handler = storage.get_miss_handler(&key, &meta, &trace).await?;
        let mut bytes = 0u64;
        while let Some(chunk) = session.read_response_body().await? {
            bytes += chunk.len() as u64;
            if bytes > max {
                // Dropping the handler unfinished aborts the fill.
                return Ok(Copy::TooLarge);
            }
            self.pace(chunk.len()).await;
            handler.write_body(chunk, false).await?;
        }
        if declared.is_some_and(|l| l != bytes) {
            return Error::e_explain(ErrorType::ReadError, "copy ended short");
        }
        handler.write_body(Bytes::new(), true).await?;
        let kept = handler.finish().await?;
        metrics::WARM_BYTES.inc_by(bytes);
        self.connector
            .release_http_session(session, &peer, peer.idle_timeout())
            .await;
        // The tiers charge what they keep: nothing charged is a copy no tier admitted
        // (the memory tier's TinyLFU said no and there is no disk tier).
        Ok(match kept {
            MissFinishType::Created(0) => Copy::NotAdmitted,
            _ => Copy::Stored,
        })
    }

    /// The largest body a copy may have: what the disk tier takes when there is one,
    /// else what the memory tier holds (its cap is fixed at start, clamped to its
    /// budget; the setting may have been lowered since). Without this a copy larger
    /// than the memory budget was read whole into memory and then not stored.
    fn max_copy_bytes(&self) -> u64 {
        let storage = &self.shared.cache.storage;
        let setting = self.shared.settings.load().max_object_bytes;
        let memory = u64::try_from(storage.memory().max_object_bytes()).unwrap_or(u64::MAX);
        storage.max_file_size_bytes(setting.min(memory))
    }

    /// Waits until `n` more bytes fit the bandwidth bound.
    async fn pace(&self, n: usize) {
        let rate = self.shared.peers.settings().fleet.warm.max_bytes_per_second;
        if rate == 0 {
            return;
        }
        let wait = {
            let mut next = self.budget.lock();
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + Duration::from_secs_f64(n as f64 / rate as f64);
            start.saturating_duration_since(now)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// How a copy ended, when it did not fail.
enum Copy {
    Stored,
    /// The owner no longer holds the object (it answered other than 200).
    Gone,
    /// Larger than this node's cache takes.
    TooLarge,
    /// Copied whole, but no tier kept it.
    NotAdmitted,
}

/// Whether a response's body is chunked (its end is marked, a cut is seen).
fn is_chunked(resp: &ResponseHeader) -> bool {
    resp.headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .last()
        .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
}

/// Runs both loops; a node with warm copies off still drains what it was sent (nothing:
/// it queues nothing) and answers notices with "queued 0".
pub struct WarmService(pub Arc<WarmCopier>);

#[async_trait]
impl BackgroundService for WarmService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let send = tokio::spawn(self.0.clone().send_loop(shutdown.clone()));
        let pull = tokio::spawn(self.0.clone().pull_loop(shutdown));
        let _ = tokio::join!(send, pull);
    }
}
