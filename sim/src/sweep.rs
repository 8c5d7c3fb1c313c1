//! Running seeds: one fresh OS thread per seed (so nothing of one seed's runtime leaks into the
//! next), N worker threads at once, a progress line, and a report for every failure.
//!
//! `std::thread` and `std::time` are fine here: this is the harness outside the simulated
//! world, and nothing from it flows into a seed.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, Once};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use crate::coverage::SweepCoverage;
use crate::plants::{self, Victim};
use crate::recorder::{Failure, Shared};
use crate::report::{self, SeedResult, Verdict};
use crate::run;
use crate::scenario::{Plant, Scenario};

/// Stack of a seed's thread (hyper's futures nest deep).
const SEED_STACK_BYTES: usize = 64 << 20;

/// The first panic message of each thread, captured by our panic hook.
static PANICS: Mutex<Vec<(ThreadId, String)>> = Mutex::new(Vec::new());
static HOOK: Once = Once::new();
/// Whether the hook also prints panics (replay).
static PRINT_PANICS: AtomicBool = AtomicBool::new(false);

fn install_panic_hook() {
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let message = match (
                info.payload().downcast_ref::<&str>(),
                info.payload().downcast_ref::<String>(),
            ) {
                (Some(text), _) => (*text).to_string(),
                (_, Some(text)) => text.clone(),
                _ => "(non-text panic payload)".to_string(),
            };
            let location = info
                .location()
                .map_or_else(String::new, |l| format!(" at {}:{}", l.file(), l.line()));
            let text = format!("{message}{location}");
            if PRINT_PANICS.load(Ordering::Relaxed) {
                eprintln!("panic: {text}");
            }
            let mut panics = PANICS.lock().unwrap_or_else(|p| p.into_inner());
            let id = std::thread::current().id();
            if !panics.iter().any(|(thread, _)| *thread == id) {
                panics.push((id, text));
            }
        }));
    });
}

/// Runs one seed on a fresh thread and collects what it left behind. `echo` prints the event
/// stream and panics as they happen (replay).
pub fn run_seed(seed: u64, plant: Plant, echo: bool) -> SeedResult {
    run_scenario_seed(Scenario::derive(seed, plant), echo)
}

/// [`run_seed`] of a scenario already derived (and perhaps changed, as by [`Scenario::idle`]).
pub fn run_scenario_seed(scenario: Scenario, echo: bool) -> SeedResult {
    install_panic_hook();
    PRINT_PANICS.store(echo, Ordering::Relaxed);
    let seed = scenario.seed;
    let shared = Shared::new(echo);
    let started = Instant::now();
    let thread = {
        let scenario = scenario.clone();
        let shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("seed-{seed}"))
            .stack_size(SEED_STACK_BYTES)
            .spawn(move || run::run_scenario(&scenario, &shared))
            .expect("spawn a seed thread")
    };
    let thread_id = thread.thread().id();
    let panicked = thread.join().is_err();
    let wall_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    if panicked {
        let message = {
            let mut panics = PANICS.lock().unwrap_or_else(|p| p.into_inner());
            match panics.iter().position(|(thread, _)| *thread == thread_id) {
                Some(at) => panics.remove(at).1,
                None => "(panic message not captured)".to_string(),
            }
        };
        let property = if message.contains("time limit") {
            "liveness: the run hung past its time limit"
        } else {
            "panic"
        };
        shared.close_pending_as_unknown();
        let mut rec = shared.lock();
        rec.failures.push(Failure {
            property: property.to_string(),
            detail: message,
            ops: Vec::new(),
        });
    }
    let rec = shared.lock();
    let mut coverage = rec.coverage.clone();
    coverage.count_operations(&rec.history);
    SeedResult {
        scenario,
        failures: rec.failures.clone(),
        failures_more: rec.failures_more,
        inconclusive: rec.inconclusive,
        history: rec.history.clone(),
        trace_hash: rec.trace_hash(),
        trace_lines: rec.trace_lines,
        trace_tail: rec.trace_tail.iter().cloned().collect(),
        virtual_ms: rec.virtual_ms,
        wall_ms,
        ops: (rec.ops_definite, rec.ops_unknown, rec.ops_not_applied),
        coverage,
    }
}

/// What a sweep does.
#[derive(Clone, Debug)]
pub struct SweepOptions {
    /// The seeds, in order.
    pub seeds: Vec<u64>,
    /// The planted bug.
    pub plant: Plant,
    /// Worker threads.
    pub jobs: usize,
    /// Stop at the first failure (with `victim`: at the first failure of that checker).
    pub stop_at_first_failure: bool,
    /// The checker a planted bug must break: failures of other checkers do not stop the sweep.
    pub victim: Option<Victim>,
    /// Print a one-line summary instead of the full report of a failed seed.
    pub brief_failures: bool,
    /// Run each seed's cluster without workload or faults ([`Scenario::idle`]).
    pub idle: bool,
}

