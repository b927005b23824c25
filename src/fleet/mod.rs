//! Placement: which mirrors own an image, exactly as Shimmie's links say.
//!
//! Pure and synchronous: no HTTP, no database, no Pingora session. Shimmie's link
//! templates (`image_ilink` for `_images`, `image_tlink` for `_thumbs`) carry the
//! balancer (`https://m-{a=5,b=5,c=10}.example.com/_images/$hash/...`); a
//! [`FleetView`] parses both once, precomputes each algorithm's tables, and answers
//! [`FleetView::owners`] without allocating. Share it as `Arc<FleetView>` and swap a
//! new one in when Shimmie's config changes.
//!
//! - [`Algorithm::Rendezvous`]: weighted rendezvous hashing, Shimmie >= 2.12 (default);
//! - [`Algorithm::Flexihash`]: the flexihash CRC32 ring, Shimmie <= 2.11.
//!
//! Agreement with Shimmie's PHP is bit-exact, including PHP 8's comparison of names
//! like `"10"` and `"9"`; `tests/shimmie_compat.rs` pins Shimmie's published vectors.
//! [`selection::ShimmieSelection`] exposes the same placement to
//! `pingora-load-balancing`.

mod error;
mod failover;
mod fill;
mod flexihash;
mod murmur;
mod php;
mod placement;
mod rendezvous;
pub mod selection;
mod share;
mod template;

pub use error::FleetError;
pub use failover::{acting_owner, Acting};
pub use fill::{fill_sources, FillReason};
pub use flexihash::{MAX_POSITIONS, REPLICAS};
pub use murmur::{murmur3_32, Murmur3};
pub use php::int_cast as php_int_cast;
pub use placement::{Owners, Placement};
pub use template::{Node, Template};

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

pub use crate::object::Silo;

/// What placement needs of a silo beyond its identity.
impl Silo {
    /// Shimmie's config key for the silo's link template.
    pub fn config_key(self) -> &'static str {
        match self {
            Silo::Images => "image_ilink",
            Silo::Thumbs => "image_tlink",
        }
    }

    /// What Shimmie links to when the template is empty or absent (unbalanced).
    pub fn default_template(self) -> &'static str {
        match self {
            Silo::Images => "_images/$hash/$id%20-%20$tags.$ext",
            Silo::Thumbs => "_thumbs/$hash/thumb.$ext",
        }
    }

    fn index(self) -> usize {
        match self {
            Silo::Images => 0,
            Silo::Thumbs => 1,
        }
    }
}

/// How the balancer's nodes are chosen.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// Weighted rendezvous hashing (Shimmie >= 2.12).
    #[default]
    Rendezvous,
    /// flexihash-php's CRC32 ring with 64 replicas (Shimmie <= 2.11).
    Flexihash,
}

impl Algorithm {
    /// `"rendezvous"` or `"flexihash"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Rendezvous => "rendezvous",
            Algorithm::Flexihash => "flexihash",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = FleetError;

    fn from_str(s: &str) -> Result<Algorithm, FleetError> {
        match s {
            "rendezvous" => Ok(Algorithm::Rendezvous),
            "flexihash" => Ok(Algorithm::Flexihash),
            other => Err(FleetError::UnknownAlgorithm(other.to_owned())),
        }
    }
}

/// What a [`FleetView`] is built from: Shimmie's two config values, raw.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct FleetSpec {
    /// `image_ilink`; `None`, `""` or `"0"` (PHP `empty()`) mean Shimmie's default.
    pub image_ilink: Option<String>,
    /// `image_tlink`; `None`, `""` or `"0"` (PHP `empty()`) mean Shimmie's default.
    pub image_tlink: Option<String>,
    /// The placement algorithm.
    pub algorithm: Algorithm,
}

impl FleetSpec {
    /// The template text in force for `silo`.
    pub fn template_for(&self, silo: Silo) -> &str {
        let raw = match silo {
            Silo::Images => self.image_ilink.as_deref(),
            Silo::Thumbs => self.image_tlink.as_deref(),
        };
        // Shimmie tests `!empty($template)`, and PHP's empty("0") is true.
        match raw {
            None | Some("") | Some("0") => silo.default_template(),
            Some(t) => t,
        }
    }
}

/// Both silos' placements, built once and shared as `Arc<FleetView>`. Immutable.
#[derive(Clone, Debug)]
pub struct FleetView {
    algorithm: Algorithm,
    silos: [Placement; 2],
    /// Each node's primary share per silo, measured on first use (see `share`).
    shares: [OnceLock<Vec<(String, f64)>>; 2],
}

impl FleetView {
    /// Parses both templates and precomputes their placement. Errors name the silo's
    /// config key and the bad entry, e.g.
    /// `image_ilink: invalid load balancer entry "b=2=3": expected ...`.
    pub fn build(spec: &FleetSpec) -> Result<FleetView, FleetError> {
        let build = |silo: Silo| {
            Template::parse(spec.template_for(silo))
                .and_then(|t| Placement::new(t, spec.algorithm))
                .map_err(|error| FleetError::Config {
                    key: silo.config_key(),
                    error: Box::new(error),
                })
        };
        Ok(FleetView {
            algorithm: spec.algorithm,
            silos: [build(Silo::Images)?, build(Silo::Thumbs)?],
            shares: [OnceLock::new(), OnceLock::new()],
        })
    }

    /// The share of the silo's images `node` is primary for: 1 when the silo is
    /// unbalanced (every node serves it), 0 for a node the template does not name.
    /// Measured once per view, on first use, to about half a percentage point.
    pub fn primary_share(&self, silo: Silo, node: &str) -> f64 {
        let placement = self.placement(silo);
        if !placement.template().is_balanced() {
            return 1.0;
        }
        self.shares[silo.index()]
            .get_or_init(|| share::primary_shares(placement))
            .iter()
            .find(|(name, _)| name == node)
            .map_or(0.0, |(_, share)| *share)
    }

