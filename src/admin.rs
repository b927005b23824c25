//! The admin listener (loopback by default): `/metrics`, `/healthz`, `/readyz`,
//! `/status` and the authenticated `POST /purge`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::fleet::Silo;
use crate::metrics;
use crate::object::Md5;
use crate::state::Shared;

/// Purge bodies larger than this are refused: 1 MiB is ~30,000 hashes.
const MAX_PURGE_BODY: usize = 1 << 20;

pub struct AdminApp {
    pub shared: Arc<Shared>,
}

fn text(status: StatusCode, body: impl Into<Vec<u8>>) -> Response<Vec<u8>> {
    respond(status, "text/plain; charset=utf-8", body.into())
}

fn json_response(status: StatusCode, v: serde_json::Value) -> Response<Vec<u8>> {
    let mut body = v.to_string().into_bytes();
    body.push(b'\n');
    respond(status, "application/json", body)
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_owned();
        match (method.as_str(), path.as_str()) {
            ("GET", "/metrics") => {
                if let Some(sync) = self.shared.sync.get() {
                    metrics::observe_sync(&sync.status());
                }
                let peers: Vec<(String, bool)> = self
                    .shared
                    .peers
                    .states()
                    .into_iter()
                    .map(|(node, _, up)| (node, up))
                    .collect();
                metrics::observe_peers(&peers);
                respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    metrics::render(),
                )
            }
            ("GET", "/healthz") => text(StatusCode::OK, "ok\n"),
            ("GET", "/readyz") => {
                if self.shared.ready.load(Ordering::SeqCst) {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                }
            }
            ("GET", "/status") => json_response(StatusCode::OK, self.status()),
            ("POST", "/purge") => self.purge(session).await,
            ("POST", "/lookup") => self.lookup(session).await,
            (_, "/metrics" | "/healthz" | "/readyz" | "/status" | "/purge" | "/lookup") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

impl AdminApp {
    fn status(&self) -> serde_json::Value {
        let settings = self.shared.settings.load();
        let view = self.shared.fleet.load();
        let silos: serde_json::Map<String, serde_json::Value> = Silo::ALL
            .iter()
            .map(|&silo| {
                let t = view.template(silo);
                let nodes: Vec<_> = t
                    .nodes()
                    .iter()
                    .map(|n| json!({"name": n.name, "weight": n.weight}))
                    .collect();
                (
                    silo.as_str().to_owned(),
                    json!({
                        "template": t.as_str(),
                        "balanced": t.is_balanced(),
                        "nodes": nodes,
                        "this_node_share": view.primary_share(silo, &settings.node),
                    }),
                )
            })
            .collect();
        let tiers: Vec<_> = self
            .shared
            .tier_stats()
            .iter()
            .map(|t| {
                json!({"tier": t.tier, "bytes": t.bytes, "objects": t.objects,
                       "budget": t.budget, "evictions": t.evictions})
            })
            .collect();
        json!({
            "node": settings.node,
            "mode": format!("{:?}", settings.mode).to_lowercase(),
            "algorithm": view.algorithm().as_str(),
            "view_version": self.shared.view_version.load(Ordering::SeqCst),
            "silos": silos,
            "cache": tiers,
            "origin": origin_status(&settings),
            "source": self.source_status(),
            "peers": self.peers_status(),
            "fleet": self.fleet_status(),
        })
    }

    fn fleet_status(&self) -> serde_json::Value {
        let f = self.shared.peers.settings().fleet;
        let warm = &self.shared.warm;
        let handoff_left = self
            .shared
            .previous_view
            .load_full()
            .map(|p| f.handoff.saturating_sub(p.replaced_at.elapsed()).as_secs());
        json!({
            "warm_secondary": f.warm.enabled,
            "warm_send_queue": warm.outbox_len(),
            "warm_pull_queue": warm.inbox_len(),
            "warm_pulling": warm.pulling(),
            "handoff_secs_left": handoff_left,
        })
    }

    fn peers_status(&self) -> Vec<serde_json::Value> {
        self.shared
            .peers
            .states()
            .into_iter()
            .map(|(node, addr, up)| {
                let scheme = if addr.tls { "https" } else { "http" };
                json!({"node": node, "url": format!("{scheme}://{}", addr.authority()),
                       "state": if up { "up" } else { "down" }})
            })
            .collect()
    }

    fn source_status(&self) -> serde_json::Value {
        let Some(sync) = self.shared.sync.get() else {
            return json!({"kind": "static", "up": true});
        };
        let st = sync.status();
        let unix = |t: Option<std::time::SystemTime>| {
            t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
        };
        json!({
            "kind": st.engine,
            "up": st.up,
            "last_success_unix": unix(st.last_success),
            "bans_known": st.bans_known,
            "views_installed": st.view_version,
            "last_error": st.last_error,
            "sync_errors": st.sync_errors,
            "template_error": st.template_error,
            "template_errors": st.template_errors,
            "restored_from_disk": st.restored_from_disk,
            "origin_error": st.origin_error,
            "origin_errors": st.origin_errors,
            "reconcile": {
                "passes": st.reconcile.passes,
                "queries": st.reconcile.queries,
                "hashes_checked": st.reconcile.checked,
                "deleted_purged": st.reconcile.deleted,
                "largest_query": st.reconcile.largest_query,
                "last_pass_seconds": st.reconcile.last_pass.map(|d| d.as_secs_f64()),
                "last_pass_checked": st.reconcile.last_pass_checked,
                "last_pass_queries": st.reconcile.last_pass_queries,
                "errors": st.reconcile.errors,
                "last_problem": st.reconcile.last_problem,
            },
        })
    }

    async fn purge(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let settings = self.shared.settings.load_full();
        let Some(token) = settings.admin.token.as_deref() else {
            return text(
                StatusCode::FORBIDDEN,
                "purge is disabled: set shimmer.admin.token_file\n",
            );
        };
        let presented = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes())) {
            let mut r = text(
                StatusCode::UNAUTHORIZED,
                "a valid bearer token is required\n",
            );
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
        let hashes = match read_hashes(session).await {
            Ok(h) => h,
            Err(r) => return r,
        };
        let mut purged = Vec::new();
        let mut absent = Vec::new();
        for h in hashes {
            if self.shared.purge_hash(h) {
                purged.push(h.to_string());
            } else {
                absent.push(h.to_string());
            }
            metrics::PURGES.with_label_values(&["admin"]).inc();
        }
        tracing::info!(
            "admin purge: {} purged, {} not cached",
            purged.len(),
            absent.len()
        );
        json_response(
            StatusCode::OK,
            json!({"purged": purged, "not_cached": absent}),
        )
    }
}

