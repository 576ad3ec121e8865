//! `tracer`: per-thread scheduling, futex and lifecycle tracing with eBPF.

mod capture;
mod check;
mod cli;
mod daemon;
mod error;
mod kernel;
mod naming;
mod probes;
mod python;
mod record;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    cli::run(cli::Cli::parse())
}
