//! raft-kv: a replicated key-value store on its own Raft, proven by deterministic simulation.

pub mod env;
pub mod raft;
pub mod wal;
