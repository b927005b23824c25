//! A fleet of real mirrors on 127.0.0.1 in front of one origin: node names are their
//! ports (so Shimmie's template `http://127.0.0.1:{p1=5,p2=5,...}` names each mirror's
//! own address), a shared fleet token, fast health checks, and either static templates
//! or a Shimmie database the test writes to.

use std::time::Duration;

use shimmer::fleet::{Algorithm, FleetSpec, FleetView, Silo};
use tempfile::TempDir;

use super::*;

pub const FLEET_TOKEN: &str = "test-fleet-token-0123456789";

/// What a fleet's mirrors are configured with beyond the harness's defaults.
#[derive(Clone, Copy)]
pub struct FleetOpts<'a> {
    /// Lines under `shimmer:` (two-space indent; a `health:` section there replaces the
    /// fast default one).
    pub extra: &'a str,
    /// A database DSN whose `config` table already holds the templates.
    pub source: Option<&'a str>,
    pub algorithm: Algorithm,
    /// Lines under `shimmer.cache:` (four-space indent), `{node}` replaced by the name.
    pub cache_extra: &'a str,
}

impl Default for FleetOpts<'_> {
    fn default() -> Self {
        FleetOpts {
            extra: "",
            source: None,
            algorithm: Algorithm::Rendezvous,
            cache_extra: "",
        }
    }
}

pub struct TestFleet {
    pub work: TempDir,
    pub data: DataDir,
    pub origin: Origin,
    /// (node name = port, mirror); `None` while killed.
    pub mirrors: Vec<(String, Option<Mirror>)>,
    /// The view at start.
    pub view: FleetView,
    pub ports: Vec<u16>,
    /// Config lines added under `shimmer:` of every mirror.
    pub extra: String,
    /// Lines added under `shimmer.cache:`, with `{node}` replaced by the node's name.
    pub cache_extra: String,
    /// The static templates every mirror starts with.
    pub ilink: String,
    pub tlink: String,
}

/// The image template over `ports` with `weights`.
pub fn fleet_template(ports: &[u16], weights: &[i64], silo: &str) -> String {
    let opts = ports
        .iter()
        .zip(weights)
        .map(|(p, w)| format!("{p}={w}"))
        .collect::<Vec<_>>()
        .join(",");
    let name = if silo == "_images" {
        "$id.$ext"
    } else {
        "thumb.$ext"
    };
    format!("http://127.0.0.1:{{{opts}}}/{silo}/$hash/{name}")
}

impl TestFleet {
    /// `weights.len()` mirrors; `extra` goes under `shimmer:` (two-space indent; a
    /// `health:` section there replaces the fast default one);
    /// `source`: a database DSN whose `config` table already holds the templates.
    pub fn start(weights: &[i64], extra: &str, source: Option<&str>) -> TestFleet {
        let ports: Vec<u16> = weights.iter().map(|_| free_port()).collect();
        let opts = FleetOpts {
            extra,
            source,
            ..FleetOpts::default()
        };
        TestFleet::start_on(&ports, weights, &opts)
    }

    /// [`Self::start`] on ports chosen before (to write templates naming them into a
    /// database first).
    pub fn start_on(ports: &[u16], weights: &[i64], opts: &FleetOpts) -> TestFleet {
        let FleetOpts {
            extra,
            source,
            algorithm,
            cache_extra,
        } = *opts;
        let work = tempfile::tempdir().expect("tempdir");
        let data = DataDir::new(work.path().join("data"));
        let origin = Origin::start(&data.dir, work.path());
        std::fs::write(work.path().join("fleet.token"), FLEET_TOKEN).expect("token file");
        let ports = ports.to_vec();

        let ilink = fleet_template(&ports, weights, "_images");
        let tlink = fleet_template(&ports, weights, "_thumbs");
        let view = FleetView::build(&FleetSpec {
            image_ilink: Some(ilink.clone()),
            image_tlink: Some(tlink.clone()),
            algorithm,
        })
        .expect("the test template parses");
        let mut lines = format!(
            "  fleet_token_file: {}/fleet.token\n  algorithm: {}\n{extra}",
            path_str(work.path()),
            algorithm.as_str()
        );
        if !extra.contains("  health:") {
            lines.push_str(
                "  health:\n    interval: 200ms\n    timeout: 300ms\n    rise: 2\n    fall: 2\n",
            );
        }
        if let Some(dsn) = source {
            lines.push_str(&format!(
                "  source: \"{dsn}\"\n  sync:\n    interval: 200ms\n    full_reread: 1s\n"
            ));
        }
        let mut f = TestFleet {
            work,
            data,
            origin,
            mirrors: Vec::new(),
            view,
            ports: ports.clone(),
            extra: lines,
            cache_extra: cache_extra.to_owned(),
            ilink: ilink.clone(),
            tlink: tlink.clone(),
        };
        for &port in &ports {
            let m = f.spawn(port, &ilink, &tlink);
            f.mirrors.push((port.to_string(), Some(m)));
        }
        for (name, _) in &f.mirrors {
            f.wait_peers_up(name);
        }
        f
    }

