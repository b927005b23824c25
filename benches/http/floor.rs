//! The Pingora floor for `make bench`: the least a Pingora 0.9 HTTP server can do per
//! request. It answers every request with one fixed body (a file read at start, the
//! bench's hot 20 KB image) from `request_filter`, with the same Pingora calls as
//! shimmer's memory-hit path (`write_response_header`, then the body in one
//! `write_response_body`) and no downstream modules, as shimmer. So shimmer's hot20k
//! over the floor's is how close its hit path comes to Pingora's own limit.
//!
//! `floor --listen ADDR --body FILE [--tls ADDR --cert PEM --key PEM]`; one worker
//! thread, as the bench pins each server to one core. The TLS listener offers h2 by
//! ALPN, as shimmer's does by default.

use std::process::ExitCode;

use async_trait::async_trait;
use bytes::Bytes;
use clap::Parser;
use http::header;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::*;
use pingora::proxy::{http_proxy_service_with_name, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora_core::modules::http::HttpModules;
use pingora_http::ResponseHeader;

#[derive(Parser)]
#[command(about = "A minimal Pingora server answering one fixed body (make bench)")]
struct Args {
    /// Plain HTTP address.
    #[arg(long)]
    listen: String,
    /// The file whose bytes every answer carries.
    #[arg(long)]
    body: std::path::PathBuf,
    /// TLS address (h2 and HTTP/1.1 by ALPN); needs --cert and --key.
    #[arg(long, requires_all = ["cert", "key"])]
    tls: Option<String>,
    #[arg(long)]
    cert: Option<String>,
    #[arg(long)]
    key: Option<String>,
}

// The allocator shimmer runs on (src/main.rs), so the floor differs from it by the hit
// path alone.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct Floor {
    body: Bytes,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) {}

    fn init_downstream_modules(&self, _modules: &mut HttpModules) {
        // None, as shimmer: Pingora's default adds a (disabled) compression module.
    }

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let mut resp = ResponseHeader::build(200, Some(3))?;
        resp.insert_header(header::CONTENT_TYPE, "image/jpeg")?;
        resp.insert_header(header::CONTENT_LENGTH, self.body.len())?;
        session.write_response_header(Box::new(resp), false).await?;
        // A clone of `Bytes` shares the buffer: no copy per request, as a memory hit.
        session
            .write_response_body(Some(self.body.clone()), true)
            .await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        // request_filter answers everything; reaching here would be a bug.
        Error::e_explain(ErrorType::InternalError, "the floor has no upstream")
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let body = match std::fs::read(&args.body) {
        Ok(b) => Bytes::from(b),
        Err(e) => {
            eprintln!("floor: cannot read {}: {e}", args.body.display());
            return ExitCode::FAILURE;
        }
    };
    let conf = ServerConf {
        threads: 1,
        // The bench stops servers with SIGTERM: no reason to wait Pingora's 300 s.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = http_proxy_service_with_name(&server.configuration, Floor { body }, "floor");
    service.add_tcp(&args.listen);
    if let (Some(addr), Some(cert), Some(key)) = (&args.tls, &args.cert, &args.key) {
        let mut tls = match TlsSettings::intermediate(cert, key) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("floor: TLS {cert} / {key}: {e}");
                return ExitCode::FAILURE;
            }
        };
        tls.enable_h2();
        service.add_tls_with_settings(addr, None, tls);
    }
    server.add_service(service);
    server.run_forever()
}
