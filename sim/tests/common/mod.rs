//! What the simulation tests share: running the release simulator (built with `--cfg madsim`
//! in `target/sim`, the directory `cargo sim` uses) one nested run at a time.
#![allow(clippy::disallowed_methods, clippy::disallowed_types, dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// One nested simulation at a time.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `raft-kv-sim <args>` (built in release with `--cfg madsim`), returns (success, stdout).
pub fn run_sim(args: &[&str]) -> (bool, String) {
    let (code, stdout) = run_sim_code(args);
    (code == Some(0), stdout)
}

/// Runs `raft-kv-sim <args>`, returns (exit code, stdout).
pub fn run_sim_code(args: &[&str]) -> (Option<i32>, String) {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut command = Command::new(cargo);
    command
        .current_dir(&root)
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "raft-kv-sim",
            "--target-dir",
        ])
        .arg(root.join("target").join("sim"))
        .arg("--")
        .args(args);
    // An exported RUSTFLAGS would override build.rustflags, so the cfg goes into the variable
    // cargo actually reads (keeping whatever flags the caller set).
    match std::env::var("CARGO_ENCODED_RUSTFLAGS") {
        Ok(encoded) if !encoded.is_empty() => {
            command.env(
                "CARGO_ENCODED_RUSTFLAGS",
                format!("{encoded}\u{1f}--cfg\u{1f}madsim"),
            );
        }
        _ => {
            let existing = std::env::var("RUSTFLAGS").unwrap_or_default();
            command.env_remove("CARGO_ENCODED_RUSTFLAGS");
            command.env("RUSTFLAGS", format!("{existing} --cfg madsim").trim());
        }
    }
    let output = command.output().expect("run cargo for the simulation");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    println!("$ raft-kv-sim {}\n{stdout}", args.join(" "));
    eprintln!("{stderr}");
    assert_ne!(
        output.status.code(),
        Some(2),
        "the simulator refused to run (built without --cfg madsim?):\n{stdout}\n{stderr}"
    );
    (output.status.code(), stdout)
}