    fn spawn(&self, port: u16, ilink: &str, tlink: &str) -> Mirror {
        let yaml = mirror_yaml(
            self.work.path(),
            &MirrorSpec {
                node: &port.to_string(),
                port,
                origins: vec![format!("http://{}", self.origin.addr)],
                image_ilink: ilink.to_owned(),
                image_tlink: tlink.to_owned(),
                extra_cache: &self.cache_extra.replace("{node}", &port.to_string()),
                extra_origin: "",
            },
        );
        Mirror::start_yaml(self.work.path(), port, &format!("{yaml}{}", self.extra))
    }

    /// Waits until `name` sees every other running mirror up and every killed one down.
    pub fn wait_peers_up(&self, name: &str) {
        let m = self.node(name);
        let want: Vec<(String, &str)> = self
            .mirrors
            .iter()
            .filter(|(n, _)| n != name)
            .map(|(n, m)| (n.clone(), if m.is_some() { "up" } else { "down" }))
            .collect();
        wait_until(&format!("{name} sees its peers as they are"), || {
            let status = http_get(m.admin_addr(), "/status").ok()?;
            let v: serde_json::Value = serde_json::from_slice(&status.body).ok()?;
            let peers = v["peers"].as_array()?;
            want.iter()
                .all(|(n, state)| {
                    peers
                        .iter()
                        .any(|p| p["node"] == n.as_str() && p["state"] == *state)
                })
                .then_some(())
        });
    }

    /// Every running mirror sees the others as they are.
    pub fn wait_all_peers(&self) {
        for (name, m) in &self.mirrors {
            if m.is_some() {
                self.wait_peers_up(name);
            }
        }
    }

    pub fn node(&self, name: &str) -> &Mirror {
        self.mirrors
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, m)| m.as_ref())
            .expect("a running node")
    }

    /// Primary and secondary of an image under the start view.
    pub fn owners(&self, hash: &str) -> (String, String) {
        let o = self.view.owners(Silo::Images, hash);
        (
            o.primary().expect("primary").to_owned(),
            o.secondary().expect("secondary").to_owned(),
        )
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self, name: &str) {
        let slot = self
            .mirrors
            .iter_mut()
            .find(|(n, _)| n == name)
            .expect("node");
        let mut m = slot.1.take().expect("running");
        m.proc.signal(libc::SIGKILL);
        m.proc.wait_exit(Duration::from_secs(10));
    }

    /// Starts a killed node again on its port, with an empty memory cache.
    pub fn restart(&mut self, name: &str) {
        let port: u16 = name.parse().expect("node names are ports");
        // The YAML's templates only matter before a database source's first sync.
        let m = self.spawn(port, &self.ilink, &self.tlink);
        if let Some(slot) = self.mirrors.iter_mut().find(|(n, _)| n == name) {
            slot.1 = Some(m);
        }
    }

    /// Which of `hashes` (in `_images`) `name` holds in any tier, by `/lookup`.
    pub async fn held(&self, name: &str, hashes: &[String]) -> Vec<String> {
        let m = self.node(name);
        let url = format!("http://{}/lookup", m.admin_addr());
        let resp = client()
            .post(&url)
            .body(hashes.join("\n"))
            .send()
            .await
            .expect("lookup");
        assert_eq!(resp.status(), 200, "lookup answered");
        let body = resp.bytes().await.expect("lookup body");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("lookup JSON");
        let missing: std::collections::HashSet<&str> = v["_images"]["missing"]
            .as_array()
            .expect("missing list")
            .iter()
            .filter_map(|h| h.as_str())
            .collect();
        hashes
            .iter()
            .filter(|h| !missing.contains(h.as_str()))
            .cloned()
            .collect()
    }

    /// A metric of `name`'s `/metrics` (0 when absent).
    pub fn metric(&self, name: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
        let m = self.node(name);
        let text = http_get(m.admin_addr(), "/metrics")
            .map(|r| r.text())
            .unwrap_or_default();
        metric_value(&text, metric, labels).unwrap_or(0.0)
    }
}
