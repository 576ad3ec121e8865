//! Bad input and interruptions: each gets a clear message and loses nothing.

mod support;

use std::{
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use support::*;

fn tracer_output(args: &[&str]) -> (i32, String) {
    let out = Command::new(tracer())
        .args(args)
        .output()
        .expect("running tracer");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn a_pid_that_does_not_exist_is_refused() {
    if !can_trace("a_pid_that_does_not_exist_is_refused") {
        return;
    }
    let (code, stderr) = tracer_output(&["record", "--pid", "4194999"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("no process with pid 4194999"), "{stderr}");
}

#[test]
fn a_command_that_cannot_start_is_refused() {
    if !can_trace("a_command_that_cannot_start_is_refused") {
        return;
    }
    let (code, stderr) = tracer_output(&["record", "--", "/nonexistent/program", "x"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("cannot start `/nonexistent/program x`: No such file or directory"),
        "{stderr}"
    );
    let (code, stderr) = tracer_output(&["record", "--", "no-such-command-anywhere"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("not found in PATH"), "{stderr}");
    // Exists but is not executable: exec itself fails, after the probes were attached.
    let (code, stderr) = tracer_output(&["record", "--", "/etc/hostname"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cannot start `/etc/hostname`"), "{stderr}");
}

#[test]
fn outputs_are_checked_before_tracing() {
    let (code, stderr) = tracer_output(&["record", "-o", "capture.txt", "--", "true"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("use a .json, .jsonl or .pftrace file name"),
        "{stderr}"
    );
    let (code, stderr) = tracer_output(&["record", "-o", "a.json", "-o", "b.json", "--", "true"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("two outputs of the same format"),
        "{stderr}"
    );
    if can_trace("outputs_are_checked_before_tracing") {
        let (code, stderr) = tracer_output(&[
            "record",
            "-o",
            "/nonexistent/dir/capture.json",
            "--",
            "true",
        ]);
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.contains("cannot write /nonexistent/dir/capture.json"),
            "{stderr}"
        );
    }
}

#[test]
fn bad_arguments_are_usage_errors() {
    let (code, stderr) = tracer_output(&["record", "--pid", "1", "--duration", "0"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("above zero"), "{stderr}");
    let (code, stderr) = tracer_output(&["record", "--pid", "1", "--", "true"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}

#[test]
fn without_privileges_tracer_says_what_is_missing() {
    if !can_trace("without_privileges_tracer_says_what_is_missing") {
        return;
    }
    // Drop to `nobody`, as an unprivileged user would run it.
    let unprivileged = |args: &[&str]| {
        let out = Command::new(tracer())
            .args(args)
            .uid(65534)
            .gid(65534)
            .current_dir("/")
            .output()
            .expect("running tracer as nobody");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, text) = unprivileged(&["record", "--pid", "1"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("tracer needs root privileges to record"),
        "{text}"
    );
    assert!(text.contains("CAP_BPF and CAP_PERFMON"), "{text}");
    let (code, text) = unprivileged(&["check"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("FAIL  privileges"), "{text}");
    assert!(text.contains("fix: run tracer as root"), "{text}");
}

#[test]
fn check_passes_on_this_machine() {
    if !can_trace("check_passes_on_this_machine") {
        return;
    }
    let out = Command::new(tracer()).arg("check").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for name in [
        "kernel",
        "privileges",
        "btf",
        "tracefs",
        "tracepoints",
        "ring buffer",
        "programs",
    ] {
        assert!(
            text.contains(&format!("ok    {name}")),
            "{name} not ok:\n{text}"
        );
    }
}

/// A process to trace that sleeps, killed when dropped.
struct Sleeper(std::process::Child);

impl Sleeper {
    fn start(seconds: &str) -> Self {
        Self(
            Command::new("sleep")
                .arg(seconds)
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn interrupt(child: &std::process::Child, signal: i32) {
    // SAFETY: signalling a child we started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
}

#[test]
fn ctrl_c_leaves_a_complete_summary() {
    if !can_trace("ctrl_c_leaves_a_complete_summary") {
        return;
    }
    let dir = scratch();
    let out = dir.path().join("capture.json");
    let sleeper = Sleeper::start("30");
    let pid = sleeper.0.id().to_string();
    let mut tracer = start_recording(&["--pid", &pid, "-o", out.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(300));
    interrupt(&tracer, libc::SIGINT);
    let status = wait_with_limit(&mut tracer, Duration::from_secs(10));
    assert!(status.success(), "{status}");
    let summary = read_json(&out);
    assert_eq!(summary["schema"], "tracer.record/v1");
    assert_eq!(summary["pid"].as_u64(), Some(sleeper.0.id() as u64));
    let threads = summary["threads"].as_array().unwrap();
    assert_eq!(threads.len(), 1);
    // Asleep the whole time: off CPU for (nearly) all of the capture.
    let duration = summary["duration_ns"].as_u64().unwrap();
    let off = threads[0]["off_cpu_ns"].as_u64().unwrap();
    assert!(
        duration >= 250_000_000 && off + 5_000_000 >= duration,
        "{summary:#}"
    );
    assert!(threads[0]["exited_ns"].is_null());
}

#[test]
fn sigterm_leaves_complete_event_lines() {
    if !can_trace("sigterm_leaves_complete_event_lines") {
        return;
    }
    let dir = scratch();
    let out = dir.path().join("events.jsonl");
    let workload = rust_workload();
    let mut tracer = start_recording(&[
        "-o",
        out.to_str().unwrap(),
        "--",
        workload.to_str().unwrap(),
    ]);
    std::thread::sleep(Duration::from_millis(200));
    interrupt(&tracer, libc::SIGTERM);
    let status = wait_with_limit(&mut tracer, Duration::from_secs(10));
    assert!(status.success(), "{status}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.ends_with('\n'), "the last line is cut");
    let mut kinds = std::collections::BTreeSet::new();
    for line in text.lines() {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        kinds.insert(event["kind"].as_str().unwrap().to_owned());
    }
    for kind in ["thread_created", "switch", "wakeup"] {
        assert!(kinds.contains(kind), "no {kind} events in {kinds:?}");
    }
}

#[test]
fn duration_ends_the_capture() {
    if !can_trace("duration_ends_the_capture") {
        return;
    }
    let dir = scratch();
    let out = dir.path().join("capture.json");
    let sleeper = Sleeper::start("30");
    let started = Instant::now();
    let output = Command::new(tracer())
        .args(["record", "--duration", "0.5", "--pid"])
        .arg(sleeper.0.id().to_string())
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    expect_success("tracer record --duration", &output);
    // Ended by the duration, long before the sleeper would have ended it: how long the
    // stop itself takes is the machine's speed, which the bench measures.
    assert!(started.elapsed() < Duration::from_secs(20));
    let duration = read_json(&out)["duration_ns"].as_u64().unwrap();
    assert!(
        (500_000_000..10_000_000_000).contains(&duration),
        "{duration}"
    );
}

#[test]
fn a_process_that_exits_mid_capture_ends_it() {
    if !can_trace("a_process_that_exits_mid_capture_ends_it") {
        return;
    }
    let dir = scratch();
    let out = dir.path().join("capture.json");
    let sleeper = Sleeper::start("0.5");
    let pid = sleeper.0.id().to_string();
    let mut tracer = start_recording(&["--pid", &pid, "-o", out.to_str().unwrap()]);
    let status = wait_with_limit(&mut tracer, Duration::from_secs(10));
    assert!(status.success(), "{status}");
    let summary = read_json(&out);
    let main = &summary["threads"][0];
    assert!(main["exited_ns"].is_u64(), "{summary:#}");
    assert!(
        main["voluntary_switches"].as_u64().unwrap() <= 3,
        "{summary:#}"
    );
}

#[test]
fn help_lists_every_command_and_option() {
    let (code, _) = tracer_output(&["--help"]);
    assert_eq!(code, 0);
    let help = String::from_utf8(
        Command::new(tracer())
            .arg("--help")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    for word in ["record", "check"] {
        assert!(help.contains(word), "{help}");
    }
    let help = String::from_utf8(
        Command::new(tracer())
            .args(["record", "--help"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    for word in [
        "--pid <PID>",
        "--duration <SECS>",
        "--output <FILE>",
        "[CMD]...",
    ] {
        assert!(help.contains(word), "{word} missing from:\n{help}");
    }
}
