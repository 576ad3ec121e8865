//! `tracer record --output X.pftrace` end to end: the trace is decoded with Perfetto's own
//! published protos (the `perfetto` package from PyPI, which `cargo xtask setup` installs in
//! `target/pydeps`) by `tests/perfetto/check_trace.py`, and held against the workload's
//! ground truth and the summary of the same run.

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use support::*;

/// The directory holding Perfetto's Python protos, when installed. Outside CI a missing
/// install skips the test with the reason; under `CI=true` it fails.
fn pydeps(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("TRACER_PYDEPS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pydeps"),
        PathBuf::from,
    );
    if dir
        .join("perfetto/protos/perfetto/trace/perfetto_trace_pb2.py")
        .is_file()
    {
        return Some(dir);
    }
    let reason = format!(
        "Perfetto's Python protos are not installed in {} (`cargo xtask setup` installs them)",
        dir.display()
    );
    assert!(std::env::var_os("CI").is_none(), "{test}: {reason}");
    eprintln!("skipped {test}: {reason}");
    None
}

/// Runs the checker on `trace` with `args`, failing with its report when it finds problems.
fn check(pydeps: &Path, trace: &Path, args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/perfetto/check_trace.py");
    let output = Command::new(python())
        .arg(script)
        .arg(trace)
        .args(args)
        .env("PYTHONPATH", pydeps)
        .output()
        .expect("running check_trace.py");
    let report = String::from_utf8_lossy(&output.stdout);
    println!("{report}");
    assert!(
        output.status.success(),
        "the trace does not hold up ({}):\n{report}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Checks `trace` against the workload's `truth` and tracer's `summary` of it, recorded in
/// `form` (`command` or `pid`).
fn check_against_truth(pydeps: &Path, trace: &Path, truth: &Path, summary: &Path, form: &str) {
    check(
        pydeps,
        trace,
        &[
            "--truth",
            truth.to_str().unwrap(),
            "--summary",
            summary.to_str().unwrap(),
            "--form",
            form,
        ],
    );
}

/// `record -- CMD` of a workload to a trace and a summary, checked against its truth.
fn trace_and_check(test: &str, command: &[&Path], args: &[&str]) {
    if !can_trace(test) {
        return;
    }
    let Some(pydeps) = pydeps(test) else { return };
    let dir = scratch();
    let [trace, summary, truth] =
        ["capture.pftrace", "capture.json", "truth.json"].map(|f| dir.path().join(f));
    record_command(&[&trace, &summary], &truth, command, args);
    check_against_truth(&pydeps, &trace, &truth, &summary, "command");
}

#[test]
fn rust_mixed_workload_trace() {
    trace_and_check("rust_mixed_workload_trace", &[&rust_workload()], &["mixed"]);
}

#[test]
fn python_lock_counter_trace() {
    let script = python_workload("lock_counter.py");
    trace_and_check("python_lock_counter_trace", &[&python(), &script], &[]);
}

#[test]
fn python_thread_pool_trace() {
    let script = python_workload("pool.py");
    trace_and_check("python_thread_pool_trace", &[&python(), &script], &[]);
}

#[test]
fn rust_mixed_workload_trace_by_pid() {
    let test = "rust_mixed_workload_trace_by_pid";
    if !can_trace(test) {
        return;
    }
    let Some(pydeps) = pydeps(test) else { return };
    let dir = scratch();
    let [trace, summary, truth] =
        ["capture.pftrace", "capture.json", "truth.json"].map(|f| dir.path().join(f));
    let mut workload = Gated::start(&[&rust_workload()], &["mixed"], &truth);
    let pid = workload.pid.to_string();
    let mut tracer = start_recording(&[
        "--pid",
        &pid,
        "-o",
        trace.to_str().unwrap(),
        "-o",
        summary.to_str().unwrap(),
    ]);
    workload.release();
    let status = wait_with_limit(&mut tracer, Duration::from_secs(60));
    assert!(status.success(), "tracer record --pid: {status}");
    assert!(workload.child.wait().unwrap().success());
    check_against_truth(&pydeps, &trace, &truth, &summary, "pid");
}

#[test]
fn ctrl_c_leaves_a_decodable_trace() {
    let test = "ctrl_c_leaves_a_decodable_trace";
    if !can_trace(test) {
        return;
    }
    let Some(pydeps) = pydeps(test) else { return };
    let dir = scratch();
    let [trace, truth] = ["capture.pftrace", "truth.json"].map(|f| dir.path().join(f));
    let mut workload = Gated::start(&[&rust_workload()], &["mixed"], &truth);
    let pid = workload.pid.to_string();
    let mut tracer = start_recording(&["--pid", &pid, "-o", trace.to_str().unwrap()]);
    workload.release();
    // Mid-way through the workload's 0.6 s.
    std::thread::sleep(Duration::from_millis(250));
    // SAFETY: signalling a child we started.
    assert_eq!(unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) }, 0);
    let status = wait_with_limit(&mut tracer, Duration::from_secs(10));
    assert!(status.success(), "{status}");
    let _ = workload.child.wait();
    check(&pydeps, &trace, &["--interrupted", &pid]);
}