impl AdminApp {
    /// `POST /lookup`: which of the given hashes this mirror holds, per silo and tier.
    /// Read-only (no token), for operators and the fleet tests.
    async fn lookup(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let hashes = match read_hashes(session).await {
            Ok(h) => h,
            Err(r) => return r,
        };
        let storage = &self.shared.cache.storage;
        let mut out = serde_json::Map::new();
        for silo in Silo::ALL {
            let (mut memory, mut disk, mut missing) = (Vec::new(), Vec::new(), Vec::new());
            for h in &hashes {
                let held = storage.holds(crate::object::ObjectRef::new(silo, *h));
                if held.memory {
                    memory.push(h.to_string());
                }
                if held.disk {
                    disk.push(h.to_string());
                }
                if !held.any() {
                    missing.push(h.to_string());
                }
            }
            out.insert(
                silo.as_str().to_owned(),
                json!({"memory": memory, "disk": disk, "missing": missing}),
            );
        }
        json_response(StatusCode::OK, serde_json::Value::Object(out))
    }
}

/// The hashes of a purge or lookup body, or the answer that refuses it.
async fn read_hashes(session: &mut ServerSession) -> Result<Vec<Md5>, Response<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_PURGE_BODY {
                    return Err(text(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n"));
                }
            }
            Ok(None) => break,
            Err(e) => {
                return Err(text(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read body: {e}\n"),
                ))
            }
        }
    }
    parse_hashes(&body).map_err(|m| text(StatusCode::BAD_REQUEST, format!("{m}\n")))
}

/// Where misses go: the servers, or the bucket (never its credentials: only whether
/// requests are signed).
fn origin_status(s: &crate::config::Settings) -> serde_json::Value {
    let kind = match (&s.shimmie_origin, &s.s3) {
        (Some(_), _) => "shimmie",
        (None, Some(_)) => "s3",
        (None, None) => "servers",
    };
    match &s.s3 {
        Some(b) => json!({"kind": kind, "bucket": b.bucket, "endpoint": b.endpoint,
                          "region": b.region, "path_style": b.path_style,
                          "signed": b.signed()}),
        None => {
            let servers: Vec<String> = s
                .origins
                .iter()
                .map(|o| format!("{}://{}", if o.tls { "https" } else { "http" }, o.addr))
                .collect();
            json!({"kind": kind, "servers": servers})
        }
    }
}

/// `{"hashes": [...]}`, a JSON array, or one hash per line. Every hash must be 32
/// lowercase hex digits; one bad hash refuses the whole request, so nothing is half done.
fn parse_hashes(body: &[u8]) -> Result<Vec<Md5>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_owned())?;
    let trimmed = text.trim_start();
    let list: Vec<String> = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let v: serde_json::Value =
            serde_json::from_str(trimmed).map_err(|e| format!("bad JSON: {e}"))?;
        let arr = match &v {
            serde_json::Value::Array(a) => a,
            serde_json::Value::Object(o) => o
                .get("hashes")
                .and_then(|h| h.as_array())
                .ok_or("expected {\"hashes\": [...]}")?,
            _ => return Err("expected a list of hashes".into()),
        };
        arr.iter()
            .map(|h| {
                h.as_str()
                    .map(str::to_owned)
                    .ok_or("hashes must be strings".to_owned())
            })
            .collect::<Result<_, _>>()?
    } else {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    };
    if list.is_empty() {
        return Err("no hashes given".into());
    }
    list.iter()
        .map(|h| Md5::parse(h).map_err(|_| format!("{h:?} is not a 32-digit lowercase hex md5")))
        .collect()
}

/// Compares secrets without leaking the position of the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "e28e3076236eff37065d36416001263e";

    #[test]
    fn purge_bodies_in_three_shapes_parse() {
        let want = vec![Md5::parse(H).unwrap()];
        assert_eq!(
            parse_hashes(format!("{{\"hashes\":[\"{H}\"]}}").as_bytes()).unwrap(),
            want
        );
        assert_eq!(parse_hashes(format!("[\"{H}\"]").as_bytes()).unwrap(), want);
        assert_eq!(parse_hashes(format!("\n{H}\n\n").as_bytes()).unwrap(), want);
    }

    #[test]
    fn one_bad_hash_refuses_the_whole_purge() {
        for body in [
            format!("{H}\n{}", H.to_uppercase()),
            format!("[\"{H}\", 5]"),
            "{\"hash\": []}".to_owned(),
            "[]".to_owned(),
            "".to_owned(),
            "{broken".to_owned(),
            format!("{H}0"),
        ] {
            assert!(parse_hashes(body.as_bytes()).is_err(), "{body}");
        }
        assert!(parse_hashes(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abcdefghijklmnop", b"abcdefghijklmnop"));
        assert!(!constant_time_eq(b"abcdefghijklmnop", b"abcdefghijklmnoq"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
