//! cargo-fuzz target `rpc_decode`: see `raft_kv_fuzz::rpc_decode` for what it checks.
#![no_main]
// libfuzzer-sys's macro opens files itself (its debug dump); the seam does not apply here.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

/// Counts heap growth, so the target can bound what decoding allocates.
#[global_allocator]
static ALLOCATOR: raft_kv_fuzz::alloc_probe::CountingAllocator =
    raft_kv_fuzz::alloc_probe::CountingAllocator;

libfuzzer_sys::fuzz_target!(|data: &[u8]| raft_kv_fuzz::rpc_decode::run(data));
