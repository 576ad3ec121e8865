//! `tracer daemon` end to end: metrics against the workloads' own counters, untrusted names,
//! bounded memory under thread churn, lifecycle and configuration.

mod support;

use std::{
    os::unix::net::UnixDatagram,
    process::Command,
    time::{Duration, Instant},
};

use support::{
    prom::{find, value},
    services::{PYTHON_SERVICE, cpu_seconds_of, start_until_first_line, switches_of},
    *,
};

/// The samples of [`Daemon::text_after_exits`].
fn samples_after_exits(daemon: &Daemon, process: &str, exits: usize) -> Vec<support::prom::Sample> {
    support::prom::parse(&daemon.text_after_exits(process, exits))
}

/// Runs the Rust workload's `mixed` scenario (as a process of its own name, from `dir`) to
/// its end while `daemon` runs: the daemon's samples after it, its truth, its process name,
/// and the machine's steal time while it ran.
fn run_mixed_workload(
    daemon: &Daemon,
    dir: &std::path::Path,
) -> (Vec<support::prom::Sample>, serde_json::Value, String, f64) {
    let truth_path = dir.join("truth.json");
    let (workload, process) = private_workload(dir);
    let stolen_before = steal_seconds();
    let status = Command::new(&workload)
        .arg("mixed")
        .env("TRACER_TRUTH", &truth_path)
        .status()
        .unwrap();
    assert!(status.success());
    let stolen = steal_seconds() - stolen_before;
    let truth = read_json(&truth_path);
    let exits = truth["threads"].as_array().unwrap().len() - 1;
    (
        samples_after_exits(daemon, &process, exits),
        truth,
        process,
        stolen,
    )
}

/// Time the hypervisor ran something else on this machine's virtual CPUs while they had work
/// ("steal"), summed over CPUs, in seconds: `/proc/stat`'s eighth `cpu` field, in ticks of
/// `USER_HZ` (100 per second on every architecture Linux runs tracer on).
fn steal_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let cpu = stat.lines().next().unwrap();
    cpu.split_whitespace()
        .nth(8)
        .unwrap()
        .parse::<f64>()
        .unwrap()
        / 100.0
}

