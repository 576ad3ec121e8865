//! `tracer_thread_blocked_seconds` and the alerting rules on it
//! (`deploy/prometheus/alerts.yml`), against a heartbeat thread that stops and starts again
//! on command and says when it did (`tests/workloads/python/heartbeat.py`).

mod support;

use std::{
    io::{BufRead as _, BufReader, Lines, Write as _},
    path::Path,
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{prom, services::*};

const GAUGE: &str = "tracer_thread_blocked_seconds";
/// The heartbeat's series.
const HEARTBEAT: [(&str, &str); 2] = [("process", "heartbeat"), ("thread", "heartbeat")];

/// `CLOCK_MONOTONIC` now, in nanoseconds (the workload's clock).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The heartbeat workload, told what to do on its stdin; killed when dropped.
struct Heartbeat {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    tid: u32,
}

impl Heartbeat {
    fn start() -> Self {
        let mut child = Command::new(support::python())
            .arg(support::python_workload("heartbeat.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("running heartbeat.py");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ids: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        let tid = ids["heartbeat"].as_u64().unwrap() as u32;
        Self { child, lines, tid }
    }

    /// Sends `command` (`stop`, `start`) and returns the `CLOCK_MONOTONIC` time the thread
    /// says it did so.
    fn tell(&mut self, command: &str) -> u64 {
        writeln!(self.child.stdin.as_mut().unwrap(), "{command}").unwrap();
        let line = self.lines.next().expect("the heartbeat's answer").unwrap();
        let (word, ns) = line.split_once(' ').unwrap();
        let expected = if command == "stop" {
            "stopped"
        } else {
            "started"
        };
        assert_eq!(word, expected, "{line}");
        ns.parse().unwrap()
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The heartbeat's gauge at one scrape of the daemon at `addr`, if it is there.
fn heartbeat_gauge(addr: &str) -> Option<f64> {
    let samples = prom::parse(&prom::scrape(addr));
    prom::find(&samples, GAUGE, &HEARTBEAT)
        .first()
        .map(|s| s.value)
}

/// A daemon with `blocked_min_secs = MIN` on a free port: it and its address.
fn daemon(dir: &Path, min_secs: u64) -> (Running, String) {
    let config = dir.join("tracer.toml");
    std::fs::write(
        &config,
        format!("blocked_min_secs = {min_secs}\nmax_threads_per_process = 100000\n"),
    )
    .unwrap();
    let port = free_port();
    let daemon = start_daemon(dir, port, &["--config", config.to_str().unwrap()]);
    (daemon, localhost(port).to_string())
}

/// Waits until the daemon exports the heartbeat's thread by its Python name.
fn wait_for_series(addr: &str) {
    let seen = wait_until(Duration::from_secs(30), || {
        let samples = prom::parse(&prom::scrape(addr));
        !prom::find(&samples, "tracer_thread_cpu_seconds_total", &HEARTBEAT).is_empty()
    });
    assert!(seen, "the daemon never exported the heartbeat thread");
}

#[test]
fn a_stopped_heartbeat_is_blocked_after_the_minimum_growing_until_it_beats_again() {
    const TEST: &str =
        "a_stopped_heartbeat_is_blocked_after_the_minimum_growing_until_it_beats_again";
    if !support::can_trace(TEST) {
        return;
    }
    const MIN_SECS: f64 = 2.0;
    let dir = support::scratch();
    let (mut daemon, addr) = daemon(dir.path(), MIN_SECS as u64);
    let mut heartbeat = Heartbeat::start();
    wait_for_series(&addr);

    // Beating (asleep 50 ms at a time), it is never in the gauge, for longer than the
    // minimum.
    let beating = Instant::now();
    while beating.elapsed() < Duration::from_secs_f64(MIN_SECS + 1.0) {
        assert_eq!(
            heartbeat_gauge(&addr),
            None,
            "a beating heartbeat is not blocked"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Stopped: the gauge appears once it has been asleep for the minimum, says how long it
    // has been (never more than the workload says), and grows.
    let stopped_ns = heartbeat.tell("stop");
    let mut first = None;
    let appeared = wait_until(Duration::from_secs(30), || {
        let before = monotonic_ns();
        let value = heartbeat_gauge(&addr);
        let after = monotonic_ns();
        if let Some(v) = value {
            let (low, high) = (
                (before - stopped_ns) as f64 / 1e9,
                (after - stopped_ns) as f64 / 1e9,
            );
            assert!(v >= MIN_SECS, "{v} s is under the minimum");
            // It fell asleep in a futex wait, whose start the daemon knows.
            assert!(
                v <= high + 0.01 && v >= low - 0.2,
                "{v} s, truth {low}..{high} s"
            );
            first = Some(v);
        }
        value.is_some()
    });
    assert!(appeared, "the stopped heartbeat never appeared in {GAUGE}");
    let state = std::fs::read_to_string(format!("/proc/{}/stat", heartbeat.tid)).unwrap();
    assert!(
        state
            .rsplit_once(')')
            .unwrap()
            .1
            .trim_start()
            .starts_with('S')
    );
    let first = first.unwrap();
    let grew = wait_until(Duration::from_secs(30), || {
        heartbeat_gauge(&addr).is_some_and(|v| v >= first + 1.0)
    });
    assert!(grew, "the gauge did not grow from {first} s");

    // Beating again, it leaves the gauge.
    heartbeat.tell("start");
    let gone = wait_until(Duration::from_secs(10), || heartbeat_gauge(&addr).is_none());
    assert!(gone, "the heartbeat beats again but is still in {GAUGE}");
    daemon.assert_alive();
}

/// The rule file with its thresholds shortened: `> 60` to `> heartbeat_secs` and `> 600` to
/// `> any_secs`, each written once.
fn shortened_rules(heartbeat_secs: u64, any_secs: u64) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/alerts.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    for threshold in ["> 60\n", "> 600\n"] {
        assert_eq!(
            text.matches(threshold).count(),
            1,
            "{threshold:?} in {text}"
        );
    }
    text.replace("> 600\n", &format!("> {any_secs}\n"))
        .replace("> 60\n", &format!("> {heartbeat_secs}\n"))
}

/// The alerts firing in the Prometheus at `api` for the heartbeat's thread, by name.
fn heartbeat_alerts(api: std::net::SocketAddr) -> Vec<String> {
    let (_, body) = http_get(api, "/api/v1/alerts").expect("querying alerts");
    let reply: Value = serde_json::from_str(&body).unwrap();
    reply["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["state"] == "firing" && a["labels"]["thread"] == "heartbeat")
        .map(|a| a["labels"]["alertname"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_alerting_rules_check_and_fire_for_a_stopped_heartbeat() {
    const TEST: &str = "the_alerting_rules_check_and_fire_for_a_stopped_heartbeat";
    let promtool = Path::new("/usr/bin/promtool");
    if !support::can_trace(TEST)
        || !have_program(TEST, Path::new(PROMETHEUS), "prometheus")
        || !have_program(TEST, promtool, "prometheus")
    {
        return;
    }
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/alerts.yml");
    let check = Command::new(promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    support::expect_success("promtool check rules", &check);

    let dir = support::scratch();
    let (mut daemon, addr) = daemon(dir.path(), 1);
    // The thresholds shortened to seconds, so that the rules fire within a test.
    std::fs::write(dir.path().join("alerts.yml"), shortened_rules(3, 5)).unwrap();
    let (mut prometheus, api) = start_prometheus_with(
        dir.path(),
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: [alerts.yml]\n\
             scrape_configs:\n  - job_name: tracer\n    static_configs:\n      - targets: ['{addr}']\n"
        ),
    );
    let mut heartbeat = Heartbeat::start();
    wait_for_series(&addr);
    let scraped = wait_until(Duration::from_secs(30), || {
        query(
            api,
            r#"tracer_thread_cpu_seconds_total{thread="heartbeat"}"#,
        )
        .is_ok_and(|r| !r.is_empty())
    });
    assert!(scraped, "Prometheus never scraped the heartbeat's series");
    assert_eq!(
        heartbeat_alerts(api),
        Vec::<String>::new(),
        "it still beats"
    );

    heartbeat.tell("stop");
    let mut firing = Vec::new();
    let fired = wait_until(Duration::from_secs(60), || {
        firing = heartbeat_alerts(api);
        firing.sort();
        firing == ["TracerHeartbeatThreadStuck", "TracerThreadBlockedLong"]
    });
    assert!(fired, "firing for the heartbeat: {firing:?}");
    daemon.assert_alive();
    prometheus.assert_alive();
}
