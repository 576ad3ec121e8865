//! `tracer daemon`'s series: per-process histograms summed from the thread series, the
//! host-wide series budget, and the compressed exposition.

mod support;

use std::{
    collections::BTreeMap,
    process::Command,
    time::{Duration, Instant},
};

use support::{prom::value, *};

/// How often the tests scrape while they wait for the daemon to catch up.
const POLL: Duration = Duration::from_millis(200);
/// The longest they wait: a bound on a daemon that never gets there, not on its speed.
const PATIENCE: Duration = Duration::from_secs(120);

/// A sample's value in integer units of `1e-9` (nanoseconds for seconds): the daemon writes
/// at most nine decimals, so this is exact, and sums of it are too.
fn nanos(value: f64) -> u64 {
    (value * 1e9).round() as u64
}

/// The text of the first scrape in which `process` has at least `exits` thread exits
/// counted (their last counts are then in their series); after `PATIENCE`, the last one.
fn text_after_exits(daemon: &Daemon, process: &str, exits: usize) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        std::thread::sleep(POLL);
        let text = prom::scrape(&daemon.addr);
        let samples = prom::parse(&text);
        let exited = value(
            &samples,
            "tracer_threads_exited_total",
            &[("process", process)],
        );
        if exited >= exits as f64 || Instant::now() > deadline {
            return text;
        }
    }
}

/// Every process's `tracer_futex_wait_seconds` counts exactly the waits and the time of its
/// thread series in the same scrape, and no histogram has a `thread` label. The workload's
/// lockers contend on a mutex, so its process has waits to count.
#[test]
fn futex_histogram_of_a_process_sums_its_thread_counters() {
    if !can_trace("futex_histogram_of_a_process_sums_its_thread_counters") {
        return;
    }
    let daemon = Daemon::start(&[], &[]);
    let dir = scratch();
    let truth_path = dir.path().join("truth.json");
    let (workload, process) = private_workload(dir.path());
    let status = Command::new(&workload)
        .arg("mixed")
        .env("TRACER_TRUTH", &truth_path)
        .status()
        .unwrap();
    assert!(status.success());
    let truth = read_json(&truth_path);
    let threads = truth["threads"].as_array().unwrap();
    let text = text_after_exits(&daemon, &process, threads.len() - 1);

    let histograms: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" histogram"))
        .collect();
    assert!(histograms.contains(&"tracer_futex_wait_seconds"), "{text}");
    let samples = prom::parse(&text);
    for s in &samples {
        assert!(
            !(histograms.iter().any(|h| s.name.starts_with(h)) && s.labels.contains_key("thread")),
            "a histogram with a thread label: {s:?}"
        );
    }
    // (waits, wait nanoseconds) by process: from the thread counters, and from the histogram.
    let mut threads_sum: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut histogram: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for s in &samples {
        let Some(p) = s.labels.get("process").map(String::as_str) else {
            continue;
        };
        match s.name.as_str() {
            "tracer_thread_futex_waits_total" => {
                threads_sum.entry(p).or_default().0 += s.value as u64
            }
            "tracer_thread_futex_wait_seconds_total" => {
                threads_sum.entry(p).or_default().1 += nanos(s.value);
            }
            "tracer_futex_wait_seconds_count" => histogram.entry(p).or_default().0 = s.value as u64,
            "tracer_futex_wait_seconds_sum" => histogram.entry(p).or_default().1 = nanos(s.value),
            _ => {}
        }
    }
    for (p, sums) in &threads_sum {
        assert_eq!(
            histogram.get(p).copied().unwrap_or_default(),
            *sums,
            "process {p}: histogram (count, ns) against its threads' counters"
        );
    }
    // The lockers' waits are in it: at least one per locker that the kernel saw block.
    let lockers: u64 = threads
        .iter()
        .filter(|t| t["role"] == "locker")
        .map(|t| u64::from(t["voluntary_switches"].as_u64().unwrap() > 0))
        .sum();
    let (waits, _) = histogram[process.as_str()];
    assert!(
        lockers > 0 && waits >= lockers,
        "{waits} waits, {lockers} lockers that blocked"
    );
}