#[test]
fn metrics_match_the_kernels_counters() {
    if !can_trace("metrics_match_the_kernels_counters") {
        return;
    }
    let daemon = Daemon::start(&[], &[]);
    let dir = scratch();
    let (samples, truth, process, stolen) = run_mixed_workload(&daemon, dir.path());
    let process = process.as_str();
    let threads = truth["threads"].as_array().unwrap();
    let created = value(
        &samples,
        "tracer_threads_created_total",
        &[("process", process)],
    );
    let exited = value(
        &samples,
        "tracer_threads_exited_total",
        &[("process", process)],
    );
    assert_eq!(created as usize, threads.len() - 1, "every thread but main");
    assert_eq!(exited, created);
    let mut problems = Vec::new();
    for t in threads {
        let comm = t["comm"].as_str().unwrap();
        // Each workload thread has a name of its own; the label is the name it was first
        // exported under, which is the final one for threads that renamed before exiting.
        let label = if t["renames"].as_array().unwrap().len() > 1 {
            continue;
        } else {
            comm
        };
        let pt = [("process", process), ("thread", label)];
        let switches = |kind: &str| {
            value(
                &samples,
                "tracer_thread_context_switches_total",
                &[pt[0], pt[1], ("kind", kind)],
            ) as u64
        };
        for (kind, key) in [
            ("voluntary", "voluntary_switches"),
            ("involuntary", "involuntary_switches"),
        ] {
            let (got, want) = (switches(kind), t[key].as_u64().unwrap());
            if got.abs_diff(want) > 3.max(want / 50) {
                problems.push(format!("{label} {kind}: {got} vs kernel {want}"));
            }
        }
        let cpu = value(&samples, "tracer_thread_cpu_seconds_total", &pt);
        let want = t["on_cpu_ns"].as_u64().unwrap() as f64 / 1e9;
        if (cpu - want).abs() > 0.002f64.max(want * 0.05) {
            problems.push(format!("{label} cpu: {cpu} vs kernel {want}"));
        }
        check_futex_waits(t, &samples, &pt, stolen, &mut problems);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let rq = find(
        &samples,
        "tracer_runqueue_latency_seconds_count",
        &[("process", process)],
    );
    assert!(rq.len() == 1 && rq[0].value > 0.0, "{rq:?}");
    for kind in ["thread_created", "switch", "futex_wait"] {
        assert_eq!(
            value(&samples, "tracer_events_lost_total", &[("kind", kind)]),
            0.0
        );
    }
    assert!(value(&samples, "tracer_process_resident_memory_bytes", &[]) > 0.0);
}

/// The futex waits of workload thread `t` (series labels `pt`) against its own counters. The
/// daemon sees a wait where a thread falls asleep in a futex call. A lock contender blocks
/// nowhere else, so its voluntary switches and its time off a CPU between its two readings
/// are its futex waits; a sleeper's naps are not futex waits.
///
/// That time off a CPU is the time between the readings less what the kernel counted on a
/// CPU and in a run queue, which leaves out `stolen` seconds (steal), so it may exceed the
/// futex waits by the steal there was.
fn check_futex_waits(
    t: &serde_json::Value,
    samples: &[support::prom::Sample],
    pt: &[(&str, &str); 2],
    stolen: f64,
    problems: &mut Vec<String>,
) {
    let label = pt[1].1;
    let waits = value(samples, "tracer_thread_futex_waits_total", pt) as u64;
    let asleep = t["voluntary_switches"].as_u64().unwrap();
    if waits > asleep {
        problems.push(format!(
            "{label}: {waits} futex waits, {asleep} times asleep"
        ));
    }
    match t["role"].as_str().unwrap() {
        "sleeper" if waits * 2 > asleep => {
            problems.push(format!("{label}: {waits} futex waits in {asleep} naps"));
        }
        "locker" => {
            if waits + 3.max(asleep / 50) < asleep {
                problems.push(format!(
                    "{label}: {waits} futex waits, {asleep} times asleep"
                ));
            }
            let (end, start) = (t, &t["start"]);
            let ns = |c: &serde_json::Value, key: &str| c[key].as_u64().unwrap() as f64;
            let off_cpu = (ns(end, "read_ns") - ns(start, "read_ns"))
                - (ns(end, "on_cpu_ns") - ns(start, "on_cpu_ns"))
                - (ns(end, "runqueue_wait_ns") - ns(start, "runqueue_wait_ns"));
            let waited = value(samples, "tracer_thread_futex_wait_seconds_total", pt) * 1e9;
            let margin = 5e6f64.max(off_cpu * 0.05);
            if waited > off_cpu + margin || waited < off_cpu - margin - stolen * 1e9 {
                problems.push(format!(
                    "{label}: {:.2} ms of futex waits, {:.2} ms off its CPU ({:.0} ms steal)",
                    waited / 1e6,
                    off_cpu / 1e6,
                    stolen * 1e3
                ));
            }
        }
        _ => {}
    }
}

/// A thread that stays on its CPU has CPU time the kernel counted after its last switch out:
/// the daemon reads it from the kernel at the scrape, so the series is as current as `/proc`.
#[test]
fn cpu_time_of_a_thread_on_its_cpu_is_current() {
    if !can_trace("cpu_time_of_a_thread_on_its_cpu_is_current") {
        return;
    }
    let daemon = Daemon::start(&[], &[]);
    let dir = scratch();
    let (workload, process) = private_workload(dir.path());
    let (mut child, line) = start_until_first_line(
        Command::new(&workload)
            .arg("spin")
            .env("TRACER_SPIN_SECS", "3"),
    );
    let tid: u32 = line.trim().strip_prefix("spin ").unwrap().parse().unwrap();
    let kernel_cpu = || cpu_seconds_of(tid);
    std::thread::sleep(Duration::from_millis(1500));
    let before = kernel_cpu();
    let samples = daemon.samples();
    let after = kernel_cpu();
    let cpu = value(
        &samples,
        "tracer_thread_cpu_seconds_total",
        &[("process", process.as_str()), ("thread", "spinner")],
    );
    assert!(child.wait().unwrap().success());
    assert!(before > 1.0, "the spinner ran {before} s");
    assert!(
        before <= cpu && cpu <= after,
        "metric {cpu} s, kernel {before} s before the scrape and {after} s after"
    );
}

/// A thread id the kernel gives a new thread soon after its last owner exited (ids wrap at
/// `pid_max`, quickly on a host that churns threads): the new thread keeps its counts, from
/// its birth. The workload makes the kernel reuse the id by setting `ns_last_pid`.
#[test]
fn a_reused_thread_id_keeps_the_new_threads_counts() {
    if !can_trace("a_reused_thread_id_keeps_the_new_threads_counts") {
        return;
    }
    let daemon = Daemon::start(&[], &[]);
    let script = r#"
import ctypes, os, threading, time
libc = ctypes.CDLL(None)
def named(name):
    libc.prctl(15, name.encode(), 0, 0, 0)
go, stop = threading.Event(), threading.Event()
def second():
    named("reused-second")
    go.wait()
    if stop.is_set():
        return
    end = time.thread_time() + 1.0
    while time.thread_time() < end:
        pass
    time.sleep(4)
for attempt in range(200):
    first = threading.Thread(target=named, args=("reused-first",), name="reused-first")
    first.start()
    first.join()
    tid = first.native_id
    while os.path.exists("/proc/self/task/%d" % tid):
        time.sleep(0.001)
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(tid - 1))
    t = threading.Thread(target=second, name="reused-second")
    t.start()
    if t.native_id == tid:
        break
    stop.set(); go.set(); t.join(); go.clear(); stop.clear()
else:
    raise SystemExit("the kernel gave no thread the same id again")
print("reused %d" % tid, flush=True)
go.set()
t.join()
"#;
    let (mut child, line) = start_until_first_line(Command::new(python()).args(["-c", script]));
    let tid: u32 = line
        .trim()
        .strip_prefix("reused ")
        .unwrap_or_else(|| panic!("the workload said {line:?}"))
        .parse()
        .unwrap();
    // Past the second thread's spin, during which the first thread's exit is harvested.
    std::thread::sleep(Duration::from_millis(2500));
    let kernel = std::fs::read_to_string(format!("/proc/{tid}/schedstat")).unwrap();
    let kernel_cpu = kernel
        .split_whitespace()
        .next()
        .unwrap()
        .parse::<f64>()
        .unwrap()
        / 1e9;
    let samples = daemon.samples();
    let _ = child.kill();
    let _ = child.wait();
    let cpu = value(
        &samples,
        "tracer_thread_cpu_seconds_total",
        &[("process", "python3"), ("thread", "reused-second")],
    );
    assert!(kernel_cpu >= 1.0, "the second thread ran {kernel_cpu} s");
    assert!(
        (cpu - kernel_cpu).abs() <= 0.002f64.max(kernel_cpu * 0.05),
        "the thread with the reused id: {cpu} s in its series, {kernel_cpu} s by the kernel"
    );
}

