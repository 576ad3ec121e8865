//! `cargo xtask bench`'s scrape section: one `/metrics` scrape of a host with 10 000 threads
//! (in processes of their own names), plain and gzip-compressed, with the daemon's memory,
//! and a real Prometheus scraping it every second; for this build and, side by side, the
//! baseline build named by `TRACER_BENCH_BASELINE`, under the default series budget (with
//! few big processes, and with so many that `max_series` is what bounds them) and one large
//! enough that every thread is named.

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::bench::{
    BASELINE_ENV, BASELINE_LABEL_ENV, Daemon, Section, baseline, median, process_usage,
};
/// Threads of the workload's host.
const THREADS: usize = 10_000;
/// Scrapes timed per row, plain and compressed.
const SCRAPES: usize = 21;
/// How long Prometheus scrapes each daemon.
const PROMETHEUS_FOR: Duration = Duration::from_secs(15);
/// How long after their start the workload's threads are scraped: past the default
/// `blocked_min_secs`, so that each is in `tracer_thread_blocked_seconds`.
const BLOCKED_STEADY: Duration = Duration::from_secs(12);
const PROMETHEUS: &str = "/usr/bin/prometheus";
/// The label of the build under test.
const THIS_BUILD: &str = "this build";

/// A tracer build under test.
struct Build {
    label: String,
    binary: PathBuf,
    /// Whether it knows `max_series` (the baseline may not).
    has_budget: bool,
}

/// The series budget of a row.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Budget {
    /// The configuration's defaults.
    Default,
    /// Large enough that every thread is named.
    Everything,
}

impl Budget {
    fn name(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Everything => "every thread named",
        }
    }

    /// The configuration file of this budget for `build`.
    fn config(self, build: &Build) -> &'static str {
        match (self, build.has_budget) {
            (Self::Default, _) => "",
            (Self::Everything, true) => "max_series = 20000\nmax_threads_per_process = 20000\n",
            (Self::Everything, false) => "max_threads_per_process = 20000\n",
        }
    }
}

/// How the host's threads are spread over processes, each with a name of its own.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Host {
    processes: usize,
}

impl Host {
    /// Five processes of 2000 threads: each over `max_threads_per_process`.
    const FEW: Self = Self { processes: 5 };
    /// Forty of 250: together over `max_series`, which shares it among them.
    const MANY: Self = Self { processes: 40 };

    fn threads_each(self) -> usize {
        THREADS / self.processes
    }

    fn name(self) -> String {
        format!("{} × {}", self.processes, self.threads_each())
    }
}

/// A row's configuration.
const CASES: [(Budget, Host); 3] = [
    (Budget::Default, Host::FEW),
    (Budget::Default, Host::MANY),
    (Budget::Everything, Host::FEW),
];

/// What one row measured.
struct Row {
    build: String,
    budget: Budget,
    host: Host,
    thread_series: usize,
    time_series: usize,
    plain_bytes: usize,
    gzip_bytes: Option<usize>,
    plain_ms: f64,
    plain_max_ms: f64,
    gzip_ms: Option<f64>,
    daemon_rss_kib: u64,
    prometheus: Option<PrometheusView>,
}

/// What Prometheus saw of its scrapes of the daemon.
struct PrometheusView {
    mean_scrape_s: f64,
    median_scrape_s: f64,
    max_scrape_s: f64,
    samples: f64,
    rss_kib: u64,
}

