//! `shimmer fleet`: the fleet at a glance. Reads each mirror's admin `/status` (weights,
//! expected share, cache tiers, sync state) and `/metrics` (request counts, which
//! `/status` does not carry: served share and hit ratio are computed from
//! `shimmer_requests_total`) and prints one table; `--watch` redraws it, like
//! varnishstat. A mirror that does not answer is a `down` row, not an error.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use crate::fleet::{Algorithm, FleetSpec, FleetView, Silo};

/// Largest admin response read: /status and /metrics are a few KiB.
const MAX_RESPONSE: u64 = 8 << 20;

#[derive(clap::Args, Debug)]
pub struct FleetArgs {
    /// Admin listeners to read, as HOST:PORT or NAME=HOST:PORT (NAME as in the link
    /// templates, so a mirror that does not answer is still shown by its name).
    #[arg(required = true, value_name = "[NAME=]ADDR")]
    pub mirrors: Vec<String>,
    /// Redraw every SECS seconds until interrupted.
    #[arg(long, value_name = "SECS")]
    pub watch: Option<f64>,
    /// How long to wait for each mirror, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub timeout: f64,
}

/// What one mirror said (or that it said nothing).
#[derive(Debug, Clone)]
pub struct Probe {
    /// The name given on the command line, else the node's own.
    pub name: Option<String>,
    pub addr: String,
    pub status: Result<Value, String>,
    /// hit, miss and pass request counts (all silos), when /metrics answered.
    pub counts: Option<Counts>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    pub hit: f64,
    pub miss: f64,
    pub pass: f64,
}

impl Counts {
    /// Requests this node answered with a body (not redirected, not refused).
    pub fn served(&self) -> f64 {
        self.hit + self.miss + self.pass
    }
}

pub fn run(args: FleetArgs) -> ExitCode {
    let timeout = Duration::from_secs_f64(args.timeout.clamp(0.05, 60.0));
    loop {
        let probes = probe_all(&args.mirrors, timeout);
        let table = render(&probes);
        let mut out = std::io::stdout().lock();
        let written = match args.watch {
            // Home and clear, then the table: a redraw in place.
            Some(_) => write!(out, "\x1b[H\x1b[2J{table}"),
            None => write!(out, "{table}"),
        };
        if written.and_then(|_| out.flush()).is_err() {
            // stdout closed (e.g. piped into `head`): nothing left to do.
            return ExitCode::SUCCESS;
        }
        match args.watch {
            Some(secs) => std::thread::sleep(Duration::from_secs_f64(secs.clamp(0.1, 3600.0))),
            None => return ExitCode::SUCCESS,
        }
    }
}

/// Asks every mirror at once, so one that hangs costs one timeout, not one each.
pub fn probe_all(mirrors: &[String], timeout: Duration) -> Vec<Probe> {
    std::thread::scope(|s| {
        let handles: Vec<_> = mirrors
            .iter()
            .map(|m| s.spawn(move || probe(m, timeout)))
            .collect();
        handles
            .into_iter()
            .zip(mirrors)
            .map(|(h, m)| {
                h.join().unwrap_or_else(|_| Probe {
                    name: None,
                    addr: m.clone(),
                    status: Err("probe failed".into()),
                    counts: None,
                })
            })
            .collect()
    })
}

fn probe(spec: &str, timeout: Duration) -> Probe {
    let (name, addr) = match spec.split_once('=') {
        Some((n, a)) => (Some(n.to_owned()), a),
        None => (None, spec),
    };
    let addr = addr
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let status = get(&addr, "/status", timeout).and_then(|body| {
        serde_json::from_slice::<Value>(&body).map_err(|e| format!("bad /status JSON: {e}"))
    });
    let counts = match status {
        Ok(_) => get(&addr, "/metrics", timeout)
            .ok()
            .map(|b| parse_counts(&String::from_utf8_lossy(&b))),
        Err(_) => None,
    };
    let name = name.or_else(|| {
        status
            .as_ref()
            .ok()
            .and_then(|s| s["node"].as_str().map(str::to_owned))
    });
    Probe {
        name,
        addr,
        status,
        counts,
    }
}