/// Two CPython services with a thread of the same name are two processes, by their script
/// and module; kernel threads are one, `kernel`, by their names without the changing part;
/// a `[[process_names]]` rule names from the command line, and a reload renames.
#[test]
fn services_are_told_apart_by_script_module_and_rule() {
    if !can_trace("services_are_told_apart_by_script_module_and_rule") {
        return;
    }
    let dir = scratch();
    let config = dir.path().join("tracer.toml");
    let rule = |name: &str| {
        format!("[[process_names]]\ncmdline = '--tenant=(?P<tenant>\\w+)'\nname = \"{name}\"\n")
    };
    std::fs::write(&config, rule("tenant-{tenant}")).unwrap();
    let daemon = Daemon::start(&["--config", config.to_str().unwrap()], &[]);
    std::fs::write(dir.path().join("orders_service.py"), PYTHON_SERVICE).unwrap();
    std::fs::create_dir(dir.path().join("billing")).unwrap();
    std::fs::write(dir.path().join("billing/__init__.py"), "").unwrap();
    std::fs::write(dir.path().join("billing/jobs.py"), PYTHON_SERVICE).unwrap();
    let start = |args: &[&str]| {
        let (child, line) = start_until_first_line(
            Command::new(python())
                .args(args)
                .current_dir(dir.path())
                .stdin(std::process::Stdio::piped()),
        );
        let tid: u32 = line.trim().parse().unwrap();
        (child, tid)
    };
    let services = [
        ("orders_service", start(&["orders_service.py"])),
        ("billing.jobs", start(&["-u", "-m", "billing.jobs"])),
        (
            "tenant-acme",
            start(&["orders_service.py", "--tenant=acme"]),
        ),
    ];
    let worker = |samples: &[support::prom::Sample], process: &str| {
        find(
            samples,
            "tracer_thread_cpu_seconds_total",
            &[("process", process), ("thread", "worker-main-loop")],
        )
        .first()
        .map(|s| s.value)
    };
    // Each blocked worker's series has its own CPU time, the kernel's.
    let deadline = Instant::now() + PATIENCE;
    let samples = loop {
        std::thread::sleep(POLL);
        let samples = daemon.samples();
        if services.iter().all(|(p, _)| worker(&samples, p).is_some()) || Instant::now() > deadline
        {
            break samples;
        }
    };
    for (process, (_, tid)) in &services {
        let (got, want) = (worker(&samples, process), cpu_seconds_of(*tid));
        assert!(
            got.is_some_and(|got| (got - want).abs() <= 0.002f64.max(want * 0.05)),
            "{process}: worker-main-loop {got:?} s in its series, {want} s by the kernel"
        );
    }
    let kernel = find(
        &samples,
        "tracer_thread_cpu_seconds_total",
        &[("process", "kernel")],
    );
    assert!(
        kernel.iter().any(|s| s.labels["thread"] == "kworker"),
        "no kworker among the kernel's threads"
    );
    assert!(
        kernel.iter().all(|s| !s.labels["thread"].contains('/')),
        "kernel thread labels keep their changing part"
    );
    // A reload renames under the new rules.
    std::fs::write(&config, rule("customer-{tenant}")).unwrap();
    daemon.signal(libc::SIGHUP);
    let deadline = Instant::now() + PATIENCE;
    let renamed = loop {
        std::thread::sleep(POLL);
        let samples = daemon.samples();
        let renamed = worker(&samples, "customer-acme");
        if renamed.is_some() || Instant::now() > deadline {
            break renamed;
        }
    };
    assert!(
        renamed.is_some(),
        "no series under the reloaded rule's name"
    );
    for (_, (mut child, _)) in services {
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
    }
}

