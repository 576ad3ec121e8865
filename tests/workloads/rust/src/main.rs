//! `thread-workload`: a multi-threaded program that records what each of
//! its threads did and writes it as ground truth (`tracer.truth/v1`) for the
//! tracer's tests.
//!
//! Usage: `thread-workload [SCENARIO]` (default `mixed`).
//! Environment:
//! - `TRACER_TRUTH=PATH`: write the truth file there (else nothing is written).
//! - `TRACER_GATE=1`: print `ready <pid>` and wait for a line on stdin before
//!   creating any thread.

mod churn;
mod idle;
mod mixed;
mod rounds;
mod spin;
mod tokio_runtime;
mod tracked;
mod truth;

use std::{
    env,
    io::{self, BufRead, Write},
    path::PathBuf,
    process::ExitCode,
};

use crate::{
    tracked::Tracked,
    truth::{Counters, TRUTH_ENV},
};

const GATE_ENV: &str = "TRACER_GATE";

/// A scenario runs on the main thread and adopts the records of every thread
/// it creates.
type Scenario = fn(&mut Tracked);

const SCENARIOS: &[(&str, Scenario)] = &[
    ("mixed", mixed::run),
    ("churn", churn::run),
    ("idle", idle::run),
    ("rounds", rounds::run),
    ("spin", spin::run),
    ("tokio", tokio_runtime::run),
];

fn usage() -> String {
    let names: Vec<_> = SCENARIOS.iter().map(|(name, _)| *name).collect();
    format!(
        "usage: thread-workload [SCENARIO]\n\
         scenarios: {} (default: mixed)\n\
         env: {TRUTH_ENV}=PATH writes the ground truth, {GATE_ENV}=1 waits for a line on stdin",
        names.join(", ")
    )
}

/// Announces the pid and blocks until a line (or EOF) arrives on stdin.
fn wait_at_gate() -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "ready {}", std::process::id())?;
    stdout.flush()?;
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line)?;
    Ok(())
}

fn main() -> ExitCode {
    let mut args = env::args().skip(1);
    let scenario = args.next().unwrap_or_else(|| "mixed".to_owned());
    if scenario == "-h" || scenario == "--help" {
        println!("{}", usage());
        return ExitCode::SUCCESS;
    }
    let run = match SCENARIOS.iter().find(|(name, _)| *name == scenario) {
        Some((_, run)) if args.next().is_none() => *run,
        _ => {
            eprintln!("{}", usage());
            return ExitCode::from(2);
        }
    };
    let truth_path = env::var_os(TRUTH_ENV).map(PathBuf::from);

    let mut main_thread = Tracked::main();
    if env::var_os(GATE_ENV).is_some_and(|v| v == "1") {
        if let Err(e) = wait_at_gate() {
            eprintln!("thread-workload: gate: {e}");
            return ExitCode::FAILURE;
        }
        match Counters::of_current_thread() {
            Ok(counters) => main_thread.set_baseline(counters),
            Err(e) => {
                eprintln!("thread-workload: read baseline: {e}");
                return ExitCode::FAILURE;
            }
        }
    }

    run(&mut main_thread);

    let records = match main_thread.finish() {
        Ok(records) => records,
        Err(e) => {
            eprintln!("thread-workload: read own counters: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = truth_path {
        if let Err(e) = truth::write(&path, &scenario, &records) {
            eprintln!("thread-workload: write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
