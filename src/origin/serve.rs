//! The origin's HTTP application: one request at a time per connection, files
//! streamed from disk in fixed-size chunks, keepalive handed back to Pingora.

use std::io::{ErrorKind, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::{header, Method};
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_core::ErrorType;
use pingora_http::ResponseHeader;
use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::request::{
    if_range_allows, not_modified_since, parse_range, resolve, route, Md5, Route, Silo,
};
use crate::media_type::{sniff, SNIFF_LEN};

/// Body chunk size: large enough to keep syscalls and blocking-pool hops few, small
/// enough that a slow client never makes us hold much of a big video in memory.
const CHUNK: usize = 64 * 1024;

/// How long an idle keepalive connection is kept, in seconds (Pingora's default).
const KEEPALIVE_SECS: u64 = 60;

/// A client that takes longer than this to accept one chunk has stalled; giving up
/// frees the connection and the open file.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Counters for `/_origin/stats`: cheap enough to bump on every request.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Media requests (GET/HEAD on `/_images` or `/_thumbs`), whatever the outcome.
    pub(crate) requests: AtomicU64,
    /// File content bytes written to clients (200 and 206 bodies, including
    /// those cut short).
    pub(crate) bytes: AtomicU64,
    /// Media requests answered 206 (a Range).
    pub(crate) ranged: AtomicU64,
}

impl Stats {
    fn to_json(&self) -> String {
        format!(
            "{{\"requests\": {}, \"bytes\": {}, \"ranged\": {}}}\n",
            self.requests.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.ranged.load(Ordering::Relaxed)
        )
    }
}

/// The Pingora app serving one data directory.
pub(crate) struct OriginApp {
    root: PathBuf,
    stats: Arc<Stats>,
    /// Most body bytes per second per response (`--rate`); `None`: as fast as it goes.
    rate: Option<u64>,
}

impl OriginApp {
    pub(crate) fn new(root: PathBuf) -> Self {
        OriginApp {
            root,
            stats: Arc::new(Stats::default()),
            rate: None,
        }
    }

    pub(crate) fn with_rate(mut self, rate: Option<u64>) -> Self {
        self.rate = rate;
        self
    }
}

/// How one request ended, for the log line and connection reuse.
struct Outcome {
    status: u16,
    body_bytes: u64,
    /// False when the response was cut short: the connection must be closed so
    /// the client can tell the body is incomplete.
    reusable: bool,
}

impl Outcome {
    fn done(status: u16, body_bytes: u64) -> Self {
        Outcome {
            status,
            body_bytes,
            reusable: true,
        }
    }

    fn broken(status: u16, body_bytes: u64) -> Self {
        Outcome {
            status,
            body_bytes,
            reusable: false,
        }
    }
}

type PResult<T> = pingora_core::Result<T>;

#[async_trait]
impl HttpServerApp for OriginApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        // An idle keepalive connection must not hold up shutdown: stop waiting for its
        // next request once shutdown starts.
        let mut shutdown_rx = shutdown.clone();
        let shutting_down = async move {
            if shutdown_rx.wait_for(|down| *down).await.is_err() {
                // The server dropped its sender: no shutdown signal will ever come.
                std::future::pending::<()>().await;
            }
        };
        let read = tokio::select! {
            biased;
            read = session.read_request() => read,
            _ = shutting_down => return None,
        };
        match read {
            Ok(true) => {}
            // The client closed an idle keepalive connection: normal.
            Ok(false) => return None,
            Err(e) => {
                if e.etype == ErrorType::InvalidHTTPHeader {
                    tracing::debug!("malformed request: {e}");
                    let _ = session.respond_error(400).await;
                } else {
                    tracing::debug!("reading request failed: {e}");
                }
                return None;
            }
        }
        session.set_write_timeout(Some(WRITE_TIMEOUT));
        session.set_keepalive(if *shutdown.borrow() {
            None
        } else {
            Some(KEEPALIVE_SECS)
        });

        let started = Instant::now();
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_owned();
        let outcome = match self.respond(&mut session, &method, &path).await {
            Ok(outcome) => outcome,
            Err(e) => {
                // Writing to the client failed (it went away, or timed out).
                tracing::debug!("{method} {path}: writing response failed: {e}");
                let status = session.response_written().map_or(0, |r| r.status.as_u16());
                Outcome::broken(status, session.body_bytes_sent() as u64)
            }
        };
        tracing::info!(
            "{} {} {} {} {} {:.1}ms{}",
            session
                .client_addr()
                .map_or_else(|| "-".to_string(), |a| a.to_string()),
            method,
            path,
            outcome.status,
            outcome.body_bytes,
            started.elapsed().as_secs_f64() * 1000.0,
            if outcome.reusable { "" } else { " aborted" },
        );
        if !outcome.reusable {
            session.shutdown().await;
            return None;
        }
        let persistent = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(stream) => stream.map(|s| ReusedHttpStream::from_reusable_stream(s, persistent)),
            Err(e) => {
                tracing::debug!("finishing response failed: {e}");
                None
            }
        }
    }
}