/// Threads blocked since before the daemon started, which never run while it does, are in
/// their series from the first scrape, with nothing counted since the attach (their kernel
/// counters do not move either).
#[test]
fn threads_that_never_run_have_series_from_the_first_scrape() {
    if !can_trace("threads_that_never_run_have_series_from_the_first_scrape") {
        return;
    }
    let script = r#"
import ctypes, sys, threading
libc = ctypes.CDLL(None)
never = threading.Event()
def idle(name):
    libc.prctl(15, name.encode(), 0, 0, 0)
    never.wait()
threads = [threading.Thread(target=idle, args=("idle-%d" % i,), name="idle-%d" % i, daemon=True)
           for i in range(10)]
for t in threads: t.start()
print(" ".join(str(t.native_id) for t in threads), flush=True)
sys.stdin.read()
"#;
    let (mut child, line) = start_until_first_line(
        Command::new(python())
            .args(["-c", script])
            .stdin(std::process::Stdio::piped()),
    );
    let tids: Vec<u32> = line
        .split_whitespace()
        .map(|t| t.parse().unwrap())
        .collect();
    // Every idle thread is asleep on the event before the daemon starts (the last ones
    // started may still be on their way to it when their ids are printed).
    std::thread::sleep(Duration::from_millis(200));
    let daemon = Daemon::start(&[], &[]);
    let before: Vec<u64> = tids.iter().map(|&t| switches_of(t)).collect();
    let samples = daemon.samples();
    let after: Vec<u64> = tids.iter().map(|&t| switches_of(t)).collect();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    for (i, tid) in tids.iter().enumerate() {
        let thread = format!("idle-{i}");
        let series = find(
            &samples,
            "tracer_thread_context_switches_total",
            &[("process", "python3"), ("thread", thread.as_str())],
        );
        assert_eq!(
            series.len(),
            2,
            "thread {tid} ({thread}) has no series: {series:?}"
        );
        let counted: f64 = series.iter().map(|s| s.value).sum();
        assert_eq!(
            counted,
            (after[i] - before[i]) as f64,
            "thread {tid} ({thread}): switches since the attach"
        );
    }
}

