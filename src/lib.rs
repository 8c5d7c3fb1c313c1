//! raft-kv: a replicated key-value store on its own Raft, proven by deterministic simulation.
//!
//! - [`raft`]: the consensus core, a pure synchronous state machine;
//! - [`env`](mod@env): the one seam to time, network, disk and randomness (tokio or madsim);
//! - [`wal`]: the checksummed write-ahead log;
//! - [`kv`]: the replicated key-value state machine;
//! - [`plants`]: bugs planted on purpose, alive only inside the simulator;
//! - [`node`]: the driver loop tying them together; [`http`]: the HTTP API; [`server`]: one node.

pub mod devcerts;
pub mod env;
pub mod fnv;
pub mod hex;
pub mod http;
pub mod kv;
pub mod metrics;
pub mod node;
pub mod plants;
pub mod raft;
pub mod server;
pub mod snapshot;
pub mod wal;
