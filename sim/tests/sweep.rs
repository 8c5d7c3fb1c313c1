//! The simulator as part of the plain `cargo test`: each test runs the simulation binary built in
//! release with `--cfg madsim` (its own target dir, `target/sim`, shared with `cargo sim`) and
//! checks what it reports.
//!
//! - a sweep of the standard scenario over 1,000 seeds (the pinned regressions first) passes, with
//!   at most 1% of its seeds inconclusive and every fault kind exercised;
//! - an idle sweep (`--idle`, the speed floor) runs its clusters with no workload and no faults;
//! - a replayed seed's history, written as JSON, checks linearizable when read back;
//! - (the planted bugs are in `plants.rs`, each caught by its own victim checker);
//! - one seed run twice gives the same trace hash (history and event stream).
//!
//! The tests run one at a time (each simulation uses every core).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use common::{run_sim, run_sim_code};

/// The number after `prefix` in `text` (`"result: 200 seeds, 0 failed, 1 inconclusive"`).
fn number_after(text: &str, prefix: &str, suffix: &str) -> Option<usize> {
    let line = text.lines().find(|line| line.starts_with(prefix))?;
    let (_, rest) = line.split_once(suffix)?;
    rest.trim_start_matches([',', ' '])
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Seeds of the `cargo test` sweep.
const SWEEP_SEEDS: usize = 1000;
/// The most inconclusive seeds the sweep tolerates, in percent of its seeds.
const INCONCLUSIVE_PERCENT_MAX: usize = 1;

#[test]
fn a_sweep_of_1000_seeds_finds_no_violation_stays_conclusive_and_exercises_every_fault() {
    let seeds = SWEEP_SEEDS.to_string();
    let allowed = INCONCLUSIVE_PERCENT_MAX.to_string();
    let (ok, stdout) = run_sim(&[
        "sweep",
        "--seeds",
        &seeds,
        "--inconclusive-max-percent",
        &allowed,
    ]);
    assert!(
        stdout.contains(&format!("result: {SWEEP_SEEDS} seeds, 0 failed")),
        "the sweep did not run {SWEEP_SEEDS} clean seeds:\n{stdout}"
    );
    let inconclusive = number_after(&stdout, "result:", "failed")
        .unwrap_or_else(|| panic!("no inconclusive count in the result line:\n{stdout}"));
    assert!(
        inconclusive * 100 <= SWEEP_SEEDS * INCONCLUSIVE_PERCENT_MAX,
        "{inconclusive} of {SWEEP_SEEDS} seeds were inconclusive, more than {INCONCLUSIVE_PERCENT_MAX}%:\n{stdout}"
    );
    assert!(
        stdout.contains("every fault kind occurred") && !stdout.contains("MISSING"),
        "some fault kind never occurred in {SWEEP_SEEDS} seeds:\n{stdout}"
    );
    // Unplanted seeds run membership operations (issue 10): every membership kind is
    // scheduled, and so counted above.
    assert!(
        !stdout.contains("(not scheduled)"),
        "some membership kind was not scheduled in {SWEEP_SEEDS} unplanted seeds:\n{stdout}"
    );
    assert!(ok, "the sweep failed:\n{stdout}");
}

#[test]
fn an_idle_sweep_runs_the_clusters_without_workload_or_faults() {
    let (ok, stdout) = run_sim(&["sweep", "--idle", "--seeds", "3", "--jobs", "1"]);
    assert!(ok, "the idle sweep failed:\n{stdout}");
    assert!(
        stdout.contains("idle (no workload, no faults)")
            && stdout.contains("result: 3 seeds, 0 failed, 0 inconclusive"),
        "{stdout}"
    );
    // No pinned regression ran, no fault was injected, no client wrote.
    assert!(!stdout.contains("regressions:"), "{stdout}");
    let missing = stdout
        .lines()
        .find(|line| line.starts_with("  fault kinds that never occurred:"))
        .unwrap_or_else(|| panic!("no list of missing fault kinds:\n{stdout}"));
    for never in [
        "partition majority",
        "crash and restart",
        "clock jump",
        "disk full",
    ] {
        assert!(missing.contains(never), "{never} occurred:\n{stdout}");
    }
    let writes = stdout
        .lines()
        .find(|line| line.trim_start().starts_with("writes "))
        .unwrap_or_else(|| panic!("no writes line:\n{stdout}"));
    assert!(writes.contains("per seed 0 / 0 / 0"), "{writes}");
}

#[test]
fn a_replayed_history_written_as_json_checks_linearizable_when_read_back() {
    let file = std::env::temp_dir().join(format!("raft-kv-history-{}.json", std::process::id()));
    let path = file.to_string_lossy().into_owned();
    let (replay_code, replay) = run_sim_code(&["replay", "7", "--history-out", &path]);
    assert_eq!(replay_code, Some(0), "seed 7 did not pass:\n{replay}");
    let written = number_after(&replay, "history:", "history:")
        .unwrap_or_else(|| panic!("no history line:\n{replay}"));
    assert!(
        written > 100,
        "only {written} operations written:\n{replay}"
    );
    let (check_code, check) = run_sim_code(&["check", &path]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(check_code, Some(0), "{check}");
    assert!(
        check.contains(&format!("{written} operations, linearizable")),
        "{check}"
    );
}

#[test]
fn one_seed_run_twice_gives_the_same_trace() {
    let (ok, stdout) = run_sim(&["determinism", "--seeds", "3", "--start", "7"]);
    assert!(ok, "a seed did not replay identically:\n{stdout}");
    assert_eq!(stdout.matches("identical").count(), 3, "{stdout}");
}

/// A closed stdout (`raft-kv-sim params 3 | head -3` once `head` has exited) ends the simulator
/// with exit code 2 and a message, not with the panic `println!` gives on a broken pipe.
#[test]
fn a_closed_stdout_ends_the_simulator_with_exit_2_and_a_message_not_a_panic() {
    // Builds the simulator (and checks `params` prints) before running its binary directly.
    let (passed, params) = run_sim(&["params", "3"]);
    assert!(passed && params.contains("seed"), "{params}");
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let output =
        std::process::Command::new(common::workspace_root().join("target/sim/release/raft-kv-sim"))
            .args(["params", "3"])
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("run raft-kv-sim");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr {stderr:?}");
    assert!(
        stderr.contains("cannot write to stdout") && !stderr.contains("panicked"),
        "stderr {stderr:?}"
    );
}
