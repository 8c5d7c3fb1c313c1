//! What a seed's run tells a human: on failure the seed, its parameters, the broken property, the
//! part of the history that shows it, the tail of the event stream, an HTML timeline and the one
//! command that replays it.

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use crate::coverage::Coverage;
use crate::linearizability::Operation;
use crate::recorder::Failure;
use crate::scenario::{Plant, Scenario};

/// Operations shown when a failure singles none out.
const HISTORY_LINES_MAX: usize = 40;

/// Everything one seed left behind, detached from its runtime.
#[derive(Clone, Debug)]
pub struct SeedResult {
    /// The scenario that ran.
    pub scenario: Scenario,
    /// Broken properties (a panic is one too), the first few.
    pub failures: Vec<Failure>,
    /// Broken properties found after those kept.
    pub failures_more: u64,
    /// Whether the linearizability search ran out of budget.
    pub inconclusive: bool,
    /// The client history.
    pub history: Vec<Operation>,
    /// The hash of the whole trace.
    pub trace_hash: u64,
    /// Trace lines recorded.
    pub trace_lines: u64,
    /// The tail of the trace.
    pub trace_tail: Vec<String>,
    /// Virtual milliseconds simulated.
    pub virtual_ms: u64,
    /// Wall-clock milliseconds the seed took.
    pub wall_ms: u64,
    /// Operations with a definite answer, with an unknown outcome, and refused.
    pub ops: (u64, u64, u64),
    /// What the run exercised.
    pub coverage: Coverage,
}

/// The outcome of one seed (or one checked history).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Every property held and the linearizability search reached a verdict.
    Passed,
    /// No property broke, but the linearizability search ran out of budget: the history was
    /// not proven linearizable. Never counted as a pass.
    Inconclusive,
    /// A property broke (whether or not the search also ran out of budget elsewhere).
    Failed,
}

impl Verdict {
    /// The process exit code for this outcome: 0 passed, 1 failed, 3 inconclusive (2 is taken
    /// by "refused to run").
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Passed => 0,
            Verdict::Failed => 1,
            Verdict::Inconclusive => EXIT_INCONCLUSIVE,
        }
    }
}

/// The exit code of a run whose only problem is inconclusive seeds.
pub const EXIT_INCONCLUSIVE: i32 = 3;

/// The verdict on a sweep: failed if any seed failed; inconclusive if more than
/// `inconclusive_percent_max` percent of the seeds run were inconclusive; else passed.
pub fn sweep_verdict(
    seeds_run: usize,
    failed: usize,
    inconclusive: usize,
    inconclusive_percent_max: f64,
) -> Verdict {
    if failed > 0 {
        Verdict::Failed
    } else if inconclusive as f64 > seeds_run as f64 * inconclusive_percent_max / 100.0 {
        Verdict::Inconclusive
    } else {
        Verdict::Passed
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Passed => "passed",
            Verdict::Inconclusive => "INCONCLUSIVE",
            Verdict::Failed => "FAILED",
        })
    }
}

impl SeedResult {
    /// The seed's outcome: failed if any property broke, else inconclusive if the
    /// linearizability search ran out of budget, else passed.
    pub fn verdict(&self) -> Verdict {
        if !self.failures.is_empty() {
            Verdict::Failed
        } else if self.inconclusive {
            Verdict::Inconclusive
        } else {
            Verdict::Passed
        }
    }

    /// Whether some property broke.
    pub fn failed(&self) -> bool {
        self.verdict() == Verdict::Failed
    }
}

/// The command that replays `seed`.
pub fn replay_command(seed: u64, plant: Plant) -> String {
    match plant {
        Plant::None => format!("cargo sim replay {seed}"),
        plant => format!("cargo sim replay {seed} --plant {plant}"),
    }
}

/// Where failure timelines go: `<workspace>/target/sim-failures`.
pub fn failures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("sim-failures")
}

