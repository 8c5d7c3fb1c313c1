//! cargo-fuzz target `wal_recovery`: see `raft_kv_fuzz::wal_recovery` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| raft_kv_fuzz::wal_recovery::run(data));
