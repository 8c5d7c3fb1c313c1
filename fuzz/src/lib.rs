//! The logic of every raft-kv fuzz target, as plain functions over bytes.
//!
//! Each target module has `pub fn run(data: &[u8])`, which panics when a property does not
//! hold. The same source is compiled twice: as this crate for the cargo-fuzz targets in
//! `fuzz_targets/`, and included with `#[path]` into the root test `tests/fuzz_corpora.rs`,
//! which replays the checked-in corpora and regressions under a plain `cargo test` on stable.
//! That is why modules name each other with `super::`, never `crate::`.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

#[path = "alloc_probe.rs"]
pub mod alloc_probe;
#[path = "core_step.rs"]
pub mod core_step;
#[path = "http_api.rs"]
pub mod http_api;
#[path = "messages.rs"]
pub mod messages;
#[path = "rpc_decode.rs"]
pub mod rpc_decode;
#[path = "wal_recovery.rs"]
pub mod wal_recovery;

/// The function of a target that checks one input (it panics on a violation).
pub type TargetFn = fn(&[u8]);

/// Every target: its name (the directory under `fuzz/corpus/` and `fuzz/regressions/`) and
/// the function that checks one input.
pub const TARGETS: [(&str, TargetFn); 4] = [
    ("rpc_decode", rpc_decode::run),
    ("core_step", core_step::run),
    ("wal_recovery", wal_recovery::run),
    ("http_api", http_api::run),
];
