//! Python thread names and GIL waits, read from the traced process's memory, on every
//! CPython 3.8 or later installed here (Debian's `/usr/bin/python3` and pyenv's versions):
//! each workload's truth file says which `threading` name each kernel thread has.

mod support;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::fs::PermissionsExt as _,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use support::{interpreters::*, *};

fn thread<'a>(summary: &'a Value, tid: &Value) -> Option<&'a Value> {
    summary["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tid"] == *tid)
}

fn renames(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["from"].as_str().unwrap().into(),
                r["to"].as_str().unwrap().into(),
            )
        })
        .collect()
}

/// Holds the capture of `names.py` against its truth: each thread is named by its Python
/// name, or by its kernel name when it has none; its GIL wait is known; its kernel names
/// are the truth's. `execs`: the kernel names the main thread had before the workload's,
/// when the capture started it (`record -- CMD`; see [`Launch`]).
fn check_names(summary: &Value, truth: &Value, execs: &[&str], who: &str) {
    let mut problems = Vec::new();
    let threads = truth["threads"].as_array().unwrap();
    assert_eq!(threads.len(), 10, "{who}: {truth:#}");
    for want in threads {
        let Some(got) = thread(summary, &want["tid"]) else {
            problems.push(format!("thread {} not captured", want["tid"]));
            continue;
        };
        let (name, source) = match want["python_name"].as_str() {
            Some(python_name) => (python_name, "python"),
            None => (want["comm"].as_str().unwrap(), "comm"),
        };
        if got["name"] != name || got["name_source"] != source {
            problems.push(format!(
                "{} ({}): name {} from {}, want {name:?} from {source}",
                want["tid"], want["role"], got["name"], got["name_source"]
            ));
        }
        let mut want_renames = renames(&want["renames"]);
        if want["role"] == "main" {
            // Each `exec` renamed it, from tracer's name on.
            let comm = want["comm"].as_str().unwrap();
            let names: Vec<&str> = execs.iter().copied().chain([comm]).collect();
            let execs = names.windows(2).map(|w| (w[0].into(), w[1].into()));
            want_renames.splice(0..0, execs);
        }
        if got["comm"] != want["comm"] || renames(&got["renames"]) != want_renames {
            problems.push(format!(
                "{} ({}): comm {} renames {}, want {} {want_renames:?}",
                want["tid"], want["role"], got["comm"], got["renames"], want["comm"]
            ));
        }
        if !got["gil_wait_ns"].is_u64() {
            problems.push(format!(
                "{} ({}): gil_wait_ns {} for a Python thread",
                want["tid"], want["role"], got["gil_wait_ns"]
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{who}:\n  {}\n\nsummary: {summary:#}\n\ntruth: {truth:#}",
        problems.join("\n  ")
    );
}

/// `record --output capture.json -- CMD` of `script ARGS` run by `python` in the run's
/// `files`, with `TRACER_TRUTH=truth.json` for the workload, failing when tracer fails.
fn record_command_in(python: &Python, files: &Files, script: &str, args: &[&str]) {
    let out = files.host("capture.json");
    let launch = python.launch(false);
    let mut command = Command::new(tracer());
    command.arg("record").arg("--output").arg(&out).arg("--");
    command.arg(launch.command.get_program());
    command.args(launch.command.get_args());
    let output = command
        .arg(files.seen(script))
        .args(args)
        .env("TRACER_TRUTH", files.seen("truth.json"))
        .output()
        .expect("running tracer");
    expect_success(
        &format!("tracer record of {script} ({})", python.label()),
        &output,
    );
}

/// [`record_command_in`]: the JSON summary (also as the text written) and the workload's
/// truth.
fn record_run(
    python: &Python,
    files: &Files,
    script: &str,
    args: &[&str],
) -> (Value, Value, String) {
    record_command_in(python, files, script, args);
    let text = std::fs::read_to_string(files.host("capture.json")).expect("reading the summary");
    let summary = serde_json::from_str(&text).expect("parsing the summary");
    (summary, read_json(&files.host("truth.json")), text)
}

#[test]
fn python_thread_names_on_every_version() {
    if !can_trace("python_thread_names_on_every_version") {
        return;
    }
    for python in pythons() {
        let files = python.files();
        let (summary, truth, text) = record_run(&python, &files, "names.py", &[]);
        check_names(
            &summary,
            &truth,
            &python.launch(false).execs,
            &python.label(),
        );
        // The summary names the interpreter read: its version as far as the interpreter
        // tells it (3.13 and later their micro version too, earlier ones major and minor).
        let read = summary["python"]["version"].as_str().unwrap_or_default();
        assert!(
            !read.is_empty()
                && (python.version == read || python.version.starts_with(&format!("{read}."))),
            "{}: {:#}",
            python.label(),
            summary["python"]
        );
        assert_eq!(
            summary["python"]["free_threaded"],
            false,
            "{}",
            python.label()
        );
        // The names are kept whole in the file, whatever their script.
        for name in ["名前-スレッド-ünïcödé", "émoji-🧵-thread", "café-crème"] {
            assert!(
                text.contains(name),
                "{}: {name} not in the summary",
                python.label()
            );
        }
    }
}

/// Starts `names.py` on `python` (in a PID namespace of its own with `pid_namespace`), gated
/// and holding at the end, attaches `tracer` (run by `tracer`, e.g. with fewer privileges),
/// lets the workload run, stops tracer with SIGINT while every thread is still there, and
/// returns the summary, the truth and tracer's stderr. The truth's thread ids, which are
/// those of the workload's PID namespace, are turned into the host's.
fn record_held(
    python: &Python,
    pid_namespace: bool,
    tracer: &mut Command,
    files: &Files,
) -> (Value, Value, String) {
    let out = files.host("capture.json");
    let launch = python.launch(pid_namespace);
    let mut command = launch.command;
    let mut workload = KillOnDrop(
        command
            .arg(files.seen("names.py"))
            .env("TRACER_GATE", "1")
            .env("TRACER_HOLD", "stdin")
            .env("TRACER_TRUTH", files.seen("truth.json"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting names.py"),
    );
    let mut lines = BufReader::new(workload.stdout.take().unwrap());
    let mut line = String::new();
    lines.read_line(&mut line).unwrap();
    let own_pid = line
        .strip_prefix("ready ")
        .and_then(|p| p.trim().parse::<u32>().ok())
        .unwrap_or_else(|| panic!("names.py said {line:?}"));
    let pid = if launch.forks {
        let launcher = workload.id();
        let children =
            std::fs::read_to_string(format!("/proc/{launcher}/task/{launcher}/children")).unwrap();
        children.trim().parse().unwrap()
    } else {
        assert_eq!(own_pid, workload.id(), "names.py's own pid");
        own_pid
    };
    let mut recorder = KillOnDrop(
        tracer
            .args(["record", "--pid", &pid.to_string(), "--output"])
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running tracer"),
    );
    let mut stderr = BufReader::new(recorder.stderr.take().unwrap());
    let mut said = String::new();
    while !said.contains("recording pid") {
        let mut l = String::new();
        assert!(stderr.read_line(&mut l).unwrap() > 0, "tracer: {said}");
        said.push_str(&l);
    }
    let stdin = workload.stdin.as_mut().unwrap();
    stdin.write_all(b"go\n").unwrap();
    stdin.flush().unwrap();
    line.clear();
    lines.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "holding");
    // Each thread's id in the process's own PID namespace, to the host's (`NSpid`).
    let host_ids: std::collections::HashMap<u64, u64> = procfs_tids(pid)
        .into_iter()
        .map(|tid| {
            // Its `Name:` is the kernel's name, which may be cut inside a character.
            let status = std::fs::read(format!("/proc/{pid}/task/{tid}/status")).unwrap();
            let own = String::from_utf8_lossy(&status)
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|ids| ids.split_whitespace().last()?.parse().ok())
                .unwrap();
            (own, u64::from(tid))
        })
        .collect();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(recorder.id() as i32, libc::SIGINT) };
    let status = wait_with_limit(&mut recorder, Duration::from_secs(30));
    stderr.read_to_string(&mut said).unwrap();
    assert!(status.success(), "tracer record --pid: {status}\n{said}");
    stdin.write_all(b"end\n").unwrap();
    stdin.flush().unwrap();
    assert!(workload.wait().unwrap().success());
    let mut truth = read_json(&files.host("truth.json"));
    let host = |id: &Value| match id.as_u64() {
        Some(own) => Value::from(*host_ids.get(&own).unwrap_or_else(|| {
            panic!("thread {own} of the namespace was gone before the capture ended")
        })),
        None => Value::Null,
    };
    truth["pid"] = host(&truth["pid"]);
    for t in truth["threads"].as_array_mut().unwrap() {
        t["tid"] = host(&t["tid"]);
        t["parent_tid"] = host(&t["parent_tid"]);
    }
    (read_json(&out), truth, said)
}

/// The thread ids of process `pid` (the host's).
fn procfs_tids(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

#[test]
fn python_names_read_when_a_capture_of_a_running_process_ends() {
    if !can_trace("python_names_read_when_a_capture_of_a_running_process_ends") {
        return;
    }
    for python in pythons() {
        let files = python.files();
        let (summary, truth, _) = record_held(&python, false, &mut Command::new(tracer()), &files);
        check_names(
            &summary,
            &truth,
            &[],
            &format!("{}, by pid", python.label()),
        );
    }
}

/// A Python program in a PID namespace of its own (every container's case), on the host's
/// root and in a root of its own: the ids in its memory are the namespace's, and its
/// threads are named as on the host.
#[test]
fn python_names_in_a_pid_namespace_of_its_own() {
    if !can_trace("python_names_in_a_pid_namespace_of_its_own") {
        return;
    }
    for python in pythons() {
        let files = python.files();
        let (summary, truth, _) = record_held(&python, true, &mut Command::new(tracer()), &files);
        check_names(
            &summary,
            &truth,
            &[],
            &format!("{}, in a PID namespace", python.label()),
        );
    }
}

#[test]
fn a_process_tracer_may_not_read_keeps_kernel_names() {
    let test = "a_process_tracer_may_not_read_keeps_kernel_names";
    if !can_trace(test) {
        return;
    }
    // tracer as `nobody`, with the capabilities to trace (and to read tracefs) but not to
    // read another user's memory; the workload runs as root.
    if Command::new("setpriv").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: setpriv is missing"
        );
        eprintln!("skipped {test}: setpriv (util-linux) is not installed");
        return;
    }
    let python = Python::host(python(), "Debian's".into());
    let files = python.files();
    std::fs::set_permissions(files.dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let caps = "+bpf,+perfmon,+dac_read_search";
    let mut unprivileged = Command::new("setpriv");
    unprivileged
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--inh-caps={caps}"))
        .arg(format!("--ambient-caps={caps}"))
        .arg(tracer());
    let (summary, truth, stderr) = record_held(&python, false, &mut unprivileged, &files);
    assert!(
        stderr.contains("could not read the process's Python threads"),
        "{stderr}"
    );
    for want in truth["threads"].as_array().unwrap() {
        let got = thread(&summary, &want["tid"]).expect("every thread captured");
        assert_eq!(got["name"], want["comm"], "{got:#}");
        assert_eq!(got["name_source"], "comm");
        assert!(got["gil_wait_ns"].is_null(), "{got:#}");
    }
}

#[test]
fn a_python_process_that_exits_while_being_read() {
    if !can_trace("a_python_process_that_exits_while_being_read") {
        return;
    }
    for python in pythons() {
        let files = python.files();
        let version = python.label();
        record_command_in(&python, &files, "names.py", &["churn"]);
        let summary = read_json(&files.host("capture.json"));
        let threads = summary["threads"].as_array().unwrap();
        assert!(threads.len() > 10, "{version}: {summary:#}");
        let mut python_named = 0;
        for t in threads {
            let name = t["name"].as_str().unwrap();
            match t["name_source"].as_str().unwrap() {
                "python" => {
                    python_named += 1;
                    assert!(
                        name == "MainThread"
                            || name.starts_with("churning-thread-with-a-long-name-"),
                        "{version}: {t:#}"
                    );
                }
                "comm" => assert_eq!(t["name"], t["comm"], "{version}: {t:#}"),
                other => panic!("{version}: name_source {other}"),
            }
        }
        assert!(python_named > 0, "{version}: no thread read: {summary:#}");
    }
}

/// Threads of `io_vs_cpu.py`: two compute in pure Python, two sleep 5 ms and do a little
/// file I/O 60 times; all four want the GIL. The figures of each version are printed.
#[test]
fn gil_waits_of_cpu_bound_and_io_bound_threads_on_every_version() {
    if !can_trace("gil_waits_of_cpu_bound_and_io_bound_threads_on_every_version") {
        return;
    }
    for python in pythons() {
        let files = python.files();
        let (summary, truth, _) = record_run(&python, &files, "io_vs_cpu.py", &[]);
        let version = python.label();
        let mut problems = Vec::new();
        let mut line = format!("{version}:");
        let mut ratio = |role: &str| -> Vec<f64> {
            truth["threads"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["role"] == role)
                .map(|want| {
                    let got = thread(&summary, &want["tid"]).expect("captured");
                    let gil = got["gil_wait_ns"]
                        .as_u64()
                        .unwrap_or_else(|| panic!("{version}: no GIL wait for {got:#}"));
                    let (cpu, futex) = (
                        got["on_cpu_ns"].as_u64().unwrap(),
                        got["futex_wait_ns"].as_u64().unwrap(),
                    );
                    line += &format!(
                        " {} GIL wait {:.0} ms, on CPU {:.0} ms;",
                        got["name"].as_str().unwrap(),
                        gil as f64 / 1e6,
                        cpu as f64 / 1e6
                    );
                    if gil > futex {
                        problems.push(format!("{}: GIL wait above futex wait", got["name"]));
                    }
                    if got["name_source"] != "python" || got["name"] != want["name"] {
                        problems.push(format!("{}: named {}", want["name"], got["name"]));
                    }
                    gil as f64 / cpu.max(1) as f64
                })
                .collect()
        };
        let cpu = ratio("cpu");
        let io = ratio("io");
        eprintln!("{line}");
        // The CPU-bound threads take turns with each other: each waits about as long as the
        // other runs.
        for r in &cpu {
            if *r < 0.25 {
                problems.push(format!("CPU-bound GIL wait only {r:.2} of its CPU time"));
            }
        }
        // An I/O-bound thread wakes up 60 times and each time waits for a CPU-bound thread
        // to let go of the GIL, for far longer than it then runs: 50 to 100 times its CPU
        // time on a quiet machine, still several times on a busy one (its own CPU time grows
        // with the load, its waits less so).
        for r in &io {
            let most_cpu = cpu.iter().copied().fold(0.0, f64::max);
            if *r < 3.0 * most_cpu {
                problems.push(format!(
                    "I/O-bound GIL wait {r:.1} of its CPU time, not far above the CPU-bound \
                     threads' {most_cpu:.2}"
                ));
            }
        }
        assert!(
            problems.is_empty(),
            "{line}\n  {}\n\nsummary: {summary:#}",
            problems.join("\n  ")
        );
    }
}

/// A thread renamed 50 ms before it ends is reported under the name it ended with, on
/// every version: 3.8 to 3.13 do not tell the kernel, and no periodic reading falls in
/// between; its exit makes tracer read its `Thread` object, which the program still holds.
#[test]
fn a_rename_just_before_the_end_is_the_final_name_on_every_version() {
    if !can_trace("a_rename_just_before_the_end_is_the_final_name_on_every_version") {
        return;
    }
    for python in pythons() {
        let version = python.label();
        let files = python.files();
        let (summary, truth, _) = record_run(&python, &files, "names.py", &["late"]);
        let threads = truth["threads"].as_array().unwrap();
        let late = threads
            .iter()
            .find(|t| t["role"] == "renamed_late")
            .unwrap_or_else(|| panic!("{version}: no renamed thread in {truth:#}"));
        assert_eq!(late["python_name"], "renamed-50-ms-before-it-ended");
        let got = thread(&summary, &late["tid"])
            .unwrap_or_else(|| panic!("{version}: thread {} not captured", late["tid"]));
        assert_eq!(
            (&got["name"], &got["name_source"]),
            (&late["python_name"], &Value::from("python")),
            "{version}: {summary:#}"
        );
        assert!(!got["exited_ns"].is_null(), "{version}: exit not seen");
    }
}
