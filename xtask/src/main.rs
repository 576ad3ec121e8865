//! `cargo xtask`: set up the machine, build, run and test tracer.
//!
//! Every command first installs what is missing (Debian's eBPF-capable Rust toolchain and
//! `bpf-linker`) and does nothing more when it is present.

mod bench;
mod exposition;
mod install;
mod mounts;
mod overhead;
mod pydeps;
mod python_services;
mod rootfs;
mod scrape;
mod setup;

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

/// Build, run, test and install tracer.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent).
    Setup,
    /// Build the release binary `target/release/tracer`, eBPF object embedded.
    Build,
    /// Build, then run tracer as root with ARGS (default: `daemon`, the main job).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, check formatting and lints, and run every test (eBPF tests included).
    Test,
    /// Make the Debian sid root file system the tests run sid's Pythons in (`target/sid-root`),
    /// unless it is there.
    SidRoot,
    /// Build, then install the binary to /usr/local/bin/tracer, the systemd unit to
    /// /etc/systemd/system/ and the default configuration to /etc/tracer/tracer.toml (an
    /// existing configuration is kept).
    Install {
        /// Install under DIR instead of / (staging, packaging).
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
    },
    /// Build, run the benchmarks and write BENCHMARKS.md.
    Bench {
        /// Run only this part; the other sections of BENCHMARKS.md stay as they are.
        #[arg(long, value_enum)]
        only: Option<bench::Part>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    let root = workspace_root()?;
    env::set_current_dir(&root)?;
    match task {
        Task::Setup => setup::ensure().and_then(|()| pydeps::ensure(&root)),
        Task::Build => {
            setup::ensure()?;
            build(&root)
        }
        Task::Run { args } => {
            setup::ensure()?;
            build(&root)?;
            let args = if args.is_empty() {
                vec!["daemon".into()]
            } else {
                args
            };
            let err = exec(root.join("target/release/tracer"), &args);
            Err(err)
        }
        Task::Test => {
            setup::ensure()?;
            pydeps::ensure(&root)?;
            let tested = test(&root);
            // Whether the tests passed or not, none may leave a mount behind.
            let mounts = mounts::check(&root);
            match (tested, mounts) {
                (Err(e), Err(m)) => Err(e.context(format!("{m:#}"))),
                (tested, mounts) => tested.and(mounts),
            }
        }
        Task::SidRoot => {
            let dir = rootfs::ensure(&root)?;
            eprintln!("xtask: the sid root is {}", dir.display());
            mounts::check(&root)
        }
        Task::Install { root: dest } => {
            setup::ensure()?;
            build(&root)?;
            install(&root, &dest)
        }
        Task::Bench { only } => {
            setup::ensure()?;
            // The tools the overhead part compares tracer with, and `perf bench` itself.
            setup::install_missing(&["linux-perf", "bpftrace"])?;
            build(&root)?;
            bench::run(&root, only)
        }
    }
}

fn workspace_root() -> Result<PathBuf> {
    let manifest = env::var_os("CARGO_MANIFEST_DIR").context("run me as `cargo xtask`")?;
    Ok(Path::new(&manifest)
        .parent()
        .context("xtask lives in the workspace")?
        .to_path_buf())
}

/// Runs `cargo ARGS` with the host toolchain, failing on a non-zero exit.
fn cargo(args: &[&str]) -> Result<()> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run_command(Command::new(cargo).args(args))
}

fn run_command(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn build(_root: &Path) -> Result<()> {
    cargo(&[
        "build",
        "--release",
        "--package",
        "tracer",
        "--package",
        "thread-workload",
    ])
}

fn test(root: &Path) -> Result<()> {
    setup::mount_tracefs();
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "clippy",
        "--all-targets",
        "--package",
        "tracer",
        "--package",
        "tracer-common",
        "--package",
        "thread-workload",
        "--package",
        "xtask",
        "--",
        "-D",
        "warnings",
    ])?;
    build(root)?;
    let workload = root.join("target/release/thread-workload");
    // Without the root the tests on its interpreters fail under CI and are skipped elsewhere,
    // each saying why.
    let sid_root = rootfs::ensure(root)
        .inspect_err(|e| eprintln!("xtask: warning: no Debian sid root: {e:#}"))
        .ok();
    // Captures measure scheduling, so they run one at a time on this small machine.
    run_command(
        Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "test",
                "--release",
                "--no-fail-fast",
                "--workspace",
                "--exclude",
                "tracer-ebpf",
            ])
            .args(["--", "--test-threads=1"])
            .env("TRACER_WORKLOAD", &workload)
            .env("TRACER_PYTHON", "/usr/bin/python3")
            .env("TRACER_PYDEPS", pydeps::dir(root))
            .envs(sid_root.map(|dir| ("TRACER_SID_ROOT", dir))),
    )
}

fn install(root: &Path, dest: &Path) -> Result<()> {
    let done = install::install(root, &root.join("target/release/tracer"), dest)?;
    for path in &done.written {
        eprintln!("xtask: installed {}", path.display());
    }
    for path in &done.kept {
        eprintln!("xtask: kept the existing {}", path.display());
    }
    if dest == Path::new("/") && Path::new("/run/systemd/system").is_dir() {
        run_command(Command::new("systemctl").arg("daemon-reload"))?;
        eprintln!("xtask: start it with `systemctl enable --now tracer`");
    }
    Ok(())
}

/// Replaces this process with `program ARGS` (so signals reach it directly).
fn exec(program: PathBuf, args: &[String]) -> anyhow::Error {
    use std::os::unix::process::CommandExt as _;
    eprintln!("xtask: exec {} {}", program.display(), args.join(" "));
    let err = Command::new(&program).args(args).exec();
    anyhow::Error::new(err).context(format!("starting {}", program.display()))
}