/// The scrape section.
pub fn run(root: &Path) -> Result<Section> {
    let scratch = std::env::temp_dir().join(format!("tracer-scrape-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let result = rows(root, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    let rows = result?;
    Ok(Section {
        title: "Scrape latency".into(),
        text: table(&rows),
    })
}

fn rows(root: &Path, scratch: &Path) -> Result<Vec<Row>> {
    let mut builds = Vec::new();
    if let Some((label, binary)) = baseline() {
        let has_budget = Command::new(&binary)
            .args(["daemon", "--print-config"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("max_series"));
        builds.push(Build {
            label,
            binary,
            has_budget,
        });
    }
    builds.push(Build {
        label: THIS_BUILD.into(),
        binary: root.join("target/release/tracer"),
        has_budget: true,
    });
    // The workload's processes are named by their executables.
    let workload = root.join("target/release/thread-workload");
    let most = CASES
        .iter()
        .map(|(_, host)| host.processes)
        .max()
        .unwrap_or(0);
    let executables: Vec<PathBuf> = (0..most)
        .map(|i| {
            let path = scratch.join(format!("svc-{i}"));
            std::fs::copy(&workload, &path).map(|_| path)
        })
        .collect::<std::io::Result<_>>()?;
    let mut rows = Vec::new();
    for (budget, host) in CASES {
        for build in &builds {
            eprintln!(
                "xtask: scrape at {THREADS} threads ({}): {}, {}",
                host.name(),
                build.label,
                budget.name()
            );
            rows.push(row(
                build,
                budget,
                host,
                &executables[..host.processes],
                scratch,
            )?);
        }
    }
    Ok(rows)
}

/// The idle workload's processes, stopped when dropped.
struct Workload(Vec<Child>);

impl Workload {
    /// Starts every executable with `threads` idle threads; returns once all exist.
    fn start(executables: &[PathBuf], threads: usize) -> Result<Self> {
        let mut children = Workload(Vec::new());
        for exe in executables {
            let mut child = Command::new(exe)
                .arg("idle")
                .env("TRACER_IDLE_THREADS", threads.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()?;
            let mut line = String::new();
            BufReader::new(child.stdout.as_mut().context("stdout")?).read_line(&mut line)?;
            children.0.push(child);
            if line.trim() != format!("idle {threads}") {
                bail!("{}: {line:?}", exe.display());
            }
        }
        Ok(children)
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        for child in &mut self.0 {
            drop(child.stdin.take());
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
    }
}

fn row(
    build: &Build,
    budget: Budget,
    host: Host,
    executables: &[PathBuf],
    scratch: &Path,
) -> Result<Row> {
    let config = scratch.join("tracer.toml");
    std::fs::write(&config, budget.config(build))?;
    let daemon = Daemon::start_binary(&build.binary, Some(&config))?;
    let workload = Workload::start(executables, host.threads_each())?;
    let started = Instant::now();
    // Every thread is known to the daemon (and has run, so is in the kernel map).
    let want = (host.processes * (host.threads_each() + 1)) as f64;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, body) = get(&daemon.addr, "/metrics", false)?;
        let known: f64 = String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| l.starts_with("tracer_threads{process=\"svc-"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum();
        if known >= want {
            break;
        }
        if Instant::now() > deadline {
            bail!("the daemon knows {known} of {want} threads");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // The steady state: every thread asleep for longer than `blocked_min_secs` (10 s by
    // default), so that it has its `tracer_thread_blocked_seconds` too.
    if let Some(left) = BLOCKED_STEADY.checked_sub(started.elapsed()) {
        std::thread::sleep(left);
    }
    let timed = |gzip: bool| -> Result<(Vec<f64>, Vec<u8>, bool)> {
        let mut times = Vec::new();
        let mut last = (String::new(), Vec::new());
        for _ in 0..SCRAPES {
            let started = Instant::now();
            last = get(&daemon.addr, "/metrics", gzip)?;
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
        let compressed = last
            .0
            .to_ascii_lowercase()
            .contains("content-encoding: gzip");
        Ok((times, last.1, compressed))
    };
    let (mut plain_times, plain, _) = timed(false)?;
    let (mut gzip_times, packed, compressed) = timed(true)?;
    let text = String::from_utf8_lossy(&plain);
    let plain_max_ms = plain_times.iter().copied().fold(0.0, f64::max);
    let (_, daemon_rss_kib) = daemon.usage();
    let prometheus = if Path::new(PROMETHEUS).exists() {
        Some(prometheus_view(&daemon.addr, scratch)?)
    } else {
        None
    };
    drop(workload);
    Ok(Row {
        build: build.label.clone(),
        budget,
        host,
        thread_series: text
            .lines()
            .filter(|l| l.starts_with("tracer_thread_cpu_seconds_total{"))
            .count(),
        time_series: text.lines().filter(|l| !l.starts_with('#')).count(),
        plain_bytes: plain.len(),
        gzip_bytes: compressed.then_some(packed.len()),
        plain_ms: median(&mut plain_times),
        plain_max_ms,
        gzip_ms: compressed.then(|| median(&mut gzip_times)),
        daemon_rss_kib,
        prometheus,
    })
}

/// One `GET` of `path` from `addr`: the response head and body.
fn get(addr: &str, path: &str, gzip: bool) -> Result<(String, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let accept = if gzip {
        "Accept-Encoding: gzip\r\n"
    } else {
        ""
    };
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{accept}\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let at = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no HTTP head")?;
    let head = String::from_utf8_lossy(&response[..at]).into_owned();
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {head}");
    }
    Ok((head, response[at + 4..].to_vec()))
}

/// A Prometheus of its own scraping the daemon at `target` every second for
/// [`PROMETHEUS_FOR`]: its scrape durations, the samples of its last scrape, its memory.
fn prometheus_view(target: &str, scratch: &Path) -> Result<PrometheusView> {
    let dir = scratch.join("prometheus");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: tracer\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )?;
    let listen = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        probe.local_addr()?.to_string()
    };
    let log = std::fs::File::create(dir.join("prometheus.log"))?;
    let mut child = Command::new(PROMETHEUS)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={listen}"))
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let result = (|| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while get(&listen, "/-/ready", false).is_err() {
            if Instant::now() > deadline {
                bail!("prometheus was not ready within 30 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(PROMETHEUS_FOR);
        let window = format!("{}s", PROMETHEUS_FOR.as_secs() - 2);
        let q = |expr: String| query(&listen, &expr);
        Ok(PrometheusView {
            mean_scrape_s: q(format!(
                "avg_over_time(scrape_duration_seconds{{job=\"tracer\"}}[{window}])"
            ))?,
            median_scrape_s: q(format!(
                "quantile_over_time(0.5, scrape_duration_seconds{{job=\"tracer\"}}[{window}])"
            ))?,
            max_scrape_s: q(format!(
                "max_over_time(scrape_duration_seconds{{job=\"tracer\"}}[{window}])"
            ))?,
            samples: q("scrape_samples_scraped{job=\"tracer\"}".into())?,
            rss_kib: process_usage(child.id()).1,
        })
    })();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    result
}

/// The value of the one sample an instant query returns.
fn query(prometheus: &str, expr: &str) -> Result<f64> {
    let encoded: String = expr
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (_, body) = get(prometheus, &format!("/api/v1/query?query={encoded}"), false)?;
    let reply: serde_json::Value = serde_json::from_slice(&body)?;
    reply["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{expr}: {reply}"))
}

fn mib(bytes: usize) -> String {
    format!("{:.2} MiB", bytes as f64 / (1 << 20) as f64)
}

fn table(rows: &[Row]) -> String {
    let mut text = format!(
        "`tracer daemon` while processes of their own names (`svc-0`, `svc-1`, ..., copies of \
         `thread-workload idle`) hold {THREADS} threads in all, blocked, in 5 processes of 2000 threads \
         or 40 of 250 (the host column), each in the kernel map and, scraped {} s after their start, each blocked for longer than \
         `blocked_min_secs` (so in `tracer_thread_blocked_seconds` too). {SCRAPES} sequential `GET /metrics` over loopback, plain and then with \
         `Accept-Encoding: gzip`, each collecting from the kernel map and writing the text (client-side \
         time, the transfer included); then a Prometheus of its own scrapes the daemon every second for \
         {} s (its `scrape_duration_seconds` over the last {} s, median, mean and max, where the first scrapes, which create every series in its store, weigh on the mean and max; its last `scrape_samples_scraped`; its \
         RSS at the end). A thread series is one (process, thread) pair; a time series one sample line. \
         Budgets: the default configuration (where 5 processes are each bounded by \
         `max_threads_per_process`, 40 together by `max_series`), and `max_series = 20000`, \
         `max_threads_per_process = 20000` (every thread named).\n\n",
        BLOCKED_STEADY.as_secs(),
        PROMETHEUS_FOR.as_secs(),
        PROMETHEUS_FOR.as_secs() - 2,
    );
    let _ = writeln!(
        text,
        "| build | budget | host | thread series | time series | body | gzip body | scrape (median) | max | gzip scrape (median) | daemon RSS | Prometheus scrape (median / mean / max) | samples scraped | Prometheus RSS |"
    );
    let _ = writeln!(
        text,
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let (prom_time, samples, prom_rss) = match &r.prometheus {
            Some(p) => (
                format!(
                    "{:.1} / {:.1} / {:.1} ms",
                    p.median_scrape_s * 1e3,
                    p.mean_scrape_s * 1e3,
                    p.max_scrape_s * 1e3
                ),
                format!("{:.0}", p.samples),
                format!("{:.0} MiB", p.rss_kib as f64 / 1024.0),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} ms | {:.1} ms | {} | {:.1} MiB | {prom_time} | {samples} | {prom_rss} |",
            r.build,
            r.budget.name(),
            r.host.name(),
            r.thread_series,
            r.time_series,
            mib(r.plain_bytes),
            r.gzip_bytes.map_or("not offered".into(), mib),
            r.plain_ms,
            r.plain_max_ms,
            r.gzip_ms.map_or("-".into(), |ms| format!("{ms:.1} ms")),
            r.daemon_rss_kib as f64 / 1024.0,
        );
    }
    let _ = writeln!(
        text,
        "\nTargets: under 50 ms and under 5 MiB of text at {THREADS} threads. This build:"
    );
    for r in rows.iter().filter(|r| r.build == THIS_BUILD) {
        let met = |ok: bool| if ok { "met" } else { "missed" };
        let _ = writeln!(
            text,
            "- {} budget, {}: median scrape {:.1} ms ({}), text {} ({}){}.",
            r.budget.name(),
            r.host.name(),
            r.plain_ms,
            met(r.plain_ms < 50.0),
            mib(r.plain_bytes),
            met(r.plain_bytes < 5 << 20),
            r.prometheus.as_ref().map_or(String::new(), |p| format!(
                "; Prometheus's own scrapes {:.1} ms median ({}), {:.1} ms mean ({})",
                p.median_scrape_s * 1e3,
                met(p.median_scrape_s < 0.05),
                p.mean_scrape_s * 1e3,
                met(p.mean_scrape_s < 0.05)
            )),
        );
    }
    // This build against the baseline, budget by budget.
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}", a / b)
        } else {
            "-".into()
        }
    };
    let mut ratios = String::new();
    for (budget, host) in CASES {
        let case = |r: &&Row| r.budget == budget && r.host == host;
        let (Some(new), Some(old)) = (
            rows.iter().filter(case).find(|r| r.build == THIS_BUILD),
            rows.iter().filter(case).find(|r| r.build != THIS_BUILD),
        ) else {
            continue;
        };
        let prom = |f: fn(&PrometheusView) -> f64| match (&new.prometheus, &old.prometheus) {
            (Some(n), Some(o)) => ratio(f(n), f(o)),
            _ => "-".into(),
        };
        let _ = writeln!(
            ratios,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            budget.name(),
            host.name(),
            ratio(new.time_series as f64, old.time_series as f64),
            ratio(new.plain_bytes as f64, old.plain_bytes as f64),
            ratio(new.plain_ms, old.plain_ms),
            ratio(new.daemon_rss_kib as f64, old.daemon_rss_kib as f64),
            prom(|p| p.median_scrape_s),
            prom(|p| p.samples),
            prom(|p| p.rss_kib as f64),
        );
    }
    if !ratios.is_empty() {
        let _ = writeln!(
            text,
            "\nThis build against the baseline at the same budget (this build / baseline; below 1 is \
             better), plain text:\n\n| budget | host | time series | body | scrape | daemon RSS | Prometheus \
             scrape (median) | samples scraped | Prometheus RSS |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n{ratios}"
        );
        if std::env::var_os(BASELINE_ENV).is_some() {
            let _ = writeln!(
                text,
                "The baseline is the build `{BASELINE_ENV}` names{}.",
                std::env::var(BASELINE_LABEL_ENV)
                    .map(|l| format!(": {l}"))
                    .unwrap_or_default()
            );
        }
    }
    text
}
