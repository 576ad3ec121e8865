//! Names of Rust threads: the kernel keeps 15 bytes of them, which is all tracer can show
//! (`name_source: "comm"`), and every rename is recorded. The bundled workload's `tokio`
//! scenario names a multi-thread runtime's threads longer than that.

mod support;

use std::path::Path;

use serde_json::Value;
use support::{
    compare::{Form, assert_matches},
    *,
};

/// The kernel's cut of a name: its first 15 bytes (std cuts at a character boundary).
fn kernel_cut(name: &str) -> &str {
    let mut end = name.len().min(15);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

fn thread<'a>(summary: &'a Value, tid: &Value) -> &'a Value {
    summary["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tid"] == *tid)
        .unwrap_or_else(|| panic!("thread {tid} not captured"))
}

fn record_scenario(test: &str, scenario: &str) -> Option<(Value, Value)> {
    if !can_trace(test) {
        return None;
    }
    let (summary, truth, _) = record_summary(&[Path::new(&rust_workload())], &[scenario]);
    Some((summary, truth))
}

#[test]
fn tokio_runtime_threads_are_named_by_the_kernel_cut_of_their_names() {
    let Some((summary, truth)) = record_scenario(
        "tokio_runtime_threads_are_named_by_the_kernel_cut_of_their_names",
        "tokio",
    ) else {
        return;
    };
    // Threads, parents, renames and counters as everywhere else.
    assert_matches(&summary, &truth, Form::Command);
    let runtime: Vec<&Value> = truth["threads"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["role"] == "tokio")
        .collect();
    assert_eq!(runtime.len(), 4, "{truth:#}");
    let workers: Vec<&Value> = runtime
        .iter()
        .copied()
        .filter(|t| t["parent_tid"] == truth["pid"])
        .collect();
    assert_eq!(
        workers.len(),
        2,
        "the blocking threads are started by a worker"
    );
    for want in runtime {
        let got = thread(&summary, &want["tid"]);
        let full = want["name"].as_str().unwrap();
        assert!(full.len() > 15 && full.starts_with("tracer-tokio-thread-"));
        // What the kernel kept is all there is: the name is the comm, cut.
        assert_eq!(got["name"], kernel_cut(full), "{got:#}");
        assert_eq!(got["comm"], "tracer-tokio-th");
        assert_eq!(got["name_source"], "comm");
        assert!(got["gil_wait_ns"].is_null(), "not a Python thread: {got:#}");
    }
}

#[test]
fn long_and_renamed_rust_threads_keep_their_kernel_names() {
    let Some((summary, truth)) = record_scenario(
        "long_and_renamed_rust_threads_keep_their_kernel_names",
        "mixed",
    ) else {
        return;
    };
    assert_matches(&summary, &truth, Form::Command);
    for want in truth["threads"].as_array().unwrap() {
        let got = thread(&summary, &want["tid"]);
        assert_eq!(got["name"], want["comm"], "{got:#}");
        assert_eq!(got["name_source"], "comm");
        assert!(got["gil_wait_ns"].is_null());
        if want["role"] == "longname" {
            assert_eq!(got["name"], "a-thread-name-l");
            assert_eq!(
                want["name"].as_str().map(kernel_cut),
                got["name"].as_str(),
                "the kernel keeps the first 15 bytes"
            );
        }
    }
}
