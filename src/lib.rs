//! shimmer: a fleet of caching image mirrors for Shimmie galleries, on Pingora.
//!
//! The map of the house is DESIGN.md; each module's doc says what it owns.

pub mod admin;
pub mod cache;
pub mod config;
pub mod fleet;
pub mod fleet_table;
pub mod media_type;
pub mod metrics;
pub mod object;
pub mod origin;
pub mod owners;
pub mod peers;
pub mod proxy;
pub mod reload;
pub mod request;
pub mod shimmie;
pub mod state;
pub mod sync;
pub mod tls;
pub mod warm;
