//! The `herald` command: parses the command line, runs the command (one file
//! each under `cmd/`) and prints its failure, if any, in one place.

use std::process::ExitCode;

use clap::Parser;

mod cmd;

/// mimalloc: the per-event path allocates small, short-lived strings and
/// maps; glibc's malloc and free cost about a quarter of its instructions
/// (BENCHMARKS.md). [`herald::allocator`] asks it for plain blocks where it can.
#[global_allocator]
static ALLOCATOR: herald::allocator::Allocator = herald::allocator::Allocator;

fn main() -> ExitCode {
    match cmd::dispatch(cmd::Args::parse()) {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}
