//! The daemon and processes in containers: the `unit` and `container` labels, from the
//! cgroups processes run in; the join of tracer's series with kube-state-metrics'
//! `kube_pod_container_info` that `deploy/kubernetes/prometheus/rules.yml` records, evaluated
//! by a real Prometheus; and CPython services in PID namespaces and root file systems of
//! their own, named as on the host.
//!
//! The workloads run in cgroups made for the test (in the machine's cgroup v2 hierarchy)
//! with the paths systemd gives a service and the Kubernetes kubelet (systemd driver,
//! containerd) gives a container: the daemon reads them from `/proc/PID/cgroup` as it would
//! on a node.

mod support;

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Instant,
};

use support::{interpreters::*, prom::find, services::*, *};

/// A container id as containerd reports it (64 hex digits), and its first 12.
const CONTAINER_ID: &str = "9c0b5e4f3a2d1c0b9a8f7e6d5c4b3a29181716151413121110f0e0d0c0b0a090";
const CONTAINER: &str = "9c0b5e4f3a2d";
/// Another pod's container, which no workload runs in.
const OTHER_ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// The cgroup v2 hierarchy's mount point, from this process's mount table.
fn cgroup2_root() -> Option<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    table.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split(' ').nth(4)?;
        (right.split(' ').next() == Some("cgroup2")).then(|| PathBuf::from(mount_point))
    })
}

/// Cgroups made for one test under a directory of its own, removed when dropped (their
/// processes moved back to the root cgroup first).
struct Cgroups {
    root: PathBuf,
    top: PathBuf,
}

impl Cgroups {
    /// None, saying why, where this machine has no cgroup v2 hierarchy (a failure in CI).
    fn new(test: &str) -> Option<Self> {
        let Some(root) = cgroup2_root() else {
            let reason = "no cgroup v2 hierarchy is mounted";
            assert!(std::env::var_os("CI").is_none(), "{test}: {reason}");
            eprintln!("skipped {test}: {reason}");
            return None;
        };
        let top = root.join(format!("tracer-test-{}", std::process::id()));
        std::fs::create_dir_all(&top).unwrap_or_else(|e| panic!("{}: {e}", top.display()));
        Some(Self { root, top })
    }

