//! The `raft-kv` binary: run a node (the default), start a local dev cluster, or benchmark one.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
