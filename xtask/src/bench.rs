//! `cargo xtask bench`: measurements that targets are checked against, written to
//! `BENCHMARKS.md`. Each benchmark runs the release binaries on this machine as they are.

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// One section of `BENCHMARKS.md`.
pub struct Section {
    pub title: String,
    pub text: String,
}

/// Another tracer binary (an earlier build) measured in the same run, beside this build.
pub const BASELINE_ENV: &str = "TRACER_BENCH_BASELINE";
/// What the tables call that build.
pub const BASELINE_LABEL_ENV: &str = "TRACER_BENCH_BASELINE_LABEL";

/// The baseline build [`BASELINE_ENV`] names, if any: its label (by default `baseline`) and
/// binary.
pub fn baseline() -> Option<(String, PathBuf)> {
    let binary = PathBuf::from(std::env::var_os(BASELINE_ENV)?);
    let label = std::env::var(BASELINE_LABEL_ENV).unwrap_or_else(|_| "baseline".to_owned());
    Some((label, binary))
}

/// The heading from which `BENCHMARKS.md` is a record of earlier runs, which a new run keeps.
const HISTORY: &str = "## Changes measured";

/// The parts of the benchmarks `cargo xtask bench --only` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// One scrape at 10 000 threads, with a real Prometheus.
    Scrape,
    /// What tracing costs the traced, record-mode loss, the daemon's own cost.
    Overhead,
    /// The exposition writers side by side: the daemon's, `prometheus`, `prometheus-client`.
    Exposition,
    /// The daemon's CPU on a host of many CPython services, quiet and starting threads.
    Python,
}

/// Runs the benchmarks (`only` one part of them) and writes `BENCHMARKS.md`; the sections of
/// parts not run stay as the file had them.
pub fn run(root: &Path, only: Option<Part>) -> Result<()> {
    let mut sections = Vec::new();
    if only.is_none_or(|p| p == Part::Scrape) {
        sections.push(super::scrape::run(root)?);
    }
    if only.is_none_or(|p| p == Part::Exposition) {
        sections.push(super::exposition::run(root)?);
    }
    if only.is_none_or(|p| p == Part::Python) {
        sections.push(super::python_services::run(root)?);
    }
    if only.is_none_or(|p| p == Part::Overhead) {
        sections.extend(super::overhead::run(root)?);
    }
    let path = root.join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let (kept, history) = match old.find(HISTORY) {
        Some(at) => old.split_at(at),
        None => (old.as_str(), ""),
    };
    // The sections of the file, by title, in order: those not run this time stay.
    let mut all: Vec<Section> = if only.is_some() {
        kept.split("\n## ")
            .skip(1)
            .filter_map(|s| {
                let (title, text) = s.split_once('\n')?;
                Some(Section {
                    title: title.trim().to_owned(),
                    text: text.trim().to_owned(),
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    for new in sections {
        match all.iter_mut().find(|s| s.title == new.title) {
            Some(old) => *old = new,
            None => all.push(new),
        }
    }
    let mut doc = String::from(
        "# Benchmarks\n\nWritten by `cargo xtask bench` on the machine it ran on; every figure of a table \
         comes from the same run (`cargo xtask bench --only PART` runs one part and keeps the others' \
         sections).\n\n",
    );
    let _ = writeln!(doc, "Machine: {}.\n", machine());
    for s in all {
        let _ = writeln!(doc, "## {}\n\n{}\n", s.title, s.text.trim_end());
    }
    // The record of earlier runs, kept by hand, stays as it is.
    doc.push_str(history);
    std::fs::write(&path, doc)?;
    eprintln!("xtask: wrote BENCHMARKS.md");
    Ok(())
}

fn machine() -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, m)| m.trim().to_owned())
            })
        })
        .unwrap_or_default();
    format!("Linux {}, {cpus} CPUs ({model})", release.trim())
}

/// A `tracer daemon` on a free port, stopped when dropped.
pub struct Daemon {
    pub child: Child,
    pub addr: String,
}

impl Daemon {
    pub fn start(root: &Path, config: Option<&Path>) -> Result<Self> {
        Self::start_binary(&root.join("target/release/tracer"), config)
    }

    /// Starts the daemon of the tracer binary at `binary`.
    pub fn start_binary(binary: &Path, config: Option<&Path>) -> Result<Self> {
        let mut cmd = Command::new(binary);
        cmd.args(["daemon", "--listen", "127.0.0.1:0"]);
        if let Some(config) = config {
            cmd.arg("--config").arg(config);
        }
        let mut child = cmd.stderr(Stdio::piped()).stdout(Stdio::null()).spawn()?;
        let mut reader = BufReader::new(child.stderr.take().context("stderr")?);
        let addr = loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                bail!("tracer daemon exited before serving");
            }
            if let Some(rest) = line
                .trim()
                .strip_prefix("tracer: serving metrics at http://")
            {
                break rest.trim_end_matches("/metrics").to_owned();
            }
        };
        std::thread::spawn(move || {
            let mut sink = String::new();
            while reader.read_line(&mut sink).unwrap_or(0) > 0 {
                sink.clear();
            }
        });
        Ok(Self { child, addr })
    }

    /// One `/metrics` body.
    pub fn scrape(&self) -> Result<String> {
        let mut stream = TcpStream::connect(&self.addr)?;
        write!(stream, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default())
    }

    /// CPU seconds and resident KiB of the daemon so far.
    pub fn usage(&self) -> (f64, u64) {
        process_usage(self.child.id())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) and resident KiB of process `pid`.
pub fn process_usage(pid: u32) -> (f64, u64) {
    let ticks = 100.0;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let cpu = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0);
    (cpu / ticks, rss)
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
