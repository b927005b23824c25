//! The other mirrors of the fleet: where they are, whether they are up, and how a hop
//! between them is trusted.
//!
//! - Addresses: `shimmer.peers` (node name -> base URL); a node missing there is
//!   reached at the scheme and authority of its own link in the silo's template.
//! - Health: pingora-load-balancing's machinery ([`health::PeerHealth`]): a
//!   `LoadBalancer` over Shimmie's own `BackendSelection`, whose discovery is the peer
//!   table and whose check is an HTTP GET of [`HEALTH_PATH`] on each peer; `rise`
//!   successes bring a peer back, `fall` failures take it out. Passive checks too: a
//!   refused or timed-out peer connection marks the peer down at once, until its next
//!   successful probe. A node always considers itself up.
//! - Trust: [`hop::FleetToken`] signs hop markers; without a token, a peer request is
//!   trusted only from a configured peer's address.

pub mod health;
pub mod hop;
pub mod warm;

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::RwLock;
use pingora_core::upstreams::peer::HttpPeer;

use crate::cache::unix_now;
use crate::fleet::{FleetView, Silo};
use crate::object::ObjectRef;

/// The cheap path every mirror answers on its media port, for peers' health checks.
pub const HEALTH_PATH: &str = "/_shimmer/health";
/// The header a proxying mirror sends its hop marker in.
pub const HOP_HEADER: &str = "x-shimmer-hop";

/// Headers a mirror adds to what it serves, which are not part of the object: removed
/// from a peer's copy before it is stored here.
pub const MIRROR_HEADERS: [&str; 5] = [
    "x-cache",
    "x-shimmer-node",
    "x-shimmer-via",
    "cache-control",
    "age",
];

/// Where a peer is reached: from `shimmer.peers` or its template link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAddr {
    pub tls: bool,
    /// Host name (or address) for DNS, SNI and the Host header.
    pub host: String,
    pub port: u16,
}

impl PeerAddr {
    /// Parses `http://host[:port]` or `https://host[:port]` (a trailing `/` allowed;
    /// nothing else after the authority: a peer is a whole mirror, not a path).
    pub fn parse(url: &str) -> Result<PeerAddr, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!(
                "{url:?}: a peer URL starts with http:// or https://"
            ));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
            return Err(format!(
                "{url:?}: a peer URL is a scheme and host[:port], no path, query or user"
            ));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) =
            split_host_port(authority, default_port).ok_or_else(|| format!("{url:?}: bad port"))?;
        Ok(PeerAddr { tls, host, port })
    }

    /// `host:port` for DNS.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn split_host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => Some((host.to_owned(), port.parse().ok()?)),
        Some(_) => None,
        None => Some((authority.to_owned(), default_port)),
    }
}

/// Peer settings as validated from the config.
#[derive(Clone, Debug)]
pub struct PeerSettings {
    /// `shimmer.peers`, parsed.
    pub peers: BTreeMap<String, PeerAddr>,
    pub token: Option<hop::FleetToken>,
    pub health: HealthSettings,
    /// Connect and first-byte timeout of a proxied request to a peer.
    pub timeout: Duration,
    /// Memory for the hottest non-owned objects in proxy mode (0: none).
    pub hot_bytes: u64,
    /// How the owners of an object share it (`shimmer.fleet`).
    pub fleet: FleetSettings,
}

/// `shimmer.fleet`: warm secondary, owner-first fill and handoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FleetSettings {
    pub warm: WarmSettings,
    /// After a view change, a miss at a node that was not an owner before asks the
    /// previous owners (only if cached) for this long.
    pub handoff: Duration,
    /// Connect and first-byte timeout of an only-if-cached ask to a peer: what a down
    /// or hung peer can cost a miss.
    pub fill_timeout: Duration,
}

impl Default for FleetSettings {
    fn default() -> Self {
        FleetSettings {
            warm: WarmSettings::default(),
            handoff: Duration::from_secs(600),
            fill_timeout: Duration::from_millis(500),
        }
    }
}

/// Copies of each origin fill at the object's other owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WarmSettings {
    pub enabled: bool,
    /// Copies pulled at once.
    pub concurrency: usize,
    /// Bytes per second copies may take (0: unbounded).
    pub max_bytes_per_second: u64,
    /// Notices waiting, per direction (to send, to pull); beyond it they are dropped.
    pub queue: usize,
    /// Hashes per notice.
    pub batch: usize,
    /// How long a notice waits for its batch to fill.
    pub batch_wait: Duration,
}

impl Default for WarmSettings {
    fn default() -> Self {
        WarmSettings {
            enabled: true,
            concurrency: 4,
            max_bytes_per_second: 0,
            queue: 100_000,
            batch: 256,
            batch_wait: Duration::from_millis(200),
        }
    }
}

impl Default for PeerSettings {
    fn default() -> Self {
        PeerSettings {
            peers: BTreeMap::new(),
            token: None,
            health: HealthSettings::default(),
            timeout: Duration::from_secs(2),
            hot_bytes: 0,
            fleet: FleetSettings::default(),
        }
    }
}

