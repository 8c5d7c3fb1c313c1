//! cargo-fuzz target `core_step`: see `raft_kv_fuzz::core_step` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| raft_kv_fuzz::core_step::run(data));
