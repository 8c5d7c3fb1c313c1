//! cargo-fuzz target `http_api`: see `raft_kv_fuzz::http_api` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| raft_kv_fuzz::http_api::run(data));
