//! Long-running programs for the deployment tests (the tracer daemon, Prometheus), plain
//! HTTP to them, and Prometheus' query API.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

/// A program this test started; killed (and reaped) when dropped, panics included. When
/// the test is failing its log is printed, for the reason.
pub struct Running {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Running {
    /// Starts `command` with stdout and stderr going to `log`.
    pub fn start(name: &str, command: &mut Command, log: &Path) -> Self {
        let file = File::create(log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({command:?}): {e}"));
        Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        }
    }

    /// Fails the test when the program has ended.
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().expect("waiting") {
            panic!("{} ended early ({status}):\n{}", self.name, self.log_text());
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits up to `limit` for the exit status.
    pub fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        super::wait_with_limit(&mut self.child, limit)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!(
                "--- last lines of {}'s log:\n{}",
                self.name,
                tail.join("\n")
            );
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("binding an ephemeral port")
        .port()
}

pub fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// `GET path` over HTTP/1.0: the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    Ok((status, body.to_owned()))
}

/// Percent-encoding of a query-string value.
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Polls `ready` every 100 ms until it is true; false after `limit`.
pub fn wait_until(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether an external program the test needs is here. Outside CI the test is skipped
/// with the reason; under `CI=true` its absence fails the test (`cargo xtask setup`
/// installs it).
pub fn have_program(test: &str, path: &Path, package: &str) -> bool {
    if path.exists() {
        return true;
    }
    let reason = format!("{} is missing (Debian package `{package}`)", path.display());
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {reason}; `cargo xtask setup` installs it");
    }
    eprintln!("skipped {test}: {reason}");
    false
}

/// `tracer daemon --listen 127.0.0.1:PORT [ARGS]`, once `/metrics` answers.
pub fn start_daemon(dir: &Path, port: u16, args: &[&str]) -> Running {
    let mut daemon = Running::start(
        "tracer daemon",
        Command::new(super::tracer())
            .arg("daemon")
            .arg("--listen")
            .arg(localhost(port).to_string())
            .args(args),
        &dir.join("daemon.log"),
    );
    let up = wait_until(Duration::from_secs(30), || {
        daemon.assert_alive();
        matches!(http_get(localhost(port), "/metrics"), Ok((200, _)))
    });
    assert!(up, "tracer daemon did not serve /metrics within 30 s");
    daemon
}

pub const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A Prometheus of its own (storage in `dir`), scraping `targets` every second, once it is
/// ready. Returns it and its address.
pub fn start_prometheus(dir: &Path, targets: &[SocketAddr]) -> (Running, SocketAddr) {
    let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    start_prometheus_with(
        dir,
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: tracer\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ),
    )
}

/// A Prometheus of its own (storage in `dir`) with `config` as its `prometheus.yml`, once it
/// is ready. Returns it and its address.
pub fn start_prometheus_with(dir: &Path, config: &str) -> (Running, SocketAddr) {
    let text = config;
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, text).expect("writing prometheus.yml");
    let addr = localhost(free_port());
    let mut prometheus = Running::start(
        "prometheus",
        Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .current_dir(dir),
        &dir.join("prometheus.log"),
    );
    let ready = wait_until(Duration::from_secs(30), || {
        prometheus.assert_alive();
        matches!(http_get(addr, "/-/ready"), Ok((200, _)))
    });
    assert!(ready, "prometheus was not ready within 30 s");
    (prometheus, addr)
}

/// An instant query through `/api/v1/query`: the result array, or the error Prometheus gave.
pub fn query(prometheus: SocketAddr, expr: &str) -> Result<Vec<Value>, String> {
    let path = format!("/api/v1/query?query={}", url_encode(expr));
    let (status, body) = http_get(prometheus, &path).map_err(|e| format!("querying: {e}"))?;
    let reply: Value = serde_json::from_str(&body)
        .map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))?;
    if reply["status"] != "success" {
        return Err(format!(
            "HTTP {status}: {} {}",
            reply["errorType"].as_str().unwrap_or(""),
            reply["error"].as_str().unwrap_or(&body)
        ));
    }
    Ok(reply["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// A CPython service whose thread `worker-main-loop` runs 0.2 s of CPU, prints its id and
/// blocks until standard input closes.
pub const PYTHON_SERVICE: &str = r#"
import sys, threading, time
def loop():
    end = time.thread_time() + 0.2
    while time.thread_time() < end:
        pass
    print(threading.get_native_id(), flush=True)
    sys.stdin.read()
t = threading.Thread(target=loop, name="worker-main-loop")
t.start()
t.join()
"#;

/// The kernel's count of thread `tid`'s switches, voluntary and involuntary
/// (`/proc/TID/status`).
pub fn switches_of(tid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).unwrap();
    status
        .lines()
        .filter(|l| l.contains("ctxt_switches"))
        .map(|l| l.split_whitespace().last().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// The CPU time the kernel counts for thread `tid`, in seconds.
pub fn cpu_seconds_of(tid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{tid}/schedstat")).unwrap();
    text.split_whitespace()
        .next()
        .unwrap()
        .parse::<f64>()
        .unwrap()
        / 1e9
}

/// Starts `command` with its stdout piped and returns once it has written its first line.
pub fn start_until_first_line(command: &mut Command) -> (Child, String) {
    let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    (child, line)
}
