//! `raft-kv-sim`: sweep seeds, replay one, replay the pinned regressions, check determinism.
//! Run it through the `cargo sim` alias, which builds it in release with `--cfg madsim`.

#[cfg(not(madsim))]
fn main() {
    eprintln!(
        "error: raft-kv-sim was built without --cfg madsim, so it contains no simulation.\n\
         Run it with `cargo sim <command>` (the alias in .cargo/config.toml). If you did, an exported\n\
         RUSTFLAGS overrides the alias's build.rustflags: unset it, or add `--cfg madsim` to it."
    );
    std::process::exit(2);
}

#[cfg(madsim)]
fn main() {
    std::process::exit(cli::main());
}

#[cfg(madsim)]
mod cli {
    use clap::{Parser, Subcommand};
    use raft_kv_sim::linearizability::{self, Budget, CheckResult};
    use raft_kv_sim::plants;
    use raft_kv_sim::regressions::{self, Regression};
    use raft_kv_sim::report::{self, Verdict};
    use raft_kv_sim::scenario::{Plant, Scenario};
    use raft_kv_sim::sweep::{self, SweepOptions, SweepSummary};
    use raft_kv_sim::{history_file, run};
    use std::path::PathBuf;

    /// The deterministic simulator of raft-kv.
    #[derive(Parser, Debug)]
    #[command(name = "raft-kv-sim", version)]
    struct Args {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand, Debug)]
    enum Command {
        /// Run many seeds (the pinned regressions first), one OS thread per seed.
        Sweep {
            /// How many seeds.
            #[arg(long, default_value_t = 1000)]
            seeds: u64,
            /// The first seed.
            #[arg(long, default_value_t = 1)]
            start: u64,
            /// Worker threads (default: the available cores).
            #[arg(long)]
            jobs: Option<usize>,
            /// Plant a bug (see `raft_kv::plants::Plant`; the README lists them with their victims).
            #[arg(long, default_value = "none")]
            plant: Plant,
            /// Succeed only if some seed is failed by the plant's victim checker (proof that
            /// this check catches the planted bug; failures of other checks do not count);
            /// stops at that seed.
            #[arg(long)]
            expect_failure: bool,
            /// With --expect-failure: the checker that must fire instead of the plant's own
            /// victim (a property name prefix such as `linearizability`; shows that a failure
            /// of another check does not count).
            #[arg(long)]
            victim: Option<String>,
            /// Stop at the first failure.
            #[arg(long)]
            fail_fast: bool,
            /// Skip the pinned regressions.
            #[arg(long)]
            no_regressions: bool,
            /// Run only the seeds (of the range) whose cluster has this many nodes.
            #[arg(long)]
            cluster_size: Option<usize>,
            /// Tolerate up to this percentage of inconclusive seeds (the linearizability search
            /// ran out of budget) before the sweep exits 3; they are listed either way.
            #[arg(long, default_value_t = 0.0)]
            inconclusive_max_percent: f64,
            /// Run each seed's cluster with no workload, no faults and no membership changes:
            /// the simulator's speed floor (README, Simulation, Speed). Skips the pinned
            /// regressions.
            #[arg(long)]
            idle: bool,
        },
        /// Replay one seed with full tracing logs (RUST_LOG filters, default info).
        Replay {
            /// The seed.
            seed: u64,
            /// The planted bug it ran with.
            #[arg(long, default_value = "none")]
            plant: Plant,
            /// Write the client history to this file as JSON (format: sim/src/history_file.rs,
            /// README "Histories out").
            #[arg(long)]
            history_out: Option<PathBuf>,
        },
        /// Check a JSON history file (as written by `replay --history-out`) for
        /// linearizability: exit 0 linearizable, 1 not, 3 inconclusive, 2 unreadable.
        Check {
            /// The history file.
            file: PathBuf,
            /// The search budget in model steps.
            #[arg(long, default_value_t = run::CHECK_STEPS_MAX)]
            steps: u64,
        },
        /// Replay the seeds pinned in sim/regressions.txt.
        Regressions,
        /// Run each seed twice and compare the hash of the full trace (history + events).
        Determinism {
            /// How many seeds.
            #[arg(long, default_value_t = 2)]
            seeds: u64,
            /// The first seed.
            #[arg(long, default_value_t = 1)]
            start: u64,
            /// Plant a bug (the check must hold for failing runs too).
            #[arg(long, default_value = "none")]
            plant: Plant,
        },
        /// Print the parameters a seed derives, without running it.
        Params {
            /// The seed.
            seed: u64,
            /// The planted bug.
            #[arg(long, default_value = "none")]
            plant: Plant,
        },
    }

    pub fn main() -> i32 {
        let args = Args::parse();
        match args.command {
            Command::Sweep {
                seeds,
                start,
                jobs,
                plant,
                expect_failure,
                victim,
                fail_fast,
                no_regressions,
                cluster_size,
                inconclusive_max_percent,
                idle,
            } => {
                if !(0.0..=100.0).contains(&inconclusive_max_percent) {
                    eprintln!(
                        "error: --inconclusive-max-percent {inconclusive_max_percent} is not a percentage (0 to 100)"
                    );
                    return 2;
                }
                let jobs = jobs
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
                let promise = plants::promise(plant).map(|promise| plants::Promise {
                    victim: victim.map_or(promise.victim, |v| &*String::leak(v)),
                    ..promise
                });
                if expect_failure && promise.is_none() {
                    eprintln!("error: --expect-failure needs a planted bug (--plant NAME)");
                    return 2;
                }
                if expect_failure && idle {
                    eprintln!("error: --idle runs no workload, so no planted bug can show");
                    return 2;
                }
                let mut status = 0;
                if !no_regressions && plant == Plant::None && !expect_failure && !idle {
                    status = replay_regressions(jobs);
                    if status != 0 && fail_fast {
                        return status;
                    }
                }
                let options = SweepOptions {
                    seeds: (start..start.saturating_add(seeds))
                        .filter(|&seed| {
                            cluster_size.is_none_or(|size| {
                                Scenario::derive(seed, plant).nodes_count == size
                            })
                        })
                        .collect(),
                    plant,
                    jobs,
                    stop_at_first_failure: expect_failure || fail_fast,
                    victim: promise.filter(|_| expect_failure).map(|p| p.victim),
                    brief_failures: false,
                    idle,
                };
                raft_kv_sim::outln!(
                    "sweep: {} seeds of {start}..{} plant {plant}, {jobs} jobs{}",
                    options.seeds.len(),
                    start.saturating_add(seeds),
                    if expect_failure {
                        ", expecting a failure"
                    } else if idle {
                        ", idle (no workload, no faults)"
                    } else {
                        ""
                    }
                );
                let summary = sweep::sweep(&options);
                print_summary(&summary, inconclusive_max_percent);
                if let Some(promise) = promise.filter(|_| expect_failure) {
                    let victim = promise.victim;
                    let (by_victim, by_others): (Vec<_>, Vec<_>) = summary
                        .failed
                        .iter()
                        .partition(|r| plants::caught_by(victim, &r.failures));
                    for other in &by_others {
                        let properties: Vec<&str> =
                            other.failures.iter().map(|f| f.property.as_str()).collect();
                        raft_kv_sim::outln!(
                            "seed {} failed by another check ({}), not the victim {victim:?}",
                            other.scenario.seed,
                            properties.join("; ")
                        );
                    }
                    match by_victim.iter().min_by_key(|r| r.scenario.seed) {
                        Some(found) => {
                            let property = found
                                .failures
                                .iter()
                                .find(|f| plants::is_victim(victim, f))
                                .map_or("?", |f| f.property.as_str());
                            raft_kv_sim::outln!(
                                "expected failure found: plant {plant} caught by its victim {victim:?}: \
                                 seed {} broke {property} ({} seeds run; promised within {})",
                                found.scenario.seed,
                                summary.seeds_run,
                                promise
                                    .seeds_max
                                    .map_or_else(|| "no bound".to_string(), |s| s.to_string())
                            );
                            status
                        }
                        None => {
                            raft_kv_sim::outln!(
                                "EXPECTED plant {plant} to be caught by {victim:?}, but no seed of {} was \
                                 ({} failed by other checks)",
                                summary.seeds_run,
                                by_others.len()
                            );
                            1
                        }
                    }
                } else {
                    let verdict = report::sweep_verdict(
                        summary.seeds_run,
                        summary.failed.len(),
                        summary.inconclusive.len(),
                        inconclusive_max_percent,
                    );
                    if verdict == Verdict::Failed {
                        let seeds: Vec<String> = summary
                            .failed
                            .iter()
                            .map(|r| r.scenario.seed.to_string())
                            .collect();
                        raft_kv_sim::outln!("FAILED seeds: {}", seeds.join(" "));
                    }
                    raft_kv_sim::outln!("verdict: {verdict}");
                    match verdict {
                        Verdict::Passed => status,
                        // A failed pinned regression (1) outranks inconclusive seeds (3).
                        Verdict::Inconclusive if status != 0 => status,
                        Verdict::Inconclusive | Verdict::Failed => verdict.exit_code(),
                    }
                }
            }
            Command::Replay {
                seed,
                plant,
                history_out,
            } => replay(seed, plant, history_out.as_deref()),
            Command::Check { file, steps } => check_file(&file, steps),
            Command::Regressions => {
                let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
                replay_regressions(jobs)
            }
            Command::Determinism {
                seeds,
                start,
                plant,
            } => determinism(start, seeds, plant),
            Command::Params { seed, plant } => {
                let text = Scenario::derive(seed, plant).to_string();
                raft_kv_sim::outln!("{}", text.trim_end_matches('\n'));
                0
            }
        }
    }

    fn print_summary(summary: &SweepSummary, inconclusive_max_percent: f64) {
        let seeds_run = summary.seeds_run.max(1) as f64;
        let coverage = summary.coverage.to_string();
        raft_kv_sim::outln!("{}", coverage.trim_end_matches('\n'));
        raft_kv_sim::outln!(
            "result: {} seeds, {} failed, {} inconclusive (checker budget){}",
            summary.seeds_run,
            summary.failed.len(),
            summary.inconclusive.len(),
            if summary.inconclusive.is_empty() {
                String::new()
            } else {
                format!(" {:?}", summary.inconclusive)
            }
        );
        if !summary.inconclusive.is_empty() {
            raft_kv_sim::outln!(
                "inconclusive: {} of {} seeds ({:.2}%), {} {inconclusive_max_percent}% allowed (--inconclusive-max-percent)",
                summary.inconclusive.len(),
                summary.seeds_run,
                summary.inconclusive.len() as f64 * 100.0 / seeds_run,
                if summary.inconclusive.len() as f64 * 100.0 / seeds_run > inconclusive_max_percent {
                    "MORE than the"
                } else {
                    "within the"
                },
            );
        }
        raft_kv_sim::outln!(
            "speed: {:.2} seeds/s over {:.1} s wall; {:.0}x virtual/wall per core; {:.1} virtual s and {:.0} client ops per seed",
            summary.seeds_per_second(),
            summary.wall.as_secs_f64(),
            summary.virtual_to_wall_per_core(),
            summary.virtual_ms_total as f64 / seeds_run / 1000.0,
            summary.ops_total as f64 / seeds_run,
        );
        if let (Some(end), Some(max)) = (summary.rss_kb_end, summary.rss_kb_max) {
            raft_kv_sim::outln!(
                "memory: rss {} MB at the end, {} MB at most",
                end / 1024,
                max / 1024
            );
        }
    }

    fn replay(seed: u64, plant: Plant, history_out: Option<&std::path::Path>) -> i32 {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
        raft_kv_sim::outln!("replaying {}", report::replay_command(seed, plant));
        let params = Scenario::derive(seed, plant).to_string();
        raft_kv_sim::outln!("{}", params.trim_end_matches('\n'));
        let result = sweep::run_seed(seed, plant, true);
        let timeline = if !result.failed() {
            None
        } else {
            match report::write_timeline(&result, &report::failures_dir()) {
                Ok(path) => Some(path),
                Err(error) => {
                    eprintln!("cannot write the timeline: {error}");
                    None
                }
            }
        };
        raft_kv_sim::outln!("{}", report::render(&result, timeline.as_deref()));
        if let Some(path) = history_out {
            match history_file::write(path, &result.history, Some(seed)) {
                Ok(()) => raft_kv_sim::outln!(
                    "history: {} operations written to {}",
                    result.history.len(),
                    path.display()
                ),
                Err(error) => {
                    eprintln!("error: {error}");
                    return 2;
                }
            }
        }
        result.verdict().exit_code()
    }

    /// Checks a history file with our own checker.
    fn check_file(path: &std::path::Path, steps: u64) -> i32 {
        let history = match history_file::read(path) {
            Ok(history) => history,
            Err(error) => {
                eprintln!("error: {error}");
                return 2;
            }
        };
        let (result, steps_used) =
            linearizability::check_counting_steps(&history, Budget::steps(steps));
        let verdict = match result {
            CheckResult::Ok => {
                raft_kv_sim::outln!(
                    "{}: {} operations, linearizable ({steps_used} model steps)",
                    path.display(),
                    history.len()
                );
                Verdict::Passed
            }
            CheckResult::Unknown => {
                raft_kv_sim::outln!(
                    "{}: {} operations, INCONCLUSIVE (the search ran out of its {steps} steps)",
                    path.display(),
                    history.len()
                );
                Verdict::Inconclusive
            }
            CheckResult::Violation(violation) => {
                raft_kv_sim::outln!(
                    "{}: {} operations, NOT linearizable: {}",
                    path.display(),
                    history.len(),
                    violation.explanation
                );
                Verdict::Failed
            }
        };
        verdict.exit_code()
    }

    /// Replays every pinned seed; 0 when each behaves as pinned (planted ones fail, others pass).
    fn replay_regressions(jobs: usize) -> i32 {
        let path = regressions::default_path();
        let pinned = match regressions::load(&path) {
            Ok(pinned) => pinned,
            Err(error) => {
                eprintln!("error: {error}");
                return 2;
            }
        };
        raft_kv_sim::outln!(
            "regressions: {} pinned seeds from {}",
            pinned.len(),
            path.display()
        );
        let mut status = 0;
        for plant in Plant::ALL {
            let group: Vec<&Regression> = pinned.iter().filter(|r| r.plant == plant).collect();
            if group.is_empty() {
                continue;
            }
            let options = SweepOptions {
                seeds: group.iter().map(|r| r.seed).collect(),
                plant,
                jobs,
                stop_at_first_failure: false,
                victim: None,
                // A planted seed is expected to fail: its report would only be noise.
                brief_failures: plant != Plant::None,
                idle: false,
            };
            let summary = sweep::sweep(&options);
            for regression in group {
                let failures = summary
                    .failed
                    .iter()
                    .find(|r| r.scenario.seed == regression.seed)
                    .map(|r| r.failures.as_slice());
                let failed = failures.is_some();
                let inconclusive = summary.inconclusive.contains(&regression.seed);
                // An inconclusive seed proves nothing either way; a planted seed must fail by its
                // victim checker, not by just any check.
                let ok = !inconclusive
                    && match plants::promise(plant) {
                        None => !failed,
                        Some(promise) => {
                            failures.is_some_and(|f| plants::caught_by(promise.victim, f))
                        }
                    };
                raft_kv_sim::outln!(
                    "  {} {:>8} --plant {:<12} {}  # {}",
                    if ok { "ok  " } else { "BAD " },
                    regression.seed,
                    plant.name(),
                    if failed {
                        "failed"
                    } else if inconclusive {
                        "inconclusive"
                    } else {
                        "passed"
                    },
                    regression.note
                );
                if !ok {
                    status = 1;
                }
            }
        }
        status
    }

    fn determinism(start: u64, seeds: u64, plant: Plant) -> i32 {
        let mut status = 0;
        for seed in start..start.saturating_add(seeds) {
            let first = sweep::run_seed(seed, plant, false);
            let second = sweep::run_seed(seed, plant, false);
            let same = first.trace_hash == second.trace_hash
                && first.trace_lines == second.trace_lines
                && first.history == second.history
                && first.failures == second.failures
                && first.coverage == second.coverage;
            raft_kv_sim::outln!(
                "seed {seed}: trace {:016x} ({} lines, {} ops) vs {:016x} ({} lines, {} ops): {}",
                first.trace_hash,
                first.trace_lines,
                first.history.len(),
                second.trace_hash,
                second.trace_lines,
                second.history.len(),
                if same { "identical" } else { "DIFFERENT" }
            );
            if first.trace_lines == 0 {
                raft_kv_sim::outln!("seed {seed}: the trace is empty, nothing was simulated");
                status = 1;
            }
            if !same {
                status = 1;
            }
        }
        status
    }
}
