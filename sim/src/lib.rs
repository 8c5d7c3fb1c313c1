//! The deterministic simulator (filled by the simulation issue).

pub mod linearizability;
pub mod timeline;