/// A plain HTTP/1.1 GET with `Connection: close`: the body of a 200, else why not.
fn get(addr: &str, path: &str, timeout: Duration) -> Result<Vec<u8>, String> {
    let sock = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))?;
    let mut stream = TcpStream::connect_timeout(&sock, timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|_| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .map_err(|e| e.to_string())?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("truncated response")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let body = &raw[split + 4..];
    let code = head.split_whitespace().nth(1).unwrap_or_default();
    if code != "200" {
        return Err(format!("{path} answered {code}"));
    }
    if head.contains("transfer-encoding: chunked") {
        return dechunk(body).ok_or_else(|| "bad chunked body".into());
    }
    Ok(body.to_vec())
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// Sums `shimmer_requests_total` by outcome over the silos.
pub fn parse_counts(metrics: &str) -> Counts {
    let mut c = Counts::default();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("shimmer_requests_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        let outcome = labels
            .split(',')
            .find_map(|l| l.trim().strip_prefix("outcome=\""))
            .map(|o| o.trim_end_matches('"'));
        match outcome {
            Some("hit") => c.hit += v,
            Some("miss") => c.miss += v,
            Some("pass") => c.pass += v,
            _ => {}
        }
    }
    c
}

/// One table row, as numbers (the tests compare these with /status).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub node: String,
    pub addr: String,
    pub up: bool,
    pub weight: Option<i64>,
    pub expected_share: Option<f64>,
    pub served_share: Option<f64>,
    pub hit_ratio: Option<f64>,
    /// (bytes, budget) per tier.
    pub memory: Option<(u64, u64)>,
    pub disk: Option<(u64, u64)>,
    pub sync: String,
}

/// The `_images` weight of `node` in a /status document.
fn weight_in(status: &Value, node: &str) -> Option<i64> {
    status["silos"][Silo::Images.as_str()]["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["name"].as_str() == Some(node))?["weight"]
        .as_i64()
}

fn tier(status: &Value, name: &str) -> Option<(u64, u64)> {
    let t = status["cache"]
        .as_array()?
        .iter()
        .find(|t| t["tier"].as_str() == Some(name))?;
    Some((t["bytes"].as_u64()?, t["budget"].as_u64().unwrap_or(0)))
}

/// The view an answering mirror reports, to place the nodes that do not answer.
fn reported_view(status: &Value) -> Option<FleetView> {
    let template = |silo: Silo| status["silos"][silo.as_str()]["template"].as_str();
    let algorithm = status["algorithm"].as_str()?.parse::<Algorithm>().ok()?;
    FleetView::build(&FleetSpec {
        image_ilink: template(Silo::Images).map(str::to_owned),
        image_tlink: template(Silo::Thumbs).map(str::to_owned),
        algorithm,
    })
    .ok()
}

pub fn rows(probes: &[Probe]) -> Vec<Row> {
    let first_up = probes.iter().find_map(|p| p.status.as_ref().ok());
    let view = first_up.and_then(reported_view);
    let total_served: f64 = probes
        .iter()
        .filter_map(|p| p.counts.map(|c| c.served()))
        .sum();
    probes
        .iter()
        .map(|p| {
            let node = p.name.clone().unwrap_or_else(|| p.addr.clone());
            match &p.status {
                Ok(s) => {
                    let src = &s["source"];
                    let sync = match (src["kind"].as_str(), src["up"].as_bool()) {
                        (Some("static"), _) => "static".to_owned(),
                        (Some(kind), Some(true)) => {
                            format!("{kind} ok v{}", s["view_version"].as_u64().unwrap_or(0))
                        }
                        (Some(kind), _) => format!("{kind} LOST"),
                        _ => "?".to_owned(),
                    };
                    Row {
                        weight: weight_in(s, &node),
                        expected_share: s["silos"][Silo::Images.as_str()]["this_node_share"]
                            .as_f64(),
                        served_share: p
                            .counts
                            .filter(|_| total_served > 0.0)
                            .map(|c| c.served() / total_served),
                        hit_ratio: p
                            .counts
                            .filter(|c| c.hit + c.miss > 0.0)
                            .map(|c| c.hit / (c.hit + c.miss)),
                        memory: tier(s, "memory"),
                        disk: tier(s, "disk"),
                        sync,
                        node,
                        addr: p.addr.clone(),
                        up: true,
                    }
                }
                Err(_) => Row {
                    weight: first_up.and_then(|s| weight_in(s, &node)),
                    expected_share: view
                        .as_ref()
                        .filter(|_| p.name.is_some())
                        .map(|v| v.primary_share(Silo::Images, &node)),
                    served_share: None,
                    hit_ratio: None,
                    memory: None,
                    disk: None,
                    sync: "-".to_owned(),
                    node,
                    addr: p.addr.clone(),
                    up: false,
                },
            }
        })
        .collect()
}

/// A share as the table prints it (`-` when unknown).
pub fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.1}%", v * 100.0))
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

