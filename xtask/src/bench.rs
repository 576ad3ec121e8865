//! `cargo xtask bench`: measurements that targets are checked against, written to
//! `BENCHMARKS.md`. Each benchmark runs the release binaries on this machine as they are.

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// One section of `BENCHMARKS.md`.
pub struct Section {
    pub title: String,
    pub text: String,
}

/// The heading from which `BENCHMARKS.md` is a record of earlier runs, which a new run keeps.
const HISTORY: &str = "## Changes measured";

/// Runs every benchmark and writes `BENCHMARKS.md`.
pub fn run(root: &Path) -> Result<()> {
    let mut sections = vec![scrape_latency(root)?];
    sections.extend(super::overhead::run(root)?);
    let mut doc = String::from(
        "# Benchmarks\n\nWritten by `cargo xtask bench` on the machine it ran on; every figure of a table \
         comes from the same run.\n\n",
    );
    let _ = writeln!(doc, "Machine: {}.\n", machine());
    for s in sections {
        let _ = writeln!(doc, "## {}\n\n{}\n", s.title, s.text.trim_end());
    }
    // The record of earlier runs, kept by hand, stays as it is.
    let path = root.join("BENCHMARKS.md");
    if let Ok(old) = std::fs::read_to_string(&path)
        && let Some(at) = old.find(HISTORY)
    {
        doc.push_str(&old[at..]);
    }
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

/// Scrape latency at one size: a process with `threads` named threads.
struct ScrapeRow {
    threads: usize,
    thread_series: usize,
    time_series: usize,
    bytes: usize,
    median_ms: f64,
    max_ms: f64,
    rss_kib: u64,
}

fn scrape_row(root: &Path, threads: usize) -> Result<ScrapeRow> {
    let dir = std::env::temp_dir().join(format!("tracer-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("tracer.toml");
    std::fs::write(&config, "max_threads_per_process = 20000\n")?;
    let daemon = Daemon::start(root, Some(&config))?;
    let mut workload = Command::new(root.join("target/release/thread-workload"))
        .arg("idle")
        .env("TRACER_IDLE_THREADS", threads.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(workload.stdout.as_mut().context("stdout")?).read_line(&mut line)?;
    let count = |body: &str| {
        body.lines()
            .filter(|l| {
                l.starts_with("tracer_thread_cpu_seconds_total{") && l.contains("thread-workload")
            })
            .count()
    };
    // Every idle thread has run (and so is in the kernel map) once it waits.
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&daemon.scrape()?) < threads && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut times = Vec::new();
    let mut body = String::new();
    for _ in 0..21 {
        let started = Instant::now();
        body = daemon.scrape()?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let (_, rss_kib) = daemon.usage();
    drop(workload.stdin.take());
    let _ = workload.wait();
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
    let max_ms = times.iter().copied().fold(0.0, f64::max);
    Ok(ScrapeRow {
        threads,
        thread_series: count(&body),
        time_series: body.lines().filter(|l| !l.starts_with('#')).count(),
        bytes: body.len(),
        median_ms: median(&mut times),
        max_ms,
        rss_kib,
    })
}

/// `/metrics` latency (target: under 50 ms at 10 000 series).
fn scrape_latency(root: &Path) -> Result<Section> {
    // About 20 time series per thread series (switches, CPU, run-queue wait and a futex
    // histogram): 480 threads give some 10 000 time series; 10 000 threads some 200 000.
    let rows = [480, 10_000]
        .into_iter()
        .map(|threads| scrape_row(root, threads))
        .collect::<Result<Vec<_>>>()?;
    let mut text = String::from(
        "`tracer daemon` with one process of N named threads (`max_threads_per_process = 20000`); \
         21 sequential `GET /metrics` over loopback, each collecting from the kernel map and writing the \
         text. A time series is one sample line; a thread series is one (process, thread) pair, which has \
         about 20 time series.\n\n",
    );
    let _ = writeln!(
        text,
        "| threads | thread series | time series | body | median | max | target | daemon RSS |"
    );
    let _ = writeln!(text, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let _ = writeln!(
            text,
            "| {} | {} | {} | {:.2} MiB | {:.1} ms | {:.1} ms | < 50 ms at 10 000 series | {:.1} MiB |",
            r.threads,
            r.thread_series,
            r.time_series,
            r.bytes as f64 / (1 << 20) as f64,
            r.median_ms,
            r.max_ms,
            r.rss_kib as f64 / 1024.0
        );
    }
    Ok(Section {
        title: "Scrape latency".into(),
        text,
    })
}
