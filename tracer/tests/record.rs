//! `tracer record` end to end, on this machine's kernel: each bundled workload runs under
//! tracer and the capture is held against the counters each thread read of itself from
//! `/proc/thread-self/{status,schedstat}`.

mod support;

use std::{path::Path, time::Duration};

use support::{
    compare::{Form, assert_matches},
    *,
};

/// The process name a workload's capture must have: a Python workload's script without
/// `.py`, the Rust workload's file name.
fn process_of(command: &[&Path]) -> String {
    command
        .last()
        .and_then(|p| p.file_stem())
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// `record -- CMD` of a workload, compared with its truth.
fn record_and_compare(test: &str, command: &[&Path], args: &[&str]) {
    if !can_trace(test) {
        return;
    }
    let (summary, truth, _) = record_summary(command, args);
    assert_matches(&summary, &truth, Form::Command);
    assert_eq!(summary["process"], process_of(command));
}

/// `record --pid` of a gated workload, released once tracer is attached.
fn attach_and_compare(test: &str, command: &[&Path], args: &[&str]) {
    if !can_trace(test) {
        return;
    }
    let dir = scratch();
    let (out, truth) = (
        dir.path().join("capture.json"),
        dir.path().join("truth.json"),
    );
    let mut workload = Gated::start(command, args, &truth);
    let pid = workload.pid.to_string();
    let mut tracer = start_recording(&["--pid", &pid, "--output", out.to_str().unwrap()]);
    workload.release();
    let status = wait_with_limit(&mut tracer, Duration::from_secs(60));
    assert!(status.success(), "tracer record --pid: {status}");
    assert!(workload.child.wait().unwrap().success());
    let summary = read_json(&out);
    assert_matches(&summary, &read_json(&truth), Form::Pid);
    assert_eq!(summary["process"], process_of(command));
}

#[test]
fn rust_mixed_workload_as_command() {
    record_and_compare(
        "rust_mixed_workload_as_command",
        &[&rust_workload()],
        &["mixed"],
    );
}

#[test]
fn rust_mixed_workload_by_pid() {
    attach_and_compare(
        "rust_mixed_workload_by_pid",
        &[&rust_workload()],
        &["mixed"],
    );
}

#[test]
fn python_99_sleeping_threads() {
    let script = python_workload("sleepers.py");
    record_and_compare("python_99_sleeping_threads", &[&python(), &script], &[]);
}

#[test]
fn python_daemon_and_regular_threads() {
    let script = python_workload("daemon_threads.py");
    record_and_compare(
        "python_daemon_and_regular_threads",
        &[&python(), &script],
        &[],
    );
}

#[test]
fn python_io_bound_and_cpu_bound_threads() {
    let script = python_workload("io_vs_cpu.py");
    record_and_compare(
        "python_io_bound_and_cpu_bound_threads",
        &[&python(), &script],
        &[],
    );
}

#[test]
fn python_lock_protected_counter() {
    let script = python_workload("lock_counter.py");
    record_and_compare("python_lock_protected_counter", &[&python(), &script], &[]);
}

#[test]
fn python_lock_protected_counter_by_pid() {
    let script = python_workload("lock_counter.py");
    attach_and_compare(
        "python_lock_protected_counter_by_pid",
        &[&python(), &script],
        &[],
    );
}

#[test]
fn python_thread_pool_executor() {
    let script = python_workload("pool.py");
    record_and_compare("python_thread_pool_executor", &[&python(), &script], &[]);
}
