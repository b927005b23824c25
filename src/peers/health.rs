//! Peer health on pingora-load-balancing: a `LoadBalancer` over Shimmie's
//! [`ShimmieSelection`] whose discovery is the peer table (resolved) and whose check is
//! an HTTP GET of [`super::HEALTH_PATH`]. The load balancer counts `rise` and `fall`; a
//! passive failure (a refused or timed-out peer request) takes a peer out at once,
//! until a probe of it succeeds again.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::RequestHeader;
use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck};
use pingora_load_balancing::{Backend, Backends, LoadBalancer};

use super::{PeerAddr, Peers, HEALTH_PATH};
use crate::fleet::selection::{NodeTag, ShimmieSelection};
use crate::fleet::Algorithm;
use crate::metrics;

/// What a backend is, beyond its socket address.
#[derive(Clone, Debug)]
struct Target {
    node: String,
    addr: PeerAddr,
}

/// Health state per node, read on every request that may go to a peer.
pub struct PeerHealth {
    settings: super::HealthSettings,
    /// node -> its backend in the load balancer (for `ready`).
    backends: ArcSwap<HashMap<String, Backend>>,
    /// Nodes a request found dead since their last good probe.
    passive_down: Mutex<HashSet<String>>,
    /// Nodes whose name the last discovery could not resolve.
    unresolved: ArcSwap<HashSet<String>>,
    lb: ArcSwap<Option<Arc<LoadBalancer<ShimmieSelection>>>>,
}

impl PeerHealth {
    pub(super) fn new(settings: super::HealthSettings) -> PeerHealth {
        PeerHealth {
            settings,
            backends: ArcSwap::from_pointee(HashMap::new()),
            passive_down: Mutex::new(HashSet::new()),
            unresolved: ArcSwap::from_pointee(HashSet::new()),
            lb: ArcSwap::from_pointee(None),
        }
    }

    /// Up unless a probe, a request or DNS says otherwise: a peer not probed yet (just
    /// started, or new in the view) counts as up, as pingora's health does, so a
    /// starting fleet does not serve everything from the origin.
    pub(super) fn is_up(&self, node: &str, unresolved_is_up: bool) -> bool {
        if self.passive_down.lock().contains(node) {
            return false;
        }
        if self.unresolved.load().contains(node) {
            return unresolved_is_up;
        }
        let backends = self.backends.load();
        match (backends.get(node), &**self.lb.load()) {
            (Some(backend), Some(lb)) => lb.backends().ready(backend),
            _ => true,
        }
    }

    pub(super) fn mark_failed(&self, node: &str) {
        if self.passive_down.lock().insert(node.to_owned()) {
            tracing::warn!("peer {node}: a request failed; out until its next good probe");
            metrics::PEER_PASSIVE_FAILURES
                .with_label_values(&[node])
                .inc();
        }
    }

    pub(super) fn resolved(&self, node: &str) -> Option<SocketAddr> {
        let backends = self.backends.load();
        let backend = backends.get(node)?;
        match &backend.addr {
            pingora::protocols::l4::socket::SocketAddr::Inet(a) => Some(*a),
            _ => None,
        }
    }

    fn probe_ok(&self, node: &str) {
        self.passive_down.lock().remove(node);
    }
}

/// The background service: discovery (DNS) and probes at the configured interval.
pub struct HealthService {
    lb: Arc<LoadBalancer<ShimmieSelection>>,
}

impl HealthService {
    /// Builds the load balancer for `peers` and registers it with their health state.
    pub fn new(peers: &Arc<Peers>) -> HealthService {
        let discovery = PeerDiscovery {
            peers: Arc::downgrade(peers),
        };
        let mut backends = Backends::new(Box::new(discovery));
        let s = peers.health.settings;
        backends.set_health_check(Box::new(PeerCheck {
            peers: Arc::downgrade(peers),
            checks: Mutex::new(HashMap::new()),
            settings: s,
        }));
        let mut lb = LoadBalancer::<ShimmieSelection>::from_backends_with_config(
            backends,
            Some(crate::fleet::selection::SelectionConfig {
                algorithm: Algorithm::Rendezvous,
            }),
        );
        lb.health_check_frequency = Some(s.interval);
        // Discovery follows view changes and DNS; a few times per probe interval is
        // plenty and costs a lookup per peer.
        lb.update_frequency = Some(s.interval.max(Duration::from_secs(1)));
        lb.parallel_health_check = true;
        let lb = Arc::new(lb);
        peers.health.lb.store(Arc::new(Some(lb.clone())));
        HealthService { lb }
    }
}

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.lb.start(shutdown).await;
    }
}

