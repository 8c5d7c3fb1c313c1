//! raft-kv: a replicated key-value store on its own Raft, proven by deterministic simulation.

pub mod kv;
pub mod metrics;
pub mod raft;