/// A thread that predates the daemon and then runs: everything it did after the attach is
/// counted, its first switch out and the time on a CPU before it too, exactly as the
/// kernel's counters grew (the thread is asleep at the attach and at the scrape).
#[test]
fn a_thread_older_than_the_daemon_counts_from_the_attach() {
    if !can_trace("a_thread_older_than_the_daemon_counts_from_the_attach") {
        return;
    }
    let script = r#"
import ctypes, sys, threading, time
libc = ctypes.CDLL(None)
go, done, never = threading.Event(), threading.Event(), threading.Event()
def work():
    libc.prctl(15, b"older", 0, 0, 0)
    go.wait()
    for _ in range(20):
        time.sleep(0.002)
    sum(range(200000))
    done.set()
    never.wait()
t = threading.Thread(target=work, name="older", daemon=True)
t.start()
print(t.native_id, flush=True)
sys.stdin.readline()
go.set()
done.wait()
print("done", flush=True)
sys.stdin.read()
"#;
    use std::io::{BufRead as _, Write as _};
    let mut child = Command::new(python())
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let tid: u32 = lines.next().unwrap().unwrap().trim().parse().unwrap();
    let kernel = || (switches_of(tid), cpu_seconds_of(tid));
    // The thread is asleep on `go` before the daemon starts.
    std::thread::sleep(Duration::from_millis(200));
    let before = kernel();
    let daemon = Daemon::start(&[], &[]);
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "go").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "done");
    // It is asleep on `never` by now.
    std::thread::sleep(Duration::from_millis(200));
    let after = kernel();
    let samples = daemon.samples();
    drop(stdin);
    assert!(child.wait().unwrap().success());
    let pt = [("process", "python3"), ("thread", "older")];
    let switches: f64 = find(&samples, "tracer_thread_context_switches_total", &pt)
        .iter()
        .map(|s| s.value)
        .sum();
    assert!(after.0 - before.0 >= 20, "{before:?} {after:?}");
    assert_eq!(
        switches,
        (after.0 - before.0) as f64,
        "switches since the attach"
    );
    let cpu = value(&samples, "tracer_thread_cpu_seconds_total", &pt);
    assert!(
        (cpu - (after.1 - before.1)).abs() < 1e-6,
        "CPU {cpu} s since the attach, kernel {} s",
        after.1 - before.1
    );
}

