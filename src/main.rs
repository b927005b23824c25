//! The `shimmer` command: parses the command line, builds the Pingora server and wires
//! the services. No logic lives here.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pingora::server::configuration::Opt;
use pingora::server::Server;
use pingora::services::background::background_service;

use shimmer::admin::AdminApp;
use shimmer::config::{self, Loaded};
use shimmer::proxy::Mirror;
use shimmer::reload::Reloader;
use shimmer::state::{CacheParts, Shared};
use shimmer::tls::CertStore;
use shimmer::{metrics, origin, owners};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Owners(args)) => return owners::run(args),
        Some(Command::Origin(args)) => {
            init_tracing("info");
            return origin::run(args);
        }
        None => {}
    }
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
        println!("shimmer: config ok (node {})", loaded.settings.node);
        return ExitCode::SUCCESS;
    }
    init_tracing(&loaded.settings.log_level);
    let opt = Opt {
        upgrade: cli.upgrade,
        daemon: cli.daemon,
        conf: None,
        ..Opt::default()
    };
    run(opt, loaded, cli.conf)
}

fn run(opt: Opt, loaded: Loaded, path: Option<PathBuf>) -> ExitCode {
    let Loaded {
        server: server_conf,
        settings,
        fleet,
    } = loaded;
    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    server.bootstrap();
    metrics::init();

    let cache = CacheParts::leak(&settings);
    let listen = settings.listen.clone();
    let node = settings.node.clone();
    let tls = settings.tls.clone();
    let admin_listen = settings.admin.listen;
    let certs = tls.as_ref().map(|t| CertStore::new(t.certs.clone()));
    let shared = Shared::new(settings, fleet, cache, certs.clone());
    {
        let shared = shared.clone();
        metrics::register_tiers(move || shared.tier_stats());
    }

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Mirror::new(shared.clone()),
        "shimmer mirror",
    );
    for addr in &listen {
        proxy.add_tcp(addr);
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
            proxy.add_tls_with_settings(addr, None, settings);
        }
    }
    server.add_service(proxy);
    if let Some(addr) = admin_listen {
        let mut admin = pingora::services::listening::Service::new(
            "shimmer admin".into(),
            AdminApp {
                shared: shared.clone(),
            },
        );
        admin.add_tcp(&addr.to_string());
        server.add_service(admin);
    }
    server.add_service(background_service(
        "reload on SIGHUP",
        Reloader { shared, path },
    ));
    tracing::info!(
        "shimmer node {node} listening on {}{}",
        listen.join(", "),
        tls.map(|t| format!(" and TLS on {}", t.listen.join(", ")))
            .unwrap_or_default()
    );
    server.run_forever()
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
