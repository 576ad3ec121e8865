//! Shared by the end-to-end tests: running tracer and the bundled workloads, and holding a
//! capture against the workload's own ground truth.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of this module"
)]

pub mod compare;
pub mod interpreters;
pub mod prom;
pub mod services;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

/// Whether eBPF tests can run here. Outside CI they are skipped with the reason printed;
/// under `CI=true` a missing capability fails the test.
pub fn can_trace(test: &str) -> bool {
    // SAFETY: no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let reason = if !root {
        Some("not running as root".to_owned())
    } else if !Path::new("/sys/kernel/tracing/events").is_dir()
        && !Path::new("/sys/kernel/debug/tracing/events").is_dir()
        && Command::new("mount")
            .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
    {
        Some("tracefs is not mounted and cannot be".to_owned())
    } else {
        None
    };
    match reason {
        None => true,
        Some(reason) if std::env::var_os("CI").is_some() => {
            panic!("{test}: eBPF tests must run under CI, but {reason}")
        }
        Some(reason) => {
            eprintln!("skipped {test}: {reason} (eBPF tests need root)");
            false
        }
    }
}

pub fn tracer() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tracer"))
}

/// The bundled Rust workload: `TRACER_WORKLOAD`, else the one `cargo build` left in target/.
pub fn rust_workload() -> PathBuf {
    if let Some(path) = std::env::var_os("TRACER_WORKLOAD") {
        return PathBuf::from(path);
    }
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join("thread-workload"))
        .find(|p| p.exists())
        .expect("build the workload first: cargo build -p thread-workload (cargo xtask test does)")
}

/// Debian's Python 3.11, which the Python workloads run on.
pub fn python() -> PathBuf {
    std::env::var_os("TRACER_PYTHON")
        .map_or_else(|| PathBuf::from("/usr/bin/python3"), PathBuf::from)
}

pub fn python_workload(script: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/workloads/python")
        .join(script)
}

/// A scratch directory for one test's files.
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("tracer-test-")
        .tempdir()
        .expect("temp dir")
}

pub fn read_json(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("parsing {}: {e}\n{text}", path.display()))
}

/// Output of a finished command, panicking with its stderr when it failed.
pub fn expect_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `tracer record --output OUT... -- CMD...` with `TRACER_TRUTH=TRUTH` for the workload.
pub fn record_command(outputs: &[&Path], truth: &Path, command: &[&Path], args: &[&str]) -> Output {
    let mut tracer = Command::new(tracer());
    tracer.arg("record");
    for out in outputs {
        tracer.arg("--output").arg(out);
    }
    let output = tracer
        .arg("--")
        .args(command)
        .args(args)
        .env("TRACER_TRUTH", truth)
        .output()
        .expect("running tracer");
    expect_success("tracer record", &output);
    output
}

/// `record -- CMD ARGS` of a workload into a scratch directory: the JSON summary (also as
/// the text written) and the workload's truth.
pub fn record_summary(command: &[&Path], args: &[&str]) -> (Value, Value, String) {
    let dir = scratch();
    let (out, truth) = (
        dir.path().join("capture.json"),
        dir.path().join("truth.json"),
    );
    record_command(&[&out], &truth, command, args);
    let text = std::fs::read_to_string(&out).expect("reading the summary");
    let summary = serde_json::from_str(&text).expect("parsing the summary");
    (summary, read_json(&truth), text)
}

/// A workload started with the start gate, waiting for a line on stdin.
pub struct Gated {
    pub child: Child,
    pub pid: u32,
}

impl Gated {
    pub fn start(command: &[&Path], args: &[&str], truth: &Path) -> Self {
        let mut child = Command::new(command[0])
            .args(&command[1..])
            .args(args)
            .env("TRACER_GATE", "1")
            .env("TRACER_TRUTH", truth)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting workload");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let pid = line
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("workload said {line:?}, not `ready PID`"));
        Self { child, pid }
    }

    pub fn release(&mut self) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }
}

/// Starts `tracer record ARGS` and waits until it says it is recording.
pub fn start_recording(args: &[&str]) -> Child {
    let mut child = Command::new(tracer())
        .arg("record")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running tracer");
    let stderr = child.stderr.take().unwrap();
    let mut reader = BufReader::new(stderr);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).unwrap();
        seen.push_str(&line);
        if line.contains("recording pid") {
            break;
        }
        assert!(
            n > 0 && Instant::now() < deadline,
            "tracer never started recording:\n{seen}"
        );
    }
    // Keep draining stderr so tracer never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut rest = String::new();
        while reader.read_line(&mut rest).unwrap_or(0) > 0 {}
    });
    child
}

/// Waits for a child, killing it (and failing) after `limit`.
pub fn wait_with_limit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {} did not finish within {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `tracer daemon` on a free port, stopped with SIGTERM when dropped.
/// How often the daemon tests scrape while they wait for the daemon to catch up.
pub const POLL: Duration = Duration::from_millis(200);
/// The longest they wait: a bound on a daemon that never gets there, not on its speed.
pub const PATIENCE: Duration = Duration::from_secs(120);

pub struct Daemon {
    pub child: Child,
    pub addr: String,
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Daemon {
    /// Starts `tracer daemon --listen 127.0.0.1:0 ARGS` and waits until it serves.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut child = Command::new(tracer())
            .args(["daemon", "--listen", "127.0.0.1:0"])
            .args(args)
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running tracer daemon");
        let mut reader = BufReader::new(child.stderr.take().unwrap());
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = String::new();
        let addr = loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).unwrap();
            seen.push_str(&line);
            if let Some(rest) = line
                .trim()
                .strip_prefix("tracer: serving metrics at http://")
            {
                break rest.trim_end_matches("/metrics").to_owned();
            }
            assert!(
                n > 0 && Instant::now() < deadline,
                "the daemon did not start:\n{seen}"
            );
        };
        let log = std::sync::Arc::new(std::sync::Mutex::new(seen));
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        Self { child, addr, log }
    }

    /// Parsed samples of one scrape.
    pub fn samples(&self) -> Vec<prom::Sample> {
        prom::parse(&prom::scrape(&self.addr))
    }

    /// The text of the first scrape in which process `process` has at least `exits` thread
    /// exits counted: by then their threads' last counts are in their series (the daemon
    /// moves them there when it counts the exit). After [`PATIENCE`], the last scrape, for
    /// the test's assertions to report.
    pub fn text_after_exits(&self, process: &str, exits: usize) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            std::thread::sleep(POLL);
            let text = prom::scrape(&self.addr);
            let exited = prom::value(
                &prom::parse(&text),
                "tracer_threads_exited_total",
                &[("process", process)],
            );
            if exited >= exits as f64 || Instant::now() > deadline {
                return text;
            }
        }
    }

    /// Resident memory of the daemon, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| {
                l.strip_prefix("VmRSS:")?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap()
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling a child we started.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Stops the daemon with SIGTERM and returns its exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        wait_with_limit(&mut self.child, Duration::from_secs(10))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal(libc::SIGTERM);
            let _ = wait_with_limit(&mut self.child, Duration::from_secs(10));
        }
    }
}

/// The Rust workload copied into `dir` under a name no other process has, so that metrics
/// labelled by process name count this test's run alone. Returns the path and the name.
pub fn private_workload(dir: &Path) -> (PathBuf, String) {
    let name = format!("wl{}", std::process::id() % 1_000_000);
    let path = dir.join(&name);
    std::fs::copy(rust_workload(), &path).expect("copying the workload");
    (path, name)
}