#[test]
fn futex_probes_can_be_left_out() {
    if !can_trace("futex_probes_can_be_left_out") {
        return;
    }
    let dir = scratch();
    let config = dir.path().join("tracer.toml");
    std::fs::write(&config, "futex_waits = false\n").unwrap();
    let daemon = Daemon::start(&["--config", config.to_str().unwrap()], &[]);
    let (samples, truth, process, _) = run_mixed_workload(&daemon, dir.path());
    let mut contenders = 0;
    for t in truth["threads"].as_array().unwrap() {
        if t["lock_contender"].as_bool() != Some(true) || t["renames"].as_array().unwrap().len() > 1
        {
            continue;
        }
        contenders += 1;
        let pt = [
            ("process", process.as_str()),
            ("thread", t["comm"].as_str().unwrap()),
        ];
        // The thread blocked on its lock, and its switches are still counted...
        let voluntary = value(
            &samples,
            "tracer_thread_context_switches_total",
            &[pt[0], pt[1], ("kind", "voluntary")],
        );
        let want = t["voluntary_switches"].as_u64().unwrap();
        assert!(
            (voluntary as u64).abs_diff(want) <= 3.max(want / 50),
            "{pt:?}: {voluntary} voluntary switches vs kernel {want}"
        );
        // ...but no futex wait is seen.
        assert_eq!(
            value(&samples, "tracer_thread_futex_waits_total", &pt),
            0.0,
            "{pt:?}"
        );
    }
    assert!(contenders > 0, "the workload has lock contenders");
}

#[test]
fn hostile_thread_names_are_escaped() {
    if !can_trace("hostile_thread_names_are_escaped") {
        return;
    }
    let daemon = Daemon::start(&[], &[]);
    // Thread names are any text: Python ones become the labels of their threads.
    let script = r#"
import threading, time
names = ['q"}\n{x="\\', 'a b\tc \u202e', 'émoji-🧵-ünïcödé']
threads = [threading.Thread(target=time.sleep, args=(3,), name=n) for n in names]
for t in threads: t.start()
print("ready", flush=True)
for t in threads: t.join()
"#;
    let (mut child, line) = start_until_first_line(Command::new(python()).args(["-c", script]));
    assert_eq!(line.trim(), "ready");
    std::thread::sleep(Duration::from_millis(1500));
    // `samples` parses strictly: any unescaped quote or newline would fail here.
    let samples = daemon.samples();
    let threads: Vec<&str> = find(
        &samples,
        "tracer_thread_cpu_seconds_total",
        &[("process", "python3")],
    )
    .iter()
    .map(|s| s.labels["thread"].as_str())
    .collect();
    child.wait().unwrap();
    for expected in ["q\"}\n{x=\"\\", "a b\tc \u{202e}", "émoji-🧵-ünïcödé"] {
        assert!(
            threads.contains(&expected),
            "{expected:?} not in {threads:?}"
        );
    }
}

#[test]
fn a_hundred_thousand_random_thread_names_stay_bounded() {
    if !can_trace("a_hundred_thousand_random_thread_names_stay_bounded") {
        return;
    }
    let daemon = Daemon::start(&[], &[]);
    let dir = scratch();
    let (workload, process) = private_workload(dir.path());
    let before = daemon.rss_kib();
    let started = Instant::now();
    let status = Command::new(&workload)
        .arg("churn")
        .env("TRACER_CHURN_THREADS", "100000")
        .status()
        .unwrap();
    assert!(status.success());
    // Every exit handled: a burst of 200 000 events.
    let samples = samples_after_exits(&daemon, &process, 100_000);
    let after = daemon.rss_kib();
    let process = process.as_str();
    let series = find(
        &samples,
        "tracer_thread_cpu_seconds_total",
        &[("process", process)],
    );
    assert!(
        series.len() <= 64 + 1,
        "{} series for one process",
        series.len()
    );
    assert!(series.iter().any(|s| s.labels["thread"] == "other"));
    let created = value(
        &samples,
        "tracer_threads_created_total",
        &[("process", process)],
    );
    assert_eq!(created, 100_000.0);
    let folded = value(&samples, "tracer_series_folded_total", &[]);
    assert!(folded >= 100_000.0 - 64.0, "{folded}");
    assert!(
        after < before + 16 * 1024,
        "daemon memory grew from {before} KiB to {after} KiB over {:?}",
        started.elapsed()
    );
    assert_eq!(
        value(
            &samples,
            "tracer_events_lost_total",
            &[("kind", "thread_created")]
        ),
        0.0
    );
}

