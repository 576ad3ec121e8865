//! Blocked threads at the end of a capture (`blocked_ns`), whom they wait for
//! (`waiting_for_tid`) and the deadlocks among them, against workloads that know how their
//! threads are blocked: a C program whose two threads deadlock on two pthread mutexes, or
//! where one is blocked on a priority-inheritance mutex another holds, and a Python program with a `threading.Lock`
//! deadlock, a thread in `time.sleep` and one that computes forever.

mod support;

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use serde_json::Value;
use support::services::wait_until;

/// How long each capture lasts.
const CAPTURE_SECS: u64 = 2;

/// The C workload, compiled with `cc` into the test's scratch space under target/.
fn deadlock_program() -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/workloads/c/deadlock.c");
    let binary = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deadlock");
    let status = Command::new("cc")
        .args(["-O2", "-pthread", "-Wall", "-Werror", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()
        .expect("running cc (cargo xtask setup installs gcc)");
    assert!(status.success(), "compiling {}", source.display());
    binary
}

/// A workload that prints one line once its threads are on their way; killed when dropped.
struct Workload {
    child: Child,
    line: String,
}

impl Workload {
    fn start(command: &mut Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the workload");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("reading the workload's thread ids");
        assert!(!line.is_empty(), "the workload printed nothing");
        Self { child, line }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The state letter of thread `tid` (`R`, `S`, `D`, ...) in `/proc/PID/task/TID/stat`.
fn thread_state(pid: u32, tid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Waits until each of `tids` is asleep (`S`) as the kernel shows it.
fn wait_asleep(pid: u32, tids: &[u32]) {
    let asleep = wait_until(Duration::from_secs(20), || {
        tids.iter().all(|&tid| thread_state(pid, tid) == Some('S'))
    });
    let states: Vec<_> = tids.iter().map(|&t| (t, thread_state(pid, t))).collect();
    assert!(asleep, "threads never all fell asleep: {states:?}");
}

/// `record --pid PID --duration CAPTURE_SECS`: the summary and the table printed.
fn record(pid: u32) -> (Value, String) {
    let dir = support::scratch();
    let out = dir.path().join("capture.json");
    let output: Output = Command::new(support::tracer())
        .args(["record", "--pid", &pid.to_string()])
        .args(["--duration", &CAPTURE_SECS.to_string(), "--output"])
        .arg(&out)
        .output()
        .expect("running tracer");
    support::expect_success("tracer record", &output);
    (
        support::read_json(&out),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// The summary's thread `tid`.
fn thread(summary: &Value, tid: u32) -> &Value {
    summary["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tid"] == tid)
        .unwrap_or_else(|| panic!("thread {tid} is not in the summary:\n{summary:#}"))
}

/// Asserts `tid` was blocked for the whole capture.
fn assert_blocked_throughout(summary: &Value, tid: u32) {
    let duration = summary["duration_ns"].as_u64().unwrap();
    assert!(duration >= CAPTURE_SECS * 1_000_000_000, "{summary:#}");
    let blocked = thread(summary, tid)["blocked_ns"].as_u64();
    assert!(
        blocked.is_some_and(|ns| ns >= duration),
        "thread {tid} blocked {blocked:?} ns in a capture of {duration} ns"
    );
}

/// The C workload in `mode`: its line's two thread ids, once both are asleep.
fn c_workload(mode: &[&str]) -> (Workload, u32, u32) {
    let workload = Workload::start(Command::new(deadlock_program()).args(mode));
    let words: Vec<&str> = workload.line.split_whitespace().collect();
    let [_, a, _, b] = words[..] else {
        panic!("unexpected line {:?}", workload.line);
    };
    let (a, b): (u32, u32) = (a.parse().unwrap(), b.parse().unwrap());
    wait_asleep(workload.pid(), &[a, b]);
    (workload, a, b)
}

#[test]
fn a_pthread_mutex_deadlock_is_a_cycle_of_its_two_threads() {
    if !support::can_trace("a_pthread_mutex_deadlock_is_a_cycle_of_its_two_threads") {
        return;
    }
    let (workload, a, b) = c_workload(&[]);
    let pid = workload.pid();
    let (summary, table) = record(pid);
    for tid in [a, b] {
        assert_blocked_throughout(&summary, tid);
    }
    assert_eq!(thread(&summary, a)["waiting_for_tid"], b, "{summary:#}");
    assert_eq!(thread(&summary, b)["waiting_for_tid"], a, "{summary:#}");
    // The main thread waits in pthread_join: blocked, but on no lock.
    assert!(thread(&summary, pid)["blocked_ns"].as_u64().is_some());
    assert_eq!(thread(&summary, pid)["waiting_for_tid"], Value::Null);
    let (low, high) = (a.min(b), a.max(b));
    assert_eq!(summary["deadlocks"], serde_json::json!([[low, high]]));
    let name = |tid| thread(&summary, tid)["name"].as_str().unwrap().to_owned();
    let line = format!(
        "deadlock: {} ({low}) -> {} ({high}) -> {} ({low})",
        name(low),
        name(high),
        name(low)
    );
    assert!(table.lines().any(|l| l == line), "no `{line}` in:\n{table}");
}

#[test]
fn a_deadlock_made_during_the_capture_is_found_from_the_calls_seen() {
    if !support::can_trace("a_deadlock_made_during_the_capture_is_found_from_the_calls_seen") {
        return;
    }
    let dir = support::scratch();
    let out = dir.path().join("capture.json");
    // The command outlives the capture and would hold a pipe open: its output (and the
    // table) go to a file.
    let table = std::fs::File::create(dir.path().join("table.txt")).unwrap();
    let status = Command::new(support::tracer())
        .args([
            "record",
            "--duration",
            &CAPTURE_SECS.to_string(),
            "--output",
        ])
        .arg(&out)
        .arg("--")
        .arg(deadlock_program())
        .stdout(table)
        .status()
        .expect("running tracer");
    let summary = support::read_json(&out);
    let pid = summary["pid"].as_i64().unwrap();
    // SAFETY: the workload tracer started for this test, still deadlocked.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    assert!(status.success(), "tracer record: {status}");
    let lockers: Vec<&Value> = summary["threads"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["comm"].as_str().unwrap().starts_with("locker-"))
        .collect();
    let [a, b] = lockers[..] else {
        panic!("two lockers expected:\n{summary:#}");
    };
    let end = summary["started_ns"].as_u64().unwrap() + summary["duration_ns"].as_u64().unwrap();
    for (t, other) in [(a, b), (b, a)] {
        // Asleep since after it was created, in the other's lock.
        let blocked = t["blocked_ns"].as_u64().expect("blocked at the end");
        assert!(end - blocked > t["created_ns"].as_u64().unwrap(), "{t:#}");
        assert_eq!(t["waiting_for_tid"], other["tid"], "{summary:#}");
    }
    let (a, b) = (a["tid"].as_u64().unwrap(), b["tid"].as_u64().unwrap());
    assert_eq!(
        summary["deadlocks"],
        serde_json::json!([[a.min(b), a.max(b)]])
    );
}

#[test]
fn a_thread_blocked_on_a_priority_inheritance_mutex_waits_for_its_owner() {
    if !support::can_trace("a_thread_blocked_on_a_priority_inheritance_mutex_waits_for_its_owner") {
        return;
    }
    let (workload, holder, waiter) = c_workload(&["pi"]);
    let (summary, _) = record(workload.pid());
    for tid in [holder, waiter] {
        assert_blocked_throughout(&summary, tid);
    }
    assert_eq!(
        thread(&summary, waiter)["waiting_for_tid"],
        holder,
        "{summary:#}"
    );
    // The holder sleeps in `pause`, on no lock: a chain, no cycle.
    assert_eq!(thread(&summary, holder)["waiting_for_tid"], Value::Null);
    assert_eq!(summary["deadlocks"], serde_json::json!([]));
}

/// The Python workload's threads by name, once the deadlocked, sleeping and main threads are
/// asleep.
fn python_workload() -> (Workload, BTreeMap<String, u32>) {
    let workload = Workload::start(
        Command::new(support::python()).arg(support::python_workload("blocked.py")),
    );
    let tids: BTreeMap<String, u32> =
        serde_json::from_str(&workload.line).expect("the workload's thread ids");
    let asleep: Vec<u32> = ["lock-a", "lock-b", "sleeper"]
        .iter()
        .map(|name| tids[*name])
        .collect();
    wait_asleep(workload.pid(), &asleep);
    (workload, tids)
}

#[test]
fn a_threading_lock_deadlock_is_blocked_throughout_with_no_owner_known() {
    if !support::can_trace("a_threading_lock_deadlock_is_blocked_throughout_with_no_owner_known") {
        return;
    }
    let (workload, tids) = python_workload();
    let (summary, _) = record(workload.pid());
    for name in ["lock-a", "lock-b"] {
        assert_blocked_throughout(&summary, tids[name]);
        // A `threading.Lock` keeps no owner: whom each waits for is not known.
        assert_eq!(thread(&summary, tids[name])["waiting_for_tid"], Value::Null);
    }
    assert_eq!(summary["deadlocks"], serde_json::json!([]), "{summary:#}");
}

#[test]
fn a_sleeping_thread_is_blocked_on_no_one_and_a_spinning_one_is_not_blocked() {
    if !support::can_trace(
        "a_sleeping_thread_is_blocked_on_no_one_and_a_spinning_one_is_not_blocked",
    ) {
        return;
    }
    let (workload, tids) = python_workload();
    let pid = workload.pid();
    let (sleeper, spinner) = (tids["sleeper"], tids["spinner"]);
    let (summary, _) = record(pid);
    assert_blocked_throughout(&summary, sleeper);
    assert_eq!(thread(&summary, sleeper)["waiting_for_tid"], Value::Null);
    assert!(
        summary["deadlocks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|cycle| !cycle.as_array().unwrap().contains(&sleeper.into())),
        "{summary:#}"
    );
    // The spinner never sleeps: the kernel shows it running or runnable after the capture
    // too, and it was not blocked at the end.
    assert_eq!(thread_state(pid, spinner), Some('R'));
    assert_eq!(thread(&summary, spinner)["blocked_ns"], Value::Null);
    assert!(thread(&summary, spinner)["on_cpu_ns"].as_u64().unwrap() > 0);
}