impl OriginApp {
    async fn respond(
        &self,
        session: &mut ServerSession,
        method: &Method,
        path: &str,
    ) -> PResult<Outcome> {
        let route = route(path);
        let readable = *method == Method::GET || *method == Method::HEAD;
        if !readable {
            let mut resp = ResponseHeader::build(405, Some(4))?;
            resp.insert_header(header::ALLOW, "GET, HEAD")?;
            return send_text(session, resp, "method not allowed\n").await;
        }
        if route.is_media() {
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
        }
        match route {
            Route::Media { silo, hash } => {
                let outcome = self.serve_file(session, method, silo, hash).await?;
                if matches!(outcome.status, 200 | 206) {
                    self.stats
                        .bytes
                        .fetch_add(outcome.body_bytes, Ordering::Relaxed);
                }
                if outcome.status == 206 {
                    self.stats.ranged.fetch_add(1, Ordering::Relaxed);
                }
                Ok(outcome)
            }
            Route::BadHash(_) => {
                let resp = ResponseHeader::build(400, Some(4))?;
                send_text(
                    session,
                    resp,
                    "bad request: expected /<silo>/<32 lowercase hex digits>[/name]\n",
                )
                .await
            }
            Route::Stats => {
                let body = self.stats.to_json();
                let mut resp = ResponseHeader::build(200, Some(4))?;
                resp.insert_header(header::CONTENT_TYPE, "application/json")?;
                resp.insert_header(header::CACHE_CONTROL, "no-store")?;
                send_body(session, resp, Bytes::from(body)).await
            }
            Route::Unknown => {
                let resp = ResponseHeader::build(404, Some(4))?;
                send_text(session, resp, "not found\n").await
            }
        }
    }

    async fn serve_file(
        &self,
        session: &mut ServerSession,
        method: &Method,
        silo: Silo,
        hash: Md5,
    ) -> PResult<Outcome> {
        let (mut file, len, mtime) = match self.open(silo, hash).await {
            Ok(Some(found)) => found,
            Ok(None) => {
                let resp = ResponseHeader::build(404, Some(4))?;
                return send_text(session, resp, "no such file\n").await;
            }
            Err(e) => return self.internal_error(session, hash, "opening", e).await,
        };
        let last_modified = mtime.map(httpdate::fmt_http_date);

        // Conditional GET; If-None-Match would take precedence, but we send no
        // ETag, so any If-None-Match cannot match and we must not answer 304.
        let ims = session.get_header(header::IF_MODIFIED_SINCE).cloned();
        if let (Some(ims), Some(mtime), None) =
            (ims, mtime, session.get_header(header::IF_NONE_MATCH))
        {
            if not_modified_since(ims.as_bytes(), mtime) {
                let mut resp = ResponseHeader::build(304, Some(4))?;
                if let Some(lm) = &last_modified {
                    resp.insert_header(header::LAST_MODIFIED, lm.as_str())?;
                }
                session.write_response_header(Box::new(resp)).await?;
                session.finish_body().await?;
                return Ok(Outcome::done(304, 0));
            }
        }

        let content_type = match read_head(&mut file).await {
            Ok(head) => sniff(&head),
            Err(e) => return self.internal_error(session, hash, "reading", e).await,
        };

        let range = self.requested_range(session, last_modified.as_deref());
        let (status, first, last) = match range.map(|spec| resolve(spec, len)) {
            None => (200, 0, len.checked_sub(1)),
            Some(Some((first, last))) => (206, first, Some(last)),
            Some(None) => {
                let mut resp = ResponseHeader::build(416, Some(4))?;
                resp.insert_header(header::CONTENT_RANGE, format!("bytes */{len}"))?;
                resp.insert_header(header::ACCEPT_RANGES, "bytes")?;
                return send_text(session, resp, "range not satisfiable\n").await;
            }
        };
        // `last` is None only for an empty file, which has nothing to send.
        let count = last.map_or(0, |last| last - first + 1);

        let mut resp = ResponseHeader::build(status, Some(6))?;
        resp.insert_header(header::CONTENT_TYPE, content_type)?;
        resp.insert_header(header::CONTENT_LENGTH, count)?;
        resp.insert_header(header::ACCEPT_RANGES, "bytes")?;
        if let Some(lm) = &last_modified {
            resp.insert_header(header::LAST_MODIFIED, lm.as_str())?;
        }
        if let (206, Some(last)) = (status, last) {
            resp.insert_header(header::CONTENT_RANGE, format!("bytes {first}-{last}/{len}"))?;
        }
        session.write_response_header(Box::new(resp)).await?;
        if *method == Method::HEAD || count == 0 {
            session.finish_body().await?;
            return Ok(Outcome::done(status, 0));
        }
        self.stream(session, &mut file, hash, status, first, count)
            .await
    }