#[test]
fn ready_reload_and_clean_exit() {
    if !can_trace("ready_reload_and_clean_exit") {
        return;
    }
    let dir = scratch();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let config = dir.path().join("tracer.toml");
    std::fs::write(&config, "max_threads_per_process = 8\n").unwrap();
    let daemon = Daemon::start(
        &["--config", config.to_str().unwrap()],
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())],
    );
    let mut buf = [0u8; 64];
    let n = socket.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    let wait_for = |text: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !daemon.log.lock().unwrap().contains(text) {
            assert!(
                Instant::now() < deadline,
                "no {text:?} in:\n{}",
                daemon.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    std::fs::write(&config, "max_threads_per_process = 0\n").unwrap();
    daemon.signal(libc::SIGHUP);
    wait_for("keeping the previous configuration");
    std::fs::write(&config, "max_threads_per_process = 16\n").unwrap();
    daemon.signal(libc::SIGHUP);
    wait_for("configuration reloaded");
    // `stop` fails a daemon that does not exit on SIGTERM.
    let status = daemon.stop();
    assert!(status.success(), "{status}");
    let n = socket.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
}

#[test]
fn print_config_shows_the_file_under_the_flags() {
    let dir = scratch();
    let config = dir.path().join("tracer.toml");
    std::fs::write(
        &config,
        "listen = \"0.0.0.0:9000\"\nmax_threads_per_process = 5\n[[thread_name_rules]]\npattern = '\\d+'\nreplacement = \"N\"\n",
    )
    .unwrap();
    let out = Command::new(tracer())
        .args([
            "daemon",
            "--print-config",
            "--listen",
            "127.0.0.1:9999",
            "--config",
        ])
        .arg(&config)
        .output()
        .unwrap();
    expect_success("tracer daemon --print-config", &out);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("listen = \"127.0.0.1:9999\""), "{text}");
    assert!(text.contains("max_threads_per_process = 5"), "{text}");
    assert!(text.contains("max_series = 2000"), "{text}");
    assert!(text.contains("replacement = \"N\""), "{text}");
    let out = Command::new(tracer())
        .args(["daemon", "--print-config", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading config /nonexistent.toml"));
}

#[test]
fn python_threads_are_labelled_by_their_names_with_gil_waits() {
    if !can_trace("python_threads_are_labelled_by_their_names_with_gil_waits") {
        return;
    }
    let daemon = Daemon::start(&[], &[]);
    let status = Command::new(python())
        .arg(python_workload("io_vs_cpu.py"))
        .status()
        .unwrap();
    assert!(status.success());
    // Its four threads other than the main one; the process is named by its script.
    let samples = samples_after_exits(&daemon, "io_vs_cpu", 4);
    let gil = |thread: &str| {
        value(
            &samples,
            "tracer_python_gil_wait_seconds_total",
            &[("process", "io_vs_cpu"), ("thread", thread)],
        )
    };
    for thread in ["MainThread", "cpu-0", "cpu-1", "io-0", "io-1"] {
        let cpu = value(
            &samples,
            "tracer_thread_cpu_seconds_total",
            &[("process", "io_vs_cpu"), ("thread", thread)],
        );
        assert!(
            cpu > 0.0,
            "no series for Python thread {thread}: {:#?}\nprocesses: {:?}\ndaemon log:\n{}",
            find(
                &samples,
                "tracer_thread_cpu_seconds_total",
                &[("process", "io_vs_cpu")]
            ),
            find(&samples, "tracer_threads", &[])
                .iter()
                .map(|s| s.labels["process"].as_str())
                .collect::<Vec<_>>(),
            daemon.log.lock().unwrap()
        );
    }
    // Two CPU-bound threads share one GIL: each waits for it while the other runs.
    assert!(
        gil("cpu-0") > 0.01 && gil("cpu-1") > 0.01,
        "{} {}",
        gil("cpu-0"),
        gil("cpu-1")
    );
}

/// A CPython program that `exec`s another CPython (here Debian's, into sid's in its own root)
/// is another interpreter: the daemon reads the new one's names and arms its GIL, not the old
/// one's (whose addresses mean nothing after the `exec`).
#[test]
fn a_python_program_that_execs_another_is_read_afresh() {
    if !can_trace("a_python_program_that_execs_another_is_read_afresh") {
        return;
    }
    let Some(next) = support::interpreters::sid_pythons().into_iter().next() else {
        return;
    };
    let root = next.root.clone().unwrap();
    let files = next.files();
    std::fs::write(
        files.host("before_exec.py"),
        "import os, sys, threading, time\n\
         threading.Thread(target=time.sleep, args=(3600,), name='sleeper-before-exec', \
         daemon=True).start()\n\
         print(threading.get_native_id(), flush=True)\n\
         sys.stdin.readline()\n\
         root, python, script = sys.argv[1:]\n\
         os.chroot(root)\n\
         os.chdir('/')\n\
         os.execv(python, [python, script])\n",
    )
    .unwrap();
    // Two threads that hold the GIL in turn for a second; names longer than a kernel name.
    std::fs::write(
        files.host("after_exec.py"),
        "import sys, threading, time\n\
         def spin():\n    end = time.time() + 1.0\n    while time.time() < end: pass\n\
         \x20   time.sleep(3600)\n\
         for i in range(2):\n\
         \x20   threading.Thread(target=spin, name=f'spinner-after-exec-{i}', daemon=True).start()\n\
         sys.stdin.readline()\n",
    )
    .unwrap();
    let daemon = Daemon::start(&[], &[]);
    let (mut child, _) = start_until_first_line(
        Command::new(python())
            .arg(files.host("before_exec.py"))
            .arg(&root)
            .arg(&next.executable)
            .arg(files.seen("after_exec.py"))
            .stdin(std::process::Stdio::piped()),
    );
    let series = |samples: &[support::prom::Sample], process: &str, thread: &str| {
        !find(
            samples,
            "tracer_thread_cpu_seconds_total",
            &[("process", process), ("thread", thread)],
        )
        .is_empty()
    };
    // The first program's interpreter is read before it execs.
    let deadline = Instant::now() + PATIENCE;
    while !series(&daemon.samples(), "before_exec", "sleeper-before-exec") {
        assert!(
            Instant::now() < deadline,
            "the first program's thread was never named"
        );
        std::thread::sleep(POLL);
    }
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, b"exec\n").unwrap();
    let spinners = ["spinner-after-exec-0", "spinner-after-exec-1"];
    let deadline = Instant::now() + PATIENCE;
    let samples = loop {
        std::thread::sleep(POLL);
        let samples = daemon.samples();
        if spinners.iter().all(|t| series(&samples, "after_exec", t)) || Instant::now() > deadline {
            break samples;
        }
    };
    for thread in spinners {
        assert!(
            series(&samples, "after_exec", thread),
            "no series for {thread} after the exec into {}: {:#?}",
            next.label(),
            find(
                &samples,
                "tracer_thread_cpu_seconds_total",
                &[("process", "after_exec")]
            )
        );
    }
    // The new interpreter's GIL is the one whose waits are counted.
    let deadline = Instant::now() + PATIENCE;
    let gil = |samples: &[support::prom::Sample], thread: &str| {
        find(
            samples,
            "tracer_python_gil_wait_seconds_total",
            &[("process", "after_exec"), ("thread", thread)],
        )
        .first()
        .map_or(0.0, |s| s.value)
    };
    let samples = loop {
        let samples = daemon.samples();
        if spinners.iter().all(|t| gil(&samples, t) > 0.01) || Instant::now() > deadline {
            break samples;
        }
        std::thread::sleep(POLL);
    };
    for thread in spinners {
        assert!(
            gil(&samples, thread) > 0.01,
            "{thread} waited {} s for the GIL by its series",
            gil(&samples, thread)
        );
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}
