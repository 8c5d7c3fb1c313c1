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
    use raft_kv_sim::regressions::{self, Regression};
    use raft_kv_sim::report;
    use raft_kv_sim::scenario::{Plant, Scenario};
    use raft_kv_sim::sweep::{self, SweepOptions, SweepSummary};

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
            /// Plant a bug (none, lying-fsync, forget-vote).
            #[arg(long, default_value = "none")]
            plant: Plant,
            /// Succeed only if some seed fails (proof that the checks catch the planted bug);
            /// stops at the first failure.
            #[arg(long)]
            expect_failure: bool,
            /// Stop at the first failure.
            #[arg(long)]
            fail_fast: bool,
            /// Skip the pinned regressions.
            #[arg(long)]
            no_regressions: bool,
            /// Run only the seeds (of the range) whose cluster has this many nodes.
            #[arg(long)]
            cluster_size: Option<usize>,
        },
        /// Replay one seed with full tracing logs (RUST_LOG filters, default info).
        Replay {
            /// The seed.
            seed: u64,
            /// The planted bug it ran with.
            #[arg(long, default_value = "none")]
            plant: Plant,
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
                fail_fast,
                no_regressions,
                cluster_size,
            } => {
                let jobs = jobs
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
                let mut status = 0;
                if !no_regressions && plant == Plant::None && !expect_failure {
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
                    brief_failures: false,
                };
                println!(
                    "sweep: {} seeds of {start}..{} plant {plant}, {jobs} jobs{}",
                    options.seeds.len(),
                    start.saturating_add(seeds),
                    if expect_failure {
                        ", expecting a failure"
                    } else {
                        ""
                    }
                );
                let summary = sweep::sweep(&options);
                print_summary(&summary);
                if expect_failure {
                    match summary.failed.first() {
                        Some(found) => {
                            println!(
                                "expected failure found: seed {} broke {} ({} seeds run)",
                                found.scenario.seed,
                                found.failures.first().map_or("?", |f| f.property.as_str()),
                                summary.seeds_run
                            );
                            status
                        }
                        None => {
                            println!(
                                "EXPECTED A FAILURE with plant {plant}, but all {} seeds passed",
                                summary.seeds_run
                            );
                            1
                        }
                    }
                } else if summary.failed.is_empty() {
                    status
                } else {
                    let seeds: Vec<String> = summary
                        .failed
                        .iter()
                        .map(|r| r.scenario.seed.to_string())
                        .collect();
                    println!("FAILED seeds: {}", seeds.join(" "));
                    1
                }
            }
            Command::Replay { seed, plant } => replay(seed, plant),
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
                print!("{}", Scenario::derive(seed, plant));
                0
            }
        }
    }

    fn print_summary(summary: &SweepSummary) {
        let seeds_run = summary.seeds_run.max(1) as f64;
        println!(
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
        println!(
            "speed: {:.2} seeds/s over {:.1} s wall; {:.0}x virtual/wall per core; {:.1} virtual s and {:.0} client ops per seed",
            summary.seeds_per_second(),
            summary.wall.as_secs_f64(),
            summary.virtual_to_wall_per_core(),
            summary.virtual_ms_total as f64 / seeds_run / 1000.0,
            summary.ops_total as f64 / seeds_run,
        );
        println!(
            "snapshots: {} seeds of {} took {} in all; {} kills in {} seeds landed during a snapshot write",
            summary.seeds_with_snapshots,
            summary.seeds_run,
            summary.snapshots_total,
            summary.crashes_in_snapshot.0,
            summary.crashes_in_snapshot.1,
        );
        println!(
            "transfers: {} snapshots installed from a leader, in {} of {} seeds",
            summary.restores_total, summary.seeds_with_restores, summary.seeds_run
        );
        if let (Some(end), Some(max)) = (summary.rss_kb_end, summary.rss_kb_max) {
            println!(
                "memory: rss {} MB at the end, {} MB at most",
                end / 1024,
                max / 1024
            );
        }
    }

    fn replay(seed: u64, plant: Plant) -> i32 {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
        println!("replaying {}", report::replay_command(seed, plant));
        print!("{}", Scenario::derive(seed, plant));
        let result = sweep::run_seed(seed, plant, true);
        let timeline = if result.passed() {
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
        println!("{}", report::render(&result, timeline.as_deref()));
        i32::from(!result.passed())
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
        println!(
            "regressions: {} pinned seeds from {}",
            pinned.len(),
            path.display()
        );
        let mut status = 0;
        for plant in [
            Plant::None,
            Plant::LyingFsync,
            Plant::ForgetVote,
            Plant::SnapshotUnsynced,
        ] {
            let group: Vec<&Regression> = pinned.iter().filter(|r| r.plant == plant).collect();
            if group.is_empty() {
                continue;
            }
            let options = SweepOptions {
                seeds: group.iter().map(|r| r.seed).collect(),
                plant,
                jobs,
                stop_at_first_failure: false,
                // A planted seed is expected to fail: its report would only be noise.
                brief_failures: plant != Plant::None,
            };
            let summary = sweep::sweep(&options);
            for regression in group {
                let failed = summary
                    .failed
                    .iter()
                    .any(|r| r.scenario.seed == regression.seed);
                let ok = failed == regression.expects_failure();
                println!(
                    "  {} {:>8} --plant {:<12} {}  # {}",
                    if ok { "ok  " } else { "BAD " },
                    regression.seed,
                    plant.name(),
                    if failed { "failed" } else { "passed" },
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
                && first.failures == second.failures;
            println!(
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
                println!("seed {seed}: the trace is empty, nothing was simulated");
                status = 1;
            }
            if !same {
                status = 1;
            }
        }
        status
    }
}
