//! Command-line interface: `tracer record`, `tracer check`.

use std::{ffi::OsString, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{check, daemon, error::Error, record};

/// Per-thread scheduling, futex and lifecycle tracing for Linux processes, with eBPF.
///
/// Shows, per thread and by the names threads were given, how often each is switched out
/// voluntarily (blocked) or involuntarily (preempted), how long it runs, waits for a CPU,
/// and waits on futexes (locks, condition variables).
#[derive(Debug, Parser)]
#[command(name = "tracer", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach system-wide and serve Prometheus metrics at http://ADDR/metrics, in the
    /// foreground (for systemd, `Type=notify`). SIGHUP reloads the configuration.
    Daemon(DaemonArgs),
    /// Trace one process (all its threads, present and future) until it exits, the duration
    /// passes, or Ctrl-C; print a per-thread table.
    Record(RecordArgs),
    /// Say whether this machine can run tracer and, if not, exactly what is missing.
    Check,
}

/// `tracer daemon`.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Address to serve metrics on [default: 127.0.0.1:9464].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,

    /// TOML configuration file; flags override what it says.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the effective configuration (file, then flags) as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// `tracer record --pid PID` or `tracer record -- CMD ARGS...`.
#[derive(Debug, Args)]
#[command(arg_required_else_help = true)]
pub struct RecordArgs {
    /// The running process to trace.
    #[arg(
        long,
        value_name = "PID",
        conflicts_with = "command",
        required_unless_present = "command"
    )]
    pub pid: Option<u32>,

    /// Stop after this many seconds (fractions allowed).
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub duration: Option<Duration>,

    /// Also write the capture to FILE: `.json` summary, `.jsonl` one event per line.
    /// May be given more than once, one file per format.
    #[arg(long, short, value_name = "FILE")]
    pub output: Vec<PathBuf>,

    /// The command to start, once every probe is attached, and trace until it exits.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if secs.is_finite() && secs > 0.0 {
        Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
    } else {
        Err(format!(
            "the duration must be above zero seconds, not {text}"
        ))
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Daemon(args) => report(daemon::run(daemon::Args {
            config: args.config,
            overrides: daemon::config::Overrides {
                listen: args.listen,
            },
            print_config: args.print_config,
        })),
        Command::Record(args) => {
            let target = match args.pid {
                Some(pid) => record::Target::Pid(pid),
                None => record::Target::Command(args.command),
            };
            let request = record::Request {
                target,
                duration: args.duration,
                outputs: args.output,
            };
            report(record::run(request).map(|_| ()))
        }
        Command::Check => {
            let checks = check::run();
            for c in &checks {
                println!("{c}");
            }
            if checks
                .iter()
                .any(|c| matches!(c.outcome, check::Outcome::Fail(..)))
            {
                println!("tracer cannot run here: fix the FAIL lines above");
                ExitCode::FAILURE
            } else {
                println!("tracer can run here");
                ExitCode::SUCCESS
            }
        }
    }
}

/// Prints an error the way every command does and turns it into the exit code.
pub fn report(result: Result<(), Error>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tracer: error: {}", crate::probes::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn seconds_must_be_positive() {
        assert_eq!(parse_seconds("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-3").is_err());
        assert!(parse_seconds("soon").is_err());
        assert!(parse_seconds("inf").is_err());
    }

    #[test]
    fn pid_and_command_exclude_each_other() {
        let both = Cli::try_parse_from(["tracer", "record", "--pid", "1", "--", "true"]);
        assert!(both.is_err());
        let neither = Cli::try_parse_from(["tracer", "record", "--duration", "1"]);
        assert!(neither.is_err());
        let cmd =
            Cli::try_parse_from(["tracer", "record", "-o", "x.json", "--", "sleep", "1"]).unwrap();
        let Command::Record(args) = cmd.command else {
            panic!("not record")
        };
        assert_eq!(args.command, ["sleep", "1"]);
    }
}
