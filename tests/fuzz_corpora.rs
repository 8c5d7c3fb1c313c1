//! Replays every checked-in fuzz input — the minimized corpora under `fuzz/corpus/<target>/` and
//! every crash found under `fuzz/regressions/<target>/` — through the very functions the
//! cargo-fuzz targets run, so a plain `cargo test` on stable keeps them passing.
//!
//! The target logic lives in `fuzz/src/` and is compiled into this test with `#[path]`.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod fuzz_logic;

/// The rpc_decode target bounds what decoding allocates: count it here as in the fuzzer.
#[global_allocator]
static ALLOCATOR: fuzz_logic::alloc_probe::CountingAllocator =
    fuzz_logic::alloc_probe::CountingAllocator;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `fuzz/<kind>/<target>/`, sorted by name (none when the directory is missing).
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| {
            entry
                .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
                .path()
        })
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every corpus and regression input of `target`; a failure names the file.
fn replay(target: &str) -> usize {
    let run = fuzz_logic::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no fuzz target named {target}"))
        .1;
    let mut count = 0;
    for kind in ["corpus", "regressions"] {
        for path in inputs(kind, target) {
            let data = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| run(&data))) {
                eprintln!(
                    "fuzz input {} failed; reproduce with: cd fuzz && cargo fuzz run -s none {target} {}",
                    path.display(),
                    path.strip_prefix(fuzz_dir()).unwrap_or(&path).display()
                );
                resume_unwind(panic);
            }
            count += 1;
        }
    }
    count
}

#[test]
fn rpc_decode_inputs_replay_clean() {
    assert!(
        fuzz_logic::alloc_probe::is_installed(),
        "the counting allocator must be installed for rpc_decode"
    );
    assert!(
        replay("rpc_decode") > 0,
        "rpc_decode has no checked-in inputs"
    );
}

#[test]
fn core_step_inputs_replay_clean() {
    assert!(
        replay("core_step") > 0,
        "core_step has no checked-in inputs"
    );
}

#[test]
fn wal_recovery_inputs_replay_clean() {
    assert!(
        replay("wal_recovery") > 0,
        "wal_recovery has no checked-in inputs"
    );
}

#[test]
fn http_api_inputs_replay_clean() {
    assert!(replay("http_api") > 0, "http_api has no checked-in inputs");
}

#[test]
fn the_rpc_overflow_regression_still_reaches_the_append_check() {
    // The regression file must keep exercising what it was kept for: an append whose
    // prev_log_index is u64::MAX inside a well-framed envelope. If the decoder's framing changes
    // and the file decays into plain garbage, this says so instead of passing silently.
    let path = fuzz_dir().join("regressions/rpc_decode/append-prev-log-index-u64-max-overflows");
    let data =
        std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut framed = postcard::to_stdvec(&(
        fuzz_logic::rpc_decode::CLUSTER_ID,
        1u64,
        fuzz_logic::rpc_decode::SELF_ID,
        fuzz_logic::rpc_decode::MEMBER_INCARNATION,
    ))
    .expect("a header encodes");
    framed.extend_from_slice(&data);
    let decoded: Result<raft_kv::node::rpc::RpcEnvelope, _> = postcard::from_bytes(&framed);
    let envelope = decoded.expect("the regression decodes as an envelope once framed");
    let has_overflowing_append = envelope.messages.iter().any(|m| {
        matches!(&m.body, raft_kv::raft::MessageBody::Append { prev_log_index: u64::MAX, entries, .. } if !entries.is_empty())
    });
    assert!(
        has_overflowing_append,
        "the regression no longer carries an append at prev_log_index u64::MAX: {envelope:?}"
    );
}