    /// Makes `path` (relative, `/`-separated) under the test's directory.
    fn make(&self, path: &str) -> PathBuf {
        let dir = self.top.join(path);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        dir
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut todo = vec![self.top.clone()];
        while let Some(dir) = todo.pop() {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                todo.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
            dirs.push(dir);
        }
        // Deepest first: a cgroup is removed once it has no children and no processes.
        for dir in dirs.iter().rev() {
            if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in procs.lines() {
                    let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Starts the service in `dir` (by its script `orders_service.py`) inside cgroup `cgroup`:
/// its shell moves itself there before it becomes Python. Returns it with the id its
/// worker printed.
fn start_service(dir: &Path, cgroup: Option<&Path>) -> (Child, u32) {
    let script = dir.join("orders_service.py");
    std::fs::write(&script, PYTHON_SERVICE).unwrap();
    let procs = cgroup.map_or_else(String::new, |c| {
        c.join("cgroup.procs").display().to_string()
    });
    let (child, line) = start_until_first_line(
        Command::new("sh")
            .args([
                "-c",
                r#"if [ -n "$1" ]; then echo $$ > "$1" || exit 1; fi; exec "$2" "$3""#,
                "sh",
                &procs,
            ])
            .arg(python())
            .arg(&script)
            .current_dir(dir)
            .stdin(Stdio::piped()),
    );
    let tid = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("the service printed {line:?}"));
    (child, tid)
}

/// Ends a service started by [`start_service`].
fn stop_service(mut child: Child) {
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
}

/// The daemon with `labels` on.
fn daemon_with_labels(dir: &Path, labels: &str) -> Daemon {
    let config = dir.join("tracer.toml");
    std::fs::write(&config, format!("labels = {labels}\n")).unwrap();
    Daemon::start(&["--config", config.to_str().unwrap()], &[])
}

/// Three CPython services run the same script: one as a systemd service, one in a
/// Kubernetes container, one in neither. Each has series of its own, told apart by `unit`
/// and `container` alone, with its own thread's CPU time as the kernel counts it and its own
/// thread count.
#[test]
fn units_and_containers_tell_processes_of_one_name_apart() {
    let test = "units_and_containers_tell_processes_of_one_name_apart";
    if !can_trace(test) {
        return;
    }
    let Some(cgroups) = Cgroups::new(test) else {
        return;
    };
    let unit = format!("orders-{}.service", std::process::id());
    let service_cgroup = cgroups.make(&format!("system.slice/{unit}"));
    let container_cgroup = cgroups.make(&format!(
        "kubepods.slice/kubepods-burstable.slice/\
         kubepods-burstable-pod4a1e7c2b_93f1_4d0e_8c55_0b6f3e2d1a99.slice/\
         cri-containerd-{CONTAINER_ID}.scope"
    ));
    let dir = scratch();
    let daemon = daemon_with_labels(dir.path(), r#"["unit", "container"]"#);
    let places = [
        ("unit", Some(service_cgroup)),
        ("container", Some(container_cgroup)),
        ("neither", None),
    ];
    let services: Vec<(&str, Child, u32)> = places
        .iter()
        .map(|(place, cgroup)| {
            let home = dir.path().join(place);
            std::fs::create_dir(&home).unwrap();
            let (child, tid) = start_service(&home, cgroup.as_deref());
            (*place, child, tid)
        })
        .collect();
    let labels_of = |place: &str| -> Vec<(&str, String)> {
        match place {
            "unit" => vec![("unit", unit.clone())],
            "container" => vec![("container", CONTAINER.to_owned())],
            _ => vec![],
        }
    };
    // The series of `place`: exactly its labels, none of the others'.
    let series_of = |samples: &[support::prom::Sample], name: &str, place: &str| -> Vec<f64> {
        let want = labels_of(place);
        find(samples, name, &[("process", "orders_service")])
            .into_iter()
            .filter(|s| {
                ["unit", "container"].iter().all(|label| {
                    let expected = want.iter().find(|(l, _)| l == label).map(|(_, v)| v);
                    s.labels.get(*label) == expected
                })
            })
            .filter(|s| {
                name != "tracer_thread_cpu_seconds_total"
                    || s.labels.get("thread").map(String::as_str) == Some("worker-main-loop")
            })
            .map(|s| s.value)
            .collect()
    };
    let deadline = Instant::now() + PATIENCE;
    let samples = loop {
        std::thread::sleep(POLL);
        let samples = daemon.samples();
        let all_there = services.iter().all(|(place, _, _)| {
            series_of(&samples, "tracer_thread_cpu_seconds_total", place).len() == 1
        });
        if all_there || Instant::now() > deadline {
            break samples;
        }
    };
    for (place, child, tid) in &services {
        let cpu = series_of(&samples, "tracer_thread_cpu_seconds_total", place);
        let want = cpu_seconds_of(*tid);
        assert!(
            cpu.len() == 1 && (cpu[0] - want).abs() <= 0.002f64.max(want * 0.05),
            "{place}: worker-main-loop series {cpu:?} s, the kernel counts {want} s"
        );
        let threads = series_of(&samples, "tracer_threads", place);
        let tasks = std::fs::read_dir(format!("/proc/{}/task", child.id()))
            .unwrap()
            .count() as f64;
        assert_eq!(threads, [tasks], "{place}: tracer_threads");
    }
    for (_, child, _) in services {
        stop_service(child);
    }
}

/// Serves `body` as `/metrics` on a port of its own until the test ends: a stand-in for
/// kube-state-metrics.
fn serve_text(body: String) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

/// A Prometheus scraping tracer and kube-state-metrics (a stand-in serving
/// `kube_pod_container_info` for the workload's pod and another) with the deployment's
/// recording rules: the workload's thread series get their pod, namespace and container
/// name, and no other pod's.
#[test]
fn pods_and_namespaces_join_from_kube_state_metrics() {
    let test = "pods_and_namespaces_join_from_kube_state_metrics";
    if !can_trace(test) || !have_program(test, Path::new(PROMETHEUS), "prometheus") {
        return;
    }
    let Some(cgroups) = Cgroups::new(test) else {
        return;
    };
    let container_cgroup = cgroups.make(&format!(
        "kubepods.slice/kubepods-besteffort.slice/\
         kubepods-besteffort-pod0d6f1c3e_5b2a_4e8f_9c71_2a4b6d8e0f13.slice/\
         cri-containerd-{CONTAINER_ID}.scope"
    ));
    let dir = scratch();
    let port = free_port();
    let config = dir.path().join("tracer.toml");
    std::fs::write(&config, "labels = [\"container\"]\n").unwrap();
    let _daemon = start_daemon(dir.path(), port, &["--config", config.to_str().unwrap()]);
    let home = dir.path().join("service");
    std::fs::create_dir(&home).unwrap();
    let (child, _) = start_service(&home, Some(&container_cgroup));
    let ksm = serve_text(format!(
        "# TYPE kube_pod_container_info gauge\n\
         kube_pod_container_info{{namespace=\"shop\",pod=\"orders-7d4f9b-x2k8q\",uid=\"0d6f1c3e\",\
         container=\"orders\",image=\"registry.example/orders:1.4\",\
         container_id=\"containerd://{CONTAINER_ID}\"}} 1\n\
         kube_pod_container_info{{namespace=\"kube-system\",pod=\"coredns-5d78c9869d-abcde\",\
         uid=\"77aa\",container=\"coredns\",image=\"coredns:1.11\",\
         container_id=\"containerd://{OTHER_ID}\"}} 1\n"
    ));
    let rules =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/prometheus/rules.yml");
    let (_prometheus, prometheus) = start_prometheus_with(
        dir.path(),
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: ['{}']\n\
             scrape_configs:\n\
             \x20 - job_name: tracer\n    static_configs:\n      - targets: ['{}']\n\
             \x20 - job_name: kube-state-metrics\n    honor_labels: true\n    static_configs:\n      - targets: ['{ksm}']\n",
            rules.display(),
            localhost(port),
        ),
    );
    let tasks = std::fs::read_dir(format!("/proc/{}/task", child.id()))
        .unwrap()
        .count() as f64;
    // The pod's threads: one series per thread name, with the pod's labels.
    let by_pod = "namespace_pod:tracer_threads:sum";
    let deadline = Instant::now() + PATIENCE;
    let rows = loop {
        std::thread::sleep(POLL);
        let rows = query(prometheus, by_pod).unwrap_or_default();
        if !rows.is_empty() || Instant::now() > deadline {
            break rows;
        }
    };
    let got: BTreeMap<String, f64> = rows
        .iter()
        .map(|r| {
            let m = &r["metric"];
            (
                format!(
                    "{}/{}/{}",
                    m["namespace"].as_str().unwrap_or("?"),
                    m["pod"].as_str().unwrap_or("?"),
                    m["container_name"].as_str().unwrap_or("?")
                ),
                r["value"][1].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        BTreeMap::from([("shop/orders-7d4f9b-x2k8q/orders".to_owned(), tasks)]),
        "{by_pod}"
    );
    let cpu = "namespace_pod_thread:tracer_thread_cpu_seconds:rate5m";
    let deadline = Instant::now() + PATIENCE;
    let rows = loop {
        std::thread::sleep(POLL);
        let rows =
            query(prometheus, &format!("{cpu}{{thread=\"worker-main-loop\"}}")).unwrap_or_default();
        if !rows.is_empty() || Instant::now() > deadline {
            break rows;
        }
    };
    assert_eq!(rows.len(), 1, "{cpu}: {rows:?}");
    let m = &rows[0]["metric"];
    assert_eq!(
        (
            m["namespace"].as_str(),
            m["pod"].as_str(),
            m["process"].as_str()
        ),
        (
            Some("shop"),
            Some("orders-7d4f9b-x2k8q"),
            Some("orders_service")
        ),
        "{cpu}: {m}"
    );
    stop_service(child);
}

/// A CPython service (as `NAME.py`) with two named threads that block on an event and one
/// that keeps running, none with a name the kernel can hold whole; it prints `ready` once
/// all three run and ends when standard input closes.
const NAMED_SERVICE: &str = r#"
import sys, threading, time
stop = threading.Event()
started = []
def blocked():
    started.append(1)
    stop.wait()
def busy():
    started.append(1)
    while not stop.is_set():
        time.sleep(0.01)
for name, target in (("ingest-partition-worker-1", blocked),
                     ("ingest-partition-worker-2", blocked),
                     ("heartbeat-of-the-ingest-service", busy)):
    threading.Thread(target=target, name=name, daemon=True).start()
while len(started) < 3:
    time.sleep(0.001)
print("ready", flush=True)
sys.stdin.read()
stop.set()
"#;

/// The names [`NAMED_SERVICE`] gives its threads.
const NAMED_THREADS: [&str; 4] = [
    "MainThread",
    "ingest-partition-worker-1",
    "ingest-partition-worker-2",
    "heartbeat-of-the-ingest-service",
];

/// The host id of the interpreter a launcher (pid `launcher`) started: itself when it execs
/// the interpreter, else its child.
fn interpreter_pid(launcher: u32, forks: bool) -> u32 {
    if !forks {
        return launcher;
    }
    let deadline = Instant::now() + PATIENCE;
    loop {
        let children =
            std::fs::read_to_string(format!("/proc/{launcher}/task/{launcher}/children"))
                .unwrap_or_default();
        if let Some(child) = children.split_whitespace().next() {
            return child.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "{launcher} started no child");
        std::thread::sleep(POLL);
    }
}

/// The same service under three script names: on the host, in a PID namespace of its own,
/// and in a root file system of its own (the Debian sid root's newest CPython). The daemon
/// exports each under its own `process`, every thread alive by its Python name, and as many
/// threads as the kernel lists for each.
#[test]
fn services_in_pid_namespaces_and_roots_of_their_own_are_named_as_on_the_host() {
    let test = "services_in_pid_namespaces_and_roots_of_their_own_are_named_as_on_the_host";
    if !can_trace(test) {
        return;
    }
    let daemon = Daemon::start(&[], &[]);
    let host = || {
        let python = python();
        let version = Python::version_of(Python::host(python.clone(), String::new()).launch(false))
            .expect("the host's CPython runs");
        Python::host(python, version)
    };
    let mut places: Vec<(String, Python, bool)> = vec![
        ("on_host_service".into(), host(), false),
        ("in_pid_namespace_service".into(), host(), true),
    ];
    if let Some(newest) = sid_pythons().pop() {
        places.push(("in_own_root_service".into(), newest, false));
    }
    let mut running = Vec::new();
    for (name, python, pid_namespace) in &places {
        let files = python.files();
        std::fs::write(files.host(&format!("{name}.py")), NAMED_SERVICE).unwrap();
        let launch = python.launch(*pid_namespace);
        let mut command = launch.command;
        let mut child = KillOnDrop(
            command
                .arg(files.seen(&format!("{name}.py")))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready", "{}: {line:?}", python.label());
        let pid = interpreter_pid(child.id(), launch.forks);
        running.push((name.clone(), python.label(), pid, child, files));
    }
    let names_of = |samples: &[support::prom::Sample], process: &str| -> Vec<String> {
        let mut names: Vec<String> = find(
            samples,
            "tracer_thread_cpu_seconds_total",
            &[("process", process)],
        )
        .into_iter()
        .map(|s| s.labels["thread"].clone())
        .collect();
        names.sort();
        names
    };
    let mut want: Vec<String> = NAMED_THREADS.iter().map(|n| n.to_string()).collect();
    want.sort();
    let deadline = Instant::now() + PATIENCE;
    let samples = loop {
        std::thread::sleep(POLL);
        let samples = daemon.samples();
        if running
            .iter()
            .all(|(name, ..)| names_of(&samples, name) == want)
            || Instant::now() > deadline
        {
            break samples;
        }
    };
    for (name, label, pid, _, _) in &running {
        assert_eq!(names_of(&samples, name), want, "{label} as {name}");
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .count() as f64;
        let threads = find(&samples, "tracer_threads", &[("process", name)]);
        assert_eq!(
            threads.iter().map(|s| s.value).collect::<Vec<_>>(),
            [tasks],
            "{label} as {name}: tracer_threads"
        );
    }
    for (_, _, _, mut child, _) in running {
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
    }
}