    /// The owners of `hash` in `silo` (32 lowercase hex, validated by the caller).
    /// Allocates nothing.
    #[inline]
    pub fn owners(&self, silo: Silo, hash: &str) -> Owners<'_> {
        self.silos[silo.index()].owners(hash)
    }

    /// The silo's parsed template.
    pub fn template(&self, silo: Silo) -> &Template {
        self.silos[silo.index()].template()
    }

    /// Whether both views place every object on the same nodes: same algorithm, same
    /// nodes and weights in the same order (links may differ).
    pub fn same_placement(&self, other: &FleetView) -> bool {
        self.algorithm == other.algorithm
            && Silo::ALL
                .iter()
                .all(|&s| self.template(s).nodes() == other.template(s).nodes())
    }

    /// The silo's placement.
    pub fn placement(&self, silo: Silo) -> &Placement {
        &self.silos[silo.index()]
    }

    /// The algorithm both silos use.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The URL of `node` for this image, keeping the visitor's filename: the silo's
    /// template with `node` for the braces and `$hash`, `$hash_ab`, `$hash_cd`
    /// substituted, up to the end of the first `$hash` after the braces; then `rest`
    /// (the request path after the hash, e.g. `"/1234%20-%20tag.jpg"`) instead of the
    /// template's remainder.
    ///
    /// A template with no `$hash` after the braces cannot carry the filename: the URL
    /// is then the rendered template cut at the first `/` after the node (after a
    /// following `://`), then `/<silo>/<hash><rest>`, the path every shimmer mirror
    /// serves. See [`Template::node_url`].
    pub fn node_url(&self, silo: Silo, node: &str, hash: &str, rest: &str) -> String {
        self.template(silo).node_url(silo, node, hash, rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "d41d8cd98f00b204e9800998ecf8427e";

    fn spec(ilink: Option<&str>, tlink: Option<&str>, algorithm: Algorithm) -> FleetSpec {
        FleetSpec {
            image_ilink: ilink.map(str::to_owned),
            image_tlink: tlink.map(str::to_owned),
            algorithm,
        }
    }

    #[test]
    fn silo_names_round_trip() {
        for silo in Silo::ALL {
            assert_eq!(Silo::from_path_segment(silo.as_str()), Some(silo));
        }
        assert_eq!(Silo::Images.config_key(), "image_ilink");
        assert_eq!(Silo::Thumbs.config_key(), "image_tlink");
        assert_eq!(Silo::from_path_segment("_Images"), None);
        assert_eq!(Silo::from_path_segment(""), None);
    }

    #[test]
    fn algorithm_parses_lowercase_names() {
        assert_eq!("rendezvous".parse(), Ok(Algorithm::Rendezvous));
        assert_eq!("flexihash".parse(), Ok(Algorithm::Flexihash));
        assert_eq!(Algorithm::default(), Algorithm::Rendezvous);
        assert!(matches!(
            "Ketama".parse::<Algorithm>(),
            Err(FleetError::UnknownAlgorithm(_))
        ));
    }

    #[test]
    fn algorithm_deserializes_lowercase() {
        let a: Algorithm = serde_json::from_str("\"flexihash\"").unwrap();
        assert_eq!(a, Algorithm::Flexihash);
        assert!(serde_json::from_str::<Algorithm>("\"Flexihash\"").is_err());
    }

    #[test]
    fn absent_empty_and_zero_templates_use_defaults() {
        for raw in [None, Some(""), Some("0")] {
            let view = FleetView::build(&spec(raw, raw, Algorithm::Rendezvous)).unwrap();
            assert_eq!(
                view.template(Silo::Images).as_str(),
                Silo::Images.default_template()
            );
            assert_eq!(
                view.template(Silo::Thumbs).as_str(),
                Silo::Thumbs.default_template()
            );
            assert_eq!(view.owners(Silo::Images, H), Owners::Unbalanced);
        }
    }

    #[test]
    fn silos_use_their_own_templates() {
        let view = FleetView::build(&spec(
            Some("https://{a=5,b=5,c=10}.x/_images/$hash/f.jpg"),
            Some("https://{t}.x/_thumbs/$hash/thumb.jpg"),
            Algorithm::Rendezvous,
        ))
        .unwrap();
        assert_eq!(view.owners(Silo::Images, H).primary(), Some("c"));
        assert_eq!(view.owners(Silo::Thumbs, H).primary(), Some("t"));
        assert_eq!(view.algorithm(), Algorithm::Rendezvous);
    }

    #[test]
    fn build_error_names_config_key_and_entry() {
        let err = FleetView::build(&spec(None, Some("{a,b=1=2}"), Algorithm::Rendezvous))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("image_tlink: "), "{err}");
        assert!(err.contains("\"b=1=2\""), "{err}");
    }

    #[test]
    fn flexihash_build_error_names_config_key() {
        let err = FleetView::build(&spec(Some("{a=0}"), None, Algorithm::Flexihash))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("image_ilink: "), "{err}");
    }

    #[test]
    fn node_url_uses_silo_template() {
        let view = FleetView::build(&spec(
            Some("https://m-{a,b}.example.com/_images/$hash/$id%20-%20$tags.$ext"),
            None,
            Algorithm::Rendezvous,
        ))
        .unwrap();
        assert_eq!(
            view.node_url(Silo::Images, "a", H, "/1%20-%20x.jpg"),
            format!("https://m-a.example.com/_images/{H}/1%20-%20x.jpg")
        );
    }

    #[test]
    fn fleet_view_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<FleetView>();
        check::<std::sync::Arc<FleetView>>();
    }
}
