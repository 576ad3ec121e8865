//! Holding a `tracer.record/v1` summary against a workload's `tracer.truth/v1`.

use std::collections::BTreeSet;

use serde_json::Value;

/// How the capture was started, which decides what the main thread's record can show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// `record -- CMD`: the main thread was renamed by `exec` from `tracer`.
    Command,
    /// `record --pid`: counters of the main thread start at its `baseline`.
    Pid,
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("`{key}` is not an unsigned integer in {v}"))
}

fn within(actual: u64, expected: u64, fraction: f64, absolute: u64) -> bool {
    within_or_above_by(actual, expected, fraction, absolute, 0)
}

/// Whether `actual` is within the tolerance of `expected`, or above it by at most `extra` more.
fn within_or_above_by(
    actual: u64,
    expected: u64,
    fraction: f64,
    absolute: u64,
    extra: u64,
) -> bool {
    let allowed = ((expected as f64 * fraction) as u64).max(absolute);
    actual.saturating_add(allowed) >= expected && actual <= expected + allowed + extra
}

fn renames(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .unwrap_or_else(|| panic!("renames is not an array: {v}"))
        .iter()
        .map(|r| {
            (
                r["from"].as_str().unwrap().to_owned(),
                r["to"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Every difference between the capture and the truth beyond the tolerances of the
/// Foundation issue; empty when they agree.
pub fn differences(summary: &Value, truth: &Value, form: Form) -> Vec<String> {
    let mut problems = Vec::new();
    let mut fail = |p: String| problems.push(p);
    assert_eq!(summary["schema"], "tracer.record/v1");
    // A lost waking is allowed: the kernel, rarely, runs no program for one, and the summary's
    // counters come from the wakeups and switches. Every other loss is a failure.
    let by_kind = summary["lost_events_by_kind"]
        .as_object()
        .expect("lost_events_by_kind");
    let lost: u64 = by_kind.values().map(|n| n.as_u64().expect("a count")).sum();
    if summary["lost_events"] != lost {
        fail(format!(
            "lost_events {} but by kind {by_kind:?}",
            summary["lost_events"]
        ));
    }
    if by_kind.keys().any(|kind| kind != "waking") {
        fail(format!("lost events: {by_kind:?}"));
    }
    if summary["pid"] != truth["pid"] {
        fail(format!("pid {} != truth {}", summary["pid"], truth["pid"]));
    }
    let traced = summary["threads"].as_array().expect("threads");
    let expected = truth["threads"].as_array().expect("truth threads");
    let traced_tids: BTreeSet<u64> = traced.iter().map(|t| u(t, "tid")).collect();
    let expected_tids: BTreeSet<u64> = expected.iter().map(|t| u(t, "tid")).collect();
    if traced_tids != expected_tids {
        fail(format!(
            "threads differ: only traced {:?}, only in truth {:?}",
            traced_tids.difference(&expected_tids).collect::<Vec<_>>(),
            expected_tids.difference(&traced_tids).collect::<Vec<_>>()
        ));
    }
    let main_tid = u(truth, "pid");
    for want in expected {
        let tid = u(want, "tid");
        let Some(got) = traced.iter().find(|t| u(t, "tid") == tid) else {
            continue;
        };
        let who = format!("thread {tid} ({})", want["name"]);
        let is_main = tid == main_tid;
        if got["pid"] != truth["pid"] {
            fail(format!("{who}: pid {}", got["pid"]));
        }
        if got["comm"] != want["comm"] {
            fail(format!("{who}: comm {} != {}", got["comm"], want["comm"]));
        }
        if got["parent_tid"] != want["parent_tid"] {
            fail(format!(
                "{who}: parent {} != {}",
                got["parent_tid"], want["parent_tid"]
            ));
        }
        if is_main != got["created_ns"].is_null() {
            fail(format!("{who}: created_ns {}", got["created_ns"]));
        }
        if !is_main && got["exited_ns"].is_null() && !want["daemon"].as_bool().unwrap_or(false) {
            fail(format!("{who}: exit not seen"));
        }
        let mut want_renames = renames(&want["renames"]);
        if is_main && form == Form::Command {
            want_renames.insert(0, ("tracer".into(), want["comm"].as_str().unwrap().into()));
        }
        if renames(&got["renames"]) != want_renames {
            fail(format!(
                "{who}: renames {} != {want_renames:?}",
                got["renames"]
            ));
        }

        // Counters the thread read of itself, less what it had before the capture.
        let base = |key: &str| match &want["baseline"] {
            Value::Null => 0,
            b if form == Form::Pid => u(b, key),
            _ => 0,
        };
        let truth_of = |key: &str| u(want, key) - base(key);
        // A thread's counters in the capture end at its exit, its truth at its reading: what
        // it ran or waited for in between (its teardown, or a stall of the virtual CPU the
        // kernel counts as its running time) can only be as long as the time that passed.
        let teardown_ns = match (got["exited_ns"].as_u64(), want["read_ns"].as_u64()) {
            (Some(exited), Some(read)) if read > 0 => exited.saturating_sub(read),
            _ => 0,
        };
        for (key, fraction, absolute, after_read) in [
            ("voluntary_switches", 0.02, 3, 0),
            ("involuntary_switches", 0.02, 3, 0),
            ("on_cpu_ns", 0.05, 2_000_000, teardown_ns),
            ("runqueue_wait_ns", 0.10, 5_000_000, teardown_ns),
        ] {
            let (actual, expected) = (u(got, key), truth_of(key));
            if !within_or_above_by(actual, expected, fraction, absolute, after_read) {
                fail(format!("{who}: {key} {actual} vs kernel {expected}"));
            }
        }
        if want["lock_contender"].as_bool() == Some(true) && u(got, "futex_waits") == 0 {
            fail(format!("{who}: contended a lock but no futex waits"));
        }
        if u(got, "futex_waits") > 0 && u(got, "futex_wait_ns") == 0 {
            fail(format!("{who}: futex waits with no wait time"));
        }
        if !got["gil_wait_ns"].is_null() && !got["gil_wait_ns"].is_u64() {
            fail(format!("{who}: gil_wait_ns {}", got["gil_wait_ns"]));
        }
    }
    problems
}

/// Panics listing every difference, with both documents for the record.
pub fn assert_matches(summary: &Value, truth: &Value, form: Form) {
    let problems = differences(summary, truth, form);
    assert!(
        problems.is_empty(),
        "capture differs from the kernel's counters:\n  {}\n\nsummary: {summary:#}\n\ntruth: {truth:#}",
        problems.join("\n  ")
    );
}

#[test]
fn tolerances_are_the_larger_of_fraction_and_absolute() {
    assert!(within(103, 100, 0.02, 3));
    assert!(!within(104, 100, 0.02, 3));
    assert!(within(1020, 1000, 0.02, 3));
    assert!(!within(1021, 1000, 0.02, 3));
}

#[test]
fn time_after_the_reading_is_allowed_above_only() {
    // 4 ms more than read, 5 ms passed between the reading and the exit.
    assert!(within_or_above_by(6_000_000, 2_000_000, 0.05, 0, 5_000_000));
    assert!(!within_or_above_by(
        8_000_000, 2_000_000, 0.05, 0, 5_000_000
    ));
    assert!(!within_or_above_by(
        1_000_000, 2_000_000, 0.05, 0, 5_000_000
    ));
    assert!(!within(97, 100, 0.02, 2));
}
