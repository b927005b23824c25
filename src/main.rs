//! The `shimmer` command: parses the command line, builds the Pingora server and wires
//! the services. No logic lives here.

use std::io::IsTerminal;
use std::os::fd::{IntoRawFd, RawFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use pingora::server::configuration::Opt;
use pingora::server::{ListenFds, Server, ShutdownWatch};
use pingora::services::background::background_service;
use pingora::services::{ServiceReadyNotifier, ServiceWithDependents};

use shimmer::admin::AdminApp;
use shimmer::config::{self, Config};
use shimmer::proxy::Mirror;
use shimmer::reload::{self, LogLevelHook, Reloader};
use shimmer::state::{CacheParts, MarkReady, Shared};
use shimmer::sync::{SyncService, SyncTarget};
use shimmer::tls::CertStore;
use shimmer::{metrics, origin, owners};

// jemalloc, not glibc's malloc: a disk hit allocates its body (~100 KB) per request,
// and glibc's bin search and consolidation for such sizes was 14% of the server's CPU
// in the disk bench (perf); jemalloc's size classes and thread caches make it small.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The config `shimmer` runs on when no `-c` is given.
const EMBEDDED_DEFAULT: &str = include_str!("../conf/shimmer.yaml");

#[derive(Parser, Debug)]
#[command(
    name = "shimmer",
    version,
    about = "A caching image mirror for Shimmie galleries"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The config file (default: the embedded conf/shimmer.yaml).
    #[arg(short = 'c', long = "conf", global = false)]
    conf: Option<PathBuf>,
    /// Check the config and exit: 0 when it is valid, 1 with the reason when not.
    #[arg(short = 't', long = "test")]
    test: bool,
    /// Take over the listeners of a running shimmer (graceful upgrade, after SIGQUIT).
    #[arg(short = 'u', long = "upgrade")]
    upgrade: bool,
    /// Run in the background.
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the owners Shimmie picks for image hashes.
    Owners(owners::OwnersArgs),
    /// Serve a Shimmie data directory as an origin.
    Origin(origin::OriginArgs),
    /// Print the fleet's table from each mirror's admin /status and /metrics.
    Fleet(shimmer::fleet_table::FleetArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Owners(args)) => return owners::run(args),
        Some(Command::Fleet(args)) => return shimmer::fleet_table::run(args),
        Some(Command::Origin(args)) => {
            let _ = init_tracing(tracing_subscriber::EnvFilter::new("info"));
            return origin::run(args);
        }
        None => {}
    }
    // Before anything slow (reading the config and certificates, Pingora's start): a
    // SIGHUP from here on is held for the reload service instead of killing us.
    if let Err(e) = reload::hold_early_sighup() {
        eprintln!("shimmer: warning: cannot hold SIGHUP until reload is ready: {e}");
    }
    raise_open_files_limit();
    let loaded = match &cli.conf {
        Some(path) => config::load(path),
        None => config::parse(
            std::path::Path::new("<embedded conf/shimmer.yaml>"),
            EMBEDDED_DEFAULT,
        ),
    };
    let loaded = match loaded {
        Ok(l) => l,
        Err(e) => {
            eprintln!("shimmer: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.test {
        // Warnings do not fail the check: the mirror would start and serve, only not
        // entirely as configured (e.g. without its disk tier).
        let path = cli
            .conf
            .as_deref()
            .unwrap_or(std::path::Path::new("<embedded conf/shimmer.yaml>"));
        let warnings = config::warnings(path, &loaded.fixed);
        for w in &warnings {
            eprintln!("shimmer: warning: {w}");
        }
        match warnings.len() {
            0 => println!("shimmer: config ok (node {})", loaded.live.settings.node),
            n => println!(
                "shimmer: config ok (node {}) with {n} warning{} (see above)",
                loaded.live.settings.node,
                if n == 1 { "" } else { "s" }
            ),
        }
        return ExitCode::SUCCESS;
    }
    let opt = Opt {
        upgrade: cli.upgrade,
        daemon: cli.daemon,
        conf: None,
        ..Opt::default()
    };
    run(opt, loaded, cli.conf)
}

fn run(opt: Opt, loaded: Config, path: Option<PathBuf>) -> ExitCode {
    let Config {
        fixed,
        server: server_conf,
        database,
        live,
    } = loaded;
    let set_log_level = init_tracing(live.log_filter);
    let settings = live.settings;
    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    server.bootstrap();
    metrics::init();
    metrics::set_node(&settings.node);
    if database.is_none() {
        // The YAML's own templates: nothing to lose touch with.
        metrics::sync_static_source();
    }

    let cache = CacheParts::leak(&fixed, &settings);
    let listen = fixed.listen.clone();
    let node = settings.node.clone();
    let tls = fixed.tls.clone();
    let admin_listen = fixed.admin_listen;
    let certs = live.certs.map(CertStore::new);
    let shared = Shared::new(settings, live.fleet, cache);
    if let Some(source) = database {
        let target: Arc<dyn SyncTarget> = shared.clone();
        let sync = background_service(
            "Shimmie sync",
            SyncService::new(source, target, fixed.sync.clone()),
        );
        // The last view and bans saved on disk serve from the first request, before
        // the database answers (or while it does not).
        sync.task().preload();
        let _ = shared.sync.set(sync.task());
        server.add_service(sync);
    }
    server.add_service(background_service(
        "peer health",
        shimmer::peers::health::HealthService::new(&shared.peers),
    ));
    server.add_service(background_service(
        "warm copier",
        shimmer::warm::WarmService(shimmer::warm::WarmCopier::new(shared.clone())),
    ));
    {
        let (rows, details) = (shared.clone(), shared.clone());
        metrics::register_tiers_with_details(
            move || rows.tier_stats(),
            move || details.cache.storage.stats(),
        );
    }

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Mirror::new(shared.clone()),
        "shimmer mirror",
    );
    for addr in &listen {
        proxy.add_listener(shimmer::proxy::listener(addr, None));
    }
    if let (Some(tls), Some(certs)) = (&tls, &certs) {
        for addr in &tls.listen {
            let settings = match shimmer::tls::listener_settings(certs.clone(), tls.h2) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("shimmer: TLS listener {addr}: {e}");
                    return ExitCode::FAILURE;
                }
            };
            proxy.add_listener(shimmer::proxy::listener(addr, Some(settings)));
        }
    }
    // In daemon mode Pingora drops to `user` before its listeners bind, so a port
    // below 1024 would fail: bind them now, as root, and hand them over (see Prebound).
    let upgrading = server.options.as_ref().is_some_and(|o| o.upgrade);
    let prebind = server.configuration.daemon && server.configuration.user.is_some() && !upgrading;
    let mut addrs: Vec<String> = listen.clone();
    addrs.extend(tls.iter().flat_map(|t| t.listen.iter().cloned()));
    addrs.extend(admin_listen.map(|a| a.to_string()));
    let prebound = if prebind {
        match Prebound::bind(&addrs) {
            Ok(p) => Some(server.add_service(p)),
            Err(e) => {
                eprintln!("shimmer: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let proxy = server.add_service(proxy);
    if let Some(p) = &prebound {
        proxy.add_dependency(p);
    }
    if let Some(addr) = admin_listen {
        let mut admin = pingora::services::listening::Service::new(
            "shimmer admin".into(),
            AdminApp {
                shared: shared.clone(),
            },
        );
        admin.add_tcp(&addr.to_string());
        let admin = server.add_service(admin);
        if let Some(p) = &prebound {
            admin.add_dependency(p);
        }
    }
    server.add_service(background_service("readiness", MarkReady(shared.clone())));
    server.add_service(background_service(
        "reload on SIGHUP",
        Reloader {
            shared,
            path,
            fixed,
            certs,
            set_log_level,
        },
    ));
    tracing::info!(
        "shimmer node {node} listening on {}{}",
        listen.join(", "),
        tls.map(|t| format!(" and TLS on {}", t.listen.join(", ")))
            .unwrap_or_default()
    );
    server.run_forever()
}

/// Listening sockets bound before Pingora drops privileges. Pingora's listeners take a
/// socket for their address from the server's table of inherited sockets (the one a
/// graceful upgrade fills) instead of binding; this service puts these there before
/// the listening services start (they depend on it), and the table hands them on at
/// the next upgrade.
struct Prebound {
    fds: Vec<(String, RawFd)>,
}

impl Prebound {
    fn bind(addrs: &[String]) -> Result<Prebound, String> {
        let mut fds = Vec::new();
        for addr in addrs {
            let l = std::net::TcpListener::bind(addr.as_str())
                .and_then(|l| l.set_nonblocking(true).map(|_| l))
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            fds.push((addr.clone(), l.into_raw_fd()));
        }
        Ok(Prebound { fds })
    }
}

#[async_trait::async_trait]
impl ServiceWithDependents for Prebound {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        _shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
        ready: ServiceReadyNotifier,
    ) {
        if let Some(table) = fds {
            let mut table = table.lock();
            for (addr, fd) in self.fds.drain(..) {
                table.add(addr, fd);
            }
        }
        ready.notify_ready();
    }

    fn name(&self) -> &str {
        "prebound listeners"
    }

    fn threads(&self) -> Option<usize> {
        Some(1)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(Vec::new())
    }
}

/// Logs to stderr at `filter` (the config's, parsed; RUST_LOG, when set and valid,
/// wins at start). Returns the hook that a reload uses to change the filter live.
fn init_tracing(filter: tracing_subscriber::EnvFilter) -> Option<LogLevelHook> {
    // An empty RUST_LOG (e.g. `Environment=RUST_LOG=`) would silence everything.
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or(filter);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_filter_reloading();
    let handle = builder.reload_handle();
    builder.init();
    Some(Box::new(move |filter| {
        handle.reload(filter).map_err(|e| e.to_string())
    }))
}

/// Raises the soft limit on open descriptors to the hard one, as Go's runtime does: the
/// soft default of a login shell (1024) is there for `select()`, which nothing here
/// uses, and would refuse the 1,025th connection of a cold stampede. (The shipped
/// `shimmer.service` sets `LimitNOFILE` itself; this is for a mirror started by hand.)
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0
        || lim.rlim_cur >= lim.rlim_max
    {
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: lim.rlim_max,
        ..lim
    };
    // SAFETY: setrlimit reads only the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        // The soft limit stays; connections past it are refused.
        eprintln!(
            "shimmer: warning: cannot raise the open files limit from {}: {}",
            lim.rlim_cur,
            std::io::Error::last_os_error()
        );
    }
}