/// Discovery is the peer table, resolved; it also publishes node -> backend.
struct PeerDiscovery {
    peers: Weak<Peers>,
}

#[async_trait]
impl ServiceDiscovery for PeerDiscovery {
    async fn discover(&self) -> Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let Some(peers) = self.peers.upgrade() else {
            return Ok((BTreeSet::new(), HashMap::new()));
        };
        let table = peers.table();
        let mut set = BTreeSet::new();
        let mut by_node = HashMap::new();
        let mut ips = HashSet::new();
        let mut unresolved = HashSet::new();
        for (order, (node, addr)) in table.nodes.iter().enumerate() {
            let resolved = match tokio::net::lookup_host(addr.authority()).await {
                Ok(mut it) => it.next(),
                Err(e) => {
                    tracing::warn!("peer {node}: cannot resolve {}: {e}", addr.authority());
                    None
                }
            };
            let Some(sock) = resolved else {
                unresolved.insert(node.clone());
                continue;
            };
            ips.insert(sock.ip());
            let mut backend = Backend {
                addr: pingora::protocols::l4::socket::SocketAddr::Inet(sock),
                weight: 1,
                ext: Default::default(),
            };
            backend.ext.insert(Target {
                node: node.clone(),
                addr: addr.clone(),
            });
            let backend = NodeTag::tag(backend, node, order);
            by_node.insert(node.clone(), backend.clone());
            set.insert(backend);
        }
        peers.health.backends.store(Arc::new(by_node));
        peers.health.unresolved.store(Arc::new(unresolved));
        peers.set_addresses(ips);
        Ok((set, HashMap::new()))
    }
}

/// An HTTP GET of the health path, with each peer's own Host, SNI and TLS.
struct PeerCheck {
    peers: Weak<Peers>,
    checks: Mutex<HashMap<(String, bool, Duration), Arc<HttpHealthCheck>>>,
    /// The settings at start: the probe interval cannot change later (the load
    /// balancer's schedule is set once); timeout, rise and fall follow reloads.
    settings: super::HealthSettings,
}

impl PeerCheck {
    /// The health settings in force now (a reload may have changed them).
    fn current(&self) -> super::HealthSettings {
        self.peers
            .upgrade()
            .map_or(self.settings, |p| p.settings().health)
    }

    fn check_for(&self, addr: &PeerAddr) -> Result<Arc<HttpHealthCheck>> {
        let timeout = self.current().timeout;
        let key = (addr.host.clone(), addr.tls, timeout);
        if let Some(c) = self.checks.lock().get(&key) {
            return Ok(c.clone());
        }
        let mut check = HttpHealthCheck::new(&addr.host, addr.tls);
        let mut req = RequestHeader::build("GET", HEALTH_PATH.as_bytes(), None)?;
        req.append_header("Host", addr.host.as_str())?;
        req.append_header("User-Agent", "shimmer-health")?;
        check.req = req;
        check.reuse_connection = true;
        check.peer_template.options.connection_timeout = Some(timeout);
        check.peer_template.options.read_timeout = Some(timeout);
        check.peer_template.options.total_connection_timeout = Some(timeout);
        let check = Arc::new(check);
        self.checks.lock().insert(key, check.clone());
        Ok(check)
    }
}

#[async_trait]
impl HealthCheck for PeerCheck {
    async fn check(&self, target: &Backend) -> Result<()> {
        let t = target
            .ext
            .get::<Target>()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "untagged peer backend"))?;
        let check = self.check_for(&t.addr)?;
        let result = check.check(target).await;
        if result.is_ok() {
            if let Some(peers) = self.peers.upgrade() {
                peers.health.probe_ok(&t.node);
            }
        }
        result
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        if let Some(t) = target.ext.get::<Target>() {
            let state = if healthy { "up" } else { "down" };
            tracing::warn!("peer {} ({}) is {state}", t.node, t.addr.authority());
            metrics::PEER_TRANSITIONS
                .with_label_values(&[t.node.as_str(), state])
                .inc();
        }
    }

    fn health_threshold(&self, success: bool) -> usize {
        let s = self.current();
        if success {
            s.rise.max(1)
        } else {
            s.fall.max(1)
        }
    }
}
