//! The deterministic simulator of raft-kv: the real node code (HTTP API over hyper, Raft RPCs,
//! WAL, driver, core) runs inside madsim, many seeded clusters at a time, with injected faults,
//! and every run is checked for linearizability, Raft safety and liveness after healing.
//!
//! One seed decides everything ([`scenario::Scenario::derive`]); `cargo sim replay <seed>`
//! replays it exactly. The simulation itself only exists in a `--cfg madsim` build
//! (`cargo sim ...`); the plain build holds the seed-derived parameters, the checkers and the
//! report formatting, which are unit-tested without madsim.

/// `println!` for the simulator's reports. `println!` panics when stdout is closed
/// (`raft-kv-sim params 3 | head -3`); this ends the process with a message on stderr and exit
/// code 2 (the simulator's code for "could not run") instead.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::write_stdout_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::write_stdout_line(format_args!($($arg)*))
    };
}

/// Writes one line to stdout (see [`outln!`]); exits the process with code 2 if it cannot.
pub fn write_stdout_line(line: std::fmt::Arguments) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        eprintln!("raft-kv-sim: cannot write to stdout: {e}");
        std::process::exit(2);
    }
}

pub mod coverage;
pub mod history_file;
pub mod lease_check;
pub mod linearizability;
pub mod plants;
pub mod quota_check;
pub mod rate_check;
pub mod recorder;
pub mod regressions;
pub mod report;
pub mod scenario;
#[cfg(madsim)]
pub mod stranger;
pub mod timeline;
pub mod watch_check;

#[cfg(madsim)]
pub mod membership;
#[cfg(madsim)]
pub mod run;
#[cfg(madsim)]
pub mod sweep;
#[cfg(madsim)]
pub mod watch_client;
#[cfg(madsim)]
pub mod workload;

/// Whether this build can simulate (it was compiled with `--cfg madsim`).
pub const IS_SIMULATION_BUILD: bool = cfg!(madsim);
