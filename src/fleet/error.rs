//! The one error type of the placement module.

/// Why a link template or a fleet could not be built.
///
/// Every message names what was wrong (the entry, the name, the config key), so it
/// can go straight into a log line or onto stderr.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleetError {
    /// An entry between the braces split into three or more parts on `=`
    /// (Shimmie >= 2.12 throws "Invalid load balancer weights" here).
    #[error("invalid load balancer entry {entry:?}: expected `name` or `name=weight`")]
    InvalidEntry {
        /// The offending entry, exactly as written between the commas.
        entry: String,
    },

    /// A node name appears twice; flexihash-php throws on that, so legacy mode refuses it.
    #[error("node {name:?} is listed twice; flexihash (Shimmie <= 2.11) refuses repeated names")]
    DuplicateNode {
        /// The repeated name.
        name: String,
    },

    /// Flexihash with no positive weight: the ring is empty and Shimmie <= 2.11 would
    /// link every image to an empty node name.
    #[error("no node has a positive weight; flexihash (Shimmie <= 2.11) would link to an empty node name")]
    NoPositiveWeight,

    /// The flexihash ring would hold more positions than we are willing to allocate.
    #[error("flexihash ring would need {positions} positions (64 per unit of weight, limit {limit}); lower the weights")]
    RingTooLarge {
        /// Positions the weights ask for.
        positions: u128,
        /// The limit.
        limit: u128,
    },

    /// A placement algorithm name that is neither `rendezvous` nor `flexihash`.
    #[error("unknown placement algorithm {0:?}: expected `rendezvous` or `flexihash`")]
    UnknownAlgorithm(String),

    /// An error in one silo's template, with the config key it came from.
    #[error("{key}: {error}")]
    Config {
        /// `image_ilink` or `image_tlink`.
        key: &'static str,
        /// What was wrong with it.
        error: Box<FleetError>,
    },
}
