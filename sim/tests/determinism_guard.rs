//! A seed must replay exactly, so nothing in the code the simulation runs may draw randomness
//! the seed does not control. One such source is easy to add by accident: an unbiased
//! `tokio::select!` picks its first branch with tokio's per-thread RNG, which is seeded from a
//! process-wide counter (two runs of one seed in one process diverged because of it). Every
//! `select!` in the node's code must therefore start with `biased;`.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::path::{Path, PathBuf};

/// Files that never run inside the simulation (production-only entry points and backends).
const PRODUCTION_ONLY: [&str; 3] = ["env/std_backend.rs", "cli/", "main.rs"];

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
fn every_select_the_simulation_runs_is_biased() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src")
            .join("run.rs"),
    );
    let mut offenders = Vec::new();
    let mut scanned = 0;
    for path in files {
        let shown = path.to_string_lossy().replace('\\', "/");
        if PRODUCTION_ONLY
            .iter()
            .any(|skip| shown.contains(&format!("src/{skip}")))
        {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read a source file");
        scanned += 1;
        offenders.extend(unbiased_selects(&shown, &text));
    }
    assert!(
        scanned > 10,
        "scanned only {scanned} files: is the source tree where we think?"
    );
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
