//! `shimmer origin`: a small built-in origin serving a Shimmie data directory.
//!
//! It serves `DIR/images/<ab>/<hash>` (or `<ab>/<cd>/<hash>`) at
//! `/_images/<hash>/<anything>` and likewise for `thumbs`, the way Shimmie's own web
//! server rules do, with Content-Type (sniffed, see [`crate::media_type`]),
//! Content-Length, Last-Modified, single byte ranges and If-Modified-Since.
//! `GET /_origin/stats` reports request and byte counters as JSON. It is what the
//! demo, the tests and the benchmarks fetch from, and a minimal origin for sites
//! that want one.
//!
//! It runs on Pingora like the mirror itself: a listening service whose app
//! implements `HttpServerApp`, so keepalive is Pingora's, and bodies are streamed
//! from disk in 64 KiB chunks, never read whole.
//!
//! - `request`: path routing, hash validation, Range and conditional headers (pure).
//! - `serve`: the Pingora app: file lookup, headers, streaming, counters.
//!
//! The mirror's side of origins lives here too:
//! - `path`: `shimmer.origin.path` templates (`$hash`, `$ab`, `$cd`, `$name`, `$silo`);
//! - `s3`: `shimmer.origin.s3`, a bucket as the origin, requests signed with SigV4;
//! - `shimmie`: `origin: shimmie`, that bucket as Shimmie's `config` table names it;
//! - `upstream`: what the proxy's upstream hooks call.

pub mod path;
mod request;
pub mod s3;
mod serve;
pub mod shimmie;
#[cfg(test)]
mod tests;
pub mod upstream;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;

use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::listening::Service;

/// Command-line arguments of `shimmer origin`.
#[derive(clap::Args, Debug, Clone)]
pub struct OriginArgs {
    /// Shimmie data directory, the one holding `images/` and `thumbs/`.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,

    /// Address to listen on, e.g. 127.0.0.1:8081. Repeat the flag (or separate
    /// with commas) to listen on several.
    #[arg(long, value_name = "ADDR", required = true, value_delimiter = ',')]
    pub listen: Vec<SocketAddr>,

    /// Worker threads. File reads run on Tokio's blocking pool, so one is plenty
    /// for tests; raise it for benchmarks.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = parse_threads)]
    pub threads: usize,

    /// Send each response body at most this fast, in bytes per second (e.g. 3M): a
    /// slow origin, for tests and demos of fills that take a while.
    #[arg(long, value_name = "BYTES", value_parser = parse_rate)]
    pub rate: Option<u64>,
}

fn parse_rate(s: &str) -> Result<u64, String> {
    match crate::config::ByteSize::parse(s) {
        Ok(b) if b.0 > 0 => Ok(b.0),
        Ok(_) => Err("the rate must be more than 0 bytes per second".into()),
        Err(e) => Err(e),
    }
}

fn parse_threads(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=1024).contains(&n) => Ok(n),
        _ => Err(format!("expected a thread count from 1 to 1024, got {s:?}")),
    }
}

/// Run the origin until SIGTERM or SIGINT (either stops it within about a second).
/// Returns failure, with the reason logged, if it cannot start.
pub fn run(args: OriginArgs) -> ExitCode {
    let server = match build(&args) {
        Ok(server) => server,
        Err(reason) => {
            tracing::error!("shimmer origin: {reason}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        "shimmer origin serving {} on {}",
        args.dir.display(),
        args.listen
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    server.run(RunArgs::default());
    ExitCode::SUCCESS
}

fn build(args: &OriginArgs) -> Result<Server, String> {
    let dir = std::fs::canonicalize(&args.dir)
        .map_err(|e| format!("data directory {}: {e}", args.dir.display()))?;
    if !dir.is_dir() {
        return Err(format!(
            "data directory {} is not a directory",
            dir.display()
        ));
    }
    if !dir.join("images").is_dir() && !dir.join("thumbs").is_dir() {
        tracing::warn!(
            "{} has neither images/ nor thumbs/: every media request will be 404",
            dir.display()
        );
    }
    // Pingora binds inside its service task and only panics there on failure,
    // leaving a process that serves nothing; binding here first turns a busy or
    // bad address into a clear startup error. The probe socket closes at once.
    for addr in &args.listen {
        TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    }

    // No config file: everything the origin needs is set here. Per-process
    // pid/upgrade paths let several origins run side by side (tests, benchmarks),
    // and a zero grace period makes SIGTERM as quick as SIGINT for this stateless
    // server.
    let tmp = std::env::temp_dir();
    let pid = std::process::id();
    let conf = ServerConf {
        threads: args.threads,
        daemon: false,
        pid_file: tmp
            .join(format!("shimmer-origin-{pid}.pid"))
            .to_string_lossy()
            .into_owned(),
        upgrade_sock: tmp
            .join(format!("shimmer-origin-{pid}.sock"))
            .to_string_lossy()
            .into_owned(),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None::<Opt>, conf);
    server.bootstrap();

    let mut service = Service::new(
        "shimmer origin".to_string(),
        serve::OriginApp::new(dir).with_rate(args.rate),
    );
    for addr in &args.listen {
        service.add_tcp(&addr.to_string());
    }
    server.add_service(service);
    Ok(server)
}

#[cfg(test)]
mod args_tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        origin: OriginArgs,
    }

    #[test]
    fn parses_args() {
        let cli = Cli::try_parse_from([
            "x",
            "--dir",
            "/data",
            "--listen",
            "127.0.0.1:1,[::1]:2",
            "--listen",
            "0.0.0.0:3",
        ])
        .unwrap();
        assert_eq!(cli.origin.dir, PathBuf::from("/data"));
        assert_eq!(cli.origin.listen.len(), 3);
        assert_eq!(cli.origin.threads, 1);
        assert_eq!(cli.origin.rate, None);
        let slow = [
            "x",
            "--dir",
            "/d",
            "--listen",
            "127.0.0.1:1",
            "--rate",
            "3M",
        ];
        assert_eq!(
            Cli::try_parse_from(slow).unwrap().origin.rate,
            Some(3 << 20)
        );
        let still = ["x", "--dir", "/d", "--listen", "127.0.0.1:1", "--rate", "0"];
        assert!(Cli::try_parse_from(still).is_err());
        assert!(Cli::try_parse_from(["x", "--dir", "/d"]).is_err());
        assert!(Cli::try_parse_from(["x", "--dir", "/d", "--listen", "nope"]).is_err());
        let zero = [
            "x",
            "--dir",
            "/d",
            "--listen",
            "127.0.0.1:1",
            "--threads",
            "0",
        ];
        assert!(Cli::try_parse_from(zero).is_err());
    }

    #[test]
    fn refuses_missing_dir_and_busy_port() {
        let busy = TcpListener::bind("127.0.0.1:0").unwrap();
        let tmp = std::env::temp_dir();
        let args = OriginArgs {
            dir: tmp.clone(),
            listen: vec![busy.local_addr().unwrap()],
            threads: 1,
            rate: None,
        };
        assert!(build(&args).err().unwrap().contains("cannot listen"));
        let args = OriginArgs {
            dir: tmp.join("shimmer-no-such-dir-for-test"),
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            threads: 1,
            rate: None,
        };
        assert!(build(&args).err().unwrap().contains("data directory"));
    }
}