/// Writes the failed seed's history as an HTML timeline; returns its path.
#[allow(clippy::disallowed_methods)] // the harness writes the real disk, outside any simulation
pub fn write_timeline(result: &SeedResult, dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let highlight: Vec<usize> = result
        .failures
        .iter()
        .flat_map(|f| f.ops.iter().copied())
        .collect();
    let property = result
        .failures
        .first()
        .map_or("no failure", |f| f.property.as_str());
    let title = format!(
        "raft-kv sim seed {} ({}): {property}",
        result.scenario.seed, result.scenario.plant
    );
    let html = crate::timeline::render_html(&result.history, &highlight, &title);
    let path = dir.join(format!("seed-{}.html", result.scenario.seed));
    std::fs::write(&path, html)?;
    Ok(path)
}

/// The operations a failure singled out, one per line.
pub fn history_excerpt(history: &[Operation], failure: &Failure) -> String {
    let mut out = String::new();
    for &index in &failure.ops {
        match history.get(index) {
            Some(op) => {
                let _ = writeln!(out, "  #{index:<5} {op}");
            }
            None => {
                let _ = writeln!(
                    out,
                    "  #{index:<5} (index beyond the history of {})",
                    history.len()
                );
            }
        }
    }
    out
}

/// The latest operations of the history, one per line.
pub fn history_tail(history: &[Operation]) -> String {
    let mut out = String::new();
    let start = history.len().saturating_sub(HISTORY_LINES_MAX);
    for (index, op) in history.iter().enumerate().skip(start) {
        let _ = writeln!(out, "  #{index:<5} {op}");
    }
    out
}

