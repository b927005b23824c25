//! Cache storage behind pingora-cache: the memory tier (and later the disk tier).
pub mod memory;
