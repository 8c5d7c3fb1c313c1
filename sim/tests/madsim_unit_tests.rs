//! Runs the library's unit tests a second time under `--cfg madsim`, where the environment seam
//! switches to madsim's time and network and our simulated disk, and where the simulation-only
//! tests (crash semantics of the simulated disk, the WAL crash checker, clock skew) exist.
//!
//! A plain `cargo test` cannot compile the workspace both ways at once, so this test spawns a
//! nested `cargo test` with `--cfg madsim` added to `RUSTFLAGS` and its own target directory.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::path::Path;
use std::process::Command;

#[test]
fn library_unit_tests_pass_under_madsim() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("sim/ has a parent");
    // Appending keeps any flags the caller set; an exported RUSTFLAGS would otherwise silently
    // replace a config-file `build.rustflags` and compile the simulation to nothing.
    let rustflags = match std::env::var("RUSTFLAGS") {
        Ok(flags) if !flags.trim().is_empty() => format!("{flags} --cfg madsim"),
        _ => "--cfg madsim".to_string(),
    };
    let output = Command::new(env!("CARGO"))
        .current_dir(workspace)
        .env("RUSTFLAGS", rustflags)
        .args(["test", "-p", "raft-kv", "--lib", "--target-dir"])
        .arg(workspace.join("target").join("sim"))
        .output()
        .expect("run the nested cargo test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "library tests failed under madsim:\n{stdout}\n{stderr}"
    );
    // Prove the build really was the simulation: tests that exist only under cfg(madsim) ran.
    assert!(
        stdout.contains("env::sim_backend::"),
        "no simulation-only test ran: was --cfg madsim dropped?\n{stdout}"
    );
    let passed: usize = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("test result: ok. "))
        .filter_map(|rest| rest.split(' ').next()?.parse::<usize>().ok())
        .sum();
    assert!(
        passed >= 100,
        "only {passed} library tests ran under madsim:\n{stdout}"
    );
}