/// What a sweep found.
#[derive(Clone, Debug, Default)]
pub struct SweepSummary {
    /// Seeds run.
    pub seeds_run: usize,
    /// Failed seeds with their reports.
    pub failed: Vec<SeedResult>,
    /// Seeds that broke no property but whose linearizability search ran out of budget.
    pub inconclusive: Vec<u64>,
    /// What the seeds exercised.
    pub coverage: SweepCoverage,
    /// Wall time of the sweep.
    pub wall: Duration,
    /// Sum of the seeds' virtual milliseconds.
    pub virtual_ms_total: u64,
    /// Sum of the seeds' wall milliseconds (over all threads).
    pub seed_wall_ms_total: u64,
    /// Client operations recorded (definite + unknown).
    pub ops_total: u64,
    /// Resident memory at the end, in kilobytes (Linux).
    pub rss_kb_end: Option<u64>,
    /// Highest resident memory seen during the sweep, in kilobytes.
    pub rss_kb_max: Option<u64>,
}

impl SweepSummary {
    /// Seeds per wall second.
    pub fn seeds_per_second(&self) -> f64 {
        self.seeds_run as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Virtual time simulated per unit of wall time on one core.
    pub fn virtual_to_wall_per_core(&self) -> f64 {
        self.virtual_ms_total as f64 / (self.seed_wall_ms_total.max(1)) as f64
    }
}

/// The process's resident set size in kilobytes (Linux `/proc`), if known.
pub fn rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `options.seeds` on `options.jobs` workers, printing progress to stderr and a report for
/// every failure to stdout (timelines under [`report::failures_dir`]).
pub fn sweep(options: &SweepOptions) -> SweepSummary {
    let started = Instant::now();
    let seeds = Arc::new(options.seeds.clone());
    let next = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (results_tx, results) = mpsc::channel::<SeedResult>();
    let mut workers = Vec::new();
    for _ in 0..options.jobs.max(1) {
        let seeds = seeds.clone();
        let next = next.clone();
        let stop = stop.clone();
        let results_tx = results_tx.clone();
        let plant = options.plant;
        let idle = options.idle;
        workers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(&seed) = seeds.get(index) else { break };
                let scenario = Scenario::derive(seed, plant);
                let scenario = if idle { scenario.idle() } else { scenario };
                if results_tx.send(run_scenario_seed(scenario, false)).is_err() {
                    break;
                }
            }
        }));
    }
    drop(results_tx);

    let tty = std::io::stderr().is_terminal();
    let mut summary = SweepSummary::default();
    let mut last_progress = Instant::now();
    for result in results {
        summary.seeds_run += 1;
        summary.virtual_ms_total += result.virtual_ms;
        summary.seed_wall_ms_total += result.wall_ms;
        summary.ops_total += result.ops.0 + result.ops.1;
        if let Some(rss) = rss_kb() {
            summary.rss_kb_max = Some(summary.rss_kb_max.unwrap_or(0).max(rss));
        }
        summary.coverage.add(result.coverage.clone());
        if result.verdict() == Verdict::Inconclusive {
            summary.inconclusive.push(result.scenario.seed);
            crate::outln!(
                "seed {} INCONCLUSIVE: the linearizability search ran out of budget on {} operations (replay: {})",
                result.scenario.seed,
                result.history.len(),
                report::replay_command(result.scenario.seed, result.scenario.plant)
            );
        }
        if result.failed() {
            let timeline = report::write_timeline(&result, &report::failures_dir());
            if let Err(error) = &timeline {
                eprintln!(
                    "cannot write the timeline of seed {}: {error}",
                    result.scenario.seed
                );
            }
            if options.brief_failures {
                let property = result.failures.first().map_or("?", |f| f.property.as_str());
                crate::outln!("seed {} failed: {property}", result.scenario.seed);
            } else {
                crate::outln!("{}", report::render(&result, timeline.as_deref().ok()));
            }
            let stops = options
                .victim
                .is_none_or(|victim| plants::caught_by(victim, &result.failures));
            summary.failed.push(result);
            if options.stop_at_first_failure && stops {
                stop.store(true, Ordering::Relaxed);
            }
        }
        let every = if tty {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(10)
        };
        if last_progress.elapsed() >= every || summary.seeds_run == seeds.len() {
            last_progress = Instant::now();
            let elapsed = started.elapsed().as_secs_f64().max(1e-9);
            let line = format!(
                "[sweep] {}/{} seeds, {} failed, {} inconclusive, {:.1} seeds/s, {:.0}x virtual/wall per core, rss {} MB",
                summary.seeds_run,
                seeds.len(),
                summary.failed.len(),
                summary.inconclusive.len(),
                summary.seeds_run as f64 / elapsed,
                summary.virtual_ms_total as f64 / summary.seed_wall_ms_total.max(1) as f64,
                rss_kb().map_or_else(|| "?".to_string(), |kb| (kb / 1024).to_string()),
            );
            if tty {
                eprint!("\r{line}   ");
            } else {
                eprintln!("{line}");
            }
        }
    }
    if tty {
        eprintln!();
    }
    for worker in workers {
        let _ = worker.join();
    }
    summary.wall = started.elapsed();
    summary.rss_kb_end = rss_kb();
    summary
}
