//! A seed must replay exactly, so nothing in the code the simulation runs may draw randomness
//! the seed does not control. One such source is easy to add by accident: an unbiased
//! `tokio::select!` picks its first branch with tokio's per-thread RNG, which is seeded from a
//! process-wide counter (two runs of one seed in one process diverged because of it). Every
//! `select!` in the node's code and the simulator's must therefore start with `biased;`.
//!
//! The scan covers every file of `src/` and `sim/src/`, production-only ones included: a list of
//! exceptions would have to be kept true by hand as code moves, and `biased;` costs nothing
//! where it is not needed.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read a source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// `(file, line)` of every `select!` in `text` whose first token is not `biased;`.
fn unbiased_selects(file: &str, text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (offset, _) in text.match_indices("select! {") {
        let first_token_line = text[offset + "select! {".len()..]
            .lines()
            .map(str::trim)
            .find(|line| !line.is_empty() && !line.starts_with("//"));
        if first_token_line.is_none_or(|line| !line.starts_with("biased;")) {
            let line = text[..offset].lines().count();
            found.push(format!("{file}:{line}"));
        }
    }
    found
}

#[test]
fn every_select_in_src_and_sim_src_is_biased() {
    let sim_src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let node_src = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("src");
    let mut node_files = Vec::new();
    rust_files(&node_src, &mut node_files);
    let mut sim_files = Vec::new();
    rust_files(&sim_src, &mut sim_files);
    for (files, dir, must_hold) in [
        (
            &node_files,
            &node_src,
            ["node/driver.rs", "env/mod.rs", "main.rs"],
        ),
        (&sim_files, &sim_src, ["run.rs", "workload.rs", "sweep.rs"]),
    ] {
        for file in must_hold {
            assert!(
                files.contains(&dir.join(file)),
                "the scan of {} misses {file}: is the source tree where we think?",
                dir.display()
            );
        }
    }
    let mut offenders = Vec::new();
    for path in node_files.iter().chain(&sim_files) {
        let shown = path.to_string_lossy().replace('\\', "/");
        let text = std::fs::read_to_string(path).expect("read a source file");
        offenders.extend(unbiased_selects(&shown, &text));
    }
    assert!(
        offenders.is_empty(),
        "unbiased select! (add `biased;`): {offenders:?}"
    );
}

#[test]
fn the_scan_spots_an_unbiased_select() {
    let text = "fn f() {\n    tokio::select! {\n        _ = a => {}\n    }\n}\n";
    assert_eq!(unbiased_selects("x.rs", text), vec!["x.rs:2".to_string()]);
    let biased = "tokio::select! {\n    // why\n    biased;\n    _ = a => {}\n}\n";
    assert!(unbiased_selects("x.rs", biased).is_empty());
}