/// How peers are probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthSettings {
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring a down peer back.
    pub rise: usize,
    /// Consecutive failures that take a peer out.
    pub fall: usize,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 2,
        }
    }
}

/// Every node of the current view but this one, with its address.
pub fn peer_table(
    me: &str,
    view: &FleetView,
    configured: &BTreeMap<String, PeerAddr>,
) -> PeerTable {
    let mut nodes = BTreeMap::new();
    for silo in Silo::ALL {
        let template = view.template(silo);
        for node in template.nodes() {
            if node.name == me || nodes.contains_key(&node.name) {
                continue;
            }
            let addr = match configured.get(&node.name) {
                Some(a) => Some(a.clone()),
                None => template_addr(&view.node_url(silo, &node.name, "", "")),
            };
            if let Some(addr) = addr {
                nodes.insert(node.name.clone(), addr);
            }
        }
    }
    for (name, addr) in configured {
        if name != me {
            nodes.entry(name.clone()).or_insert_with(|| addr.clone());
        }
    }
    PeerTable { nodes }
}

/// The scheme and authority of a template link, if it has them (a relative template,
/// Shimmie's unbalanced default, names no host).
fn template_addr(link: &str) -> Option<PeerAddr> {
    let scheme_end = link.find("://")? + 3;
    let authority_end = link[scheme_end..]
        .find('/')
        .map_or(link.len(), |i| scheme_end + i);
    PeerAddr::parse(&link[..authority_end]).ok()
}

/// Node name -> address, for every peer of the current view.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerTable {
    pub nodes: BTreeMap<String, PeerAddr>,
}

/// The fleet as this node sees it: addresses, health, and who may claim to be a peer.
pub struct Peers {
    /// This node's name (reloadable, hence swappable).
    me: ArcSwap<String>,
    table: ArcSwap<PeerTable>,
    health: health::PeerHealth,
    /// Addresses the peers resolve to, for trusting unsigned peer requests.
    addresses: RwLock<HashSet<IpAddr>>,
    settings: ArcSwap<PeerSettings>,
}

impl Peers {
    pub fn new(me: &str, table: PeerTable, settings: PeerSettings) -> Arc<Peers> {
        let health = health::PeerHealth::new(settings.health);
        Arc::new(Peers {
            me: ArcSwap::from_pointee(me.to_owned()),
            table: ArcSwap::from_pointee(table),
            health,
            addresses: RwLock::new(HashSet::new()),
            settings: ArcSwap::from_pointee(settings),
        })
    }

    pub fn me(&self) -> Arc<String> {
        self.me.load_full()
    }

    pub fn settings(&self) -> Arc<PeerSettings> {
        self.settings.load_full()
    }

    pub fn table(&self) -> Arc<PeerTable> {
        self.table.load_full()
    }

    /// A new view or config: the next discovery round probes the new table.
    pub fn update(&self, me: &str, table: PeerTable, settings: PeerSettings) {
        if **self.me.load() != me {
            self.me.store(Arc::new(me.to_owned()));
        }
        self.table.store(Arc::new(table));
        self.settings.store(Arc::new(settings));
    }

    /// Whether `node` is up: itself always, a peer by its health, an unknown node never.
    /// A peer whose name does not resolve here counts as down (it cannot be proxied to).
    pub fn is_up(&self, node: &str) -> bool {
        node == self.me.load().as_str()
            || (self.table.load().nodes.contains_key(node) && self.health.is_up(node, false))
    }

    /// [`Self::is_up`] for redirect mode: the visitor, not this node, connects to the
    /// peer, so a peer this node cannot resolve (public names seen from a private
    /// network) is not known to be down. Only probes and failed requests take it out.
    pub fn is_up_for_redirect(&self, node: &str) -> bool {
        node == self.me.load().as_str()
            || !self.table.load().nodes.contains_key(node)
            || self.health.is_up(node, true)
    }

    /// A peer request failed before its first byte: out until its next good probe.
    pub fn mark_failed(&self, node: &str) {
        if node != self.me.load().as_str() {
            self.health.mark_failed(node);
        }
    }

    /// The address of a peer: what its last discovery resolved, or, before that, its
    /// host when it is an IP address.
    pub fn resolved(&self, node: &str) -> Option<std::net::SocketAddr> {
        self.health.resolved(node).or_else(|| {
            let table = self.table.load();
            let addr = table.nodes.get(node)?;
            let ip: IpAddr = addr.host.parse().ok()?;
            Some(std::net::SocketAddr::new(ip, addr.port))
        })
    }