/// The full report of a seed (failed or not).
pub fn render(result: &SeedResult, timeline: Option<&Path>) -> String {
    let mut out = String::new();
    let seed = result.scenario.seed;
    let verdict = result.verdict();
    let _ = writeln!(out, "=== seed {seed} {verdict} ===");
    let _ = write!(out, "{}", result.scenario);
    let (definite, unknown, refused) = result.ops;
    let _ = writeln!(
        out,
        "run: {} virtual ms in {} wall ms; {} ops definite, {} unknown, {} refused; {} kills ({} during a snapshot write); {} snapshots, {} installed; {} trace lines, trace hash {:016x}",
        result.virtual_ms, result.wall_ms, definite, unknown, refused, result.coverage.crashes, result.coverage.crashes_in_snapshot, result.coverage.snapshots_taken, result.coverage.snapshots_installed, result.trace_lines, result.trace_hash
    );
    if verdict == Verdict::Inconclusive {
        let _ = writeln!(
            out,
            "inconclusive: the linearizability search ran out of budget on {} operations; the \
             history is not proven linearizable (export it with --history-out FILE)",
            result.history.len()
        );
    }
    for failure in &result.failures {
        let _ = writeln!(out, "broken: {}", failure.property);
        let _ = writeln!(out, "  {}", failure.detail);
        if !failure.ops.is_empty() {
            let _ = writeln!(out, "history that shows it:");
            out.push_str(&history_excerpt(&result.history, failure));
        }
    }
    if result.failures.iter().any(|f| f.ops.is_empty()) && !result.history.is_empty() {
        let shown = result.history.len().min(HISTORY_LINES_MAX);
        let _ = writeln!(
            out,
            "history (the last {shown} of {} operations):",
            result.history.len()
        );
        out.push_str(&history_tail(&result.history));
    }
    if verdict == Verdict::Failed {
        let _ = writeln!(
            out,
            "event stream (last {} lines):",
            result.trace_tail.len()
        );
        for line in &result.trace_tail {
            let _ = writeln!(out, "  {line}");
        }
        if let Some(path) = timeline {
            let _ = writeln!(out, "timeline: {}", path.display());
        }
    }
    if verdict != Verdict::Passed {
        let _ = writeln!(
            out,
            "replay: {}",
            replay_command(seed, result.scenario.plant)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linearizability::{KvInput, KvOutput};

    fn op(client: u64, call: u64, ret: u64) -> Operation {
        Operation {
            client,
            key: "k0".into(),
            input: KvInput::Put {
                value: b"v".to_vec(),
            },
            call,
            ret: Some(ret),
            output: Some(KvOutput::Put { mod_index: 3 }),
        }
    }

    #[test]
    fn a_failure_report_names_the_seed_the_property_the_ops_and_the_replay_command() {
        let failure = Failure {
            property: "linearizability (key \"k0\")".into(),
            detail: "stale read".into(),
            ops: vec![1],
        };
        let result = SeedResult {
            scenario: Scenario::derive(77, Plant::LyingFsync),
            failures: vec![failure],
            failures_more: 0,
            inconclusive: false,
            history: vec![op(0, 1, 2), op(1, 3, 4)],
            trace_hash: 0xabc,
            trace_lines: 2,
            trace_tail: vec!["   100 ms  fault 0: crash n1".into()],
            virtual_ms: 60_000,
            wall_ms: 100,
            ops: (2, 0, 0),
            coverage: Coverage {
                crashes: 1,
                ..Coverage::default()
            },
        };
        let text = render(&result, Some(Path::new("target/sim-failures/seed-77.html")));
        assert!(text.contains("=== seed 77 FAILED ==="), "{text}");
        assert!(text.contains("broken: linearizability"), "{text}");
        assert!(text.contains("#1     client 1"), "{text}");
        assert!(
            !text.contains("#0     client 0"),
            "only the highlighted op: {text}"
        );
        assert!(
            text.contains("cargo sim replay 77 --plant lying-fsync"),
            "{text}"
        );
        assert!(text.contains("fault 0: crash n1"), "{text}");
        assert!(text.contains("seed-77.html"), "{text}");
    }

    #[test]
    fn a_sweep_with_inconclusive_seeds_passes_only_within_the_allowed_share() {
        assert_eq!(sweep_verdict(200, 0, 0, 0.0), Verdict::Passed);
        assert_eq!(sweep_verdict(200, 0, 1, 0.0), Verdict::Inconclusive);
        assert_eq!(sweep_verdict(200, 0, 2, 1.0), Verdict::Passed);
        assert_eq!(sweep_verdict(200, 0, 3, 1.0), Verdict::Inconclusive);
        assert_eq!(sweep_verdict(200, 1, 0, 100.0), Verdict::Failed);
        assert_eq!(sweep_verdict(200, 1, 3, 1.0), Verdict::Failed);
        assert_eq!(Verdict::Inconclusive.exit_code(), EXIT_INCONCLUSIVE);
        assert_ne!(
            Verdict::Inconclusive.exit_code(),
            Verdict::Passed.exit_code()
        );
    }

    #[test]
    fn a_seed_is_failed_over_inconclusive_over_passed() {
        let mut result = SeedResult {
            scenario: Scenario::derive(5, Plant::None),
            failures: Vec::new(),
            failures_more: 0,
            inconclusive: true,
            history: vec![op(0, 1, 2)],
            trace_hash: 0,
            trace_lines: 1,
            trace_tail: Vec::new(),
            virtual_ms: 1,
            wall_ms: 1,
            ops: (1, 0, 0),
            coverage: Coverage::default(),
        };
        assert_eq!(result.verdict(), Verdict::Inconclusive);
        let text = render(&result, None);
        assert!(text.contains("=== seed 5 INCONCLUSIVE ==="), "{text}");
        assert!(text.contains("replay: cargo sim replay 5"), "{text}");
        result.failures.push(Failure {
            property: "panic".into(),
            detail: "boom".into(),
            ops: Vec::new(),
        });
        assert_eq!(result.verdict(), Verdict::Failed);
        result.failures.clear();
        result.inconclusive = false;
        assert_eq!(result.verdict(), Verdict::Passed);
        assert!(!render(&result, None).contains("replay:"));
    }

    #[test]
    fn replay_commands_name_the_plant_only_when_there_is_one() {
        assert_eq!(replay_command(5, Plant::None), "cargo sim replay 5");
        assert_eq!(
            replay_command(5, Plant::ForgetVote),
            "cargo sim replay 5 --plant forget-vote"
        );
    }
}
