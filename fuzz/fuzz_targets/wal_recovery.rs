//! cargo-fuzz target `wal_recovery`: see `raft_kv_fuzz::wal_recovery` for what it checks.
#![no_main]
// libfuzzer-sys's macro opens files itself (its debug dump); the seam does not apply here.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

libfuzzer_sys::fuzz_target!(|data: &[u8]| raft_kv_fuzz::wal_recovery::run(data));