    /// How to reach `node` for one request: connect and read timeouts of `timeout`,
    /// pooled connections idle for at most `idle`. `None` while it is not resolved.
    pub fn http_peer(&self, node: &str, timeout: Duration, idle: Duration) -> Option<HttpPeer> {
        let addr = self.resolved(node)?;
        let known = self.table.load().nodes.get(node).cloned()?;
        let sni = if known.tls { known.host } else { String::new() };
        let mut peer = HttpPeer::new(addr, known.tls, sni);
        peer.options.connection_timeout = Some(timeout);
        peer.options.total_connection_timeout = Some(timeout);
        peer.options.read_timeout = Some(timeout);
        peer.options.write_timeout = Some(timeout);
        peer.options.idle_timeout = Some(idle);
        Some(peer)
    }

    /// The Host header for requests to `node`.
    pub fn host(&self, node: &str) -> String {
        self.table
            .load()
            .nodes
            .get(node)
            .map(|a| a.host.clone())
            .unwrap_or_default()
    }

    /// The marker this node attaches to a request for `obj` it sends to a peer: signed
    /// with the fleet token, or (without one) just this node's name.
    pub fn hop_marker(&self, obj: ObjectRef) -> String {
        match &self.settings.load().token {
            Some(t) => t.sign(&self.me(), obj, unix_now()),
            None => self.me().to_string(),
        }
    }

    /// The peer that sent a request for `obj` with `marker`, if the marker may be
    /// believed: a valid signature with the fleet token, or, without a token, a request
    /// from a peer's own address (the marker is then the sender's name). Never this node.
    pub fn hop_sender<'m>(
        &self,
        marker: &'m str,
        obj: ObjectRef,
        client: Option<IpAddr>,
    ) -> Option<&'m str> {
        let from = match &self.settings.load().token {
            Some(t) => t.verify(marker, obj, unix_now())?,
            None => client
                .is_some_and(|ip| self.is_peer_address(ip))
                .then_some(marker)?,
        };
        (from != self.me.load().as_str()).then_some(from)
    }

    /// Whether `ip` is one of the peers' resolved addresses.
    pub fn is_peer_address(&self, ip: IpAddr) -> bool {
        self.addresses.read().contains(&ip)
    }

    pub(crate) fn set_addresses(&self, ips: HashSet<IpAddr>) {
        *self.addresses.write() = ips;
    }

    pub fn health(&self) -> &health::PeerHealth {
        &self.health
    }

    /// `(node, address, up)` for `/status` and metrics.
    pub fn states(&self) -> Vec<(String, PeerAddr, bool)> {
        let table = self.table.load();
        table
            .nodes
            .iter()
            .map(|(n, a)| (n.clone(), a.clone(), self.is_up(n)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{Algorithm, FleetSpec};

    #[test]
    fn peer_urls_parse_strictly() {
        assert_eq!(
            PeerAddr::parse("http://10.0.0.2:8080"),
            Ok(PeerAddr {
                tls: false,
                host: "10.0.0.2".into(),
                port: 8080
            })
        );
        let https = PeerAddr::parse("https://m-b.example.com/").expect("https");
        assert!(https.tls);
        assert_eq!((https.host.as_str(), https.port), ("m-b.example.com", 443));
        let v6 = PeerAddr::parse("http://[::1]:81").expect("v6");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 81));
        assert_eq!(v6.authority(), "[::1]:81");
        for bad in [
            "10.0.0.2:8080",
            "ftp://x",
            "http://",
            "http://x/_images",
            "http://x:port",
            "http://u@x",
            "http://x:99999",
            "http://:80",
        ] {
            assert!(PeerAddr::parse(bad).is_err(), "{bad}");
        }
    }

    fn view(ilink: &str) -> FleetView {
        FleetView::build(&FleetSpec {
            image_ilink: Some(ilink.into()),
            image_tlink: None,
            algorithm: Algorithm::Rendezvous,
        })
        .expect("view")
    }

    #[test]
    fn the_table_defaults_to_template_links_and_prefers_configured_peers() {
        let v = view("https://m-{a=5,b=5,c=10}.example.com/_images/$hash/x.jpg");
        let mut configured = BTreeMap::new();
        configured.insert(
            "b".to_owned(),
            PeerAddr::parse("http://10.0.0.2:8080").expect("url"),
        );
        let t = peer_table("a", &v, &configured);
        assert_eq!(
            t.nodes.keys().collect::<Vec<_>>(),
            ["b", "c"],
            "never itself"
        );
        assert_eq!(t.nodes["b"].host, "10.0.0.2");
        assert_eq!(t.nodes["c"].host, "m-c.example.com");
        assert!(t.nodes["c"].tls);
    }

    #[test]
    fn an_unbalanced_relative_template_names_no_peer() {
        let v = view("_images/$hash/x.jpg");
        assert!(peer_table("a", &v, &BTreeMap::new()).nodes.is_empty());
    }

    #[test]
    fn a_node_is_always_up_to_itself_and_unknown_nodes_are_down() {
        let p = Peers::new("a", PeerTable::default(), PeerSettings::default());
        assert!(p.is_up("a"));
        p.mark_failed("a");
        assert!(p.is_up("a"));
        assert!(!p.is_up("zz"));
    }
}