/// A tier's use as the table prints it: bytes, or bytes/budget.
pub fn usage(t: Option<(u64, u64)>) -> String {
    match t {
        None => "-".into(),
        Some((b, 0)) => bytes(b),
        Some((b, budget)) => format!("{}/{}", bytes(b), bytes(budget)),
    }
}

/// The table, with a header line and a summary line.
pub fn render(probes: &[Probe]) -> String {
    let rows = rows(probes);
    let header = [
        "NODE", "ADMIN", "STATE", "WEIGHT", "EXPECTED", "SERVED", "HIT", "MEMORY", "DISK", "SYNC",
    ];
    let cells: Vec<[String; 10]> = rows
        .iter()
        .map(|r| {
            [
                r.node.clone(),
                r.addr.clone(),
                if r.up { "up" } else { "DOWN" }.to_owned(),
                r.weight.map_or("-".into(), |w| w.to_string()),
                pct(r.expected_share),
                pct(r.served_share),
                pct(r.hit_ratio),
                usage(r.memory),
                usage(r.disk),
                r.sync.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for c in &cells {
        for (w, cell) in widths.iter_mut().zip(c) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cols: &[String]| {
        let parts: Vec<String> = cols
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(&header.map(str::to_owned));
    for c in &cells {
        line(c);
    }
    let up = rows.iter().filter(|r| r.up).count();
    out.push_str(&format!(
        "{up} of {} up; EXPECTED is the share of _images a node is primary for, SERVED its share of the fleet's answered requests\n",
        rows.len()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sum_over_silos() {
        let m = "# HELP x\nshimmer_requests_total{outcome=\"hit\",silo=\"_images\"} 3\n\
                 shimmer_requests_total{outcome=\"hit\",silo=\"_thumbs\"} 2\n\
                 shimmer_requests_total{outcome=\"miss\",silo=\"_images\"} 1\n\
                 shimmer_requests_total{outcome=\"redirect\",silo=\"_images\"} 9\n";
        assert_eq!(
            parse_counts(m),
            Counts {
                hit: 5.0,
                miss: 1.0,
                pass: 0.0
            }
        );
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").as_deref(),
            Some(&b"abcde"[..])
        );
        assert_eq!(dechunk(b"5\r\nab"), None);
    }

    #[test]
    fn a_silent_mirror_is_a_down_row_named_as_given() {
        let probes = probe_all(&["c=127.0.0.1:1".to_owned()], Duration::from_millis(200));
        let r = &rows(&probes)[0];
        assert_eq!((r.node.as_str(), r.up), ("c", false));
        assert!(render(&probes).contains("DOWN"));
    }
}