/// Peak resident memory of `tracer record ARGS -- CMD`, in bytes.
#[allow(
    clippy::zombie_processes,
    reason = "reaped by wait4, which also gives its resource usage"
)]
fn peak_memory_of_recording(args: &[&str], command: &[&str]) -> u64 {
    let child = Command::new(tracer())
        .arg("record")
        .args(args)
        .arg("--")
        .args(command)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("running tracer");
    let mut status = 0;
    // SAFETY: plain data, filled by wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; valid pointers.
    let waited = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(waited, child.id() as i32);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "tracer record failed: {status:#x}"
    );
    usage.ru_maxrss as u64 * 1024
}

/// Lock hand-offs the busy workload makes: four threads pass one token around a ring, each
/// waiting on its own semaphore, so that each pass blocks a thread and wakes the next.
const PASSES: u64 = 80_000;

/// Bytes a switch takes in a trace at the least: its `sched_switch` event with a timestamp,
/// both thread ids, priorities and the state the thread left in.
const MIN_SWITCH_BYTES: u64 = 16;

#[test]
fn a_busy_capture_streams_its_trace() {
    let test = "a_busy_capture_streams_its_trace";
    if !can_trace(test) {
        return;
    }
    let dir = scratch();
    let [trace, summary, unused] =
        ["busy.pftrace", "busy.json", "alone.json"].map(|f| dir.path().join(f));
    // A fixed amount of work, whatever the machine's speed.
    let busy = format!(
        "import threading\n\
         sems = [threading.Semaphore(0) for _ in range(4)]\n\
         def work(i):\n\
         \x20   for _ in range({PASSES} // 4):\n\
         \x20       sems[i].acquire()\n\
         \x20       sems[(i + 1) % 4].release()\n\
         threads = [threading.Thread(target=work, args=(i,), name='baton-%d' % i) for i in range(4)]\n\
         for t in threads: t.start()\n\
         sems[0].release()\n\
         for t in threads: t.join()\n"
    );
    let python = python();
    let command = [python.to_str().unwrap(), "-c", &busy];
    let with_trace = peak_memory_of_recording(
        &[
            "-o",
            trace.to_str().unwrap(),
            "-o",
            summary.to_str().unwrap(),
        ],
        &command,
    );
    let without = peak_memory_of_recording(&["-o", unused.to_str().unwrap()], &command);
    let size = std::fs::metadata(&trace).unwrap().len();
    // The switches the workers made in the traced run, as the kernel counts them.
    let switches: u64 = read_json(&summary)["threads"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"].as_str().unwrap().starts_with("baton-"))
        .map(|t| {
            t["voluntary_switches"].as_u64().unwrap() + t["involuntary_switches"].as_u64().unwrap()
        })
        .sum();
    println!(
        "{switches} switches; trace {:.1} MiB; peak memory {:.1} MiB with it, {:.1} MiB without",
        size as f64 / 1048576.0,
        with_trace as f64 / 1048576.0,
        without as f64 / 1048576.0
    );
    // Each pass leaves a thread waiting for the token: most passes block one.
    assert!(
        switches >= PASSES / 2,
        "{PASSES} hand-offs made only {switches} switches"
    );
    assert!(
        size >= switches * MIN_SWITCH_BYTES,
        "{switches} switches made only {size} bytes of trace"
    );
    assert!(
        with_trace < without + size / 4,
        "writing a {size}-byte trace took {with_trace} bytes of memory, {without} without it"
    );
}