    /// The single range to serve, if the request asks for one we honour.
    fn requested_range(
        &self,
        session: &ServerSession,
        last_modified: Option<&str>,
    ) -> Option<super::request::RangeSpec> {
        let headers = &session.req_header().headers;
        let mut ranges = headers.get_all(header::RANGE).iter();
        let range = ranges.next()?;
        // Several Range fields are as good as several ranges: ignore them all.
        if ranges.next().is_some() {
            return None;
        }
        if let Some(if_range) = headers.get(header::IF_RANGE) {
            if !if_range_allows(if_range.as_bytes(), last_modified) {
                return None;
            }
        }
        parse_range(range.as_bytes())
    }

    /// Open the file for a hash, trying one then two split levels. `Ok(None)` when
    /// neither exists (or is not a regular file).
    async fn open(
        &self,
        silo: Silo,
        hash: Md5,
    ) -> std::io::Result<Option<(File, u64, Option<SystemTime>)>> {
        for path in super::request::candidates(&self.root, silo, hash) {
            let file = match File::open(&path).await {
                Ok(file) => file,
                Err(e) if is_absent(&e) => continue,
                Err(e) => return Err(e),
            };
            // Metadata from the open handle, so length and type describe the very
            // file we will stream even if the path is replaced meanwhile.
            let meta = file.metadata().await?;
            if !meta.is_file() {
                continue;
            }
            return Ok(Some((file, meta.len(), meta.modified().ok())));
        }
        Ok(None)
    }

    /// Send `count` bytes from `first`, in chunks. A read error or a file that
    /// shrank mid-stream breaks the connection: a short body must never look
    /// complete.
    async fn stream(
        &self,
        session: &mut ServerSession,
        file: &mut File,
        hash: Md5,
        status: u16,
        first: u64,
        count: u64,
    ) -> PResult<Outcome> {
        if let Err(e) = file.seek(SeekFrom::Start(first)).await {
            tracing::warn!("{}: seeking to {first} failed: {e}", hash);
            return Ok(Outcome::broken(status, 0));
        }
        let started = tokio::time::Instant::now();
        let mut sent = 0u64;
        while sent < count {
            let want = usize::try_from(count - sent).map_or(CHUNK, |left| left.min(CHUNK));
            let mut buf = vec![0u8; want];
            match read_full(file, &mut buf).await {
                Ok(n) if n == want => {}
                Ok(n) => {
                    tracing::warn!(
                        "{}: file ended {} bytes early, aborting response",
                        hash,
                        count - sent - n as u64
                    );
                    return Ok(Outcome::broken(status, sent));
                }
                Err(e) => {
                    tracing::warn!("{}: read failed mid-stream, aborting: {e}", hash);
                    return Ok(Outcome::broken(status, sent));
                }
            }
            let end = sent + want as u64 == count;
            if let Err(e) = session.write_response_body(Bytes::from(buf), end).await {
                tracing::debug!("{}: client write failed: {e}", hash);
                return Ok(Outcome::broken(status, sent));
            }
            sent += want as u64;
            if let Some(rate) = self.rate.filter(|_| sent < count) {
                // Paced from the start, so the rate holds however the chunks fall.
                let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                tokio::time::sleep_until(started + due).await;
            }
        }
        Ok(Outcome::done(status, sent))
    }

    async fn internal_error(
        &self,
        session: &mut ServerSession,
        hash: Md5,
        doing: &str,
        e: std::io::Error,
    ) -> PResult<Outcome> {
        tracing::warn!("{}: {doing} failed: {e}", hash);
        let resp = ResponseHeader::build(500, Some(4))?;
        send_text(session, resp, "internal error\n").await
    }
}

/// "Not there" for our purposes: missing, or a path component is not a directory.
fn is_absent(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory)
}

/// The first [`SNIFF_LEN`] bytes (fewer for a short file), for type sniffing.
async fn read_head(file: &mut File) -> std::io::Result<Vec<u8>> {
    let mut head = vec![0u8; SNIFF_LEN];
    let n = read_full(file, &mut head).await?;
    head.truncate(n);
    Ok(head)
}

/// Fill `buf` unless the file ends first; returns the bytes read.
async fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]).await {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

async fn send_text(
    session: &mut ServerSession,
    mut resp: ResponseHeader,
    text: &'static str,
) -> PResult<Outcome> {
    resp.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    send_body(session, resp, Bytes::from_static(text.as_bytes())).await
}

/// A small complete response; HEAD gets the headers only (Pingora drops the body).
async fn send_body(
    session: &mut ServerSession,
    mut resp: ResponseHeader,
    body: Bytes,
) -> PResult<Outcome> {
    let status = resp.status.as_u16();
    resp.insert_header(header::CONTENT_LENGTH, body.len())?;
    session.write_response_header(Box::new(resp)).await?;
    let head_only = session.req_header().method == Method::HEAD;
    let len = if head_only { 0 } else { body.len() as u64 };
    if head_only {
        session.finish_body().await?;
    } else {
        session.write_response_body(body, true).await?;
    }
    Ok(Outcome::done(status, len))
}
