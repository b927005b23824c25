//! shimmer: a fleet of caching image mirrors for Shimmie galleries, on Pingora.
//!
//! The map of the house is DESIGN.md; each module's doc says what it owns.

pub mod fleet;
